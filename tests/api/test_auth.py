from __future__ import annotations

import base64
import dataclasses
import json
import time
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete

from app.core.security import create_access_token, decode_access_token
from app.db import crud
from app.db.models import LoginFailure
from app.db.throttle import DatabaseLoginThrottle
from app.main import create_app
from tests.support.models import IRIS_ROW
from tests.support.tokens import ADMIN, SECRET, USER, bearer, get_token

BODY = {"instances": [IRIS_ROW]}


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_token_is_issued_with_the_users_scopes(client: TestClient) -> None:
    response = client.post("/token", data={"username": USER[0], "password": USER[1]})
    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 300
    claims = decode_access_token(body["access_token"], secret=SECRET)
    assert claims.sub == "alice" and claims.scopes == ("predict",)
    assert claims.exp - claims.iat == 300


def test_admin_token_can_be_narrowed_but_not_widened(client: TestClient) -> None:
    narrowed = get_token(client, *ADMIN, scope="predict")
    assert decode_access_token(narrowed, secret=SECRET).scopes == ("predict",)
    widened = client.post("/token", data={"username": USER[0], "password": USER[1], "scope": "predict admin"})
    assert widened.status_code == 400
    assert "admin" in widened.json()["detail"]


def test_token_expires(client: TestClient, settings) -> None:
    past = datetime.now(UTC) - timedelta(minutes=settings.access_token_expire_minutes + 1)
    expired = create_access_token("alice", ["predict"], secret=SECRET, expires=timedelta(minutes=5), now=past)
    response = client.post("/predict", json=BODY, headers=bearer(expired))
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"


def _forged_tokens(valid: str) -> dict[str, str | None]:
    header, payload, signature = valid.split(".")
    now = int(time.time())
    claims = {"sub": "alice", "scopes": ["predict", "admin"], "iat": now, "exp": now + 300, "jti": "j"}
    tampered_payload = _b64(claims)
    return {
        "no token": None,
        "tampered signature": f"{header}.{payload}.{signature[:-4]}AAAA",
        "tampered payload": f"{header}.{tampered_payload}.{signature}",
        "alg none": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{tampered_payload}.",
        "other key": create_access_token(
            "alice", ["predict"], secret="not-the-servers-key", expires=timedelta(minutes=5)
        ),
        "garbage": "not-a-jwt",
    }


@pytest.mark.parametrize(
    "case", ["no token", "tampered signature", "tampered payload", "alg none", "other key", "garbage"]
)
@pytest.mark.parametrize(
    ("method", "path"), [("post", "/predict"), ("get", "/model-info"), ("post", "/model/reload")]
)
def test_bad_tokens_get_401(client: TestClient, case: str, method: str, path: str) -> None:
    token = _forged_tokens(get_token(client, *USER))[case]
    headers = bearer(token) if token else {}
    response = client.request(method, path, json=BODY, headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert "detail" in response.json()


def test_missing_scope_gets_403(client: TestClient, user_headers: dict[str, str]) -> None:
    response = client.post("/model/reload", headers=user_headers)
    assert response.status_code == 403
    assert "admin" in response.json()["detail"]
    assert client.get("/users", headers=user_headers).status_code == 403


def test_predict_needs_the_predict_scope(client: TestClient) -> None:
    with client.app.state.services.database.session() as session:  # type: ignore[attr-defined]
        crud.create_user(session, "ops", "ops-password-1", scopes=["admin"])
    headers = bearer(get_token(client, "ops", "ops-password-1"))
    assert client.post("/predict", json=BODY, headers=headers).status_code == 403
    # model-info needs any valid token.
    assert client.get("/model-info", headers=headers).status_code == 200


def test_unknown_user_and_wrong_password_answer_the_same(client: TestClient) -> None:
    def attempt(username: str) -> tuple[int, dict, float]:
        started = time.perf_counter()
        response = client.post("/token", data={"username": username, "password": "wrong-password"})
        return response.status_code, response.json(), time.perf_counter() - started

    attempt("nobody")  # warm both paths
    wrong = [attempt("alice") for _ in range(3)]
    unknown = [attempt(f"nobody{i}") for i in range(3)]
    assert {(s, json.dumps(b)) for s, b, _ in wrong} == {(s, json.dumps(b)) for s, b, _ in unknown}
    assert wrong[0][0] == 401
    # Both paths verify one argon2 hash: same order of magnitude, no fast path for unknown names.
    fastest_wrong = min(t for *_, t in wrong)
    fastest_unknown = min(t for *_, t in unknown)
    assert fastest_unknown > fastest_wrong / 3


def test_disabled_user_gets_401(client: TestClient) -> None:
    with client.app.state.services.database.session() as session:  # type: ignore[attr-defined]
        crud.set_disabled(session, USER[0])
    response = client.post("/token", data={"username": USER[0], "password": USER[1]})
    assert response.status_code == 401
    assert response.json() == {"detail": "Incorrect username or password"}


def test_lockout_after_five_failures_and_its_release(client: TestClient) -> None:
    now = [1_795_000_000.0]
    start = now[0]
    database = client.app.state.services.database  # type: ignore[attr-defined]
    # The service's own store (the database), with a clock the test moves.
    services = client.app.state.services  # type: ignore[attr-defined]
    throttle = DatabaseLoginThrottle(database.session, 5, 900, clock=lambda: now[0])
    client.app.state.services = dataclasses.replace(services, throttle=throttle)  # type: ignore[attr-defined]
    for _ in range(5):
        assert client.post("/token", data={"username": "alice", "password": "nope"}).status_code == 401
        now[0] += 1
    locked = client.post("/token", data={"username": USER[0], "password": USER[1]})
    assert locked.status_code == 429
    assert locked.headers["Retry-After"] == "895"
    assert "try again" in locked.json()["detail"]
    # Other usernames are unaffected.
    assert client.post("/token", data={"username": ADMIN[0], "password": ADMIN[1]}).status_code == 200
    now[0] = start + 899.0
    assert client.post("/token", data={"username": USER[0], "password": USER[1]}).status_code == 429
    now[0] = start + 900.0
    assert client.post("/token", data={"username": USER[0], "password": USER[1]}).status_code == 200


def test_lockout_is_shared_by_every_server_process(settings) -> None:
    """Two apps on one database stand for two workers: failures on one lock the user out on both."""
    with TestClient(create_app(settings)) as first, TestClient(create_app(settings)) as second:
        with first.app.state.services.database.session() as session:  # type: ignore[attr-defined]
            crud.create_user(session, *USER, scopes=["predict"])
        for client in (first, second, first, second, first):
            assert client.post("/token", data={"username": USER[0], "password": "nope"}).status_code == 401
        for client in (first, second):
            assert client.post("/token", data={"username": USER[0], "password": USER[1]}).status_code == 429
        # Once the failures leave the window (deleted here rather than waited for), both let the user in.
        with first.app.state.services.database.session() as session:  # type: ignore[attr-defined]
            session.execute(delete(LoginFailure))
            session.commit()
        assert second.post("/token", data={"username": USER[0], "password": USER[1]}).status_code == 200


def test_token_form_errors_do_not_echo_the_password(client: TestClient) -> None:
    response = client.post("/token", data={"password": "secret-in-form"})
    assert response.status_code == 422
    assert "secret-in-form" not in response.text


def test_swagger_ui_has_the_password_flow(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    scheme = spec["components"]["securitySchemes"]["OAuth2PasswordBearer"]
    assert scheme["flows"]["password"]["tokenUrl"] == "token"
    assert set(scheme["flows"]["password"]["scopes"]) == {"predict", "admin", "feedback"}
    assert client.get("/docs").status_code == 200
