"""Scratch PostgreSQL databases: each test its own, copied from a migrated template, so no two tests
(nor two xdist workers) see each other's rows and none pays for the migrations."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url

from app.db.session import Database

# What tests use when TEST_DATABASE_URL is not set (this machine's PostgreSQL, trust auth).
LOCAL_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def server_url() -> URL:
    return make_url(os.environ.get("TEST_DATABASE_URL") or LOCAL_POSTGRES_URL)


@contextlib.contextmanager
def scratch_database(prefix: str, template: str | None = None) -> Iterator[str]:
    """A new database, empty or a copy of `template`, dropped afterwards; the test fails if
    PostgreSQL does not answer (the proof it is part of needs a real one)."""
    base = server_url()
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
    # WAL_LOG (PostgreSQL 15's default) copies a small template in ~50 ms without a checkpoint.
    copy = f' TEMPLATE "{template}" STRATEGY WAL_LOG' if template else ""
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"{copy}'))
    except Exception as exc:
        admin.dispose()
        pytest.fail(f"PostgreSQL not reachable at {base.render_as_string()}: {type(exc).__name__}: {exc}")
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextlib.contextmanager
def migrated_template() -> Iterator[str]:
    """A database at the latest migration, to copy (its name); nothing may stay connected to it."""
    with scratch_database("template") as url:
        database = Database(url)
        try:
            database.migrate()
        finally:
            database.dispose()
        yield make_url(url).database or ""
