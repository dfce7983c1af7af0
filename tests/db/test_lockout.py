"""The login lockout rule, on the throttle the service uses (counted in a SQLite users database)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from app.db.models import LoginFailure
from app.db.session import Database
from app.db.throttle import DatabaseLoginThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path}/users.db")
    database.migrate()
    yield database
    database.dispose()


def test_five_failures_within_the_window_lock_the_username_until_it_passes(database: Database) -> None:
    clock = Clock()
    throttle = DatabaseLoginThrottle(database.session, 5, 900, clock=clock)
    for _ in range(4):
        throttle.record_failure("Alice")
        clock.now += 10
    assert throttle.retry_after("alice") is None
    throttle.record_failure("alice")
    # Locked until the first failure (t=1000) leaves the window: 1900 - 1040.
    assert throttle.retry_after("ALICE") == 860
    assert throttle.retry_after("bob") is None
    clock.now = 1899.5
    assert throttle.retry_after("alice") == 1
    clock.now = 1900.0
    assert throttle.retry_after("alice") is None


def test_old_failures_do_not_count(database: Database) -> None:
    clock = Clock()
    throttle = DatabaseLoginThrottle(database.session, 5, 900, clock=clock)
    for _ in range(4):
        throttle.record_failure("alice")
    clock.now += 901
    throttle.record_failure("alice")
    assert throttle.retry_after("alice") is None


def test_reset_clears_failures_and_expired_rows_are_deleted(database: Database) -> None:
    clock = Clock()
    throttle = DatabaseLoginThrottle(database.session, 2, 900, clock=clock)
    throttle.record_failure("alice")
    throttle.reset("alice")
    throttle.record_failure("alice")
    assert throttle.retry_after("alice") is None
    for name in ("a", "b", "c", "d"):
        throttle.record_failure(name)
    clock.now += 901  # a flood of made-up names is bounded by the window: the next failure sweeps them
    throttle.record_failure("e")
    with database.session() as session:
        assert session.scalar(select(func.count()).select_from(LoginFailure)) == 1
