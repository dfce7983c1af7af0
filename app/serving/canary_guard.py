"""The canary's guards and steps on this replica: every CANARY_CHECK_SECONDS, judge what the canary
and the champion answered lately, roll the canary back when a guard stays breached, and move it to
its next step (or promote it, past the last) when every guard holds.

Errors and latency are this replica's own windows (app/observability/role_outcomes.py); live
quality and the labels a step waits for are the prediction log's, which every replica reads alike;
drift is the canary's own monitor. Every replica judges: the first to decide writes the decision to
the serving pointer (compare and set, so one rollback is counted once), and the others follow it
within WATCH_SECONDS; the deciding replica drops the canary at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

from app.core.canary import GUARDS, CanaryDecision, GuardName
from app.core.canary_guards import CanaryLimits, GuardReading, drift, errors, latency, quality
from app.core.live_evidence import LiveEvidence
from app.core.outage import Outage
from app.core.periodic import Periodic
from app.core.quality import Confusion, Errors
from app.observability import metrics
from app.serving.canary import Canary, CanaryLifecycle

log = logging.getLogger("predictor")

CHECK_SECONDS = 1.0


class LabelledCounts(Protocol):
    """What the prediction log aggregates per served version (app.db.prediction_log)."""

    def confusions(self, since: float) -> dict[str, Confusion]: ...

    def errors(self, since: float) -> dict[str, Errors]: ...


class CanaryGuard:
    def __init__(
        self,
        canaries: CanaryLifecycle,
        counts: LabelledCounts,
        limits: CanaryLimits,
        promote: Callable[[Canary, LiveEvidence], object],
        promotion_min_labels: int,
        promotion_tolerance: float,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.canaries = canaries
        self.counts = counts
        self.limits = limits
        self.promote = promote  # serve the canary as champion on every replica (ServingState.promote_canary)
        self.promotion_min_labels = promotion_min_labels
        self.promotion_tolerance = promotion_tolerance
        self._clock = clock
        self._monotonic = monotonic
        # For GET /model/canary: the last readings, since when each breach lasts, and what the next
        # step waits for.
        self.readings: dict[GuardName, GuardReading] = {}
        self.breached_since: dict[GuardName, float] = {}  # Unix time
        self.waiting_for: str | None = None
        self._breach_started: dict[GuardName, float] = {}  # monotonic
        self._judged: str | None = None  # the canary version the above are about
        self._held: tuple[str, int, str] | None = None  # the last "held" decision written: not again
        self.health = Outage("canary guard: labelled predictions not read", "canary guard: read again")

    def watch(self, interval: float = CHECK_SECONDS) -> Periodic:
        return Periodic("canary-guard", interval, self.check).start()

    def check(self) -> None:
        canary = self.canaries.current
        if canary is None or canary.version != self._judged:
            self._reset(canary.version if canary is not None else None)
        if canary is None:
            return
        readings, labelled = self._read(canary)
        now = self._monotonic()
        for guard, reading in readings.items():
            if reading.breached:
                if guard not in self._breach_started:
                    self._breach_started[guard] = now
                    self.breached_since[guard] = self._clock()
                    log.warning(f"canary {canary.version}: {guard} guard breached: {reading.detail}")
            else:
                self._breach_started.pop(guard, None)
                self.breached_since.pop(guard, None)
            metrics.CANARY_GUARD_BREACHED.labels(guard=guard).set(1 if reading.breached else 0)
        self.readings = readings
        held = [g for g, start in self._breach_started.items() if now - start >= self.limits.hold_seconds]
        if held:
            self._roll_back(canary, readings[held[0]], now - self._breach_started[held[0]])
            return
        if self._breach_started:
            self.waiting_for = "a guard is breached: the next step waits until every guard holds"
            return
        if labelled is None:
            self.waiting_for = "the prediction log did not answer: the next step waits for it"
            return
        self._next_step(canary, labelled)

    # --- reading the guards ---

    def _read(self, canary: Canary) -> tuple[dict[GuardName, GuardReading], int | None]:
        """Every guard's reading, and the canary's labelled predictions at this step (None: the
        prediction log did not answer)."""
        ours, theirs = canary.canary_window.figures(), canary.champion_window.figures()
        readings: dict[GuardName, GuardReading] = {
            "errors": errors(ours, theirs, self.limits),
            "latency": latency(ours, theirs, self.limits),
        }
        plan, task = canary.plan, canary.predictor.metadata.task
        since = max(plan.started_at, self._clock() - self.limits.quality_window_seconds)
        labelled: int | None = None
        try:
            counted = self._labelled(task, since)
            at_step = counted if plan.step_since == since else self._labelled(task, plan.step_since)
        except Exception as exc:
            self.health.failed(exc)
            readings["quality"] = GuardReading(
                "quality", False, None, None, "not judged: the prediction log did not answer"
            )
        else:
            self.health.answered()
            champion = canary.champion_window.version
            readings["quality"] = quality(
                task, counted.get(champion), counted.get(canary.version), self.limits
            )
            found = at_step.get(canary.version)
            labelled = found.labelled if found is not None else 0
        monitor = canary.predictor.drift
        readings["drift"] = (
            drift(monitor.feature_psi(), self.limits)
            if monitor is not None
            else GuardReading(
                "drift", False, None, None, "not judged: drift is off (DRIFT_ENABLED, METRICS_ENABLED)"
            )
        )
        return readings, labelled

    def _labelled(self, task: str, since: float) -> dict[str, Confusion | Errors]:
        if task == "classification":
            return dict(self.counts.confusions(since))
        return dict(self.counts.errors(since))

    # --- deciding ---

    def _roll_back(self, canary: Canary, reading: GuardReading, lasted: float) -> None:
        figures: dict[str, float | int | str | None] = {"breached_for_seconds": round(lasted, 3)}
        for each in self.readings.values():
            figures.update(each.figures())
        decision = CanaryDecision(
            action="rolled_back",
            version=canary.version,
            reason=f"{reading.guard} guard breached for {lasted:.1f} s: {reading.detail}",
            at=self._clock(),
            by="guard",
            figures=figures,
        )
        if self.canaries.end(decision) is not None:
            metrics.CANARY_ROLLBACKS.labels(reason=reading.guard).inc()
            log.warning(
                f"canary {canary.version} rolled back: {decision.reason}",
                extra={"fields": {"version": canary.version, "guard": reading.guard, **figures}},
            )
        self._reset(None)

    def _next_step(self, canary: Canary, labelled: int) -> None:
        plan = canary.plan
        if plan.last_step and not plan.auto_promote:
            self.waiting_for = "an admin: at its last step, POST /model/canary/promote makes it champion"
            return
        age = self._clock() - plan.step_since
        if age < plan.step_seconds:
            self.waiting_for = f"{plan.step_seconds - age:.0f} s more at {plan.percent}% (step_seconds)"
            return
        if labelled < plan.step_labels:
            self._hold(
                canary,
                "labels",
                f"{labelled} labelled predictions of the canary at {plan.percent}%, "
                f"{plan.step_labels} needed (step_labels)",
            )
            return
        if not plan.last_step:
            advanced = plan.advanced(self._clock())
            decision = CanaryDecision(
                action="advanced",
                version=plan.version,
                reason=f"{plan.percent}% to {advanced.percent}% after {age:.0f} s and {labelled} labelled "
                "predictions, every guard holding",
                at=self._clock(),
                by="guard",
                figures={"step": advanced.step, "percent": advanced.percent, "labelled": labelled},
            )
            if self.canaries.advance(plan, advanced, decision):
                self.waiting_for = None
                log.info(
                    f"canary {plan.version}: {decision.reason}", extra={"fields": {"version": plan.version}}
                )
            return
        # Past the last step, with auto_promote: the promotion gate's live comparison decides.
        try:
            counted = self._labelled(canary.predictor.metadata.task, plan.started_at)
        except Exception as exc:
            self.health.failed(exc)
            return
        evidence = LiveEvidence.weigh_canary(
            canary.predictor.metadata.task,
            counted.get(canary.champion_window.version),
            counted.get(canary.version),
            self.promotion_min_labels,
            self.promotion_tolerance,
        )
        refusal = evidence.refusal
        if refusal is not None:
            self._hold(canary, "promotion", f"promotion refused: {refusal}")
            return
        try:
            self.promote(canary, evidence)
        except Exception as exc:  # the store or the database: the canary runs on, tried again next tick
            log.warning("canary %s not promoted: %s", canary.version, exc)
            return
        log.info(
            f"canary {canary.version} promoted on live evidence",
            extra={"fields": {"version": canary.version, **evidence.figures()}},
        )
        self._reset(None)

    def _hold(self, canary: Canary, kind: str, why: str) -> None:
        """The next step waits (for `kind`: labels, or the promotion gate): said in GET /model/canary,
        and written once per step and kind as a decision."""
        self.waiting_for = why
        key = (canary.version, canary.plan.step, kind)
        if self._held == key:
            return
        self._held = key
        decision = CanaryDecision(
            action="held", version=canary.version, reason=why, at=self._clock(), by="guard"
        )
        try:
            self.canaries.pointer.record_canary_decision(decision)
        except Exception as exc:
            self.health.failed(exc)

    def _reset(self, version: str | None) -> None:
        self._judged = version
        self._breach_started.clear()
        self.breached_since.clear()
        self.readings = {}
        self.waiting_for = None
        for guard in GUARDS:
            metrics.CANARY_GUARD_BREACHED.labels(guard=guard).set(0)
