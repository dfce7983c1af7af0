"""The canary's guards: pure judgements of what each role answered lately.

Each guard reads one figure of the canary against a limit (most against the champion's figure over
the same window) and says whether it is breached. The caller (app/serving/canary_guard.py) keeps a
breach's start and rolls the canary back once one has lasted CANARY_HOLD_SECONDS: one bad second is
noise, a breach that holds is not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from app.core.canary import GuardName
from app.core.quality import PROMOTION_METRIC, Confusion, Errors, Quality, gate_bound, passes_gate


@dataclass(frozen=True)
class CanaryLimits:
    """The guards' settings (CANARY_*): app/core/config.py documents each."""

    window_seconds: float = 60.0
    hold_seconds: float = 5.0
    min_requests: int = 20
    max_error_rate: float = 0.02
    max_p99_ratio: float = 2.0
    p99_floor_seconds: float = 0.05
    quality_min_labels: int = 50
    quality_tolerance: float = 0.05
    quality_window_seconds: float = 3600.0
    max_psi: float = 0.2


@dataclass(frozen=True)
class WindowFigures:
    """One version's answers in one role over the window."""

    requests: int = 0
    errors: int = 0  # 5xx answers and failed model calls
    p99: float | None = None  # seconds; None without a request

    @property
    def error_rate(self) -> float:
        return min(1.0, self.errors / self.requests) if self.requests else 0.0


@dataclass(frozen=True)
class GuardReading:
    guard: GuardName
    breached: bool
    value: float | None  # the canary's figure (None: not enough yet to judge)
    limit: float | None  # what it was held against
    detail: str  # one sentence, for the decision and the log

    def figures(self) -> dict[str, float | None]:
        return {f"{self.guard}_value": self.value, f"{self.guard}_limit": self.limit}


def errors(canary: WindowFigures, champion: WindowFigures, limits: CanaryLimits) -> GuardReading:
    """Breached when the canary's error rate is above the champion's by more than the limit: an
    outage that fails both (the database, say) is not the canary's fault."""
    if canary.requests < limits.min_requests:
        return _waiting(
            "errors",
            f"{canary.requests} canary requests in the window, {limits.min_requests} needed",
            limits.max_error_rate,
        )
    base = champion.error_rate if champion.requests >= limits.min_requests else 0.0
    limit = round(base + limits.max_error_rate, 6)
    rate = round(canary.error_rate, 6)
    breached = rate > limit
    detail = (
        f"error rate {rate:.2%} over {canary.requests} requests against the champion's {base:.2%} "
        f"plus CANARY_MAX_ERROR_RATE {limits.max_error_rate:.2%}"
    )
    return GuardReading("errors", breached, rate, limit, detail)


def latency(canary: WindowFigures, champion: WindowFigures, limits: CanaryLimits) -> GuardReading:
    """Breached when the canary's p99 is above CANARY_MAX_P99_RATIO times the champion's and above
    CANARY_P99_FLOOR_MS (a millisecond's difference is noise, however large the ratio)."""
    if (
        canary.p99 is None
        or champion.p99 is None
        or min(canary.requests, champion.requests) < limits.min_requests
    ):
        return _waiting("latency", f"fewer than {limits.min_requests} requests of each role in the window")
    limit = round(max(champion.p99 * limits.max_p99_ratio, limits.p99_floor_seconds), 6)
    value = round(canary.p99, 6)
    detail = (
        f"p99 {value * 1000:.1f} ms against the champion's {champion.p99 * 1000:.1f} ms "
        f"(at most x{limits.max_p99_ratio:g}, "
        f"and never a breach under {limits.p99_floor_seconds * 1000:g} ms)"
    )
    return GuardReading("latency", value > limit, value, limit, detail)


def quality(
    task: str, champion: Confusion | Errors | None, canary: Confusion | Errors | None, limits: CanaryLimits
) -> GuardReading:
    """Breached when, on at least CANARY_QUALITY_MIN_LABELS labelled predictions of each, the canary's
    live metric fails the promotion gate's rule against the champion's (CANARY_QUALITY_TOLERANCE)."""
    metric, greater_is_better = PROMOTION_METRIC[task]
    ours = Quality.of(canary) if canary is not None else Quality(0)
    theirs = Quality.of(champion) if champion is not None else Quality(0)
    if min(ours.labelled, theirs.labelled) < limits.quality_min_labels:
        return _waiting(
            "quality",
            f"{ours.labelled} canary and {theirs.labelled} champion labelled predictions, "
            f"{limits.quality_min_labels} of each needed (CANARY_QUALITY_MIN_LABELS)",
        )
    value, against = ours.figure(metric), theirs.figure(metric)
    if math.isnan(value) or math.isnan(against):
        return _waiting("quality", f"no live {metric} yet")
    limit = round(gate_bound(against, limits.quality_tolerance, greater_is_better), 6)
    breached = not passes_gate(value, against, limits.quality_tolerance, greater_is_better)
    detail = (
        f"live {metric} {value:.4f} on {ours.labelled} labelled predictions against the champion's "
        f"{against:.4f} on {theirs.labelled} (tolerance {limits.quality_tolerance})"
    )
    return GuardReading("quality", breached, round(value, 6), limit, detail)


def drift(feature_psi: dict[str, float], limits: CanaryLimits) -> GuardReading:
    """Breached when a feature of the canary's inputs drifted past CANARY_MAX_PSI (the FeatureDrift
    alert's threshold) from the canary's own training data."""
    measured = {name: value for name, value in feature_psi.items() if not math.isnan(value)}
    if not measured:
        return _waiting("drift", "too few canary rows for drift yet (DRIFT_MIN_ROWS)", limits.max_psi)
    name, value = max(measured.items(), key=lambda item: item[1])
    detail = f"PSI of {name} {value:.3f} against CANARY_MAX_PSI {limits.max_psi}"
    return GuardReading("drift", value > limits.max_psi, round(value, 6), limits.max_psi, detail)


def _waiting(guard: GuardName, why: str, limit: float | None = None) -> GuardReading:
    """Not judged yet; the limit, where it does not depend on the champion's figure."""
    return GuardReading(guard, False, None, limit, f"not judged yet: {why}")
