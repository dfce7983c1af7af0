"""Database fixtures for every folder of the suite (a pytest plugin, loaded by tests/conftest.py).

`database_url` is a database of the test's own at the latest migration, on SQLite and again on
PostgreSQL (marked `postgres`: TEST_DATABASE_URL's server, or the local one). Each is a copy of a
template migrated once per worker: a file copy for SQLite, CREATE DATABASE ... TEMPLATE for
PostgreSQL, dropped afterwards. `empty_database_url` has no table yet, for tests of the migrations.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.db.session import Database
from tests.support.postgres import migrated_template, scratch_database


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file at the latest migration: each test starts from a copy, not the migrations."""
    path = tmp_path_factory.mktemp("template") / "users.db"
    database = Database(f"sqlite:///{path}")
    try:
        database.migrate()
    finally:
        database.dispose()
    return path


@pytest.fixture(scope="session")
def _postgres_template() -> Iterator[str]:
    """This worker's migrated PostgreSQL database, the template of each test's own."""
    with migrated_template() as name:
        yield name


@pytest.fixture
def postgres_url(_postgres_template: str) -> Iterator[str]:
    """A scratch database of this test's own on TEST_DATABASE_URL's server (or the local one)."""
    with scratch_database("api", template=_postgres_template) as url:
        yield url


BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path, _sqlite_template: Path) -> Iterator[str]:
    """A database of this test's own at the latest migration, on each backend."""
    if request.param == "sqlite":
        shutil.copyfile(_sqlite_template, tmp_path / "users.db")
        yield f"sqlite:///{tmp_path}/users.db"
        return
    yield request.getfixturevalue("postgres_url")


@pytest.fixture(params=BACKENDS)
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with no table yet, on each backend: for tests of the migrations themselves."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/empty.db"
        return
    with scratch_database("empty") as url:
        yield url
