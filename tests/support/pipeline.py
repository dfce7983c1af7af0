"""The pipeline's stages run in a scratch folder: their params, their environment, generated data sets."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from tests.support.paths import ROOT

DEFAULT_PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
FAST_CANDIDATES = {
    "logistic_regression": {"max_iter": 1000},
    "random_forest": {"n_estimators": 30},
    "svc": {},
    "decision_tree": {"max_depth": 5},
}


@cache
def _migrated_mlflow_store() -> Path:
    """An empty MLflow SQLite store, migrated once per process: a fresh one runs dozens of alembic
    migrations (seconds of CPU) in the first stage that opens it."""
    folder = Path(tempfile.mkdtemp(prefix="mlflow-template-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    path = folder / "mlflow.db"
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, mlflow; mlflow.MlflowClient(sys.argv[1]).search_experiments()",
            f"sqlite:///{path}",
        ],
        env=dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true"),
        check=True,
        capture_output=True,
        timeout=120,
    )
    return path


def mlflow_store(folder: Path) -> str:
    """The tracking URI of an MLflow store in `folder`, copied from a migrated template if new."""
    path = folder / "mlflow.db"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_migrated_mlflow_store(), path)
    return f"sqlite:///{path}"


def stage_env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    # The venv's python first: dvc runs stage commands through the shell.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["MLFLOW_TRACKING_URI"] = mlflow_store(tmp)
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    env.pop("DVC_REMOTE_URL", None)
    env.pop("DVC_S3_ENDPOINT_URL", None)
    return env


def run_stage(stage: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", f"app.pipeline.{stage}", "--params", "params.yaml"],
        cwd=cwd,
        env=stage_env(cwd),
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{stage} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def write_params(folder: Path, **sections: dict) -> Path:
    params = {
        "seed": 42,
        "data": dict(DEFAULT_PARAMS["data"]),
        "prepare": dict(DEFAULT_PARAMS["prepare"]),
        "train": dict(DEFAULT_PARAMS["train"], candidates=FAST_CANDIDATES),
    }
    for name, values in sections.items():
        params[name] = {**params.get(name, {}), **values} if isinstance(values, dict) else values
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def write_iris_params(path: Path) -> Path:
    """The smallest retraining there is (iris, one candidate, two folds), for tests that run a job."""
    params = {
        "seed": 42,
        "data": {"source": "sklearn:iris", "target": "species", "test_size": 0.3},
        "train": {"cv_folds": 2, "candidates": {"logistic_regression": {"max_iter": 500}}},
    }
    path.write_text(yaml.safe_dump(params))
    return path


def customer_frame(rows: int, task: str, seed: int = 7) -> pd.DataFrame:
    """A data set with numeric and categorical columns and missing values in both."""
    rng = np.random.default_rng(seed)
    age = rng.normal(40, 12, rows).round(0)
    income = rng.lognormal(10, 0.4, rows).round(2)
    city = rng.choice(["paris", "lyon", "lille", "nantes"], rows, p=[0.4, 0.3, 0.2, 0.1])
    plan = rng.choice(["basic", "plus", "pro"], rows)
    signal = 0.04 * (age - 40) + 0.8 * (plan == "pro") - 0.6 * (city == "lille") + rng.normal(0, 0.5, rows)
    frame = pd.DataFrame({"age": age, "income": income, "city": city, "plan": plan})
    if task == "classification":
        frame["churn"] = np.where(signal > 0.2, "yes", "no")
    else:
        frame["spend"] = (50 + 30 * signal + 0.001 * income).round(3)
    for column in ("age", "city"):
        frame.loc[rng.random(rows) < 0.05, column] = np.nan
    return frame
