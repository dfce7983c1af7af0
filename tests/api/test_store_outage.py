"""A replica whose model store stops answering keeps serving what it has, and says so."""

from __future__ import annotations

from collections.abc import Callable

from fastapi.testclient import TestClient

from app.core.config import Settings
from app.main import create_app
from tests.support.models import IRIS_ROW
from tests.support.s3 import moto_s3
from tests.support.tokens import ADMIN, bearer, get_token


def test_a_replica_without_its_store_serves_on_and_reports_it(
    settings_factory: Callable[..., Settings],
) -> None:
    with moto_s3("outage") as s3:
        settings = settings_factory(model_store_url=s3.url("versions"), watch_seconds=3600)
        client = TestClient(create_app(settings))
        client.__enter__()
    try:  # the S3 server is gone from here on
        headers = bearer(get_token(client, *ADMIN))
        serving = client.app.state.services.serving  # type: ignore[attr-defined]
        assert serving.current.version == "v1"  # published to S3 and served at start-up
        serving.sync()  # what the watch does every WATCH_SECONDS

        ready = client.get("/ready")
        assert ready.status_code == 200
        assert ready.json()["model_store"].startswith("unreachable: ")
        assert "s3://outage/versions" in ready.json()["model_store"]
        metrics = client.get("/metrics").text
        assert "predictor_model_store_up 0.0" in metrics
        answer = client.post("/predict", json={"instances": [IRIS_ROW]}, headers=headers)
        assert answer.status_code == 200 and answer.json()["model_version"] == "v1"

        listing = client.get("/models", headers=headers)
        assert listing.status_code == 503 and listing.json()["detail"].startswith("model store unavailable: ")
        rollback = client.post("/model/rollback", json={"version": "v0"}, headers=headers)
        assert rollback.status_code == 503 and "model store unavailable" in rollback.json()["detail"]
        assert client.post("/predict", json={"instances": [IRIS_ROW]}, headers=headers).status_code == 200
    finally:
        client.__exit__(None, None, None)
