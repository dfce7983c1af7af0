"""Candidates compared, versions listed, rollbacks: checksums first, atomic swaps, restarts remember."""

from __future__ import annotations

import json
import socket
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.adapters.model_store import ModelStore
from app.core.artifacts import METADATA_FILE, MODEL_FILE
from app.core.config import Settings
from app.core.versions import VersionRecord, now
from app.main import create_app
from tests.support.answers import without_ids
from tests.support.models import IRIS_ROW, add_candidate, write_model
from tests.support.servers import free_port, wait_until
from tests.support.tokens import ADMIN, bearer, get_token

VIRGINICA = {"sepal_length": 7.2, "sepal_width": 3.0, "petal_length": 6.1, "petal_width": 2.3}
BODY = {"instances": [IRIS_ROW, VIRGINICA]}


def store(settings: Settings) -> ModelStore:
    return ModelStore.from_url(settings.model_store_url, settings.model_cache_dir)


@pytest.fixture
def two_versions(
    client: TestClient, admin_headers: dict[str, str], model_dir: Path, settings: Settings
) -> TestClient:
    """v1 recorded at start-up, then v2 written by the pipeline and reloaded: v2 serves."""
    write_model(model_dir, "iris", version="v2")
    assert client.post("/model/reload", headers=admin_headers).status_code == 200
    return client


def test_compare_answers_every_candidate_beside_the_champion(
    settings_factory: Callable[..., Settings], model_dir: Path, tmp_path: Path
) -> None:
    add_candidate(model_dir, "decision_tree", 0.91)
    add_candidate(model_dir, "knn", 0.95)
    with TestClient(create_app(settings_factory())) as client:
        headers = bearer(get_token(client, *ADMIN, scope="predict"))
        plain = client.post("/predict", json=BODY, headers=headers).json()
        assert "candidates" not in plain
        answer = client.post("/predict?compare=true", json=BODY, headers=headers)
        assert answer.status_code == 200, answer.text
        compared = answer.json()
        info = client.get("/model-info", headers=headers).json()

    assert compared["model_version"] == "v1"
    assert without_ids(compared["predictions"]) == without_ids(plain["predictions"])
    by_name = {c["name"]: c for c in compared["candidates"]}
    assert list(by_name) == ["logistic_regression", "decision_tree", "knn"]
    assert by_name["logistic_regression"]["champion"] is True
    assert by_name["logistic_regression"]["predictions"] == compared["predictions"]
    assert by_name["knn"] | {"predictions": None} == {
        "name": "knn",
        "metric": "f1_macro",
        "score": 0.95,
        "champion": False,
        "predictions": None,
    }
    for candidate in compared["candidates"]:
        labels = [p["label"] for p in candidate["predictions"]]
        assert labels == ["setosa", "virginica"], candidate["name"]
        assert sum(candidate["predictions"][0]["probabilities"].values()) == pytest.approx(1, abs=1e-4)
    assert [c["name"] for c in info["candidates"]] == ["logistic_regression", "decision_tree", "knn"]


def test_a_bad_candidate_at_start_up_stops_compare_only(
    settings_factory: Callable[..., Settings], model_dir: Path
) -> None:
    add_candidate(model_dir, "knn", 0.95)
    (model_dir / "candidates" / "knn.joblib").write_bytes(b"tampered")
    with TestClient(create_app(settings_factory())) as client:
        headers = bearer(get_token(client, *ADMIN, scope="predict"))
        assert client.post("/predict", json=BODY, headers=headers).status_code == 200
        refused = client.post("/predict?compare=true", json=BODY, headers=headers)
    assert refused.status_code == 503
    assert refused.json()["detail"].startswith(
        "candidates unavailable: candidate knn: candidates/knn.joblib sha256"
    )


def test_a_candidate_with_other_classes_stops_compare_only(
    settings_factory: Callable[..., Settings], model_dir: Path
) -> None:
    add_candidate(model_dir, "decision_tree", 0.9, labels_prefix="other-")
    with TestClient(create_app(settings_factory())) as client:
        headers = bearer(get_token(client, *ADMIN, scope="predict"))
        assert client.post("/predict", json=BODY, headers=headers).status_code == 200
        refused = client.post("/predict?compare=true", json=BODY, headers=headers)
    assert refused.status_code == 503
    assert "candidate decision_tree: its classes" in refused.json()["detail"]


def test_compare_validates_rows_like_predict(client: TestClient, user_headers: dict[str, str]) -> None:
    bad = {"instances": [{**IRIS_ROW, "sepal_length": "wide"}]}
    answer = client.post("/predict?compare=true", json=bad, headers=user_headers)
    assert answer.status_code == 422
    assert answer.json()["detail"][0]["field"] == "sepal_length"
    assert client.post("/predict?compare=maybe", json=BODY, headers=user_headers).status_code == 422


def test_a_candidate_with_a_bad_checksum_is_refused_with_its_champion(
    client: TestClient, admin_headers: dict[str, str], model_dir: Path, user_headers: dict[str, str]
) -> None:
    write_model(model_dir, "iris", version="v2")
    add_candidate(model_dir, "knn", 0.95)
    (model_dir / "candidates" / "knn.joblib").write_bytes(b"cos\nsystem\n(S'echo pwned'\ntR.")
    refused = client.post("/model/reload", headers=admin_headers)
    assert refused.status_code == 409
    assert "candidate knn" in refused.json()["detail"] and "does not match" in refused.json()["detail"]
    assert client.post("/predict", json=BODY, headers=user_headers).json()["model_version"] == "v1"


def test_models_lists_versions_with_metrics_and_the_serving_one(
    two_versions: TestClient, user_headers: dict[str, str], settings: Settings
) -> None:
    answer = two_versions.get("/models", headers=user_headers)
    assert answer.status_code == 200
    listing = answer.json()
    assert listing["serving"] == "v2"
    assert [(v["version"], v["serving"], v["status"]) for v in listing["versions"]] == [
        ("v2", True, "accepted"),
        ("v1", False, "accepted"),
    ]
    assert listing["versions"][1]["metrics"] == {"score": 0.9}
    assert listing["versions"][1]["origin"] == "pipeline"
    assert two_versions.app.state.services.serving.pointer.get().version == "v2"  # type: ignore[attr-defined]
    assert two_versions.get("/models").status_code == 401


def test_rollback_serves_an_older_version_and_a_restart_keeps_it(
    two_versions: TestClient,
    admin_headers: dict[str, str],
    user_headers: dict[str, str],
    settings: Settings,
    model_dir: Path,
) -> None:
    answer = two_versions.post("/model/rollback", json={"version": "v1"}, headers=admin_headers)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["previous_version"] == "v2" and body["model_version"] == "v1"
    # The test model was never registered in MLflow: nothing to move, and it says so.
    assert body["mlflow"]["status"] == "skipped"
    assert two_versions.post("/predict", json=BODY, headers=user_headers).json()["model_version"] == "v1"
    assert two_versions.get("/health").json()["model_version"] == "v1"
    assert two_versions.get("/models", headers=user_headers).json()["serving"] == "v1"

    # models/ still holds v2, already recorded: a restart serves what the rollback chose...
    with TestClient(create_app(settings)) as restarted:
        assert restarted.get("/health").json()["model_version"] == "v1"
    # ...until the pipeline writes a new model there, which the next start serves.
    write_model(model_dir, "iris", version="v3")
    with TestClient(create_app(settings)) as restarted:
        assert restarted.get("/health").json()["model_version"] == "v3"


def test_rollback_refusals(
    two_versions: TestClient,
    admin_headers: dict[str, str],
    user_headers: dict[str, str],
    settings: Settings,
) -> None:
    def rollback(payload: object, headers: dict[str, str] = admin_headers) -> tuple[int, object]:
        answer = two_versions.post("/model/rollback", json=payload, headers=headers)
        return answer.status_code, answer.json()["detail"]

    assert rollback({"version": "2020-01-01T00-00-00"}) == (
        404,
        "unknown model version '2020-01-01T00-00-00'",
    )
    assert rollback({"version": "../../etc"})[0] == 404
    assert rollback({})[0] == 422
    assert rollback({"version": "v1", "force": True})[0] == 422
    assert rollback({"version": "v1"}, user_headers)[0] == 403

    # A stored file changed behind the store's back: never unpickled, v2 keeps serving.
    (Path(settings.model_store_url) / "v1" / MODEL_FILE).write_bytes(b"cos\nsystem\n(S'echo pwned'\ntR.")
    status, detail = rollback({"version": "v1"})
    assert status == 409 and "does not match" in str(detail)
    assert two_versions.post("/predict", json=BODY, headers=user_headers).json()["model_version"] == "v2"
    assert two_versions.get("/models", headers=user_headers).json()["serving"] == "v2"


def test_no_request_fails_while_versions_swap_under_load(
    two_versions: TestClient, admin_headers: dict[str, str], user_headers: dict[str, str]
) -> None:
    statuses: Counter[int] = Counter()
    versions: Counter[str] = Counter()
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            answer = two_versions.post("/predict?compare=true", json=BODY, headers=user_headers)
            statuses[answer.status_code] += 1
            if answer.status_code == 200:
                versions[answer.json()["model_version"]] += 1

    workers = [threading.Thread(target=hammer) for _ in range(4)]
    for worker in workers:
        worker.start()
    try:
        for target in ["v1", "v2"] * 4:
            answer = two_versions.post("/model/rollback", json={"version": target}, headers=admin_headers)
            assert answer.status_code == 200, answer.text
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    assert set(statuses) == {200}, statuses
    assert sum(statuses.values()) > 20
    assert set(versions) == {"v1", "v2"}


def publish_registered(settings: Settings, folder: Path, version: str, registered_version: str) -> None:
    """A version as a retraining job stores it: registered in MLflow's registry."""
    write_model(folder, "iris", version=version)
    metadata = json.loads((folder / METADATA_FILE).read_text())
    metadata |= {"registered_model": "predictor", "registered_version": registered_version}
    (folder / METADATA_FILE).write_text(json.dumps(metadata))
    store(settings).publish(folder, VersionRecord(origin="retrain", recorded_at=now()))


def alias_of(client: TestClient, headers: dict[str, str], version: str) -> dict | None:
    listing = client.get("/models", headers=headers).json()
    return next(v for v in listing["versions"] if v["version"] == version).get("mlflow_alias")


def test_rollback_answers_before_mlflow_and_models_shows_the_alias_failing(
    client: TestClient,
    admin_headers: dict[str, str],
    settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    publish_registered(settings, tmp_path / "registered", "v3", "7")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")

    answer = client.post("/model/rollback", json={"version": "v3"}, headers=admin_headers)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model_version"] == "v3"
    # Served at once; MLflow's alias is moved after the answer.
    assert body["mlflow"]["status"] == "pending" and body["mlflow"]["registered_version"] == "7"
    wait_until(
        lambda: (alias_of(client, admin_headers, "v3") or {}).get("status") == "failed", 60, "alias outcome"
    )
    outcome = alias_of(client, admin_headers, "v3")
    assert outcome is not None and outcome["registered_version"] == "7" and outcome["reason"]


def test_a_rollback_does_not_wait_for_a_hanging_mlflow_and_the_last_swap_wins(
    client: TestClient,
    admin_headers: dict[str, str],
    settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    publish_registered(settings, tmp_path / "registered", "v3", "7")
    # A tracking server that accepts and never answers: the alias move waits out its timeout.
    with socket.create_server(("127.0.0.1", 0)) as hanging:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{hanging.getsockname()[1]}")
        first = client.post("/model/rollback", json={"version": "v3"}, headers=admin_headers)
        assert first.status_code == 200 and first.json()["mlflow"]["status"] == "pending"
        # Answered while the move still hangs: GET /models says so on every replica.
        assert alias_of(client, admin_headers, "v3") == first.json()["mlflow"]

        # Back to the unregistered v1 before MLflow answered: its outcome is written, v3's never is.
        second = client.post("/model/rollback", json={"version": "v1"}, headers=admin_headers)
        assert second.status_code == 200 and second.json()["mlflow"]["status"] == "skipped"
        services = client.app.state.services  # type: ignore[attr-defined]
        services.champion_alias.close()  # waits for the hanging move to give up
    assert alias_of(client, admin_headers, "v1") == second.json()["mlflow"]
    assert alias_of(client, admin_headers, "v3") is None
