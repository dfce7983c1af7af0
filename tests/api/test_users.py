from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from app.cli import cli
from app.core.config import Settings, get_settings
from app.db import crud
from app.db.session import Database
from app.main import create_app
from tests.support.tokens import ADMIN, USER, bearer, get_token


def test_admin_is_bootstrapped_only_when_no_user_exists(settings_factory: Callable[..., Settings]) -> None:
    settings = settings_factory()
    with TestClient(create_app(settings)) as client:
        assert client.post("/token", data={"username": ADMIN[0], "password": ADMIN[1]}).status_code == 200
    # A second start with other bootstrap credentials changes nothing.
    with TestClient(create_app(settings_factory(admin_username="root"))) as client:
        database = client.app.state.services.database  # type: ignore[attr-defined]
        with database.session() as session:
            assert [u.username for u in crud.list_users(session)] == ["admin"]
            assert sorted(crud.get_user(session, "admin").scope_list) == ["admin", "feedback", "predict"]


def test_users_api_for_admins(client: TestClient, admin_headers: dict[str, str]) -> None:
    created = client.post(
        "/users",
        json={"username": "bob", "password": "bob-password-1", "scopes": ["predict"]},
        headers=admin_headers,
    )
    assert created.status_code == 201
    assert created.json()["scopes"] == ["predict"]
    duplicate = client.post(
        "/users", json={"username": "bob", "password": "bob-password-1"}, headers=admin_headers
    )
    assert duplicate.status_code == 400
    names = [u["username"] for u in client.get("/users", headers=admin_headers).json()]
    assert names == ["admin", "alice", "bob"]
    assert client.post("/users/bob/disable", headers=admin_headers).json()["disabled"] is True
    assert client.post("/token", data={"username": "bob", "password": "bob-password-1"}).status_code == 401
    assert client.delete("/users/bob", headers=admin_headers).status_code == 204
    assert client.delete("/users/bob", headers=admin_headers).status_code == 404
    assert client.delete("/users/admin", headers=admin_headers).status_code == 400


def test_admin_endpoints_recheck_the_user_in_the_database(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    with client.app.state.services.database.session() as session:  # type: ignore[attr-defined]
        crud.set_disabled(session, ADMIN[0])
    assert client.get("/users", headers=admin_headers).status_code == 401
    assert client.post("/model/reload", headers=admin_headers).status_code == 401


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> Database:
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    get_settings.cache_clear()
    database = Database(settings.database_url)
    yield database
    database.dispose()
    get_settings.cache_clear()


def test_cli_manages_users(cli_env: Database) -> None:
    runner = CliRunner()

    def run(*args: str, password: str | None = None):
        env = {"PREDICTOR_NEW_PASSWORD": password} if password else {}
        return runner.invoke(cli, ["users", *args], env=env)

    result = run("create", "carol", "--scope", "predict", "--scope", "admin", password="carol-password-1")
    assert result.exit_code == 0, result.output
    assert "created carol (scopes: admin predict)" in result.output
    assert "carol" in run("list").output
    assert run("create", "carol", password="carol-password-1").exit_code == 1
    bad = run("create", "dave", "--scope", "root", password="dave-password-1")
    assert bad.exit_code == 1 and "unknown scope root" in bad.output
    assert run("create", "erin", password="short").exit_code == 1

    assert run("reset-password", "carol", password="carol-password-2").exit_code == 0
    with cli_env.session() as session:
        from app.core.security import verify_password

        assert verify_password("carol-password-2", crud.get_user(session, "carol").hashed_password)
    assert run("disable", "carol").exit_code == 0
    assert "disabled" in run("list").output
    assert run("enable", "carol").exit_code == 0
    assert run("delete", "carol", "--yes").exit_code == 0
    assert run("delete", "carol", "--yes").exit_code == 1
    assert "no users" in run("list").output


def test_cli_created_user_can_log_in(cli_env: Database, settings: Settings) -> None:
    result = CliRunner().invoke(
        cli, ["users", "create", "frank"], env={"PREDICTOR_NEW_PASSWORD": "frank-pw-123"}
    )
    assert result.exit_code == 0, result.output
    with TestClient(create_app(settings)) as client:
        token = get_token(client, "frank", "frank-pw-123")
        assert client.get("/model-info", headers=bearer(token)).status_code == 200
        assert USER[0] not in client.get("/health").text
