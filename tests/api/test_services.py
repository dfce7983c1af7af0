"""The service container: what starts is stopped, in reverse, threads joined before the database goes."""

from __future__ import annotations

import threading

import anyio
import pytest

from app.api import services as services_module
from app.api.services import start_services
from app.core.config import Settings
from app.db.session import Database

WATCHES = {"version-watch", "revocation-watch", "live-quality"}


def running_watches() -> set[str]:
    return {thread.name for thread in threading.enumerate()} & WATCHES


def test_shutdown_joins_every_watch_before_the_database_is_disposed(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    order: list[str] = []
    dispose = Database.dispose

    def disposing(self: Database) -> None:
        # Every watch thread has ended by the time the database goes.
        order.append(f"dispose with {sorted(running_watches())} running")
        dispose(self)

    monkeypatch.setattr(Database, "dispose", disposing)

    async def run() -> None:
        async with start_services(settings) as services:
            assert running_watches() == WATCHES
            assert services.serving.current is not None

    anyio.run(run)
    assert order == ["dispose with [] running"]


def test_a_start_that_fails_halfway_stops_what_had_started(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    disposed: list[bool] = []
    dispose = Database.dispose
    monkeypatch.setattr(Database, "dispose", lambda self: (disposed.append(True), dispose(self)))

    def broken(*_: object) -> None:
        raise RuntimeError("a part that fails to start")

    # The last part to start before the container is handed over.
    monkeypatch.setattr(services_module, "publish_thresholds", broken)

    async def run() -> None:
        async with start_services(settings):
            raise AssertionError("not reached")

    with pytest.raises(RuntimeError, match="fails to start"):
        anyio.run(run)
    assert running_watches() == set()
    assert disposed == [True]
