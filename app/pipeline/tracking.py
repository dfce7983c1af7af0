"""MLflow set-up: where runs go, and the tags every run carries."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

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
