"""Alembic environment: migrations run on the connection the app hands over (Database.migrate)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from app.db.models import Base

connection: Connection | None = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through app.db.session.Database.migrate()")

context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
