"""The canary's routes: start one, see it, end it, promote it (app/serving/canary.py).

A canary answers a share of the live requests on every replica, sticky by user or by a header, and
moves through its steps by itself while its guards hold (app/serving/canary_guard.py), which roll it
back when one stays breached. Promotion compares the two on their own labelled predictions since the
canary started, with the promotion gate's rule (app/core/live_evidence.py).
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, HTTPException, Request, status
from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.api.deps import AdminDep, ClaimsDep, PredictionsDep, PredictorDep, ServingDep, services
from app.api.errors import ErrorDetail
from app.api.routes.model import _CACHE_FULL, _STORE_DOWN, _swap, loading_beside_the_champion
from app.core.canary import MAX_PERCENT, CanaryDecision, CanaryPlan, sticky_by_error
from app.core.live_evidence import LiveEvidence
from app.core.messages import AliasOutcome
from app.core.versions import UnknownVersion
from app.db.hour_bucket import HOUR_SECONDS
from app.serving.canary import CanaryRefused

router = APIRouter(tags=["model"])
log = logging.getLogger("predictor")


class CanaryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str = Field(min_length=1, max_length=64, examples=["2026-11-23T03-14-31"])
    # The share it answers (1 to 50); with `steps`, their first (it may be left out).
    percent: int | None = Field(default=None, ge=1, le=MAX_PERCENT, examples=[10])
    # user: the token's subject keeps one version; header:<name>: that header's value does (a request
    # without it gets the champion); none: each request is drawn anew.
    sticky_by: str = Field(default="user", max_length=72, examples=["user", "header:X-Tenant", "none"])
    # The shares it moves through by itself, rising, each 1 to 50: e.g. [5, 25, 50].
    steps: list[int] = Field(default=[], max_length=20, examples=[[5, 25, 50]])
    # The least time, and labelled predictions of the canary's, at each step before the next
    # (CANARY_STEP_SECONDS, CANARY_STEP_MIN_LABELS when left out).
    step_seconds: float | None = Field(default=None, ge=0, le=7 * 24 * 3600)
    step_labels: int | None = Field(default=None, ge=0, le=10_000_000)
    # Past the last step, promote it by itself once the promotion gate passes on live evidence.
    auto_promote: bool = False

    @model_validator(mode="after")
    def _a_plan(self) -> CanaryRequest:
        why = sticky_by_error(self.sticky_by)
        if why is not None:
            raise ValueError(why)
        if any(not 1 <= step <= MAX_PERCENT for step in self.steps):
            raise ValueError(f"every step is a share from 1 to {MAX_PERCENT} percent")
        if any(later <= earlier for earlier, later in zip(self.steps, self.steps[1:], strict=False)):
            raise ValueError("steps rise: each share above the one before, e.g. [5, 25, 50]")
        if self.percent is None and not self.steps:
            raise ValueError("give the share: percent (1 to 50), or steps")
        if self.percent is not None and self.steps and self.percent != self.steps[0]:
            raise ValueError(f"percent {self.percent} is not the first step {self.steps[0]}: leave one out")
        return self


class CanaryView(BaseModel):
    version: str
    percent: int
    sticky_by: str
    steps: list[int]
    step: int  # the index in steps it is at (0 without steps)
    step_seconds: float
    step_labels: int
    auto_promote: bool
    started_at: str
    step_since: str
    started_by: str


class DecisionView(BaseModel):
    action: str  # started, advanced, held, promoted, rolled_back, ended
    version: str
    reason: str
    at: str
    by: str  # the admin, or "guard"
    figures: dict[str, float | int | str | None]


class GuardView(BaseModel):
    guard: str  # errors, latency, quality, drift
    breached: bool
    value: float | None  # the canary's figure; null until there is enough to judge
    limit: float | None
    detail: str
    breached_since: str | None


class CanaryStatus(BaseModel):
    canary: CanaryView | None
    model_version: str | None  # the champion
    shadow: str | None
    last_decision: DecisionView | None
    # This replica's judgement (each replica judges its own traffic; the first to decide acts for all).
    guards: list[GuardView]
    waiting_for: str | None  # what the next step (or an automatic promotion) waits for


class CanaryEnded(BaseModel):
    canary: None = None
    ended: str | None  # the version that was the canary; null: none ran


class CanaryEvidence(BaseModel):
    metric: str
    champion: float | None
    canary: float | None
    labelled: int  # the fewer of the two models' labelled predictions since the canary started
    min_labels: int
    tolerance: float


class CanaryPromoted(BaseModel):
    previous_version: str
    model_version: str
    evidence: CanaryEvidence
    mlflow: AliasOutcome


_REFUSED = {
    "model": ErrorDetail,
    "description": "The version is the champion or the shadow, takes other features, fails "
    "verification, or a canary runs already",
}


@router.post(
    "/model/canary",
    responses={
        404: {"model": ErrorDetail, "description": "No such version in the store"},
        409: _REFUSED,
        503: _STORE_DOWN,
        507: _CACHE_FULL,
    },
)
def start_canary(body: CanaryRequest, admin: AdminDep, serving: ServingDep, request: Request) -> CanaryStatus:
    """Answer a share of the live requests with another stored version, on every replica: sticky by
    user or header, through its steps while its guards hold, rolled back when one stays breached."""
    settings = services(request).settings
    at = time.time()
    plan = CanaryPlan(
        version=body.version,
        percent=body.percent if body.percent is not None else body.steps[0],
        sticky_by=body.sticky_by,
        steps=tuple(body.steps),
        step_seconds=body.step_seconds if body.step_seconds is not None else settings.canary_step_seconds,
        step_labels=body.step_labels if body.step_labels is not None else settings.canary_step_min_labels,
        auto_promote=body.auto_promote,
        started_at=at,
        step_since=at,
        started_by=admin.username,
    )
    with loading_beside_the_champion(body.version, "canary", CanaryRefused):
        serving.start_canary(plan)
    log.info(
        f"canary {plan.version} started at {plan.percent}%",
        extra={"fields": {"user": admin.username, "version": plan.version, "sticky_by": plan.sticky_by}},
    )
    return canary_status(request)


@router.get("/model/canary")
def get_canary(_: ClaimsDep, request: Request) -> CanaryStatus:
    """The canary (if any), its step, what the next step waits for, this replica's guards, and the last
    decision (started, advanced, held, promoted, rolled back, ended) with its reason and figures."""
    return canary_status(request)


@router.delete("/model/canary")
def end_canary(admin: AdminDep, serving: ServingDep) -> CanaryEnded:
    """The champion answers everyone again, on every replica. Ending none is not an error."""
    ended = serving.end_canary(admin.username)
    if ended is not None:
        log.info(f"canary {ended} ended", extra={"fields": {"user": admin.username, "version": ended}})
    return CanaryEnded(ended=ended)


@router.post(
    "/model/canary/promote",
    responses={
        409: {
            "description": "No canary; or too few labelled predictions of either, or the canary's live "
            "metric is worse: the detail holds `message` and both figures"
        },
        503: _STORE_DOWN,
        507: _CACHE_FULL,
    },
)
def promote_canary(
    admin: AdminDep, serving: ServingDep, champion: PredictorDep, store: PredictionsDep, request: Request
) -> CanaryPromoted:
    """Serve the canary as champion on every replica now, if its live metric on its own labelled
    predictions since it started is at least the champion's on theirs (PROMOTION_MIN_LABELS of each,
    PROMOTION_TOLERANCE); otherwise 409 with both figures."""
    found = services(request)
    settings = found.settings
    pointer = serving.pointer.get()
    plan = pointer.canary if pointer is not None else None
    if pointer is None or plan is None or plan.version == pointer.version:
        raise HTTPException(status.HTTP_409_CONFLICT, "no canary to promote: POST /model/canary first")
    since = max(plan.started_at, time.time() - settings.live_quality_window_hours * HOUR_SECONDS)
    counts = store.confusions(since) if champion.metadata.task == "classification" else store.errors(since)
    evidence = LiveEvidence.weigh_canary(
        champion.metadata.task,
        counts.get(pointer.version),
        counts.get(plan.version),
        settings.promotion_min_labels,
        settings.promotion_tolerance,
    )
    figures = evidence.figures()
    refusal = evidence.refusal
    if refusal is not None:
        log.info(
            f"promotion of canary {plan.version} refused: {refusal}",
            extra={"fields": {"user": admin.username, "version": plan.version}},
        )
        detail = {
            "message": f"promotion refused: {refusal}",
            "champion_version": pointer.version,
            "canary_version": plan.version,
            **figures,
        }
        raise HTTPException(status.HTTP_409_CONFLICT, detail)
    try:
        new = _swap("promotion", admin, lambda: serving.promote_canary(plan.version, admin.username, figures))
    except UnknownVersion:
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"promotion refused: canary {plan.version} is no longer in the store"
        ) from None
    mlflow = found.champion_alias.follow(new.metadata)
    return CanaryPromoted(
        previous_version=pointer.version,
        model_version=new.version,
        evidence=CanaryEvidence(**figures),
        mlflow=mlflow,
    )


def canary_status(request: Request) -> CanaryStatus:
    """The canary as the serving pointer names it, with this replica's guards."""
    found = services(request)
    serving, guard = found.serving, found.canary_guard
    pointer = serving.pointer.get()
    champion = serving.current
    plan = pointer.canary if pointer is not None else None
    if plan is not None and champion is not None and plan.version == champion.version:
        plan = None  # promoted: the pointer is being cleared
    running = serving.canary
    judged = running is not None and plan is not None and running.version == plan.version
    return CanaryStatus(
        canary=_plan_view(plan) if plan is not None else None,
        model_version=champion.version if champion is not None else None,
        shadow=pointer.shadow_version if pointer is not None else None,
        last_decision=_decision_view(pointer.canary_decision)
        if pointer and pointer.canary_decision
        else None,
        guards=[
            GuardView(
                guard=reading.guard,
                breached=reading.breached,
                value=reading.value,
                limit=reading.limit,
                detail=reading.detail,
                breached_since=_iso(guard.breached_since[name]) if name in guard.breached_since else None,
            )
            for name, reading in (guard.readings.items() if judged else ())
        ],
        waiting_for=guard.waiting_for if judged else None,
    )


def _plan_view(plan: CanaryPlan) -> CanaryView:
    fields: dict[str, Any] = plan.model_dump()
    return CanaryView(
        **fields
        | {
            "steps": list(plan.steps),
            "started_at": _iso(plan.started_at),
            "step_since": _iso(plan.step_since),
        }
    )


def _decision_view(decision: CanaryDecision) -> DecisionView:
    return DecisionView(**decision.model_dump() | {"at": _iso(decision.at)})


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds")
