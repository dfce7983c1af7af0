"""A version's window in its role: what the canary's guards read."""

from __future__ import annotations

from prometheus_client import REGISTRY

from app.observability.role_outcomes import RoleOutcomes


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_window_counts_times_and_forgets() -> None:
    clock = Clock()
    window = RoleOutcomes("w-v1", "canary", 60, clock)
    assert window.figures().requests == 0 and window.figures().p99 is None
    for i in range(100):
        window.answered(0.001 * (i + 1), server_error=i == 99)
    window.model_failed()
    window.answered_untimed(30.0, server_error=False)  # a CSV file: counted, its time left out
    figures = window.figures()
    assert (figures.requests, figures.errors) == (101, 2)
    assert 0.098 < (figures.p99 or 0) < 0.1
    labels = {"model_version": "w-v1", "role": "canary"}
    assert REGISTRY.get_sample_value("predictor_model_requests_total", labels) == 101
    assert REGISTRY.get_sample_value("predictor_model_errors_total", labels) == 2
    assert REGISTRY.get_sample_value("predictor_model_request_seconds_count", labels) == 100

    clock.now += 30
    window.answered(0.5, server_error=False)
    clock.now += 31  # the first hundred left the window; the last one is 31 s old
    figures = window.figures()
    assert (figures.requests, figures.errors, figures.p99) == (1, 0, 0.5)
    assert figures.error_rate == 0.0
