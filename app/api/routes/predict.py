"""Predictions for JSON rows, one model call per request (CSV files: app.api.routes.predict_csv).

`/predict` is an async route that translates HTTP only: the body goes to its codec
(app.serving.json_codec) and the data plane (app.serving.data_plane), which validates, scores and
traces it as every protocol's, on the event loop when it is small and the model fast.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, TypeAdapter, ValidationError

from app.api.deps import (
    PREDICT_SECURITY,
    answering,
    bearer_claims,
    read_key_off_loop,
    services,
    serving_predictor,
)
from app.serving.comparison import Served
from app.serving.data_plane import DataPlane
from app.serving.inference import off_loop
from app.serving.json_codec import JsonCodec
from app.serving.state import ServingState

router = APIRouter(tags=["predict"])


class Prediction(BaseModel):
    # The row's id: send it back with the ground truth (POST /feedback). Unique and unguessable.
    prediction_id: str | None = None
    label: str | None = None
    probabilities: dict[str, float] | None = None
    value: float | None = None


class CandidatePredictions(BaseModel):
    name: str
    metric: str
    score: float | None = None  # the candidate's test metric in the training run
    champion: bool
    predictions: list[Prediction]


class PredictResponse(BaseModel):
    model_version: str
    predictions: list[Prediction]
    # With ?compare=true: every candidate of the champion's training run, the champion included.
    candidates: list[CandidatePredictions] | None = None


# The JSON body's schema depends on the loaded model: create_app fills it in /openapi.json.
PREDICT_BODY_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}}},
    }
}


_COMPARE = "compare"
# What FastAPI would document for `compare: bool = Query(False, description=...)`.
COMPARE_PARAMETER: dict[str, Any] = {
    "parameters": [
        {
            "name": _COMPARE,
            "in": "query",
            "required": False,
            "schema": {"type": "boolean", "default": False, "title": "Compare"},
            "description": "Also answer every candidate's predictions from the last training run",
        }
    ]
}
_FLAG = TypeAdapter(bool)


def query_flag(request: Request, name: str) -> bool:
    """A boolean query parameter, False when absent, parsed and refused (422) as FastAPI does."""
    raw = request.query_params.get(name)
    if raw is None:
        return False
    try:
        return _FLAG.validate_python(raw)
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("query", name)} for e in exc.errors()]) from None


@router.post(
    "/predict",
    response_model=PredictResponse,
    response_model_exclude_none=True,
    openapi_extra=PREDICT_BODY_DOC | PREDICT_SECURITY | COMPARE_PARAMETER,
    responses={
        422: {"description": "Invalid rows: each error names the row and the field"},
        429: {"description": "Past RATE_LIMIT_PREDICT for this user; see Retry-After"},
    },
)
async def predict(request: Request) -> Response:
    """Predict for 1 to MAX_BATCH_ROWS rows, given as `{"instances": [{feature: value, ...}]}`."""
    # Nothing for FastAPI to solve: the token, the model, the query and the body are read here, in
    # the order the dependencies would be (401/403, then 503, then 422). Solving them cost this
    # route more than decoding and scoring a row does (python -m bench.inprocess).
    await read_key_off_loop(request)  # an API key not cached here: read in a thread, not on the loop
    claims = bearer_claims(request)
    found = services(request)
    if found.rate_limits.predict is not None:  # RATE_LIMIT_PREDICT, off by default
        await found.rate_limits.check_user(request)
    predictor = serving_predictor(request)
    compare = query_flag(request, _COMPARE)
    body = await request.body()
    if compare:  # the champion's training run's candidates: the champion answers
        plane = DataPlane(claims.sub, found.tracing, found.scoring, found.settings.metrics_enabled)
        served = _with_candidates(found.serving)
        codec = JsonCodec(body, served.candidates or ())
        answer = await off_loop(found.scoring, plane.answer, codec, served.predictor)
    else:
        predictor, outcomes = answering(request, predictor, claims.sub)
        plane = DataPlane(claims.sub, found.tracing, found.scoring, found.settings.metrics_enabled, outcomes)
        answer = await plane.serve(JsonCodec(body), predictor, len(body))
    return Response(answer, media_type="application/json")


def _with_candidates(serving: ServingState) -> Served:
    # One read: the champion and its candidates come from the same swap.
    served: Served | None = serving.with_candidates()
    if served is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "model not loaded")
    if served.candidates_error:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, f"candidates unavailable: {served.candidates_error}"
        )
    return served
