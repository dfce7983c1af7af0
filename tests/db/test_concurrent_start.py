"""Replicas and workers starting at the same moment on a fresh database, as pods do: the migrations
and the first admin happen once, and no start fails."""

from __future__ import annotations

import subprocess
import sys

from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, text

from app.db.session import MIGRATIONS_DIR
from tests.support.paths import ROOT
from tests.support.tokens import ADMIN

BOOTSTRAP = """
import sys
from app.core.config import Settings
from app.db.bootstrap import bootstrap
from app.db.session import Database
url, user, password = sys.argv[1:4]
settings = Settings(_env_file=None, database_url=url, admin_username=user, admin_password=password)
database = Database(settings.database_url)
sys.stdin.readline()  # everyone starts together
bootstrap(database, settings)
"""


def test_six_processes_bootstrap_one_fresh_database_once(empty_database_url: str) -> None:
    starts = [
        subprocess.Popen(
            [sys.executable, "-c", BOOTSTRAP, empty_database_url, *ADMIN],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            text=True,
        )
        for _ in range(6)
    ]
    for process in starts:  # all imported and waiting: release them at once
        assert process.stdin is not None
        process.stdin.write("go\n")
        process.stdin.flush()
    outputs = [process.communicate(timeout=120)[0] for process in starts]
    assert [process.returncode for process in starts] == [0] * 6, "\n".join(outputs)
    engine = create_engine(empty_database_url)
    try:
        with engine.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM users")).scalar() == 1
            assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar() == _head()
    finally:
        engine.dispose()


def _head() -> str:
    """The newest migration's revision: where every start must leave the database."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head
