"""POST /models/import: a model file uploaded, imported by `models import` in a subprocess, answered
with its ImportOutcome; pickles and MLflow models refused before anything runs."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import subprocess
import sys
import textwrap
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from app.adapters import import_command
from app.adapters.model_store import ModelStore
from app.api.import_form import MLFLOW_REFUSED, PICKLE_REFUSED
from app.core.config import Settings
from tests.support.logs import captured_log
from tests.support.pipeline import mlflow_store
from tests.support.servers import wait_until
from tests.support.tokens import ADMIN, SECRET

Headers = dict[str, str]
FEATURES = ["x0", "x1", "x2", "x3"]


def sample(metric: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(metric, labels) or 0.0


def imports(result: str) -> float:
    return sample("predictor_model_imports_total", result=result)


def stored(settings: Settings) -> list[str]:
    return [v for v, _ in ModelStore.from_url(settings.model_store_url, settings.model_cache_dir).versions()]


def rows(seed: int, count: int) -> pd.DataFrame:
    return pd.DataFrame(np.random.default_rng(seed).normal(size=(count, len(FEATURES))), columns=FEATURES)


def csv_of(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False).encode()


def classified(count: int = 120) -> tuple[pd.DataFrame, pd.Series]:
    x = rows(1, count)
    return x, (x["x0"] + x["x1"] > 0).astype(int).rename("label")


@pytest.fixture(scope="session")
def _mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    return mlflow_store(tmp_path_factory.mktemp("import-mlflow"))


@pytest.fixture
def mlflow_uri(_mlflow_uri: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    """Where the import command registers the compiled graph: a scratch MLflow store (the command's
    environment is this process's). It runs in this process's folder, where MLflow keeps a SQLite
    store's artifacts (./mlruns): the test's own."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", _mlflow_uri)
    monkeypatch.chdir(tmp_path)
    yield _mlflow_uri


def post_import(
    client: TestClient,
    headers: Headers,
    model: tuple[str, bytes],
    sample_csv: bytes | None = None,
    **fields: str,
) -> Any:
    files: list[tuple[str, tuple[str, bytes]]] = [("file", model)]
    if sample_csv is not None:
        files.append(("sample", ("sample.csv", sample_csv)))
    return client.post("/models/import", files=files, data=fields, headers=headers)


@pytest.mark.slow  # the import, MLflow's registry and alias: ~15 s
def test_an_xgboost_regressor_serves_what_xgboost_answers(
    client: TestClient, admin_headers: Headers, user_headers: Headers, settings: Settings, mlflow_uri: str
) -> None:
    import xgboost

    train, held_out = rows(2, 200), rows(3, 5)
    target = 2 * train["x0"] - train["x2"] + 0.5 * train["x1"] * train["x3"]
    regressor = xgboost.XGBRegressor(n_estimators=20, max_depth=3).fit(train, target)
    model = bytes(regressor.get_booster().save_raw("json"))
    before = imports("imported")

    answer = post_import(
        client,
        admin_headers,
        ("prices.json", model),
        csv_of(train.assign(price=target)),
        target="price",
        serve="true",
        force="true",  # the iris champion is not comparable with a regressor: no gate
    )
    assert answer.status_code == 201, answer.text
    outcome = answer.json()
    version = outcome["version"]
    assert outcome["status"] == "imported" and outcome["served"] is True
    assert outcome["flavor"] == "xgboost" and outcome["task"] == "regression" and outcome["name"] == "prices"
    assert outcome["parity"]["rows_from"] == "sample" and outcome["parity"]["max_difference"] <= 1e-5
    assert any(line.startswith("parity: ") for line in outcome["lines"])
    assert imports("imported") == before + 1

    # Every replica follows the serving pointer: this one within WATCH_SECONDS.
    def info() -> dict[str, Any]:
        return client.get("/model-info", headers=user_headers).json()

    wait_until(lambda: info()["version"] == version, 30, "the imported version serving")
    served = info()
    assert served["source"]["flavor"] == "xgboost" and served["source"]["uri"] == "prices.json"
    assert served["source"]["sha256"] == hashlib.sha256(model).hexdigest()
    assert served["sha256"] is None and served["served_by"] == "onnx"
    assert served["parity"] == outcome["parity"]
    assert served["drift"] == "on"  # the labelled sample made the reference profile
    assert served["registered_model"] and served["registered_version"]

    body = {"instances": held_out.to_dict(orient="records")}
    predicted = client.post("/predict", json=body, headers=user_headers)
    assert predicted.status_code == 200, predicted.text
    assert predicted.json()["model_version"] == version
    values = [p["value"] for p in predicted.json()["predictions"]]
    np.testing.assert_allclose(values, regressor.predict(held_out), rtol=0, atol=1e-5)

    listed = client.get("/models", headers=user_headers).json()
    imported = next(v for v in listed["versions"] if v["version"] == version)
    assert imported["origin"] == "import" and imported["serving"] is True
    assert imported["source"] == {"flavor": "xgboost", "uri": "prices.json"}
    assert imported["parity_max_difference"] == outcome["parity"]["max_difference"]
    assert all(v["source"] is None for v in listed["versions"] if v["version"] != version)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("model.pkl", pickle.dumps({"weights": [1, 2, 3]})),
        ("model.joblib", b"not even a pickle, but named like one"),
        ("model.json", pickle.dumps([1.0])),  # a pickle by its first byte, whatever its name
    ],
)
def test_a_pickle_is_refused_before_anything_runs(
    client: TestClient, admin_headers: Headers, settings: Settings, name: str, content: bytes
) -> None:
    versions, before = stored(settings), imports("invalid")
    answer = post_import(client, admin_headers, (name, content))
    assert answer.status_code == 415
    assert answer.json() == {"detail": PICKLE_REFUSED}
    assert "python -m app.cli models import FILE" in PICKLE_REFUSED
    assert stored(settings) == versions
    assert imports("invalid") == before + 1


def zipped(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_an_mlflow_model_zipped_or_as_a_folder_is_refused(client: TestClient, admin_headers: Headers) -> None:
    mlmodel = b"flavors:\n  python_function:\n    loader_module: mlflow.sklearn\n"
    archive = zipped({"MLmodel": mlmodel, "model.pkl": pickle.dumps(1)})
    for name in ("model.zip", "model"):  # by its suffix, or its first bytes
        answer = post_import(client, admin_headers, (name, archive))
        assert answer.status_code == 415 and answer.json() == {"detail": MLFLOW_REFUSED}
    folder = [("file", ("model/MLmodel", mlmodel)), ("file", ("model/model.pkl", pickle.dumps(1)))]
    answer = client.post("/models/import", files=folder, headers=admin_headers)
    assert answer.status_code == 415 and answer.json() == {"detail": MLFLOW_REFUSED}
    assert "python -m app.cli models import FOLDER" in MLFLOW_REFUSED


TREE = ("m.txt", b"tree\n")


@pytest.mark.parametrize(
    ("files", "says"),
    [
        ([("file", ("empty.txt", b""))], "the model file is empty"),
        ([("file", TREE), ("sample", ("s.csv", b""))], "the sample is empty"),
        ([("name", (None, b"no file"))], "send the model file in the form field 'file'"),
        ([("file", TREE), ("tolerence", (None, b"1"))], "unknown form field 'tolerence'"),
        ([("file", TREE), ("force", (None, b"true"))], "force skips the promotion gate of serve"),
        ([("file", TREE), ("tolerance", (None, b"-1"))], "greater than or equal to 0"),
        ([("file", TREE), ("serve", (None, b"maybe"))], "valid boolean"),
    ],
)
def test_a_form_that_is_not_right_is_refused_before_anything_runs(
    client: TestClient, admin_headers: Headers, files: list, says: str
) -> None:
    answer = client.post("/models/import", files=files, headers=admin_headers)
    assert answer.status_code == 422, answer.text
    assert says in json.dumps(answer.json())


def test_a_parity_miss_is_422_with_its_step_and_publishes_nothing(
    client: TestClient, admin_headers: Headers, settings: Settings, tmp_path: Path
) -> None:
    import catboost

    x, y = classified()
    path = tmp_path / "churn.cbm"
    classifier = catboost.CatBoostClassifier(iterations=20, depth=3, verbose=False, allow_writing_files=False)
    classifier.fit(x, y).save_model(str(path))
    versions, before = stored(settings), imports("refused")

    with captured_log() as log:
        answer = post_import(
            client,
            admin_headers,
            ("churn.cbm", path.read_bytes()),
            csv_of(x.assign(label=y)),
            target="label",
            tolerance="1e-12",
        )
    assert answer.status_code == 422, answer.text
    outcome = answer.json()
    assert outcome["status"] == "refused" and outcome["step"] == "parity"
    assert "tolerance 1e-12" in outcome["error"] and outcome["version"] is None
    assert stored(settings) == versions
    assert imports("refused") == before + 1
    # Who sent what, and what became of it.
    line = next(json.loads(line) for line in log.getvalue().splitlines() if "model import" in line)
    assert line["msg"] == "model import refused" and line["user"] == ADMIN[0]
    assert line["source"] == "churn.cbm" and line["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert line["reason"].startswith("parity: ")


def test_only_an_admin_imports(client: TestClient, user_headers: Headers) -> None:
    assert post_import(client, user_headers, TREE).status_code == 403
    assert post_import(client, {}, TREE).status_code == 401


def test_a_command_that_crashes_is_502_and_one_that_hangs_is_stopped_504(
    client: TestClient, admin_headers: Headers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        import_command,
        "COMMAND",
        [sys.executable, "-c", "import sys; print('boom', file=sys.stderr); sys.exit(3)"],
    )
    answer = post_import(client, admin_headers, TREE)
    assert answer.status_code == 502
    assert answer.json() == {"detail": "the import command ended without an outcome (exit code 3): boom"}

    # It started a process of its own (as MLflow's alias move is): stopped with it.
    started = tmp_path / "grandchild.pid"
    hangs = textwrap.dedent(
        f"""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        open({str(started)!r}, "w").write(str(child.pid))
        time.sleep(60)
        """
    )
    monkeypatch.setattr(import_command, "COMMAND", [sys.executable, "-c", hangs])
    monkeypatch.setattr(import_command, "IMPORT_TIMEOUT_SECONDS", 2)
    before = imports("timeout")
    answered = time.monotonic()
    answer = post_import(client, admin_headers, TREE)
    assert answer.status_code == 504 and time.monotonic() - answered < 20
    assert "did not finish within 2 s" in answer.json()["detail"]
    assert imports("timeout") == before + 1
    grandchild = int(started.read_text())
    wait_until(lambda: not _alive(grandchild), 10, "the command's own child stopped")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie of a process gone (its parent, killed too, no longer reaps it) is gone all the same.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


SERVING_PROCESS = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from fastapi.testclient import TestClient
    from app.core.config import Settings
    from app.main import create_app

    model_dir, database_url, store, model, sample, admin, password, secret = sys.argv[1:9]
    settings = Settings(
        _env_file=None, secret_key=secret, database_url=database_url, model_dir=model_dir,
        model_store_url=store, model_cache_dir=store + "-cache", admin_username=admin,
        admin_password=password,
    )
    with TestClient(create_app(settings)) as client:
        token = client.post("/token", data={"username": admin, "password": password}).json()
        answer = client.post(
            "/models/import",
            files=[
                ("file", ("booster.txt", Path(model).read_bytes())),
                ("sample", ("sample.csv", Path(sample).read_bytes())),
            ],
            data={"target": "label", "tolerance": "1e-12"},
            headers={"Authorization": "Bearer " + token["access_token"]},
        )
    libraries = ("sklearn", "lightgbm", "xgboost", "catboost", "onnx", "pandas")
    mapped = Path("/proc/self/maps").read_text()
    print(json.dumps({
        "status": answer.status_code,
        "step": answer.json().get("step"),
        "imported": sorted(m for m in libraries if m in sys.modules),
        "mapped": sorted(m for m in ("lib_lightgbm", "xgboost", "catboost") if m in mapped),
    }))
    """
)


@pytest.mark.slow  # an interpreter of its own, which starts the import
def test_the_serving_process_never_loads_the_model_library(tmp_path: Path, model_dir: Path) -> None:
    import lightgbm

    x, y = classified()
    booster = lightgbm.LGBMClassifier(n_estimators=20, num_leaves=7, verbose=-1).fit(x, y).booster_
    booster.save_model(str(tmp_path / "booster.txt"))
    (tmp_path / "sample.csv").write_bytes(csv_of(x.assign(label=y)))
    arguments = [
        str(model_dir),
        f"sqlite:///{tmp_path}/users.db",
        str(tmp_path / "versions"),
        str(tmp_path / "booster.txt"),
        str(tmp_path / "sample.csv"),
        *ADMIN,
        SECRET,
    ]
    done = subprocess.run(
        [sys.executable, "-c", SERVING_PROCESS, *arguments],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    # LightGBM answered the parity check, in the import's process: none of it in the serving one.
    assert found == {"status": 422, "step": "parity", "imported": [], "mapped": []}
