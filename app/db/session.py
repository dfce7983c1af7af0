"""Engine and sessions for DATABASE_URL, and the migrations applied at start-up."""

from __future__ import annotations

import fcntl
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS_DIR = Path(__file__).parent / "migrations"

# A database that does not answer fails the request in seconds (a 503), rather than holding it:
# PostgreSQL's connect timeout, SQLite's wait for another process's lock.
CONNECT_TIMEOUT_SECONDS = 3
# The wait for a pooled connection when all are taken, e.g. by requests stuck connecting.
POOL_TIMEOUT_SECONDS = 10


def make_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        # FastAPI runs plain `def` routes in a thread pool: connections cross threads.
        connect_args = {"check_same_thread": False, "timeout": CONNECT_TIMEOUT_SECONDS}
        if not parsed.database or parsed.database == ":memory:":
            return create_engine(url, connect_args=connect_args)  # one connection, no pool to wait for
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        return create_engine(url, pool_timeout=POOL_TIMEOUT_SECONDS, connect_args=connect_args)
    connect_args = (
        {"connect_timeout": CONNECT_TIMEOUT_SECONDS} if parsed.get_backend_name() == "postgresql" else {}
    )
    return create_engine(
        url, pool_pre_ping=True, pool_timeout=POOL_TIMEOUT_SECONDS, connect_args=connect_args
    )


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions() as session:
            yield session

    @contextmanager
    def exclusive(self, name: str) -> Iterator[None]:
        """Hold a lock named `name` across every process using this database, until the block ends.

        PostgreSQL: a session-level advisory lock, so replicas on other machines wait too. SQLite is
        one machine's file: a lock file beside it does the same.
        """
        parsed = make_url(self.url)
        if parsed.get_backend_name() == "postgresql":
            key = zlib.crc32(name.encode())  # a stable number for the name
            with self.engine.connect() as connection:
                connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
                connection.commit()
                try:
                    yield
                finally:
                    connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                    connection.commit()
            return
        if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
            with Path(f"{parsed.database}.{name}.lock").open("a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                yield  # closing the file releases the lock
            return
        yield  # an in-memory database belongs to one process

    def ping(self) -> None:
        """Raises when the database does not answer."""
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    def migrate(self) -> None:
        """Bring the schema to the latest Alembic revision (a no-op when it is already there)."""
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        with self.engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    def dispose(self) -> None:
        self.engine.dispose()
