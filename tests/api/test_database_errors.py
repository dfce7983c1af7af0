"""A database that fails answers 503 {"detail": "database unavailable: ..."}, quickly, never a 500.

PostgreSQL is reached through a TCP proxy the tests cut: nothing listening any more, or a listener
that accepts and never answers (the connect timeout bounds that one). SQLite: a file gone, a lock.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sqlite3
import threading
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
from tests.support.servers import free_port
from tests.support.tokens import ADMIN, USER, bearer, get_token

# Far above the connect timeout (5 s), far below a hang.
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
        database = client.app.state.database  # type: ignore[attr-defined]
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


class CuttableProxy:
    """127.0.0.1:port forwarding to upstream, until cut: "refuse" (nothing listens, live connections
    dropped) or "hang" (live connections dropped, new ones accepted and never answered)."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = free_port()
        self.mode = "forward"
        self._lock = threading.Lock()
        self._live: set[socket.socket] = set()
        self._held: set[socket.socket] = set()
        self._listener: tuple[threading.Thread, threading.Event] | None = None

    def listen(self) -> None:
        listener = socket.create_server(("127.0.0.1", self.port))  # SO_REUSEADDR: the same port again
        listener.settimeout(0.1)
        stop = threading.Event()
        thread = threading.Thread(target=self._accept, args=(listener, stop), daemon=True)
        thread.start()
        self._listener = (thread, stop)

    def cut(self, mode: str) -> None:
        self.mode = mode
        if mode == "refuse":
            self._stop_listening()
        self._close(self._live)

    def restore(self) -> None:
        self.mode = "forward"
        self._close(self._held)
        if self._listener is None:
            self.listen()

    def stop(self) -> None:
        self._stop_listening()
        self._close(self._live)
        self._close(self._held)

    def _stop_listening(self) -> None:
        if self._listener:
            thread, stop = self._listener
            stop.set()
            thread.join()
            self._listener = None

    def _accept(self, listener: socket.socket, stop: threading.Event) -> None:
        with listener:
            while not stop.is_set():
                try:
                    client, _ = listener.accept()
                except TimeoutError:
                    continue
                client.settimeout(None)
                if self.mode == "hang":
                    with self._lock:
                        self._held.add(client)
                    continue
                try:
                    upstream = socket.create_connection(self.upstream, timeout=5)
                except OSError:
                    client.close()
                    continue
                upstream.settimeout(None)
                with self._lock:
                    self._live.update((client, upstream))
                for source, target in ((client, upstream), (upstream, client)):
                    threading.Thread(target=self._pipe, args=(source, target), daemon=True).start()

    def _pipe(self, source: socket.socket, target: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                target.sendall(data)
        self._close({source, target})

    def _close(self, sockets: set[socket.socket]) -> None:
        with self._lock:
            doomed = list(sockets)
            self._live.difference_update(doomed)
            self._held.difference_update(doomed)
        for sock in doomed:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in recv(); close() alone does not
            sock.close()


@pytest.fixture
def proxy(postgres_url: str) -> Iterator[CuttableProxy]:
    url = make_url(postgres_url)
    cuttable = CuttableProxy((url.host or "127.0.0.1", url.port or 5432))
    cuttable.listen()
    try:
        yield cuttable
    finally:
        cuttable.stop()


@pytest.mark.slow  # waits out the connect timeout
@pytest.mark.parametrize("mode", ["refuse", "hang"])
def test_postgresql_cut_answers_503_quickly_then_recovers(
    mode: str, proxy: CuttableProxy, postgres_url: str, settings_factory: Callable[..., Settings]
) -> None:
    through_proxy = make_url(postgres_url).set(host="127.0.0.1", port=proxy.port)
    settings = settings_factory(database_url=through_proxy.render_as_string(hide_password=False))
    with TestClient(create_app(settings)) as client:
        with client.app.state.database.session() as session:  # type: ignore[attr-defined]
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
