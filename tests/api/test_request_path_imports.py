"""Serving stays light: no mlflow and no pandas on the request path, no scikit-learn, scipy, joblib,
LightGBM, XGBoost or CatBoost at all when the model folder has its ONNX file (model.onnx), whatever
the candidate type.

Each check runs in a fresh interpreter with some modules made unimportable, as in a serving-only
install, where predictions must still succeed. A model without an ONNX file needs scikit-learn,
which itself imports pandas when it is installed (sklearn.utils.fixes): with everything importable,
nothing but scikit-learn may import pandas.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from app.pipeline.candidates import CLASSIFIERS, REGRESSORS
from tests.support.models import COLOR_ROW, IRIS_ROW, write_model

SCRIPT = textwrap.dedent(
    """
    import json, sys

    mode, database_url, cases, guarded = sys.argv[1:5]
    guarded = guarded.split(",")
    cases = json.loads(cases)
    importers = []

    class Guard:
        def find_spec(self, name, path=None, target=None):
            if name in guarded:
                if mode == "block":
                    raise ModuleNotFoundError(f"No module named {name!r}")
                frame = sys._getframe(1)
                while frame and frame.f_globals.get("__name__", "").startswith(("importlib", "_frozen")):
                    frame = frame.f_back
                importers.append((name, frame.f_globals.get("__name__") if frame else None))
            return None

    sys.meta_path.insert(0, Guard())

    from fastapi.testclient import TestClient
    from app.core.config import Settings
    from app.main import create_app

    statuses, served_by = [], []
    for model_dir, row in cases:
        settings = Settings(
            _env_file=None, database_url=database_url, model_dir=model_dir,
            model_store_url=model_dir + "-versions", model_cache_dir=model_dir + "-cache",
            admin_username="admin", admin_password="admin-password-1",
        )
        with TestClient(create_app(settings)) as client:
            token = client.post("/token", data={"username": "admin", "password": "admin-password-1"})
            headers = {"Authorization": "Bearer " + token.json()["access_token"]}
            csv = ",".join(row) + "\\n" + ",".join(str(v) for v in row.values()) + "\\n"
            statuses += [
                client.post("/predict", json={"instances": [row]}, headers=headers).status_code,
                client.post(
                    "/predict/csv", content=csv, headers=headers | {"Content-Type": "text/csv"}
                ).status_code,
            ]
            served_by.append(client.get("/model-info", headers=headers).json()["served_by"])
    print(json.dumps({
        "statuses": statuses,
        "served_by": served_by,
        "loaded": sorted(m for m in guarded if m in sys.modules),
        "importers": sorted(set(importers)),
    }))
    """
)


ROWS = {"iris": IRIS_ROW, "colors": COLOR_ROW, "shades": COLOR_ROW}
# Every candidate type, on numeric data (iris) and on a categorical column plus numbers with gaps.
EVERY_CANDIDATE = [
    *(("iris", name) for name in sorted(CLASSIFIERS)),
    *(("shades", name) for name in sorted(CLASSIFIERS)),
    *(("colors", name) for name in sorted(REGRESSORS)),
]


def _serve_once(
    tmp_path: Path, mode: str, guarded: list[str], onnx: bool, models: list[tuple[str, str]] | None = None
) -> dict:
    cases = []
    for kind, candidate in models or [("iris", "logistic_regression")]:
        model_dir = tmp_path / f"{kind}-{candidate}"
        write_model(model_dir, kind, onnx=onnx, candidate=candidate)
        cases.append((str(model_dir), ROWS[kind]))
    database = f"sqlite:///{tmp_path}/users.db"
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode, database, json.dumps(cases), ",".join(guarded)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_every_candidate_type_serves_from_onnx_without_any_training_library(
    tmp_path: Path,
) -> None:
    guarded = ["sklearn", "scipy", "joblib", "pandas", "mlflow", "lightgbm", "xgboost", "catboost"]
    outcome = _serve_once(tmp_path, "block", guarded, onnx=True, models=EVERY_CANDIDATE)
    assert outcome["statuses"] == [200, 200] * len(EVERY_CANDIDATE)
    assert outcome["served_by"] == ["onnx"] * len(EVERY_CANDIDATE)
    assert outcome["loaded"] == []


def test_a_pipeline_model_serves_without_pandas_or_mlflow_installed(tmp_path: Path) -> None:
    outcome = _serve_once(tmp_path, "block", ["pandas", "mlflow"], onnx=False)
    assert outcome["statuses"] == [200, 200]
    assert outcome["served_by"] == ["pipeline"]
    assert outcome["loaded"] == []


def test_only_scikit_learn_imports_pandas_and_nothing_imports_mlflow(tmp_path: Path) -> None:
    outcome = _serve_once(tmp_path, "trace", ["pandas", "mlflow"], onnx=False)
    assert outcome["statuses"] == [200, 200]
    assert "mlflow" not in outcome["loaded"]
    assert {module for _, module in outcome["importers"]} <= {"sklearn.utils.fixes"}
