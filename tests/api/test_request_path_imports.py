"""Serving stays light: no mlflow and no pandas on the request path, no scikit-learn at all when
the model folder has its compiled arrays (model.npz).

Each check runs in a fresh interpreter with some modules made unimportable, as in a serving-only
install, where predictions must still succeed. A model without arrays needs scikit-learn, which
itself imports pandas when it is installed (sklearn.utils.fixes): with everything importable,
nothing but scikit-learn may import pandas.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from api_support import write_model

SCRIPT = textwrap.dedent(
    """
    import json, sys

    mode, database_url, model_dir, guarded = sys.argv[1:5]
    guarded = guarded.split(",")
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

    settings = Settings(
        _env_file=None, database_url=database_url, model_dir=model_dir,
        admin_username="admin", admin_password="admin-password-1",
    )
    with TestClient(create_app(settings)) as client:
        token = client.post("/token", data={"username": "admin", "password": "admin-password-1"})
        headers = {"Authorization": "Bearer " + token.json()["access_token"]}
        row = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
        statuses = [
            client.post("/predict", json={"instances": [row]}, headers=headers).status_code,
            client.post(
                "/predict/csv",
                content="sepal_length,sepal_width,petal_length,petal_width\\n5,3,1,0\\n",
                headers=headers | {"Content-Type": "text/csv"},
            ).status_code,
        ]
    print(json.dumps({
        "statuses": statuses,
        "loaded": sorted(m for m in guarded if m in sys.modules),
        "importers": sorted(set(importers)),
    }))
    """
)


def _serve_once(tmp_path: Path, mode: str, guarded: list[str], compiled: bool) -> dict:
    model_dir = tmp_path / "models"
    write_model(model_dir, compiled=compiled)
    database = f"sqlite:///{tmp_path}/users.db"
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode, database, str(model_dir), ",".join(guarded)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_compiled_model_serves_without_scikit_learn_scipy_pandas_or_mlflow(tmp_path: Path) -> None:
    outcome = _serve_once(
        tmp_path, "block", ["sklearn", "scipy", "joblib", "pandas", "mlflow"], compiled=True
    )
    assert outcome["statuses"] == [200, 200]
    assert outcome["loaded"] == []


def test_a_pipeline_model_serves_without_pandas_or_mlflow_installed(tmp_path: Path) -> None:
    outcome = _serve_once(tmp_path, "block", ["pandas", "mlflow"], compiled=False)
    assert outcome["statuses"] == [200, 200]
    assert outcome["loaded"] == []


def test_only_scikit_learn_imports_pandas_and_nothing_imports_mlflow(tmp_path: Path) -> None:
    outcome = _serve_once(tmp_path, "trace", ["pandas", "mlflow"], compiled=False)
    assert outcome["statuses"] == [200, 200]
    assert "mlflow" not in outcome["loaded"]
    assert {module for _, module in outcome["importers"]} <= {"sklearn.utils.fixes"}
