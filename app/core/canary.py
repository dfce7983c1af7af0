"""A canary release: another version answers a share of live traffic, beside the champion.

The plan lives with the serving pointer (app/core/serving_pointer.py) in the database, so every
replica follows it as it follows the pointer. Which requests the canary answers is a pure function of
the plan and the request's key (`answers_canary`): a hash, the same on every replica and process, of
the canary's version and the user (or a header's value), compared with the share. A bucket below 5%
is below 25% too, so a client the canary answered keeps it as the share grows, step by step.
"""

from __future__ import annotations

import hashlib
import random
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_PERCENT = 50
# The hash's buckets: a share is compared in hundredths of a percent.
_BUCKETS = 10_000
HEADER_PREFIX = "header:"
_HEADER_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")

GuardName = Literal["errors", "latency", "quality", "drift"]
GUARDS: tuple[GuardName, ...] = ("errors", "latency", "quality", "drift")
DecisionAction = Literal["started", "advanced", "held", "promoted", "rolled_back", "ended"]


class CanaryPlan(BaseModel):
    """A running canary: who it answers, at which step, and what each step waits for."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str
    percent: int = Field(ge=1, le=MAX_PERCENT)
    # user: by the token's subject; header:<name>: by that header's value; none: every request anew.
    sticky_by: str = "user"
    steps: tuple[int, ...] = ()  # the shares it moves through; empty: it stays at `percent`
    step: int = 0  # the index in `steps` it is at
    step_seconds: float = 0.0  # the least time at each step before the next
    step_labels: int = 0  # the least labelled predictions the canary answered at each step
    auto_promote: bool = False  # past the last step, promote it once the promotion gate passes
    started_at: float  # Unix time: every replica and process agrees on it
    step_since: float
    started_by: str

    @property
    def header(self) -> str | None:
        """The header whose value picks the version (lower case, as ASGI gives headers), if any."""
        if self.sticky_by.startswith(HEADER_PREFIX):
            return self.sticky_by[len(HEADER_PREFIX) :].lower()
        return None

    @property
    def last_step(self) -> bool:
        return not self.steps or self.step >= len(self.steps) - 1

    def advanced(self, at: float) -> CanaryPlan:
        """The plan at its next step, from `at`."""
        step = self.step + 1
        return self.model_copy(update={"step": step, "percent": self.steps[step], "step_since": at})


class CanaryDecision(BaseModel):
    """The last thing that happened to a canary, and why: what GET /model/canary shows."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    action: DecisionAction
    version: str
    reason: str
    at: float  # Unix time
    by: str  # the admin who asked, or "guard" when the service decided
    figures: dict[str, float | int | str | None] = {}


def bucket(version: str, key: str) -> int:
    """A stable bucket in [0, 10000) for `key` under this canary: blake2b, not hash(), which differs
    from one process to the next."""
    digest = hashlib.blake2b(f"{version}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % _BUCKETS


def answers_canary(plan: CanaryPlan, key: str | None) -> bool:
    """Whether the canary answers a request with this key (None: not sticky, drawn at random)."""
    threshold = plan.percent * (_BUCKETS // 100)
    if key is None:
        return random.random() * _BUCKETS < threshold  # noqa: S311 - a split, not a secret
    return bucket(plan.version, key) < threshold


def sticky_by_error(value: str) -> str | None:
    """Why `value` is not a sticky_by, or None when it is one."""
    if value in ("user", "none"):
        return None
    name = value[len(HEADER_PREFIX) :] if value.startswith(HEADER_PREFIX) else None
    if name is None:
        return f"sticky_by is 'user', 'none' or 'header:<name>', not {value!r}"
    if not _HEADER_NAME.fullmatch(name):
        return f"{name!r} is not a header name: letters, digits, '-' and '_', at most 64"
    return None
