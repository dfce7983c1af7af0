"""API keys: made for the caller (or by an admin for anyone), used as `Authorization: Bearer` or
`X-API-Key` on the routes a token opens, listed without their secret, expired, revoked on every replica
within the revocation bound, refused when made up or tampered with, rate limited per key."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, update

from app.core.config import Settings
from app.db import crud
from app.db.models import ApiKeyRow
from app.main import create_app
from tests.support.models import IRIS_ROW
from tests.support.servers import wait_until
from tests.support.tokens import ADMIN, USER, bearer, get_token

REFRESH = 0.2  # the replicas read the revocations this often here


def _make(client: TestClient, headers: dict[str, str], **body: Any) -> httpx.Response:
    return client.post("/api-keys", json={"name": "ci"} | body, headers=headers)


def _key(client: TestClient, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    answer = _make(client, headers, **body)
    assert answer.status_code == 201, answer.text
    return answer.json()


def _predicts(client: TestClient, key: str, header: str = "bearer") -> int:
    headers = bearer(key) if header == "bearer" else {"X-API-Key": key}
    return client.post("/predict", json={"instances": [IRIS_ROW]}, headers=headers).status_code


def _sample(client: TestClient, prefix: str) -> float:
    metrics = client.get("/metrics").text
    return float(next(line for line in metrics.splitlines() if line.startswith(prefix)).split()[-1])


def test_a_key_opens_the_routes_a_token_does_with_either_header(
    client: TestClient, user_headers: dict[str, str]
) -> None:
    made = _key(client, user_headers, scopes=["predict"])
    assert made["key"].startswith(f"pk_{made['id']}_") and len(made["id"]) == 12
    assert made["owner"] == USER[0] and made["scopes"] == ["predict"] and made["expires_at"] is None
    ok = _sample(client, 'predictor_auth_total{method="api_key",result="ok"}')
    for header in ("bearer", "x-api-key"):
        assert _predicts(client, made["key"], header) == 200
        info = client.get(
            "/model-info", headers={"X-API-Key": made["key"]} if header != "bearer" else bearer(made["key"])
        )
        assert info.status_code == 200
    assert _sample(client, 'predictor_auth_total{method="api_key",result="ok"}') == ok + 4
    # The key's scopes are its own: no admin route, no feedback.
    assert client.get("/users", headers=bearer(made["key"])).status_code == 403


def test_keys_are_listed_without_their_secret_and_record_their_last_use(
    client: TestClient, user_headers: dict[str, str], admin_headers: dict[str, str]
) -> None:
    mine = _key(client, user_headers)
    theirs = _key(client, admin_headers, scopes=["admin"])
    assert _predicts(client, mine["key"]) == 200
    client.app.state.services.api_keys.flush()  # type: ignore[attr-defined]  # what the loop does
    listed = client.get("/api-keys", headers=user_headers)
    assert listed.status_code == 200
    assert [k["id"] for k in listed.json()] == [mine["id"]]
    assert listed.json()[0]["last_used_at"] is not None
    assert mine["key"].split("_", 2)[2] not in listed.text and "secret" not in listed.text
    everyone = {k["id"] for k in client.get("/api-keys", headers=admin_headers).json()}
    assert everyone == {mine["id"], theirs["id"]}
    alices = client.get("/api-keys", params={"owner": USER[0]}, headers=admin_headers).json()
    assert [k["id"] for k in alices] == [mine["id"]]
    assert client.get("/api-keys", params={"owner": ADMIN[0]}, headers=user_headers).status_code == 403
    # Another's key is not there to delete; a key manages no keys.
    assert client.delete(f"/api-keys/{theirs['id']}", headers=user_headers).status_code == 404
    assert client.get("/api-keys", headers=bearer(theirs["key"])).status_code == 403
    # An admin's key acts for the admin on admin routes.
    assert client.get("/users", headers=bearer(theirs["key"])).status_code == 200


def test_scopes_wider_than_the_callers_are_refused(
    client: TestClient, user_headers: dict[str, str], admin_headers: dict[str, str]
) -> None:
    wider = _make(client, user_headers, scopes=["predict", "admin"])
    assert wider.status_code == 403 and "admin" in wider.json()["detail"]
    assert _make(client, user_headers, owner=ADMIN[0]).status_code == 403
    # An admin makes keys for others, within the owner's scopes.
    assert _make(client, admin_headers, owner=USER[0], scopes=["admin"]).status_code == 403
    made = _key(client, admin_headers, owner=USER[0], scopes=["predict"])
    assert made["owner"] == USER[0]
    assert _make(client, admin_headers, owner="nobody").status_code == 404
    assert _make(client, user_headers, scopes=["root"]).status_code == 403


def test_made_up_tampered_and_expired_keys_get_401_counted(
    client: TestClient, user_headers: dict[str, str]
) -> None:
    made = _key(client, user_headers, expires_in_days=1)
    assert made["expires_at"] is not None
    invalid = _sample(client, 'predictor_auth_failures_total{reason="invalid_key"}')
    refused = _sample(client, 'predictor_auth_total{method="api_key",result="refused"}')
    assert _predicts(client, "pk_madeupmadeup_" + "x" * 43) == 401
    assert _predicts(client, made["key"][:-2] + ("aa" if not made["key"].endswith("aa") else "bb")) == 401
    assert _predicts(client, "pk_short", "x-api-key") == 401
    assert _sample(client, 'predictor_auth_failures_total{reason="invalid_key"}') == invalid + 3
    assert _sample(client, 'predictor_auth_total{method="api_key",result="refused"}') == refused + 3
    assert _predicts(client, made["key"]) == 200
    # Past its expiry: this replica's cached entry knows it, without the database.
    services = client.app.state.services  # type: ignore[attr-defined]
    with services.database.session() as session:
        session.execute(update(ApiKeyRow).values(expires_at=time.time() - 1))
        session.commit()
    services.api_keys.forget(made["id"])
    expired = _sample(client, 'predictor_auth_failures_total{reason="expired"}')
    assert _predicts(client, made["key"]) == 401
    assert _sample(client, 'predictor_auth_failures_total{reason="expired"}') == expired + 1


def test_an_expired_key_is_refused_by_the_cache_too(client: TestClient, user_headers: dict[str, str]) -> None:
    clock = [time.time()]
    services = client.app.state.services  # type: ignore[attr-defined]
    services.api_keys._clock = lambda: clock[0]
    made = _key(client, user_headers, expires_in_days=1)
    assert _predicts(client, made["key"]) == 200
    clock[0] += 86400 + 1
    assert _predicts(client, made["key"]) == 401


@pytest.fixture
def replicas(settings_factory: Callable[..., Settings]) -> Iterator[tuple[TestClient, TestClient]]:
    """Two replicas on one database, reading revocations every REFRESH s."""
    make = lambda: create_app(settings_factory(revocation_refresh_seconds=REFRESH))  # noqa: E731
    with TestClient(make()) as first, TestClient(make()) as second:
        with first.app.state.services.database.session() as session:  # type: ignore[attr-defined]
            crud.create_user(session, *USER, scopes=["predict"])
        yield first, second


@pytest.mark.parametrize("how", ["key deleted", "owner disabled", "owner deleted"])
def test_a_revoked_key_fails_on_every_replica_within_the_bound(
    replicas: tuple[TestClient, TestClient], how: str
) -> None:
    first, second = replicas
    made = _key(first, bearer(get_token(first, *USER)))
    assert _predicts(second, made["key"]) == 200  # cached there now
    admin = bearer(get_token(first, *ADMIN))
    if how == "key deleted":
        assert first.delete(f"/api-keys/{made['id']}", headers=admin).status_code == 204
    elif how == "owner disabled":
        assert first.post(f"/users/{USER[0]}/disable", headers=admin).status_code == 200
    else:
        assert first.delete(f"/users/{USER[0]}", headers=admin).status_code == 204
    assert _predicts(first, made["key"]) == 401
    wait_until(lambda: _predicts(second, made["key"]) == 401, 5 * REFRESH + 2, "the revocation")
    listed = first.get("/api-keys", headers=admin).json()
    assert [k["revoked"] for k in listed if k["id"] == made["id"]] == [True]


def test_a_demoted_owner_keeps_only_the_keys_within_the_new_scopes(
    replicas: tuple[TestClient, TestClient],
) -> None:
    first, _ = replicas
    admin = bearer(get_token(first, *ADMIN))
    assert (
        first.put(
            f"/users/{USER[0]}/scopes", json={"scopes": ["predict", "feedback"]}, headers=admin
        ).status_code
        == 200
    )
    time.sleep(1.05)  # the revocation covers tokens issued in its own second
    user = bearer(get_token(first, *USER))
    narrow = _key(first, user, scopes=["predict"])
    wide = _key(first, user, scopes=["predict", "feedback"])
    assert (
        first.put(f"/users/{USER[0]}/scopes", json={"scopes": ["predict"]}, headers=admin).status_code == 200
    )
    assert _predicts(first, narrow["key"]) == 200
    assert _predicts(first, wide["key"]) == 401


def test_rate_limits_count_per_key(settings_factory: Callable[..., Settings]) -> None:
    with TestClient(create_app(settings_factory(rate_limit_predict="2/minute"))) as client:
        with client.app.state.services.database.session() as session:  # type: ignore[attr-defined]
            crud.create_user(session, *USER, scopes=["predict"])
        user = bearer(get_token(client, *USER))
        one, two = _key(client, user)["key"], _key(client, user)["key"]
        assert [_predicts(client, one) for _ in range(3)] == [200, 200, 429]
        assert _predicts(client, two) == 200  # the same owner's other key counts apart


def test_predict_with_a_key_asks_the_database_nothing(
    client: TestClient, user_headers: dict[str, str]
) -> None:
    key = _key(client, user_headers)["key"]
    assert _predicts(client, key) == 200
    engine = client.app.state.services.database.engine  # type: ignore[attr-defined]
    statements: list[str] = []
    background = {
        "revocation-watch",
        "version-watch",
        "prediction-log",
        "live-quality",
        "candidates",
        "api-key-use",
    }

    def listener(*args: object) -> None:
        if threading.current_thread().name not in background:
            statements.append(str(args[2]))

    event.listen(engine, "before_cursor_execute", listener)
    try:
        for header in ("bearer", "x-api-key") * 10:
            assert _predicts(client, key, header) == 200
    finally:
        event.remove(engine, "before_cursor_execute", listener)
    assert statements == []


def test_swagger_ui_takes_an_api_key_wherever_a_token_goes(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["APIKeyHeader"]["name"] == "X-API-Key"
    predict = spec["paths"]["/predict"]["post"]["security"]
    assert {"OAuth2PasswordBearer": ["predict"]} in predict and {"APIKeyHeader": []} in predict
    assert "security" not in spec["paths"]["/health"]["get"]


def test_logout_with_a_key_says_how_to_revoke_it(client: TestClient, user_headers: dict[str, str]) -> None:
    key = _key(client, user_headers)["key"]
    answer = client.post("/logout", headers=bearer(key))
    assert answer.status_code == 400 and "DELETE /api-keys" in answer.json()["detail"]
    assert _predicts(client, key) == 200


def test_a_key_this_replica_has_not_seen_is_read_off_the_event_loop(
    settings_factory: Callable[..., Settings], user_headers: dict[str, str], client: TestClient
) -> None:
    """A second replica meets the key for the first time: its database read runs in a thread, never
    in the thread that runs the event loop (where it would stall every other request)."""
    key = _key(client, user_headers)["key"]
    with TestClient(create_app(settings_factory())) as other:
        engine = other.app.state.services.database.engine  # type: ignore[attr-defined]
        on_the_loop: list[str] = []

        def listener(*args: object) -> None:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                return  # a thread without a loop: the thread pool
            on_the_loop.append(str(args[2]))

        event.listen(engine, "before_cursor_execute", listener)
        try:
            assert _predicts(other, key) == 200
            assert _predicts(other, key, "x-api-key") == 200
            assert other.get("/model-info", headers={"X-API-Key": key}).status_code == 200
        finally:
            event.remove(engine, "before_cursor_execute", listener)
        assert on_the_loop == []
