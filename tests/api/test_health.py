from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from app.main import create_app
from tests.support.models import IRIS_ROW


def test_health_needs_no_token_and_names_the_model_version(client: TestClient) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "model_version": "v1"}


def test_ready_when_model_loaded_and_database_answers(client: TestClient) -> None:
    response = client.get("/ready")
    assert response.status_code == 200
    assert response.json()["model_version"] == "v1"


def test_not_ready_when_the_database_is_down(client: TestClient, database_url: str, tmp_path: Path) -> None:
    database = client.app.state.services.database  # type: ignore[attr-defined]
    healthy = database.engine
    if make_url(database_url).get_backend_name() == "sqlite":
        unreachable = f"sqlite:///{tmp_path}/no-such-dir/users.db"
    else:
        unreachable = make_url(database_url).set(database="no_such_database_here").render_as_string(False)
    database.engine = create_engine(unreachable)
    try:
        response = client.get("/ready")
    finally:
        database.engine.dispose()
        database.engine = healthy
    assert response.status_code == 503
    assert response.json()["detail"].startswith("database unavailable")
    assert client.get("/ready").status_code == 200


def test_without_a_model_the_service_is_up_but_not_ready(settings_factory, tmp_path: Path) -> None:
    settings = settings_factory(model_dir=tmp_path / "empty")
    with TestClient(create_app(settings)) as client:
        assert client.get("/health").json() == {"status": "ok", "model_version": None}
        ready = client.get("/ready")
        assert ready.status_code == 503
        assert "model not loaded" in ready.json()["detail"]
        token = client.post("/token", data={"username": "admin", "password": "admin-password-1"})
        headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
        response = client.post("/predict", json={"instances": [IRIS_ROW]}, headers=headers)
        assert response.status_code == 503
        assert "model not loaded" in response.json()["detail"]
