"""Start-up: migrate the schema, then create the first admin from the settings if no user exists."""

from __future__ import annotations

import logging

from app.core.config import Settings
from app.db import crud
from app.db.session import Database

log = logging.getLogger("predictor")


def bootstrap(database: Database, settings: Settings) -> None:
    database.migrate()
    with database.session() as session:
        admin = crud.ensure_admin(
            session, settings.admin_username, settings.admin_password.get_secret_value()
        )
    if admin is not None:
        log.info("created the first admin from ADMIN_USERNAME", extra={"fields": {"user": admin.username}})
