"""Tokens with a lifecycle: refresh tokens used once, logout, and a user's tokens withdrawn when the
user is disabled, deleted, demoted or given a new password, on every replica, through the database
or through Redis, with no query on /predict."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event
from typer.testing import CliRunner

from app.cli import cli
from app.core.config import Settings, get_settings
from app.db import crud
from app.main import create_app
from tests.support.models import IRIS_ROW
from tests.support.redis_db import scratch_redis
from tests.support.servers import free_port, wait_until
from tests.support.tokens import ADMIN, USER, bearer

# The other replica reads the revocations this often in these tests.
REFRESH = 0.2
# A database of its own, emptied before each test: a revocation of "alice" must not outlive its test.


def _login(client: TestClient, username: str, password: str) -> dict[str, Any]:
    answer = client.post("/token", data={"username": username, "password": password})
    assert answer.status_code == 200, answer.text
    return answer.json()


def _refresh(client: TestClient, refresh_token: str, grant_type: str = "refresh_token") -> httpx.Response:
    return client.post("/token/refresh", data={"grant_type": grant_type, "refresh_token": refresh_token})


def _predicts(client: TestClient, access_token: str) -> int:
    return client.post("/predict", json={"instances": [IRIS_ROW]}, headers=bearer(access_token)).status_code


def _refused(metrics: str, reason: str) -> float:
    prefix = f'predictor_auth_failures_total{{reason="{reason}"}} '
    return float(next(line for line in metrics.splitlines() if line.startswith(prefix)).split()[-1])


def _eventually(check: Callable[[], bool], within: float = 5.0) -> float:
    """Seconds until `check()` held; fails past `within`."""
    started = time.monotonic()
    wait_until(check, within, "the revocation")
    return time.monotonic() - started


def _with_user(client: TestClient) -> TestClient:
    with client.app.state.services.database.session() as session:  # type: ignore[attr-defined]
        if crud.get_user(session, USER[0]) is None:
            crud.create_user(session, *USER, scopes=["predict"])
    return client


@pytest.fixture(params=["database", pytest.param("redis", marks=pytest.mark.redis)])
def store(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """The settings of each revocation store: the SQL database, or this worker's Redis database."""
    if request.param == "database":
        yield {}
        return
    with scratch_redis() as url:
        yield {"redis_url": url}


@pytest.fixture
def replicas(
    settings_factory: Callable[..., Settings], store: dict[str, Any]
) -> Iterator[tuple[TestClient, TestClient]]:
    """Two replicas on one database (and one Redis, if so), reading revocations every REFRESH s."""
    make = lambda: create_app(settings_factory(revocation_refresh_seconds=REFRESH, **store))  # noqa: E731
    with TestClient(make()) as first, TestClient(make()) as second:
        yield _with_user(first), second


def test_a_refresh_token_gives_the_next_pair_once(replicas: tuple[TestClient, TestClient]) -> None:
    client, _ = replicas
    login = _login(client, *USER)
    assert login["refresh_expires_in"] > login["expires_in"]
    renewed = _refresh(client, login["refresh_token"])
    assert renewed.status_code == 200, renewed.text
    pair = renewed.json()
    assert pair["refresh_token"] != login["refresh_token"] and pair["scope"] == "predict"
    assert _predicts(client, pair["access_token"]) == 200
    assert _refresh(client, pair["refresh_token"]).status_code == 200


def test_a_refresh_token_used_twice_withdraws_its_whole_family(
    replicas: tuple[TestClient, TestClient],
) -> None:
    client, other = replicas
    before = _refused(client.get("/metrics").text, "refresh_reuse")
    login = _login(client, *USER)
    pair = _refresh(client, login["refresh_token"]).json()
    assert _predicts(other, pair["access_token"]) == 200

    reused = _refresh(other, login["refresh_token"])  # on the other replica: the store is shared
    assert reused.status_code == 400
    assert reused.json() == {"error": "invalid_grant", "detail": "refresh token already used: sign in again"}
    # The newer refresh token and every access token of the family fail too, on both replicas.
    assert _refresh(client, pair["refresh_token"]).json()["error"] == "invalid_grant"
    _eventually(lambda: _predicts(client, pair["access_token"]) == 401)
    _eventually(lambda: _predicts(client, login["access_token"]) == 401)
    assert _predicts(other, pair["access_token"]) == 401
    assert _refused(client.get("/metrics").text, "refresh_reuse") == before + 1
    # Another login of the same user is another family: untouched.
    assert _predicts(client, _login(client, *USER)["access_token"]) == 200


def test_bad_refresh_requests_get_oauth_errors(replicas: tuple[TestClient, TestClient]) -> None:
    client, _ = replicas
    login = _login(client, *USER)
    wrong_grant = _refresh(client, login["refresh_token"], grant_type="password")
    assert wrong_grant.status_code == 400 and wrong_grant.json()["error"] == "unsupported_grant_type"
    unknown = _refresh(client, "not-a-refresh-token")
    assert unknown.status_code == 400 and unknown.json()["error"] == "invalid_grant"
    missing = client.post("/token/refresh", data={"grant_type": "refresh_token"})
    assert missing.status_code == 422
    # The failed attempts did not use the token up.
    assert _refresh(client, login["refresh_token"]).status_code == 200


def test_logout_withdraws_the_token_and_its_refresh_family_on_every_replica(
    replicas: tuple[TestClient, TestClient],
) -> None:
    client, other = replicas
    login = _login(client, *USER)
    kept = _login(client, *USER)  # another session of the same user
    assert _predicts(other, login["access_token"]) == 200
    assert client.post("/logout", headers=bearer(login["access_token"])).status_code == 204
    assert _predicts(client, login["access_token"]) == 401  # this replica: at once
    waited = _eventually(lambda: _predicts(other, login["access_token"]) == 401)
    assert waited < 10 * REFRESH + 1
    assert _refresh(other, login["refresh_token"]).json()["error"] == "invalid_grant"
    assert client.post("/logout", headers=bearer(login["access_token"])).status_code == 401
    assert client.post("/logout").status_code == 401
    assert _predicts(other, kept["access_token"]) == 200


@pytest.mark.parametrize(
    "change",
    [
        lambda c, h: c.post("/users/alice/disable", headers=h),
        lambda c, h: c.delete("/users/alice", headers=h),
        lambda c, h: c.put("/users/alice/scopes", json={"scopes": ["admin"]}, headers=h),
    ],
    ids=["disabled", "deleted", "demoted"],
)
def test_a_withdrawn_users_tokens_fail_on_every_replica(
    replicas: tuple[TestClient, TestClient], change: Callable[[TestClient, dict[str, str]], httpx.Response]
) -> None:
    client, other = replicas
    login = _login(client, *USER)
    admin = bearer(_login(client, *ADMIN)["access_token"])
    assert _predicts(other, login["access_token"]) == 200
    assert change(client, admin).status_code in (200, 204)
    assert _predicts(client, login["access_token"]) == 401
    _eventually(lambda: _predicts(other, login["access_token"]) == 401)
    assert _refresh(other, login["refresh_token"]).json()["error"] == "invalid_grant"
    # The admin's own tokens are another user's: untouched.
    assert other.get("/users", headers=admin).status_code == 200


def test_a_demoted_user_signs_in_again_for_the_new_scopes(replicas: tuple[TestClient, TestClient]) -> None:
    client, _ = replicas
    admin = bearer(_login(client, *ADMIN)["access_token"])
    bad = client.put("/users/alice/scopes", json={"scopes": ["root"]}, headers=admin)
    assert bad.status_code == 400 and "unknown scope root" in bad.json()["detail"]
    assert client.put("/users/nobody/scopes", json={"scopes": ["predict"]}, headers=admin).status_code == 404
    assert client.put("/users/alice/scopes", json={"scopes": []}, headers=admin).status_code == 422
    time.sleep(1.05)  # the revocation covers tokens issued in its own second
    assert client.put("/users/alice/scopes", json={"scopes": ["admin"]}, headers=admin).status_code == 200
    time.sleep(1.05)
    again = _login(client, *USER)
    assert again["scope"] == "admin"
    assert _predicts(client, again["access_token"]) == 403
    assert client.get("/users", headers=bearer(again["access_token"])).status_code == 200


def test_the_cli_withdraws_tokens_held_on_running_replicas(
    replicas: tuple[TestClient, TestClient],
    settings_factory: Callable[..., Settings],
    store: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client, other = replicas
    settings = settings_factory(**store)
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    if settings.redis_url:
        monkeypatch.setenv("REDIS_URL", settings.redis_url)
    get_settings.cache_clear()
    login = _login(client, *USER)
    try:
        result = CliRunner().invoke(cli, ["users", "disable", USER[0]])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    # Neither replica made the change: both learn it from the store.
    waited = max(
        _eventually(lambda: _predicts(client, login["access_token"]) == 401),
        _eventually(lambda: _predicts(other, login["access_token"]) == 401),
    )
    assert waited < 30  # the bound; here within a few REFRESH periods


def test_predict_asks_the_database_nothing(replicas: tuple[TestClient, TestClient]) -> None:
    client, _ = replicas
    token = _login(client, *USER)["access_token"]
    assert _predicts(client, token) == 200
    engine = client.app.state.services.database.engine  # type: ignore[attr-defined]
    statements: list[str] = []
    # The replica's background threads (revocations, the serving pointer, the prediction log's
    # writer, live quality) read and write meanwhile: only the requests' own statements count.
    background = {"revocation-watch", "version-watch", "prediction-log", "live-quality", "candidates"}

    def listener(*args: object) -> None:
        if threading.current_thread().name not in background:
            statements.append(str(args[2]))

    event.listen(engine, "before_cursor_execute", listener)
    try:
        time.sleep(3 * REFRESH)  # the replica's own reads of the store still happen meanwhile
        statements.clear()
        for _ in range(20):
            assert _predicts(client, token) == 200
        during = list(statements)
    finally:
        event.remove(engine, "before_cursor_execute", listener)
    assert during == []


def test_admin_tokens_fail_closed_while_the_store_cannot_be_read(
    settings_factory: Callable[..., Settings],
) -> None:
    """Redis named but not there: predict tokens are checked against what the replica has, admin
    tokens are refused (503) once the list is older than REVOCATION_MAX_STALENESS_SECONDS."""
    settings = settings_factory(
        redis_url=f"redis://127.0.0.1:{free_port()}/0",  # nothing listens there
        revocation_refresh_seconds=REFRESH,
        revocation_max_staleness_seconds=0.5,
    )
    with TestClient(create_app(settings)) as client:
        _with_user(client)
        user, admin = _login(client, *USER), _login(client, *ADMIN)
        assert _predicts(client, user["access_token"]) == 200
        refused = client.get("/users", headers=bearer(admin["access_token"]))
        assert refused.status_code == 503
        assert refused.json()["detail"].startswith("token revocations cannot be checked")
        metrics = client.get("/metrics").text
        assert "predictor_revocation_store_up 0.0" in metrics
        assert _refused(metrics, "unverifiable") >= 1
        # Logout needs the store: it says so rather than pretending.
        assert client.post("/logout", headers=bearer(user["access_token"])).status_code == 503


@pytest.mark.redis
@pytest.mark.parametrize("store", ["redis"], indirect=True)
def test_redis_store_trims_what_no_token_can_need(store: dict[str, Any]) -> None:
    from app.adapters.redis_revocations import RedisRevocations, redis_client
    from app.core.revocation import Revocation

    client = redis_client(store["redis_url"])
    revocations = RedisRevocations(client, keep_seconds=0.2)
    now = time.time()
    subject = uuid.uuid4().hex
    revocations.add(Revocation("token", subject, now, now + 60))
    found, cursor = revocations.read_since(None)
    assert subject in [r.subject for r in found]
    time.sleep(0.3)
    revocations.add(Revocation("token", "later", time.time(), time.time() + 60))
    assert subject not in [r.subject for r in revocations.read_since(None)[0]]
    assert [r.subject for r in revocations.read_since(cursor)[0]] == ["later"]


def test_a_revocation_committed_late_is_still_read(settings_factory: Callable[..., Settings]) -> None:
    """Ids are handed out at insert, commits may come in another order: a row with an id below the
    cursor, committed after the read, is read on the next one."""
    from app.db.models import RevocationRow
    from app.db.revocations import DatabaseRevocations

    with TestClient(create_app(settings_factory())) as client:
        database = client.app.state.services.database  # type: ignore[attr-defined]
        store = DatabaseRevocations(database.session)
        now = time.time()
        with database.session() as session:
            session.add(
                RevocationRow(id=10, kind="token", subject="first", revoked_at=now, expires_at=now + 60)
            )
            session.commit()
        found, cursor = store.read_since(None)
        assert [r.subject for r in found] == ["first"] and cursor == "10"
        with database.session() as session:  # id 5: its transaction began first, committed last
            session.add(
                RevocationRow(id=5, kind="token", subject="late", revoked_at=now, expires_at=now + 60)
            )
            session.commit()
        found, cursor = store.read_since(cursor)
        assert "late" in [r.subject for r in found] and cursor == "10"
