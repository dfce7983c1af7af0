"""Periodic runs a task every interval from its own thread; stop() ends it and waits for it."""

from __future__ import annotations

import logging
import threading

import pytest

from app.core.periodic import Periodic


def test_runs_until_stopped_and_stop_waits_for_the_task_in_progress() -> None:
    calls = 0
    inside = threading.Event()
    release = threading.Event()

    def task() -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            inside.set()
            release.wait(5)

    periodic = Periodic("test-loop", 0.001, task).start()
    assert inside.wait(5)
    threading.Timer(0.05, release.set).start()
    periodic.stop()  # returns only once the third call has finished
    assert release.is_set() and not periodic.running and calls == 3


def test_at_start_runs_at_once_and_a_failing_task_is_said_and_survived(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[int] = []

    def task() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("boom")

    seen = threading.Event()
    periodic = Periodic("flaky", 0.001, lambda: (task(), len(calls) >= 3 and seen.set()), at_start=True)
    with caplog.at_level(logging.ERROR, logger="predictor"):
        periodic.start()
        assert seen.wait(5)
        periodic.stop()
    assert [r.getMessage() for r in caplog.records] == ["flaky failed"]
    with pytest.raises(RuntimeError, match="already started"):
        periodic.start()
