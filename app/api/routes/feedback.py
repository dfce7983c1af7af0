"""POST /feedback: the ground truth of earlier predictions, by their prediction_id.

A batch of items; each answered with its own status, so one unknown id does not refuse the others:
recorded, relabelled (it had a label: the last one sent wins), unknown (never logged: sampled out
by PREDICTION_LOG_SAMPLE, swept after PREDICTION_LOG_DAYS, or made up), invalid (a label the
served model does not know, a value for a classifier, ...). A body that is not such a batch is a 422.
"""

from __future__ import annotations

import logging
import time
from typing import Annotated, Literal

from fastapi import APIRouter, Request, Security
from pydantic import BaseModel, ConfigDict, Field

from app.api.deps import PredictionsDep, PredictorDep, current_claims, services
from app.core.artifacts import ModelMetadata
from app.core.security import TokenClaims
from app.db.prediction_log import Truth
from app.observability.metrics import FEEDBACK_ITEMS

router = APIRouter(tags=["feedback"])
log = logging.getLogger("predictor")

MAX_ITEMS = 1000
# How long a feedback waits for this replica's prediction log to write what it holds, so that an id
# answered a moment ago is found (the writer flushes every half second anyway).
FLUSH_WAIT_SECONDS = 2.0

Status = Literal["recorded", "relabelled", "unknown", "invalid"]


class FeedbackItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prediction_id: str = Field(min_length=1, max_length=40, examples=["p1Y8d3kQ2mXz7bNw-0"])
    label: str | None = Field(default=None, min_length=1, max_length=255, examples=["setosa"])
    value: float | None = Field(default=None, allow_inf_nan=False, description="For a regression")


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[FeedbackItem] = Field(min_length=1, max_length=MAX_ITEMS)


class ItemStatus(BaseModel):
    prediction_id: str
    status: Status
    detail: str | None = None  # why, for an invalid or unknown item


class FeedbackResponse(BaseModel):
    items: list[ItemStatus]
    recorded: int
    relabelled: int
    unknown: int
    invalid: int


FeedbackClaims = Annotated[TokenClaims, Security(current_claims, scopes=["feedback"])]

_UNKNOWN = "no such prediction: never logged (sampled out), older than PREDICTION_LOG_DAYS, or mistyped"


def _problem(item: FeedbackItem, metadata: ModelMetadata) -> str | None:
    """Why this truth cannot be recorded for the served model, or None."""
    if metadata.task == "regression":
        if item.label is not None or item.value is None:
            return "this model is a regression: send `value`, a number"
        return None
    if item.value is not None or item.label is None:
        return "this model is a classifier: send `label`, one of its classes"
    if item.label not in metadata.classes:
        known = ", ".join(metadata.classes)
        return f"label {item.label[:64]!r} is not one of the model's classes ({known})"
    return None


@router.post("/feedback", responses={422: {"description": "Not a batch of 1 to 1000 items"}})
def feedback(
    body: FeedbackRequest,
    claims: FeedbackClaims,
    predictor: PredictorDep,
    store: PredictionsDep,
    request: Request,
) -> FeedbackResponse:
    """Send the ground truth of predictions by id: `{"items": [{"prediction_id": ..., "label": ...}]}`
    (`value` instead of `label` for a regression). Each item is answered with its status."""
    problems = [_problem(item, predictor.metadata) for item in body.items]
    valid = [item for item, problem in zip(body.items, problems, strict=True) if problem is None]
    prediction_log = services(request).prediction_log
    if prediction_log is not None and valid:
        prediction_log.flush(FLUSH_WAIT_SECONDS)
    truths = [Truth(i.prediction_id, label=i.label, value=i.value) for i in valid]
    found = iter(store.label(truths, time.time()) if truths else [])
    items: list[ItemStatus] = []
    for item, problem in zip(body.items, problems, strict=True):
        if problem is not None:
            items.append(ItemStatus(prediction_id=item.prediction_id, status="invalid", detail=problem))
            continue
        matched = next(found)
        detail = _UNKNOWN if matched == "unknown" else None
        items.append(ItemStatus(prediction_id=item.prediction_id, status=matched, detail=detail))
    counts = dict.fromkeys(("recorded", "relabelled", "unknown", "invalid"), 0)
    for answered in items:
        counts[answered.status] += 1
    for name, count in counts.items():
        if count:
            FEEDBACK_ITEMS.labels(status=name).inc(count)
    log.info("feedback", extra={"fields": {"user": claims.sub, **counts}})
    return FeedbackResponse(items=items, **counts)
