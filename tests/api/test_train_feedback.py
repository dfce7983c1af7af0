"""POST /train with include_feedback: the job trains on its data plus the labelled prediction log,
checked by prepare as any data, and says how many rows came from it."""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sklearn.datasets import load_iris

from app.adapters.model_store import ModelStore
from app.core.artifacts import REFERENCE_PROFILE_FILE, ReferenceProfile
from app.core.config import Settings
from app.db.prediction_log import PredictionLogStore, Truth
from app.main import create_app
from app.worker import Worker
from tests.api.test_train import iris_csv, wait_for
from tests.support.logs import captured_log
from tests.support.models import IRIS_FEATURES
from tests.support.pipeline import mlflow_store, write_iris_params
from tests.support.tokens import ADMIN, bearer, get_token

TEST_SIZE = 0.3  # write_iris_params'
IRIS_ROWS = 150


@pytest.fixture
def trainer(
    settings_factory: Callable[..., Settings], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[TestClient, Settings]]:
    """An API and a worker whose jobs train the smallest iris model there is."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store(tmp_path))
    settings = settings_factory(train_params=write_iris_params(tmp_path / "params.yaml"))
    with TestClient(create_app(settings)) as client:
        worker = Worker(settings, client.app.state.services.database)  # type: ignore[attr-defined]
        thread = threading.Thread(target=worker.run, name="worker")
        thread.start()
        try:
            yield client, settings
        finally:
            worker.shutdown()
            thread.join(timeout=30)


def log_predictions(client: TestClient, rows: list[tuple[dict[str, object], str | None]]) -> None:
    """Logged predictions of these inputs, each labelled with its truth (None: not labelled)."""
    store = PredictionLogStore(client.app.state.services.database.session)  # type: ignore[attr-defined]
    at = time.time()
    store.insert(
        [
            {
                "prediction_id": f"p-{i}",
                "created_at": at - i,
                "model_version": "v1",
                "username": "alice",
                "features": json.dumps(features),
                "answer": json.dumps({"label": "setosa"}),
                "predicted_label": "setosa",
            }
            for i, (features, _) in enumerate(rows)
        ]
    )
    store.label([Truth(f"p-{i}", label=t) for i, (_, t) in enumerate(rows) if t is not None], at=at)


def iris_rows(count: int) -> list[tuple[dict[str, object], str | None]]:
    """Iris rows as serving logs them, with their true species: every third flower, so all three."""
    iris = load_iris()
    picked = range(0, 3 * count, 3)
    return [
        (dict(zip(IRIS_FEATURES, iris.data[i].tolist(), strict=True)), str(iris.target_names[iris.target[i]]))
        for i in picked
    ]


def train_rows(rows: int) -> int:
    return rows - math.ceil(TEST_SIZE * rows)  # what train_test_split keeps for training


@pytest.mark.slow
def test_a_job_with_feedback_trains_on_the_labelled_predictions_too(
    trainer: tuple[TestClient, Settings],
) -> None:
    client, settings = trainer
    admin = bearer(get_token(client, *ADMIN))
    renamed = {"sepal_len": 5.0, "sepal_width": 3.4, "petal_length": 1.5, "petal_width": 0.2}
    # Twelve labelled rows, one whose feature was renamed since, one never labelled.
    log_predictions(client, [*iris_rows(12), (renamed, "setosa"), (dict(iris_rows(1)[0][0]), None)])

    with captured_log() as log:
        started = client.post("/train", json={"include_feedback": True}, headers=admin)
        assert started.status_code == 202, started.text
        assert started.json()["include_feedback"] is True
        job = wait_for(client, started.json()["id"], admin)
    assert job["status"] == "succeeded", job
    assert job["data"] == "project data (sklearn:iris)"
    assert (job["feedback_rows"], job["feedback_refused"]) == (12, 1)
    assert job["message"].endswith(
        "; 1 labelled prediction left out: feature 'sepal_len' is not a column of sklearn:iris"
    )
    # The new version was fitted on the 150 flowers and the twelve logged ones.
    folder = ModelStore.from_url(settings.model_store_url, settings.model_cache_dir).fetch(job["version"])
    profile = ReferenceProfile.model_validate_json((folder / REFERENCE_PROFILE_FILE).read_text())
    assert profile.rows == train_rows(IRIS_ROWS + 12)
    finished = [json.loads(line) for line in log.getvalue().splitlines() if "retraining job" in line]
    assert any(line.get("feedback_rows") == 12 for line in finished), finished


@pytest.mark.slow
def test_an_upload_with_feedback_fails_on_a_bad_logged_value_naming_its_line(
    trainer: tuple[TestClient, Settings],
) -> None:
    client, _ = trainer
    admin = bearer(get_token(client, *ADMIN))
    (good, species), (bad, _) = iris_rows(2)
    log_predictions(client, [(good, species), ({**bad, "sepal_width": "wide"}, "setosa")])

    started = client.post(
        "/train",
        files={"file": ("flowers.csv", iris_csv(), "text/csv")},
        data={"include_feedback": "true"},
        headers=admin,
    )
    assert started.status_code == 202, started.text
    assert started.json()["data"] == "upload flowers.csv" and started.json()["include_feedback"] is True
    job = wait_for(client, started.json()["id"], admin)
    assert job["status"] == "failed", job
    # Newest first: line 2 is the good row, line 3 the one logged a second earlier.
    assert job["reason"] == (
        "flowers.csv with 2 labelled predictions (lines 2-3): column 'sepal_width' is numeric "
        "but line 3 has 'wide'"
    )
    assert client.get("/models", headers=admin).json()["serving"] == "v1"


def test_include_feedback_is_a_boolean_and_unknown_options_are_refused(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    for body in ({"include_feedback": "yes"}, {"include_feedback": 1}, {"include_feedback": None}):
        refused = client.post("/train", json=body, headers=admin_headers)
        assert refused.status_code == 422, body
        assert refused.json()["detail"] == [
            {
                "loc": ["body", "include_feedback"],
                "msg": "Input should be a valid boolean",
                "type": "bool_type",
            }
        ]
    unknown = client.post("/train", json={"include_feedback": True, "feedback": True}, headers=admin_headers)
    assert unknown.status_code == 422
    assert unknown.json()["detail"][0]["loc"] == ["body", "feedback"]
    assert unknown.json()["detail"][0]["type"] == "extra_forbidden"
    for body in ([True], "true"):
        assert client.post("/train", json=body, headers=admin_headers).status_code == 422
    malformed = client.post(
        "/train", content=b"{include_feedback", headers=admin_headers | {"Content-Type": "application/json"}
    )
    assert malformed.status_code == 422 and malformed.json()["detail"][0]["type"] == "json_invalid"
    # A multipart form without a file: the project's data, with the options as fields.
    form = client.post("/train", files={"include_feedback": (None, "maybe")}, headers=admin_headers)
    assert form.status_code == 422
    assert form.json()["detail"][0]["loc"] == ["body", "include_feedback"]
    misspelt = client.post("/train", files={"include_feedbak": (None, "true")}, headers=admin_headers)
    assert misspelt.status_code == 422
    assert misspelt.json() == {
        "detail": "unknown form field: the form takes 'file' and 'include_feedback' only"
    }
    text = client.post("/train", content=b"yes", headers=admin_headers | {"Content-Type": "text/plain"})
    assert text.status_code == 415

    # No worker here: the job stays queued, and says what it will train on.
    started = client.post("/train", json={"include_feedback": True}, headers=admin_headers)
    assert started.status_code == 202, started.text
    job = client.get(f"/train/{started.json()['id']}", headers=admin_headers).json()
    assert job["include_feedback"] is True and job["data"] == "project data"
    assert "feedback_rows" not in job  # set once the job ran


def test_an_empty_json_body_is_the_defaults(client: TestClient, admin_headers: dict[str, str]) -> None:
    started = client.post("/train", json={}, headers=admin_headers)
    assert started.status_code == 202, started.text
    assert started.json()["include_feedback"] is False
