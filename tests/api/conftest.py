"""API fixtures: a tiny real model in tmp_path, an isolated database (tests/support/databases.py),
an authenticated client. Every test that uses `client` runs against SQLite, and again against
PostgreSQL (marked `postgres`)."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.core.config import Settings
from app.db import crud
from app.main import create_app
from tests.support.models import write_model
from tests.support.tokens import ADMIN, SECRET, USER, bearer, get_token


@pytest.fixture(scope="session")
def _fitted_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {kind: (write_model(root / kind, kind), root / kind)[1] for kind in ("iris", "colors")}


@pytest.fixture
def model_dir(tmp_path: Path, _fitted_models: dict[str, Path]) -> Path:
    """A private copy of the iris model: tests may overwrite or corrupt it."""
    target = tmp_path / "models"
    shutil.copytree(_fitted_models["iris"], target)
    return target


@pytest.fixture
def colors_model_dir(tmp_path: Path, _fitted_models: dict[str, Path]) -> Path:
    target = tmp_path / "colors-model"
    shutil.copytree(_fitted_models["colors"], target)
    return target


@pytest.fixture
def settings_factory(database_url: str, model_dir: Path, tmp_path: Path) -> Callable[..., Settings]:
    def make(**overrides: object) -> Settings:
        values: dict[str, object] = {
            "secret_key": SECRET,
            "database_url": database_url,
            "model_dir": model_dir,
            "model_store_url": str(tmp_path / "versions"),
            "model_cache_dir": tmp_path / "model-cache",
            "jobs_dir": tmp_path / "jobs",
            "admin_username": ADMIN[0],
            "admin_password": ADMIN[1],
            "max_batch_rows": 5,
            "access_token_expire_minutes": 5,
        }
        return Settings(_env_file=None, **(values | overrides))  # type: ignore[call-arg]

    return make


@pytest.fixture
def settings(settings_factory: Callable[..., Settings]) -> Settings:
    return settings_factory()


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        with test_client.app.state.services.database.session() as session:  # type: ignore[attr-defined]
            crud.create_user(session, *USER, scopes=["predict"])
        yield test_client


@pytest.fixture
def admin_headers(client: TestClient) -> dict[str, str]:
    return bearer(get_token(client, *ADMIN))


@pytest.fixture
def user_headers(client: TestClient) -> dict[str, str]:
    return bearer(get_token(client, *USER))
