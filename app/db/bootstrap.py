"""Start-up: migrate the schema, then create the first admin from the settings if no user exists.

Replicas and workers may start at the same moment against a fresh database, as pods do: the whole
of it runs under a database-wide lock (app.db.session.Database.exclusive), so it happens once and
the others find it done.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from app.core.config import Settings
from app.core.security import hash_password, use_password_cost
from app.db import crud
from app.db.session import Database

log = logging.getLogger("predictor")


def bootstrap(database: Database, settings: Settings) -> None:
    use_password_cost(settings.password_cost)
    password = settings.admin_password.get_secret_value()
    # A first start needs the admin's argon2 hash (~0.13 s): computed while the schema migrates, as
    # argon2 releases the GIL. Later starts have users and skip it.
    hashing = None
    if not _has_users(database):
        hashing = ThreadPoolExecutor(max_workers=1).submit(hash_password, password)
    with database.exclusive("bootstrap"):
        database.migrate()
        with database.session() as session:
            hashed = hashing.result() if hashing is not None else None
            admin = crud.ensure_admin(session, settings.admin_username, password, hashed=hashed)
    if admin is not None:
        log.info("created the first admin from ADMIN_USERNAME", extra={"fields": {"user": admin.username}})


def _has_users(database: Database) -> bool:
    """A cheap look before migrating: False also when the users table does not exist yet."""
    try:
        with database.engine.connect() as connection:
            return connection.execute(text("SELECT 1 FROM users LIMIT 1")).first() is not None
    except SQLAlchemyError:
        return False
