"""API fixtures: a tiny real model in tmp_path, an isolated database, an authenticated client.

Every test that uses `client` runs against SQLite, and again against PostgreSQL when
TEST_DATABASE_URL is set (each PostgreSQL test gets its own schema, dropped afterwards).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from app.core.config import Settings
from app.db import crud
from app.main import create_app
from tests.support.models import write_model
from tests.support.postgres import LOCAL_POSTGRES_URL
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


def _postgres_schema_url(base: str, schema: str) -> str:
    url = make_url(base)
    return url.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)


@contextlib.contextmanager
def scratch_schema(base: str) -> Iterator[str]:
    """A URL on `base` whose tables go to a new schema, dropped afterwards."""
    schema = f"test_{uuid.uuid4().hex[:12]}"
    admin_engine = create_engine(base)
    with admin_engine.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield _postgres_schema_url(base, schema)
    finally:
        with admin_engine.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin_engine.dispose()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A scratch schema on TEST_DATABASE_URL, or on a local PostgreSQL; skips only when none answers."""
    base = os.environ.get("TEST_DATABASE_URL") or LOCAL_POSTGRES_URL
    engine = create_engine(base, connect_args={"connect_timeout": 3})
    try:
        with engine.connect():
            pass
    except OperationalError as exc:
        pytest.skip(f"PostgreSQL not reachable at {make_url(base).render_as_string()}: {type(exc).__name__}")
    finally:
        engine.dispose()
    with scratch_schema(base) as url:
        yield url


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param(
            "postgresql",
            marks=pytest.mark.skipif(
                not os.environ.get("TEST_DATABASE_URL"), reason="TEST_DATABASE_URL is not set"
            ),
        ),
    ]
)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/users.db"
        return
    with scratch_schema(os.environ["TEST_DATABASE_URL"]) as url:
        yield url


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
        with test_client.app.state.database.session() as session:  # type: ignore[attr-defined]
            crud.create_user(session, *USER, scopes=["predict"])
        yield test_client


@pytest.fixture
def admin_headers(client: TestClient) -> dict[str, str]:
    return bearer(get_token(client, *ADMIN))


@pytest.fixture
def user_headers(client: TestClient) -> dict[str, str]:
    return bearer(get_token(client, *USER))
