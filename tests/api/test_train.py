"""POST /train: a job queued in the database, run by a worker (the pipeline's stages, the promotion
gate), one job at a time."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient
from sklearn.datasets import load_iris

from app.adapters.model_store import ModelStore
from app.core.config import Settings
from app.db import crud
from app.db.jobs import LEASE_EXPIRED
from app.db.models import TrainingJobRow
from app.main import create_app
from app.worker import Worker
from tests.support.models import IRIS_ROW
from tests.support.pipeline import mlflow_store
from tests.support.tokens import ADMIN, USER, bearer, get_token

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def iris_csv() -> bytes:
    data = load_iris()
    lines = [",".join([*FEATURES, "species"])]
    for row, target in zip(data.data, data.target, strict=True):
        lines.append(",".join([*(str(v) for v in row), str(data.target_names[target])]))
    return ("\n".join(lines) + "\n").encode()


def write_params(folder: Path, candidates: dict) -> Path:
    params = {
        "seed": 42,
        "data": {"source": "sklearn:iris", "target": "species", "test_size": 0.3},
        "train": {"cv_folds": 2, "candidates": candidates},
    }
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    # Shared by the tests: creating an MLflow store costs seconds.
    return mlflow_store(tmp_path_factory.mktemp("mlflow"))


@pytest.fixture
def trainer(
    settings_factory: Callable[..., Settings],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    mlflow_uri: str,
) -> Iterator[Callable[..., TestClient]]:
    """An API and a worker whose jobs train fast candidates and log to a scratch MLflow store."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    clients: list[TestClient] = []
    workers: list[tuple[Worker, threading.Thread]] = []

    def make(candidates: dict, tolerance: float) -> TestClient:
        settings = settings_factory(
            train_params=write_params(tmp_path, candidates), promotion_tolerance=tolerance
        )
        client = TestClient(create_app(settings))
        client.__enter__()
        with client.app.state.services.database.session() as session:  # type: ignore[attr-defined]
            crud.create_user(session, *USER, scopes=["predict"])
        clients.append(client)
        worker = Worker(settings, client.app.state.services.database)  # type: ignore[attr-defined]
        thread = threading.Thread(target=worker.run, name="worker")
        thread.start()
        workers.append((worker, thread))
        return client

    yield make
    for worker, thread in workers:
        worker.shutdown()
        thread.join(timeout=30)
    for client in clients:
        client.__exit__(None, None, None)


def wait_for(client: TestClient, job_id: str, headers: dict[str, str], timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/train/{job_id}", headers=headers).json()
        if job["status"] in ("succeeded", "failed"):
            return job
        time.sleep(0.2)
    raise TimeoutError(f"job {job_id} still {job['status']}")


@pytest.mark.slow
def test_a_weaker_model_is_rejected_and_a_good_upload_is_promoted(
    trainer: Callable[..., TestClient], settings: Settings, tmp_path: Path, mlflow_uri: str
) -> None:
    # The champion (v1) saw every row; a challenger passes within 0.1 of it on the job's test split.
    client = trainer({"decision_tree": {"max_depth": 1}}, tolerance=0.1)
    admin = bearer(get_token(client, *ADMIN))
    user = bearer(get_token(client, *USER))

    # A one-split tree cannot tell two of the three species apart: far below the champion.
    started = client.post("/train", headers=admin)  # no file: the project's data, as params name it
    assert started.status_code == 202, started.text
    assert started.json()["data"] == "project data"
    job = wait_for(client, started.json()["id"], admin)
    assert job["status"] == "succeeded", job
    assert job["data"] == "project data (sklearn:iris)"  # as the job read params.yaml
    assert job["promoted"] is False and job["gate"]["passed"] is False
    assert job["gate"]["champion_version"] == "v1"
    assert job["gate"]["champion"] > job["gate"]["challenger"] + 0.1
    assert "rejected challenger" in job["message"] and "fails the gate" in job["message"]
    listing = client.get("/models", headers=user).json()
    assert listing["serving"] == "v1"
    rejected = next(v for v in listing["versions"] if v["version"] == job["version"])
    assert rejected["status"] == "rejected" and rejected["serving"] is False

    # Each job reads the params file afresh: now a model worth serving, trained on an upload.
    write_params(tmp_path, {"logistic_regression": {"max_iter": 500}})
    started = client.post("/train", files={"file": ("flowers.csv", iris_csv(), "text/csv")}, headers=admin)
    assert started.status_code == 202, started.text
    assert started.json()["status"] in ("queued", "running")
    assert started.json()["data"] == "upload flowers.csv"
    assert started.headers["location"] == f"/train/{started.json()['id']}"
    job = wait_for(client, started.json()["id"], admin)
    assert job["status"] == "succeeded", job
    assert job["promoted"] is True and job["gate"]["passed"] is True
    assert job["metric"] == "f1_macro" and job["metrics"]["accuracy"] > 0.8
    assert job["mlflow"]["status"] == "updated", job["mlflow"]
    version = job["version"]

    assert (
        client.post("/predict", json={"instances": [IRIS_ROW]}, headers=user).json()["model_version"]
        == version
    )
    listing = client.get("/models", headers=user).json()
    assert listing["serving"] == version
    new = listing["versions"][0]
    assert new["version"] == version and new["origin"] == "retrain" and new["job_id"] == job["id"]
    assert new["mlflow_run_id"] and new["registered_version"]
    from mlflow import MlflowClient

    mlflow = MlflowClient(tracking_uri=mlflow_uri)
    assert (
        str(mlflow.get_model_version_by_alias("predictor", "champion").version) == new["registered_version"]
    )
    # The job's scratch data is gone; the model lives in the store.
    assert not (settings.jobs_dir / job["id"]).exists()
    assert ModelStore.from_url(settings.model_store_url, settings.model_cache_dir).exists(version)


@pytest.mark.slow
def test_a_bad_csv_fails_the_job_with_prepares_message_and_a_second_job_waits_its_turn(
    trainer: Callable[..., TestClient],
) -> None:
    client = trainer({"logistic_regression": {}}, tolerance=0.0)
    admin = bearer(get_token(client, *ADMIN))
    bad = iris_csv().replace(b"5.1,3.5,1.4,0.2", b"5.1,n/a?,1.4,0.2", 1)
    started = client.post("/train", files={"file": ("flowers.csv", bad, "text/csv")}, headers=admin)
    assert started.status_code == 202

    # One job at a time: the first is still starting its process.
    second = client.post("/train", headers=admin)
    assert second.status_code == 409
    assert second.json() == {"detail": "a retraining job is already running: wait for it to finish"}

    job = wait_for(client, started.json()["id"], admin)
    assert job["status"] == "failed"
    assert job["reason"] == "flowers.csv: column 'sepal_width' is numeric but line 2 has 'n/a?'"
    assert client.get("/models", headers=admin).json()["serving"] == "v1"


def test_train_needs_an_admin_and_known_jobs(
    client: TestClient, admin_headers: dict[str, str], user_headers: dict[str, str]
) -> None:
    assert client.post("/train", headers=user_headers).status_code == 403
    assert client.post("/train").status_code == 401
    unknown = client.get("/train/" + "0" * 32, headers=admin_headers)
    assert unknown.status_code == 404
    assert client.get("/train/../../etc", headers=admin_headers).status_code == 404
    wrong = client.post("/train", content=b"a,b\n1,2\n", headers=admin_headers | {"Content-Type": "text/csv"})
    assert wrong.status_code == 415
    assert "multipart/form-data" in wrong.json()["detail"]


def test_a_job_whose_worker_stopped_renewing_its_lease_is_failed_not_running_forever(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    stale = "a" * 32
    record = {
        "id": stale,
        "status": "running",
        "user": "admin",
        "data": "x",
        "created_at": "2026-11-23T00:00:00+00:00",
    }
    with client.app.state.services.database.session() as session:  # type: ignore[attr-defined]
        session.add(
            TrainingJobRow(
                id=stale,
                status="running",
                active=1,
                created_at=0,
                lease_until=time.time() - 1,
                worker="gone:1",
                record=json.dumps(record),
            )
        )
        session.commit()
    answer = client.get(f"/train/{stale}", headers=admin_headers).json()
    assert answer["status"] == "failed" and answer["reason"] == LEASE_EXPIRED
    assert answer["finished_at"]
    # ... and its slot is free again: the next job is accepted.
    assert client.post("/train", headers=admin_headers).status_code == 202
