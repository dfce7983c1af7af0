"""Which model version serves: one pointer for the whole deployment, and the interface to it.

Every replica reads it every WATCH_SECONDS and serves the version it names; a promotion,
rollback or `models publish --serve` moves it. The service keeps it in the SQL database
(app/db/pointer.py), so replicas on many machines agree without sharing a disk.
"""

from __future__ import annotations

from typing import Protocol

from pydantic import BaseModel, ConfigDict

from app.core.canary import CanaryDecision, CanaryPlan
from app.core.messages import AliasOutcome


class ServingPointer(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str
    since: str
    reason: str
    # The version MODEL_DIR held when this was decided: once the pipeline writes another one, a
    # replica that has that newer output serves it at its next start rather than this choice.
    model_dir_version: str | None = None
    # The version scoring the same traffic in the background (POST /model/shadow), if any: moved
    # only by set_shadow, so a rollback or a promotion by a retraining job keeps it.
    shadow_version: str | None = None
    # Where MLflow's `champion` alias stands: the version it was last moved for, and how that went.
    alias_version: str | None = None
    alias: AliasOutcome | None = None
    # The version answering a share of the traffic (POST /model/canary), if any, and the last thing
    # that happened to a canary (started, advanced, rolled back, ...): moved only by set_canary.
    canary: CanaryPlan | None = None
    canary_decision: CanaryDecision | None = None


class PointerStore(Protocol):
    def get(self) -> ServingPointer | None:
        """The pointer, or None before any version was served. Raises when the store does not answer."""
        ...

    def set(self, pointer: ServingPointer) -> None:
        """Move the champion (everything but `shadow_version`, which it leaves as it is)."""
        ...

    def set_shadow(self, version: str | None) -> bool:
        """Name the shadow challenger (None: no shadow); False when there is no pointer yet."""
        ...

    def set_canary(
        self, plan: CanaryPlan | None, decision: CanaryDecision | None, expected: CanaryPlan | None
    ) -> bool:
        """Replace the canary with `plan` (None: no canary) and record `decision` (None: keep the
        last one), only if the canary is still `expected`: False (nothing written) when another
        replica moved it first, or there is no pointer yet."""
        ...

    def record_canary_decision(self, decision: CanaryDecision) -> None:
        """Record a decision that leaves the canary as it is (a step held back)."""
        ...

    def set_alias(self, version: str, outcome: AliasOutcome) -> bool:
        """Record how moving the alias to `version` went; False (nothing written) when the pointer
        has moved to another version since."""
        ...
