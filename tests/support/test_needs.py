"""A test that needs a tool is skipped by hand with how to get it, and fails the run under make test."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.paths import ROOT
from tests.support.servers import free_port

NEEDS_POSTGRES = """
import pytest

@pytest.mark.postgres
def test_with_a_database():
    pass

def test_without():
    pass
"""


def run_pytest(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # PostgreSQL at a port nothing listens on: the `postgres` marker's check finds none.
    env = os.environ | {
        "TEST_DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/test",
        "PYTHONPATH": str(ROOT),
    }
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.support.needs", "-p", "no:cacheprovider", "-rs", *args],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_missing_tool_skips_with_how_to_get_it_and_fails_the_run_when_asked(tmp_path: Path) -> None:
    (tmp_path / "test_sample.py").write_text(NEEDS_POSTGRES)
    by_hand = run_pytest(tmp_path)
    assert by_hand.returncode == 0, by_hand.stdout
    assert "1 passed, 1 skipped" in by_hand.stdout
    assert "needs a PostgreSQL server at TEST_DATABASE_URL" in by_hand.stdout
    assert "deselect with -m 'not postgres'" in by_hand.stdout

    strict = run_pytest(tmp_path, "--fail-on-skip")
    assert strict.returncode == 1, strict.stdout
    assert "--fail-on-skip: skipped tests fail the run" in strict.stdout
    assert "test_sample.py::test_with_a_database" in strict.stdout

    deselected = run_pytest(tmp_path, "--fail-on-skip", "-m", "not postgres")
    assert deselected.returncode == 0, deselected.stdout
