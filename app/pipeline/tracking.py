"""MLflow: where runs go, one run per candidate with the tags every run carries, the registry."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the heavy modules stay out of `import tracking` (alias.py needs it fast)
    import numpy as np
    import pandas as pd

    from app.pipeline.candidates import Fitted
    from app.pipeline.dataset import DatasetSchema
    from app.pipeline.params import Params

LOCAL_STORE = Path("mlruns")
# The registry alias of the model that serves: train sets it, a promotion or rollback moves it.
CHAMPION_ALIAS = "champion"


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, or the embedded default: a SQLite store inside the project."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(LOCAL_STORE / 'mlflow.db').resolve()}"


def configure(experiment: str) -> str:
    """Point MLflow at the store and the experiment; returns the experiment id."""
    # This machine (and many CI runners) has no route to MLflow's telemetry endpoint.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    uri = tracking_uri()
    local = "MLFLOW_TRACKING_URI" not in os.environ or not os.environ["MLFLOW_TRACKING_URI"]
    if local:
        LOCAL_STORE.mkdir(exist_ok=True)
    mlflow.set_tracking_uri(uri)
    found = mlflow.get_experiment_by_name(experiment)
    if found is not None:
        experiment_id = found.experiment_id
    else:
        # With the local store, keep artifacts beside it rather than in the working directory.
        location = (LOCAL_STORE / "artifacts").resolve().as_uri() if local else None
        experiment_id = mlflow.create_experiment(experiment, artifact_location=location)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip()


# Candidates whose pipeline holds another library's model: its distribution name on PyPI.
BOOSTER_LIBRARIES = {"lightgbm": "lightgbm", "xgboost": "xgboost-cpu", "catboost": "catboost"}


def log_candidates(
    fitted: list[Fitted],
    params: Params,
    schema: DatasetSchema,
    metric: str,
    commit: str,
    example: pd.DataFrame,
    x_example: np.ndarray,
) -> str:
    """One MLflow run per candidate (params, metrics, tags, the model with its signature and input
    example); sets each candidate's run_id and model_uri, returns the experiment id."""
    import joblib
    import mlflow
    import numpy as np
    import sklearn
    from mlflow.models import infer_signature
    from skops.io import dumps as skops_dumps
    from skops.io import get_untrusted_types

    experiment_id = configure(params.train.experiment)
    requirements = [
        f"scikit-learn=={sklearn.__version__}",
        f"numpy=={np.__version__}",
        f"joblib=={joblib.__version__}",
    ]
    for candidate in fitted:
        with warnings.catch_warnings(), mlflow.start_run(run_name=candidate.name) as run:
            warnings.simplefilter("ignore")
            mlflow.set_tags(
                {
                    "candidate": candidate.name,
                    "git_commit": commit,
                    "data_md5": schema.data_md5,
                    "task": schema.task,
                }
            )
            mlflow.log_params(
                {
                    "candidate": candidate.name,
                    "seed": params.seed,
                    "metric": metric,
                    "data_source": schema.source,
                    "test_size": params.data.test_size,
                    "cv_folds": params.train.cv_folds,
                }
                | {f"hp_{k}": v for k, v in candidate.hyperparameters.items()}
            )
            mlflow.log_metrics(
                {f"cv_{metric}": candidate.cv_score} | {f"test_{k}": v for k, v in candidate.metrics.items()}
            )
            # A booster's pipeline needs its library to load back (`mlflow models serve`, the bench's peers).
            library = BOOSTER_LIBRARIES.get(candidate.name)
            needed = requirements + ([f"{library}=={importlib.metadata.version(library)}"] if library else [])
            signature = infer_signature(example, candidate.pipeline.predict(x_example))
            info = mlflow.sklearn.log_model(
                candidate.pipeline,
                name="model",
                signature=signature,
                input_example=example,
                pip_requirements=needed,
                # skops (MLflow's safe format) asks which types to trust: this pipeline was fitted
                # a moment ago in this process, so all of its own types are.
                skops_trusted_types=get_untrusted_types(data=skops_dumps(candidate.pipeline)),
            )
            candidate.run_id = run.info.run_id
            candidate.model_uri = info.model_uri
    return experiment_id


def register(champion: Fitted, name: str, alias: bool = True) -> str:
    """A registry version for the champion; `alias` moves the `champion` alias to it."""
    import mlflow
    from mlflow import MlflowClient

    version = mlflow.register_model(champion.model_uri, name).version
    if alias:
        client = MlflowClient()
        client.set_registered_model_alias(name, CHAMPION_ALIAS, version)
        if champion.run_id is not None:
            client.set_tag(champion.run_id, "champion", "true")
    return str(version)
