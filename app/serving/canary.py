"""The canary on this replica: the version answering a share of the requests, and who gets it.

The serving pointer names the canary and its plan (app/core/canary.py); every replica loads the
version and follows the plan within WATCH_SECONDS, as it follows the champion. A scoring route asks
`Canary.choose` once per request, so a request (a whole CSV file, a whole V2 batch) is answered by
one version; the answer's `model_version` says which. The choice also names the window its outcome
goes to (app/observability/role_outcomes.py), which the guards judge (app/serving/canary_guard.py).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

from app.adapters.model_store import ModelStore
from app.core.canary import CanaryDecision, CanaryPlan, answers_canary
from app.core.loading import ModelLoadError
from app.core.serving_pointer import PointerStore, ServingPointer
from app.core.versions import CacheFull, StoreUnavailable, UnknownVersion
from app.observability import metrics
from app.observability.drift import DriftSettings
from app.observability.role_outcomes import RoleOutcomes
from app.serving.predictor import Predictor
from app.serving.served_model import ServedModel
from app.serving.shadow import mismatch
from app.serving.store_health import StoreHealth

log = logging.getLogger("predictor")


class CanaryRefused(Exception):
    """This canary cannot start (the champion, the shadow, other features, one runs already)."""


@dataclass
class Canary:
    """A running canary: its plan, its model, and each role's window. Replaced whole when the plan
    moves (a step), keeping the model and the windows."""

    plan: CanaryPlan
    predictor: Predictor
    canary_window: RoleOutcomes
    champion_window: RoleOutcomes

    @property
    def version(self) -> str:
        return self.predictor.version

    def choose(
        self, champion: Predictor, user: str, headers: Mapping[str, str]
    ) -> tuple[Predictor, RoleOutcomes]:
        """The version answering this request, and the window its outcome goes to."""
        plan = self.plan
        if plan.sticky_by == "user":
            key: str | None = user
        elif plan.sticky_by == "none":
            key = None
        else:
            key = headers.get(plan.header or "")
            if key is None:  # a request without the header stays with the champion, every time
                return champion, self._window_of(champion)
        if answers_canary(plan, key):
            return self.predictor, self.canary_window
        return champion, self._window_of(champion)

    def _window_of(self, champion: Predictor) -> RoleOutcomes:
        window = self.champion_window
        if window.version != champion.version:  # the champion changed under the canary: a window anew
            window = self.champion_window = RoleOutcomes(champion.version, "champion", window.seconds)
        return window


class CanaryLifecycle:
    """Starts, follows and drops the canary the serving pointer names, on this replica."""

    def __init__(
        self,
        model: ServedModel,
        store: ModelStore,
        store_health: StoreHealth,
        pointer: PointerStore,
        drift: DriftSettings | None,
        window_seconds: float,
    ) -> None:
        self.model = model
        self.store = store
        self.store_health = store_health
        self.pointer = pointer
        self.drift = drift
        self.window_seconds = window_seconds
        self._current: Canary | None = None
        self._lock = threading.Lock()
        self._moved = 0.0  # when this replica last moved the canary: a pointer read before is stale
        self._refused: str | None = None  # a version that cannot be a canary: not retried every tick
        self._awaited: str | None = None  # not fetched yet: said once, retried every tick
        model.on_swap.append(self._champion_changed)

    @property
    def current(self) -> Canary | None:
        return self._current

    def start(self, plan: CanaryPlan, shadow: str | None) -> Canary:
        """Load `plan.version`, name it in the pointer, answer its share from now on.

        Raises UnknownVersion, StoreUnavailable, CacheFull, ModelLoadError or CanaryRefused; nothing
        changes then."""
        with self._lock:
            champion = self.model.current
            if champion is not None and plan.version == champion.version:
                raise CanaryRefused(f"version {plan.version} is the champion: a canary is another version")
            if plan.version == shadow:
                raise CanaryRefused(
                    f"version {plan.version} is the shadow: a canary and a shadow are different versions "
                    "(DELETE /model/shadow first)"
                )
            predictor = self._load(plan.version)
            decision = CanaryDecision(
                action="started",
                version=plan.version,
                reason=f"started at {plan.percent}% by {plan.started_by}",
                at=time.time(),
                by=plan.started_by,
            )
            if not self.pointer.set_canary(plan, decision, expected=None):
                running = self._named()
                if running is None:
                    raise CanaryRefused("no version was served through the serving pointer yet")
                raise CanaryRefused(
                    f"canary {running.version} runs already: DELETE /model/canary, or promote it, first"
                )
            self._moved = time.monotonic()
            return self._replace(plan, predictor)

    def end(self, decision: CanaryDecision) -> CanaryPlan | None:
        """End the canary on every replica (the champion answers everyone), recording `decision`;
        returns the plan that ran, None when none did."""
        with self._lock:
            for _ in range(3):  # another replica may move the plan (a step) between the read and the write
                running = self._named()
                if running is None or running.version != decision.version:
                    break
                if self.pointer.set_canary(None, decision, expected=running):
                    self._moved = time.monotonic()
                    self._set(None)
                    return running
            if self._current is not None and self._current.version == decision.version:
                self._set(None)  # the pointer has moved on: this replica follows at once
            return None

    def advance(self, running: CanaryPlan, plan: CanaryPlan, decision: CanaryDecision) -> bool:
        """Move the canary from `running` to `plan` (its next step) on every replica; False when the
        pointer no longer holds `running`."""
        with self._lock:
            if not self.pointer.set_canary(plan, decision, expected=running):
                return False
            self._moved = time.monotonic()
            current = self._current
            if current is not None and current.version == plan.version:
                self._set(dataclasses.replace(current, plan=plan))
            return True

    def follow(self, pointer: ServingPointer | None, read_at: float) -> None:
        """Load, move or drop the canary as the pointer read at `read_at` names it."""
        wanted = pointer.canary if pointer is not None else None
        champion = self.model.current
        if wanted is not None and champion is not None and wanted.version == champion.version:
            wanted = None  # promoted: nothing left to split
        with self._lock:
            if read_at < self._moved:
                return  # this replica moved the canary after that read: the next one will say
            current = self._current
            if wanted is None:
                if current is not None:
                    self._set(None)
                    log.info("canary %s ended", current.version)
                return
            if current is not None and current.version == wanted.version:
                if current.plan != wanted:
                    self._set(dataclasses.replace(current, plan=wanted))
                return
            if wanted.version == self._refused:
                return
            try:
                predictor = self._load(wanted.version)
            except (StoreUnavailable, CacheFull) as exc:
                if wanted.version != self._awaited:
                    log.warning("canary %s not fetched: %s", wanted.version, exc)
                self._awaited = wanted.version
                return
            except (ModelLoadError, UnknownVersion, CanaryRefused) as exc:
                self._refused = wanted.version
                log.warning(
                    "the serving pointer names canary %s, which cannot serve: %s", wanted.version, exc
                )
                return
            self._refused = self._awaited = None
            self._replace(wanted, predictor)
            log.info("canary %s answers %d%% of requests", wanted.version, wanted.percent)

    def close(self) -> None:
        with self._lock:
            self._set(None)

    def _named(self) -> CanaryPlan | None:
        pointer = self.pointer.get()
        return pointer.canary if pointer is not None else None

    def _champion_changed(self) -> None:
        self._refused = None  # one that did not fit the old champion may fit this one

    def _load(self, version: str) -> Predictor:
        """`version` fetched, verified and loaded, with a drift monitor of its own (the drift guard)
        that does not publish to the champion's gauges."""
        try:
            folder = self.store.fetch(version)
        except StoreUnavailable as exc:
            self.store_health.failed(exc)
            raise
        self.store_health.answered()
        predictor = Predictor.load(folder, self.model.max_rows, self.drift, self.model.threads)
        champion = self.model.current
        why = mismatch(champion.metadata, predictor.metadata) if champion is not None else None
        if why is not None:
            raise CanaryRefused(why)
        return dataclasses.replace(predictor, publishes_drift=False)

    def _replace(self, plan: CanaryPlan, predictor: Predictor) -> Canary:
        """A canary anew (fresh windows) for this plan and model, serving from now on."""
        champion = self.model.current
        canary = Canary(
            plan,
            predictor,
            RoleOutcomes(predictor.version, "canary", self.window_seconds),
            RoleOutcomes(champion.version if champion else "", "champion", self.window_seconds),
        )
        self._set(canary)
        return canary

    def _set(self, canary: Canary | None) -> None:
        self._current = canary
        metrics.CANARY_PERCENT.set(canary.plan.percent if canary is not None else 0)
        metrics.CANARY_STEP.set(canary.plan.step if canary is not None else -1)
