"""Scratch PostgreSQL databases for tests that run real processes against one (CI's TEST_DATABASE_URL)."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

# What tests use when TEST_DATABASE_URL is not set (this machine's PostgreSQL, trust auth).
LOCAL_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@contextlib.contextmanager
def scratch_database(prefix: str) -> Iterator[str]:
    """A new, empty database, dropped afterwards; the test fails if PostgreSQL does not answer (the
    proof it is part of needs a real one)."""
    base = make_url(os.environ.get("TEST_DATABASE_URL") or LOCAL_POSTGRES_URL)
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        admin.dispose()
        pytest.fail(f"PostgreSQL not reachable at {base.render_as_string()}: {type(exc).__name__}")
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
