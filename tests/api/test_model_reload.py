from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.core.artifacts import METADATA_FILE, MODEL_FILE, ONNX_FILE, sha256_of
from tests.support.models import IRIS_ROW, write_model

BODY = {"instances": [IRIS_ROW]}
Headers = dict[str, str]


def edit_metadata(model_dir: Path, **changes: object) -> dict:
    """Rewrite model.json with some fields changed, as someone other than the pipeline would."""
    metadata = json.loads((model_dir / METADATA_FILE).read_text()) | changes
    (model_dir / METADATA_FILE).write_text(json.dumps(metadata))
    return metadata


def assert_reload_refused(client: TestClient, admin: Headers, user: Headers, *fragments: str) -> None:
    """409 naming what is wrong, and the model served before (v1) goes on answering."""
    response = client.post("/model/reload", headers=admin)
    assert response.status_code == 409
    for fragment in fragments:
        assert fragment in response.json()["detail"]
    predicted = client.post("/predict", json=BODY, headers=user)
    assert predicted.status_code == 200 and predicted.json()["model_version"] == "v1"


def test_model_info_has_metadata_metrics_schema_and_candidates(
    client: TestClient, user_headers: dict[str, str]
) -> None:
    info = client.get("/model-info", headers=user_headers).json()
    assert info["version"] == "v1"
    assert info["metrics"] == {"score": 0.9}
    assert [f["name"] for f in info["features"]][:2] == ["sepal_length", "sepal_width"]
    assert info["classes"] == ["setosa", "versicolor", "virginica"]
    assert info["candidates"][0]["name"] == "logistic_regression"
    assert "loaded_at" in info
    assert info["served_by"] == "onnx"
    assert info["onnx"]["path"] == "model.onnx"


def test_reload_swaps_in_a_new_model(
    client: TestClient, admin_headers: dict[str, str], user_headers: dict[str, str], model_dir: Path
) -> None:
    write_model(model_dir, "iris", version="v2")
    response = client.post("/model/reload", headers=admin_headers)
    assert response.status_code == 200
    assert response.json() == {"previous_version": "v1", "model_version": "v2"}
    assert client.post("/predict", json=BODY, headers=user_headers).json()["model_version"] == "v2"
    assert client.get("/health").json()["model_version"] == "v2"


def test_reload_refused_on_checksum_mismatch_while_predictions_keep_working(
    client: TestClient, admin_headers: dict[str, str], user_headers: dict[str, str], model_dir: Path
) -> None:
    # Someone replaces the pickle without the pipeline writing its checksum: never unpickle it.
    (model_dir / MODEL_FILE).write_bytes(b"cos\nsystem\n(S'echo pwned'\ntR.")
    assert_reload_refused(client, admin_headers, user_headers, "does not match")
    assert client.get("/ready").status_code == 200


def test_reload_refuses_a_broken_pickle_even_with_a_matching_checksum(
    client: TestClient, admin_headers: dict[str, str], user_headers: dict[str, str], model_dir: Path
) -> None:
    # A folder without an ONNX file: the pickle is what would serve.
    write_model(model_dir, "iris", version="v-broken", onnx=False)
    (model_dir / MODEL_FILE).write_bytes(b"not a pickle at all")
    sha = sha256_of(model_dir / MODEL_FILE)
    candidate = json.loads((model_dir / METADATA_FILE).read_text())["candidates"][0] | {"sha256": sha}
    edit_metadata(model_dir, sha256=sha, candidates=[candidate])
    assert_reload_refused(client, admin_headers, user_headers, "cannot be unpickled")


def test_reload_refuses_a_tampered_onnx_file_while_the_old_model_serves(
    client: TestClient, admin_headers: dict[str, str], user_headers: dict[str, str], model_dir: Path
) -> None:
    write_model(model_dir, "iris", version="v2")
    (model_dir / ONNX_FILE).write_bytes((model_dir / ONNX_FILE).read_bytes() + b"\0")
    assert_reload_refused(client, admin_headers, user_headers, "model.onnx", "does not match")


def test_reload_checks_model_joblib_even_when_onnx_serves(
    client: TestClient, admin_headers: dict[str, str], user_headers: dict[str, str], model_dir: Path
) -> None:
    write_model(model_dir, "iris", version="v2")
    (model_dir / MODEL_FILE).write_bytes(b"cos\nsystem\n(S'echo pwned'\ntR.")
    assert_reload_refused(client, admin_headers, user_headers, "model.joblib", "does not match")


def test_an_unloadable_onnx_file_with_a_matching_checksum_falls_back_to_the_pipeline(
    client: TestClient, admin_headers: dict[str, str], user_headers: dict[str, str], model_dir: Path
) -> None:
    # Written by train, checksum recorded, yet not loadable here (another numpy, say): the
    # pipeline, verified by its own checksum, serves instead.
    write_model(model_dir, "iris", version="v2")
    (model_dir / ONNX_FILE).write_bytes(b"not an onnx graph")
    onnx = {"path": ONNX_FILE, "sha256": sha256_of(model_dir / ONNX_FILE)}
    candidate = json.loads((model_dir / METADATA_FILE).read_text())["candidates"][0] | {"onnx": onnx}
    edit_metadata(model_dir, onnx=onnx, candidates=[candidate])
    assert client.post("/model/reload", headers=admin_headers).status_code == 200
    assert client.get("/model-info", headers=user_headers).json()["served_by"] == "pipeline"
    predicted = client.post("/predict", json=BODY, headers=user_headers)
    assert predicted.json()["predictions"][0]["label"] == "setosa"


@pytest.mark.parametrize("onnx", [True, False])
def test_reload_refuses_a_model_whose_classes_are_not_model_jsons(
    client: TestClient,
    admin_headers: dict[str, str],
    user_headers: dict[str, str],
    model_dir: Path,
    onnx: bool,
) -> None:
    # Probabilities would be labelled with the wrong classes: refused, ONNX or not.
    metadata = write_model(model_dir, "iris", version="v2", onnx=onnx)
    edit_metadata(model_dir, classes=metadata.classes[::-1])
    assert_reload_refused(client, admin_headers, user_headers, "differ from model.json")


def test_reload_refuses_a_missing_model(
    client: TestClient, admin_headers: dict[str, str], model_dir: Path
) -> None:
    (model_dir / METADATA_FILE).unlink()
    response = client.post("/model/reload", headers=admin_headers)
    assert response.status_code == 409
    assert "not found" in response.json()["detail"]


def test_requests_in_flight_during_reloads_all_succeed(
    client: TestClient, admin_headers: dict[str, str], user_headers: dict[str, str], model_dir: Path
) -> None:
    write_model(model_dir, "iris", version="v2")
    statuses: list[int] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            statuses.append(client.post("/predict", json=BODY, headers=user_headers).status_code)

    workers = [threading.Thread(target=hammer) for _ in range(4)]
    for worker in workers:
        worker.start()
    try:
        for _ in range(5):
            assert client.post("/model/reload", headers=admin_headers).status_code == 200
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    assert statuses and set(statuses) == {200}
