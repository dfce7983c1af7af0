"""Service clients: the client-credentials grant at POST /token (RFC 6749 section 4.4), through
requests-oauthlib against a real server and through HTTP Basic or the form against TestClient;
rotation with a grace period; a disabled client's tokens refused on every replica; the CLI."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from jose import jwt
from oauthlib.oauth2 import BackendApplicationClient
from requests_oauthlib import OAuth2Session
from sqlalchemy import update
from typer.testing import CliRunner

from app.cli import cli
from app.core.config import Settings, get_settings
from app.db.models import ServiceClientRow
from app.main import create_app
from tests.support.models import IRIS_ROW
from tests.support.servers import api_server, wait_until
from tests.support.tokens import ADMIN, SECRET, bearer, get_token, login

REFRESH = 0.2  # the replicas read the revocations this often here


def _create(client: TestClient, admin: dict[str, str], scopes: list[str] | None = None) -> dict[str, Any]:
    answer = client.post("/clients", json={"name": "billing", "scopes": scopes or ["predict"]}, headers=admin)
    assert answer.status_code == 201, answer.text
    return answer.json()


def _basic(client_id: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


def _grant(client: TestClient, created: dict[str, Any], **form: str) -> httpx.Response:
    return client.post(
        "/token",
        data={"grant_type": "client_credentials"} | form,
        headers=_basic(created["client_id"], created["client_secret"]),
    )


def _predicts(client: TestClient, token: str) -> int:
    return client.post("/predict", json={"instances": [IRIS_ROW]}, headers=bearer(token)).status_code


def _sample(metrics: str, prefix: str) -> float:
    return float(next(line for line in metrics.splitlines() if line.startswith(prefix)).split()[-1])


def test_requests_oauthlib_backend_client_gets_a_token_from_a_real_server(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")  # http on 127.0.0.1
    with api_server(tmp_path, model_dir) as api:
        created = httpx.post(
            f"{api.url}/clients", json={"name": "batch-job"}, headers=login(api.url, *ADMIN), timeout=10
        ).json()
        session = OAuth2Session(client=BackendApplicationClient(client_id=created["client_id"]))
        token = session.fetch_token(
            f"{api.url}/token", client_id=created["client_id"], client_secret=created["client_secret"]
        )
        assert token["token_type"] == "bearer" and token["scope"] == ["predict"]
        assert "refresh_token" not in token
        answer = session.post(f"{api.url}/predict", json={"instances": [IRIS_ROW]}, timeout=10)
        assert answer.status_code == 200, answer.text


def test_basic_or_form_credentials_give_a_client_token_without_refresh(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    created = _create(client, admin_headers, ["predict", "feedback"])
    assert created["client_id"].startswith("cl_") and len(created["client_id"]) == 19
    by_basic = _grant(client, created)
    assert by_basic.status_code == 200, by_basic.text
    body = by_basic.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "scope"}
    assert body["token_type"] == "bearer" and body["scope"] == "feedback predict"
    claims = jwt.decode(body["access_token"], SECRET, algorithms=["HS256"])
    assert claims["sub"] == f"client:{created['client_id']}" and claims["mth"] == "client_credentials"
    assert _predicts(client, body["access_token"]) == 200
    by_form = client.post(
        "/token",
        data={
            "grant_type": "client_credentials",
            "client_id": created["client_id"],
            "client_secret": created["client_secret"],
            "scope": "predict",
        },
    )
    assert by_form.status_code == 200 and by_form.json()["scope"] == "predict"
    # The password grant answers as before: with its refresh token, and no mth in the token.
    password = client.post("/token", data={"username": ADMIN[0], "password": ADMIN[1]}).json()
    assert set(password) == {
        "access_token", "token_type", "expires_in", "scope", "refresh_token", "refresh_expires_in"
    }  # fmt: skip
    assert "mth" not in jwt.decode(password["access_token"], SECRET, algorithms=["HS256"])


def test_a_scope_the_client_lacks_is_invalid_scope(client: TestClient, admin_headers: dict[str, str]) -> None:
    created = _create(client, admin_headers)
    answer = _grant(client, created, scope="predict admin")
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_scope"


@pytest.mark.parametrize("how", ["wrong secret", "unknown client", "disabled", "form", "no credentials"])
def test_bad_client_credentials_are_invalid_client(
    client: TestClient, admin_headers: dict[str, str], how: str
) -> None:
    created = _create(client, admin_headers)
    if how == "disabled":
        assert (
            client.post(f"/clients/{created['client_id']}/disable", headers=admin_headers).status_code == 200
        )
    before = _sample(client.get("/metrics").text, 'predictor_auth_failures_total{reason="invalid_client"}')
    refused = _sample(
        client.get("/metrics").text, 'predictor_auth_total{method="client_credentials",result="refused"}'
    )
    form = {"grant_type": "client_credentials"}
    headers: dict[str, str] = {}
    if how == "wrong secret":
        headers = _basic(created["client_id"], created["client_secret"] + "x")
    elif how == "unknown client":
        headers = _basic("cl_madeupmadeupmade", created["client_secret"])
    elif how == "disabled":
        headers = _basic(created["client_id"], created["client_secret"])
    elif how == "form":
        form |= {"client_id": created["client_id"], "client_secret": "wrong"}
    answer = client.post("/token", data=form, headers=headers)
    assert answer.status_code == 401
    assert answer.json()["error"] == "invalid_client"
    assert answer.headers["WWW-Authenticate"].startswith("Basic")
    metrics = client.get("/metrics").text
    assert _sample(metrics, 'predictor_auth_failures_total{reason="invalid_client"}') == before + 1
    assert (
        _sample(metrics, 'predictor_auth_total{method="client_credentials",result="refused"}') == refused + 1
    )


def test_failed_secrets_lock_the_client_out(client: TestClient, admin_headers: dict[str, str]) -> None:
    created = _create(client, admin_headers)
    wrong = created | {"client_secret": "wrong"}
    for _ in range(5):
        assert _grant(client, wrong).status_code == 401
    locked = _grant(client, created)
    assert locked.status_code == 429 and int(locked.headers["Retry-After"]) > 0


def test_a_rotated_secret_works_for_its_grace_period_only(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    created = _create(client, admin_headers)
    rotated = client.post(f"/clients/{created['client_id']}/rotate", headers=admin_headers)
    assert rotated.status_code == 200
    new = rotated.json()
    assert new["client_secret"] != created["client_secret"]
    assert _grant(client, created).status_code == 200  # the old one, within the grace period
    assert _grant(client, new).status_code == 200
    with client.app.state.services.database.session() as session:  # type: ignore[attr-defined]
        session.execute(update(ServiceClientRow).values(previous_expires_at=time.time() - 1))
        session.commit()
    assert _grant(client, created).status_code == 401
    assert _grant(client, new).status_code == 200
    listed = client.get("/clients", headers=admin_headers).json()
    assert [c["client_id"] for c in listed] == [created["client_id"]]
    assert "client_secret" not in listed[0]
    user = bearer(get_token(client, "alice", "alice-password-1"))
    assert client.get("/clients", headers=user).status_code == 403


@pytest.fixture
def replicas(settings_factory: Callable[..., Settings]) -> Iterator[tuple[TestClient, TestClient]]:
    """Two replicas on one database, reading revocations every REFRESH s."""
    make = lambda: create_app(settings_factory(revocation_refresh_seconds=REFRESH))  # noqa: E731
    with TestClient(make()) as first, TestClient(make()) as second:
        yield first, second


@pytest.mark.parametrize("how", ["disable", "delete"])
def test_a_disabled_or_deleted_clients_tokens_fail_on_every_replica(
    replicas: tuple[TestClient, TestClient], how: str
) -> None:
    first, second = replicas
    admin = bearer(get_token(first, *ADMIN))
    created = _create(first, admin)
    token = _grant(first, created).json()["access_token"]
    assert _predicts(second, token) == 200
    if how == "disable":
        assert first.post(f"/clients/{created['client_id']}/disable", headers=admin).status_code == 200
    else:
        assert first.delete(f"/clients/{created['client_id']}", headers=admin).status_code == 204
    assert _predicts(first, token) == 401
    wait_until(lambda: _predicts(second, token) == 401, 5 * REFRESH + 2, "the revocation")
    assert _grant(second, created).status_code == 401


def test_the_cli_manages_clients(
    replicas: tuple[TestClient, TestClient],
    settings_factory: Callable[..., Settings],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first, second = replicas
    monkeypatch.setenv("DATABASE_URL", settings_factory().database_url)
    get_settings.cache_clear()
    try:
        made = CliRunner().invoke(cli, ["clients", "create", "nightly", "--scope", "predict"])
        assert made.exit_code == 0, made.output
        fields = dict(line.split(":", 1) for line in made.output.splitlines() if line.startswith("client_"))
        created = {k: v.strip() for k, v in fields.items()}
        token = _grant(first, created).json()["access_token"]
        listed = CliRunner().invoke(cli, ["clients", "list"])
        assert created["client_id"] in listed.output and created["client_secret"] not in listed.output
        rotated = CliRunner().invoke(cli, ["clients", "rotate", created["client_id"]])
        assert rotated.exit_code == 0 and "client_secret:" in rotated.output
        disabled = CliRunner().invoke(cli, ["clients", "disable", created["client_id"]])
        assert disabled.exit_code == 0, disabled.output
        wait_until(lambda: _predicts(second, token) == 401, 5 * REFRESH + 2, "the revocation")
        deleted = CliRunner().invoke(cli, ["clients", "delete", created["client_id"], "--yes"])
        assert deleted.exit_code == 0, deleted.output
        assert "no clients" in CliRunner().invoke(cli, ["clients", "list"]).output
    finally:
        get_settings.cache_clear()


def test_swagger_ui_is_offered_the_client_credentials_flow(client: TestClient) -> None:
    schemes = client.get("/openapi.json").json()["components"]["securitySchemes"]
    flows = schemes["OAuth2PasswordBearer"]["flows"]
    assert flows["password"]["tokenUrl"] == flows["clientCredentials"]["tokenUrl"] == "token"


def test_a_client_with_the_admin_scope_passes_admin_routes_until_it_is_disabled(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    created = _create(client, admin_headers, ["predict", "admin"])
    token = _grant(client, created).json()["access_token"]
    assert client.get("/clients", headers=bearer(token)).status_code == 200
    narrowed = _grant(client, created, scope="predict").json()["access_token"]
    assert client.get("/clients", headers=bearer(narrowed)).status_code == 403

    assert client.post(f"/clients/{created['client_id']}/disable", headers=admin_headers).status_code == 200
    assert client.get("/clients", headers=bearer(token)).status_code == 401
