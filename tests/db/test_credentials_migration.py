"""Migration 0008 creates service_clients and api_keys, and its downgrade drops them again."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, inspect

from app.db.session import MIGRATIONS_DIR


def _migrate(engine: Engine, revision: str, down: bool = False) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        (command.downgrade if down else command.upgrade)(config, revision)


def test_migration_0008_adds_the_credentials_tables_and_takes_them_back(empty_database_url: str) -> None:
    engine = create_engine(empty_database_url)
    try:
        _migrate(engine, "0008")
        tables = set(inspect(engine).get_table_names())
        assert {"service_clients", "api_keys"} <= tables
        assert {c["name"] for c in inspect(engine).get_columns("api_keys")} >= {
            "id", "owner", "secret_hash", "expires_at", "revoked", "last_used_at"
        }  # fmt: skip
        _migrate(engine, "0007", down=True)
        assert not {"service_clients", "api_keys"} & set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
