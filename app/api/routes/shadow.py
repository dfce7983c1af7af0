"""The shadow challenger's routes: start one, stop it, promote it on live evidence (all admin).

A shadow scores the champion's traffic in the background on every replica (app/serving/shadow.py)
and never changes an answer. Promotion compares the two on the same labelled predictions of the
last LIVE_QUALITY_WINDOW_HOURS (app/core/live_evidence.py) and serves the shadow as champion only
when it is at least as good, within PROMOTION_TOLERANCE.
"""

from __future__ import annotations

import logging
import time

from fastapi import APIRouter, HTTPException, Request, status
from pydantic import BaseModel, ConfigDict, Field

from app.api.deps import AdminDep, PredictionsDep, PredictorDep, ServingDep, services
from app.api.errors import DATABASE_UNAVAILABLE, ErrorDetail
from app.api.routes.model import _CACHE_FULL, _STORE_DOWN, _swap, loading_beside_the_champion
from app.core.live_evidence import LiveEvidence
from app.core.messages import AliasOutcome
from app.core.versions import UnknownVersion
from app.db.hour_bucket import HOUR_SECONDS
from app.serving.shadow import ShadowRefused

router = APIRouter(tags=["model"])
log = logging.getLogger("predictor")


class ShadowRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str = Field(min_length=1, max_length=64, examples=["2026-11-23T03-14-31"])


class ShadowResponse(BaseModel):
    shadow: str | None  # the version shadowing now
    model_version: str  # the champion, whose answers are sent


class ShadowStopped(BaseModel):
    shadow: None = None
    stopped: str | None  # the version that was shadowing; None: there was none


class LiveFigures(BaseModel):
    """What a promotion was judged on: the champion's and the shadow's live metric on the same
    labelled predictions, how many there were, and the bar (PROMOTION_MIN_LABELS, the tolerance)."""

    metric: str
    champion: float | None
    shadow: float | None
    labelled: int
    min_labels: int
    tolerance: float


class PromoteResponse(BaseModel):
    previous_version: str
    model_version: str
    evidence: LiveFigures
    mlflow: AliasOutcome  # MLflow's champion alias: pending (moved after the answer), or skipped


_SHADOW_REFUSED = {
    "model": ErrorDetail,
    "description": "The version is the champion, takes other features, or fails verification",
}
_PROMOTION_REFUSED = {
    "description": "No shadow; or too few labelled predictions both answered, or the shadow's live "
    "metric is worse: the detail holds `message` and both figures"
}


@router.post(
    "/model/shadow",
    responses={
        404: {"model": ErrorDetail, "description": "No such version in the store"},
        409: _SHADOW_REFUSED,
        503: _STORE_DOWN,
        507: _CACHE_FULL,
    },
)
def start_shadow(
    body: ShadowRequest, admin: AdminDep, serving: ServingDep, champion: PredictorDep
) -> ShadowResponse:
    """Score the champion's traffic with another stored version too, in the background, on every
    replica: its agreement, latency and live quality go to the metrics; answers stay the champion's."""
    with loading_beside_the_champion(body.version, "shadow", ShadowRefused):
        runner = serving.start_shadow(body.version)
    log.info(
        f"shadow {runner.version} started beside {champion.version}",
        extra={"fields": {"user": admin.username, "version": runner.version}},
    )
    return ShadowResponse(shadow=runner.version, model_version=champion.version)


@router.delete("/model/shadow")
def stop_shadow(admin: AdminDep, serving: ServingDep) -> ShadowStopped:
    """Stop the shadow on every replica. Stopping none is not an error: `stopped` is then null."""
    stopped = serving.stop_shadow()
    if stopped is not None:
        log.info(f"shadow {stopped} stopped", extra={"fields": {"user": admin.username, "version": stopped}})
    return ShadowStopped(stopped=stopped)


@router.post(
    "/model/promote",
    responses={409: _PROMOTION_REFUSED, 503: _STORE_DOWN, 507: _CACHE_FULL},
)
def promote(
    admin: AdminDep, serving: ServingDep, champion: PredictorDep, store: PredictionsDep, request: Request
) -> PromoteResponse:
    """Serve the shadow as champion on every replica, if its live metric over at least
    PROMOTION_MIN_LABELS labelled predictions is at least the champion's on the same predictions
    (minus PROMOTION_TOLERANCE; plus it for MAE); otherwise 409 with both figures."""
    found = services(request)
    settings, alias = found.settings, found.champion_alias
    pointer = serving.pointer.get()
    shadow = pointer.shadow_version if pointer is not None else None
    if pointer is None or shadow is None or shadow == pointer.version:
        raise HTTPException(status.HTTP_409_CONFLICT, "no shadow to promote: POST /model/shadow first")
    since = time.time() - settings.live_quality_window_hours * HOUR_SECONDS
    evidence = LiveEvidence.weigh(
        champion.metadata.task,
        store.head_to_head(pointer.version, shadow, since),
        settings.promotion_min_labels,
        settings.promotion_tolerance,
    )
    figures = evidence.figures()
    refusal = evidence.refusal
    if refusal is not None:
        log.info(
            f"promotion of shadow {shadow} refused: {refusal}",
            extra={"fields": {"user": admin.username, "version": shadow}},
        )
        detail = {
            "message": f"promotion refused: {refusal}",
            "champion_version": pointer.version,
            "shadow_version": shadow,
            **figures,
        }
        raise HTTPException(status.HTTP_409_CONFLICT, detail)
    reason = f"promoted by {admin.username} on live evidence"
    try:
        new = _swap("promotion", admin, lambda: serving.serve_version(shadow, reason=reason))
    except UnknownVersion:
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"promotion refused: shadow {shadow} is no longer in the store"
        ) from None
    try:
        serving.stop_shadow()
    except DATABASE_UNAVAILABLE as exc:
        # Done anyway: a shadow that is the champion scores nothing, and the next promotion refuses.
        log.warning("promoted %s, but the shadow was not cleared: %s", new.version, exc)
    # After the answer, as for a rollback: the promotion is done.
    mlflow = alias.follow(new.metadata)
    return PromoteResponse(
        previous_version=pointer.version,
        model_version=new.version,
        evidence=LiveFigures(**figures),
        mlflow=mlflow,
    )
