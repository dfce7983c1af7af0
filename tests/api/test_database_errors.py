"""A database that fails answers 503 {"detail": "database unavailable: ..."}, quickly, never a 500.

PostgreSQL is reached through a TCP proxy the tests cut: nothing listening any more, or a listener
that accepts and never answers (the connect timeout bounds that one). SQLite: a file gone, a lock.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from sqlalchemy.engine import make_url

from app.core.config import Settings
from app.db import crud
from app.main import create_app
from tests.support.logs import captured_log
from tests.support.models import IRIS_ROW
from tests.support.proxy import CuttableProxy
from tests.support.tokens import ADMIN, USER, bearer, get_token

# Far above the connect timeout (3 s), far below a hang.
ANSWER_WITHIN_SECONDS = 10


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """SQLite in a folder of its own, so a test can take the folder away."""
    return f"sqlite:///{tmp_path}/db/users.db"


def errors_counted(route: str) -> float:
    return REGISTRY.get_sample_value("predictor_database_errors_total", {"route": route}) or 0.0


@pytest.fixture
def read_log() -> Iterator[Callable[[], list[dict]]]:
    """The service's JSON log lines so far, parsed."""
    with captured_log() as stream:
        yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]


def login(client: TestClient) -> tuple[float, httpx.Response]:
    started = time.monotonic()
    response = client.post("/token", data={"username": ADMIN[0], "password": ADMIN[1]})
    return time.monotonic() - started, response


def assert_unavailable(response: httpx.Response, elapsed: float) -> None:
    assert response.status_code == 503, response.text
    assert response.json() == {"detail": "database unavailable: OperationalError"}
    assert elapsed < ANSWER_WITHIN_SECONDS
    assert "Traceback" not in response.text and ADMIN[1] not in response.text
    assert response.headers["X-Request-ID"]


def test_sqlite_gone_answers_503_then_recovers(
    settings_factory: Callable[..., Settings], tmp_path: Path, read_log: Callable[[], list[dict]]
) -> None:
    with TestClient(create_app(settings_factory())) as client:
        headers = bearer(get_token(client, *ADMIN))
        folder, away = tmp_path / "db", tmp_path / "db-away"
        database = client.app.state.services.database  # type: ignore[attr-defined]
        before = {route: errors_counted(route) for route in ("/token", "/users")}
        folder.rename(away)
        database.engine.dispose()  # the pool's open files would still work: new connections do not
        try:
            elapsed, response = login(client)
            assert_unavailable(response, elapsed)
            users = client.get("/users", headers=headers)  # the admin dependency reads the database
            assert users.status_code == 503 and users.json()["detail"].startswith("database unavailable")
            assert client.get("/ready").status_code == 503
        finally:
            away.rename(folder)
        assert errors_counted("/token") == before["/token"] + 1
        assert errors_counted("/users") == before["/users"] + 1
        lines = read_log()
        logged = [e for e in lines if e["msg"] == "database unavailable"]
        assert [(e["level"], e["route"], e["error"]) for e in logged] == [
            ("error", "/token", "OperationalError"),
            ("error", "/users", "OperationalError"),
        ]
        assert not any("exc" in e for e in logged)  # one line each, no trace
        access = [(e["route"], e["status"]) for e in lines if e["logger"] == "predictor.access"]
        assert ("/token", 503) in access

        assert login(client)[1].status_code == 200
        assert [u["username"] for u in client.get("/users", headers=headers).json()] == ["admin"]


@pytest.mark.slow  # waits out SQLite's busy timeout
def test_sqlite_locked_answers_503_within_the_busy_timeout(
    settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    with TestClient(create_app(settings_factory())) as client:
        locker = sqlite3.connect(tmp_path / "db" / "users.db", isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")
        try:
            elapsed, response = login(client)
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        assert_unavailable(response, elapsed)
        assert login(client)[1].status_code == 200


@pytest.fixture
def proxy(postgres_url: str) -> Iterator[CuttableProxy]:
    url = make_url(postgres_url)
    cuttable = CuttableProxy((url.host or "127.0.0.1", url.port or 5432))
    cuttable.listen()
    try:
        yield cuttable
    finally:
        cuttable.stop()


@pytest.mark.postgres
@pytest.mark.slow  # waits out the connect timeout
@pytest.mark.parametrize("mode", ["refuse", "hang"])
def test_postgresql_cut_answers_503_quickly_then_recovers(
    mode: str, proxy: CuttableProxy, postgres_url: str, settings_factory: Callable[..., Settings]
) -> None:
    through_proxy = make_url(postgres_url).set(host="127.0.0.1", port=proxy.port)
    settings = settings_factory(database_url=through_proxy.render_as_string(hide_password=False))
    with TestClient(create_app(settings)) as client:
        with client.app.state.services.database.session() as session:  # type: ignore[attr-defined]
            crud.create_user(session, *USER, scopes=["predict"])
        headers = bearer(get_token(client, *ADMIN))
        predicting = bearer(get_token(client, *USER))
        assert client.get("/users", headers=headers).status_code == 200  # the pool holds connections
        before = errors_counted("/token")
        proxy.cut(mode)
        # /predict asks the database nothing: a valid token goes on predicting.
        assert client.post("/predict", json={"instances": [IRIS_ROW]}, headers=predicting).status_code == 200

        elapsed, response = login(client)
        assert_unavailable(response, elapsed)
        assert errors_counted("/token") == before + 1
        started = time.monotonic()
        ready = client.get("/ready")
        assert ready.status_code == 503 and time.monotonic() - started < ANSWER_WITHIN_SECONDS
        started = time.monotonic()
        users = client.get("/users", headers=headers)
        assert users.status_code == 503 and time.monotonic() - started < ANSWER_WITHIN_SECONDS

        proxy.restore()
        assert login(client)[1].status_code == 200
        assert client.get("/ready").status_code == 200
        names = [u["username"] for u in client.get("/users", headers=headers).json()]
        assert names == ["admin", "alice"]
