"""The canary's split and guards as pure functions: the same bucket in every process, a share that
grows without moving anyone off the canary, and each guard's judgement."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from app.core.canary import CanaryPlan, answers_canary, bucket, sticky_by_error
from app.core.canary_guards import CanaryLimits, WindowFigures, drift, errors, latency, quality
from app.core.quality import Confusion, Errors

LIMITS = CanaryLimits(min_requests=20, max_error_rate=0.02, max_p99_ratio=2.0, p99_floor_seconds=0.05)


def plan(percent: int, sticky_by: str = "user") -> CanaryPlan:
    return CanaryPlan(
        version="v2", percent=percent, sticky_by=sticky_by, started_at=0.0, step_since=0.0, started_by="admin"
    )


def test_a_bucket_is_the_same_in_another_process() -> None:
    # Python's hash() of a str differs per process: the split must not.
    code = "from app.core.canary import bucket; print([bucket('v2', f'user-{i}') for i in range(50)])"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert other.stdout.strip() == str([bucket("v2", f"user-{i}") for i in range(50)])


@pytest.mark.parametrize("percent", [1, 10, 50])
def test_the_share_of_keys_is_the_percent(percent: int) -> None:
    keys = 20_000
    hits = sum(answers_canary(plan(percent), f"user-{i}") for i in range(keys))
    p = percent / 100
    assert abs(hits - keys * p) <= 4.5 * math.sqrt(keys * p * (1 - p))


def test_a_growing_share_keeps_every_key_it_had() -> None:
    keys = [f"tenant-{i}" for i in range(5000)]
    shares = [{k for k in keys if answers_canary(plan(p), k)} for p in (5, 25, 50)]
    assert shares[0] < shares[1] < shares[2]


def test_another_canary_picks_other_users() -> None:
    keys = [f"user-{i}" for i in range(2000)]
    first = {k for k in keys if bucket("v2", k) < 2500}
    second = {k for k in keys if bucket("v3", k) < 2500}
    assert first != second


def test_sticky_by() -> None:
    assert sticky_by_error("user") is None and sticky_by_error("none") is None
    assert sticky_by_error("header:X-Tenant") is None
    assert plan(10, "header:X-Tenant").header == "x-tenant"
    for bad in ("cookie", "header:", "header:a b", "header:" + "x" * 65, "header:é"):
        assert sticky_by_error(bad) is not None, bad


def test_the_error_guard_counts_the_canary_against_the_champion() -> None:
    quiet = WindowFigures(requests=100, errors=1, p99=0.01)
    assert not errors(WindowFigures(10, 10, 0.01), quiet, LIMITS).breached  # too few to judge
    assert errors(WindowFigures(10, 10, 0.01), quiet, LIMITS).value is None
    assert not errors(WindowFigures(100, 3, 0.01), quiet, LIMITS).breached  # 3% against 1% + 2%
    breached = errors(WindowFigures(100, 4, 0.01), quiet, LIMITS)
    assert breached.breached and breached.value == 0.04 and breached.limit == 0.03
    # An outage that fails both is not the canary's fault.
    both = WindowFigures(100, 50, 0.01)
    assert not errors(WindowFigures(100, 50, 0.01), both, LIMITS).breached


def test_the_latency_guard_needs_a_ratio_and_the_floor() -> None:
    champion = WindowFigures(100, 0, 0.004)
    assert not latency(WindowFigures(100, 0, 0.03), champion, LIMITS).breached  # x7, but under 50 ms
    assert latency(WindowFigures(100, 0, 0.08), champion, LIMITS).breached
    slow = WindowFigures(100, 0, 0.1)
    assert not latency(WindowFigures(100, 0, 0.19), slow, LIMITS).breached  # under x2
    assert latency(WindowFigures(100, 0, 0.21), slow, LIMITS).breached
    assert latency(WindowFigures(5, 0, 1.0), champion, LIMITS).value is None  # too few


def confusion(right: int, wrong: int) -> Confusion:
    counts = Confusion()
    counts.add("a", "a", right)
    counts.add("a", "b", wrong)
    return counts


def test_the_quality_guard_applies_the_promotion_rule_once_both_have_labels() -> None:
    limits = CanaryLimits(quality_min_labels=50, quality_tolerance=0.05)
    assert quality("classification", confusion(90, 10), confusion(10, 30), limits).value is None
    assert not quality("classification", confusion(90, 10), confusion(43, 7), limits).breached  # 0.86
    worse = quality("classification", confusion(90, 10), confusion(42, 8), limits)  # 0.84 < 0.85
    assert worse.breached and worse.limit == 0.85
    errors_ok, errors_bad = Errors(), Errors()
    champion = Errors()
    for _ in range(60):
        champion.add(1.0, 1.2)
        errors_ok.add(1.0, 1.24)
        errors_bad.add(1.0, 1.3)
    assert not quality("regression", champion, errors_ok, limits).breached  # MAE 0.24 <= 0.2 + 0.05
    assert quality("regression", champion, errors_bad, limits).breached


def test_the_drift_guard_reads_the_worst_feature() -> None:
    limits = CanaryLimits(max_psi=0.2)
    assert drift({"a": math.nan}, limits).value is None
    assert not drift({"a": 0.1, "b": math.nan}, limits).breached
    reading = drift({"a": 0.1, "b": 0.5}, limits)
    assert reading.breached and reading.value == 0.5 and "PSI of b" in reading.detail
