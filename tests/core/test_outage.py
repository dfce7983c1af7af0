"""Outage: a dependency's going and coming back is said once each, its gauge follows every change."""

from __future__ import annotations

import logging

import pytest

from app.core.outage import Outage


def test_said_once_per_outage_and_the_gauge_follows(caplog: pytest.LogCaptureFixture) -> None:
    gauge: list[bool] = []
    outage = Outage("store unreachable", "store answers again", gauge.append)
    with caplog.at_level(logging.INFO, logger="predictor"):
        outage.answered()
        outage.failed(ConnectionError("refused\nmore detail"))
        outage.failed(ConnectionError("refused again"))
        assert outage.failing and outage.error == "ConnectionError: refused again"
        outage.answered()
        outage.answered()
    assert [r.getMessage() for r in caplog.records] == [
        "store unreachable: ConnectionError: refused",
        "store answers again",
    ]
    assert gauge == [True, False, True] and outage.error is None and not outage.failing


def test_a_flapping_dependency_is_not_said_again_within_the_settle_time(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    gauge: list[bool] = []
    outage = Outage("down", "back", gauge.append, settle_seconds=10, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="predictor"):
        outage.failed("first")
        outage.answered()  # back: said
        now[0] += 1
        outage.failed("again")  # within 10 s of coming back: the same outage, not said
        outage.answered()
        now[0] += 30
        outage.failed("later")  # a new outage: said
    assert [r.getMessage() for r in caplog.records] == ["down: first", "back", "down: later"]
    assert gauge == [False, True, False, True, False]
