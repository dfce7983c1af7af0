"""Predictions: JSON rows or a CSV file in, one model call per request.

`/predict` is an async route: a small body is decoded (msgspec, in C), scored and encoded (orjson)
right on the event loop, as that takes tens of microseconds, less than the thread-pool hand-off
it would otherwise pay for (bench/). A large body, or a model measured to be slow, goes to the
thread pool, so no request holds the event loop for long. The body is read by an async dependency
first (app.api.uploads); the CSV's rows come from app.serving.csv_rows.
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
import orjson
from fastapi import APIRouter, HTTPException, Query, Request, Security, status
from fastapi.responses import Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from app.api.deps import PredictorDep, ServingDep, SettingsDep, current_claims
from app.api.uploads import CSV_BODY_DOC, BodyDep, CsvDep
from app.core.config import Settings
from app.serving.comparison import Served
from app.serving.csv_rows import CsvError, format_predictions, parse_csv
from app.serving.inference import INLINE_BODY_BYTES, predictor_is_slow, score
from app.serving.predictor import Predictor
from app.serving.schema import RowError
from app.serving.state import ServingState

router = APIRouter(tags=["predict"], dependencies=[Security(current_claims, scopes=["predict"])])


class Prediction(BaseModel):
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


def _predict(predictor: Predictor, matrix: np.ndarray, settings: Settings) -> list[dict[str, Any]]:
    """One model call, counted in the metrics, as the JSON answer's rows."""
    return score(predictor, matrix, settings.metrics_enabled).rows()


def _response(predictor: Predictor, predictions: list[dict[str, Any]]) -> Response:
    return Response(
        orjson.dumps({"model_version": predictor.version, "predictions": predictions}),
        media_type="application/json",
    )


def _answer(predictor: Predictor, body: bytes, settings: Settings) -> Response:
    matrix = predictor.schema.parse_json(body)
    return _response(predictor, _predict(predictor, matrix, settings))


@router.post(
    "/predict",
    response_model=PredictResponse,
    response_model_exclude_none=True,
    openapi_extra=PREDICT_BODY_DOC,
    responses={422: {"description": "Invalid rows: each error names the row and the field"}},
)
async def predict(
    body: BodyDep,
    predictor: PredictorDep,
    serving: ServingDep,
    settings: SettingsDep,
    compare: Annotated[
        bool, Query(description="Also answer every candidate's predictions from the last training run")
    ] = False,
) -> Response:
    """Predict for 1 to MAX_BATCH_ROWS rows, given as `{"instances": [{feature: value, ...}]}`."""
    if compare:
        return await run_in_threadpool(_compare, body, serving, settings)
    if len(body) > INLINE_BODY_BYTES or predictor_is_slow(predictor):
        return await run_in_threadpool(_answer, predictor, body, settings)
    return _answer(predictor, body, settings)


def _compare(body: bytes, serving: ServingState, settings: Settings) -> Response:
    # One read: the champion and its candidates come from the same swap.
    served: Served | None = serving.with_candidates()
    if served is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "model not loaded")
    if served.candidates_error:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, f"candidates unavailable: {served.candidates_error}"
        )
    predictor = served.predictor
    matrix = predictor.schema.parse_json(body)
    predictions = _predict(predictor, matrix, settings)
    candidates = [
        {
            "name": c.name,
            "metric": c.metric,
            "score": c.score,
            "champion": c.champion,
            "predictions": predictions if c.champion else c.predict(matrix, predictor.metadata),
        }
        for c in served.candidates or ()
    ]
    return Response(
        orjson.dumps(
            {"model_version": predictor.version, "predictions": predictions, "candidates": candidates}
        ),
        media_type="application/json",
    )


@router.post(
    "/predict/csv",
    openapi_extra=CSV_BODY_DOC,
    response_model=PredictResponse,
    response_model_exclude_none=True,
    responses={
        200: {"content": {"text/csv": {}}, "description": "JSON, or CSV when Accept asks for text/csv"},
        422: {"description": "Malformed CSV (the error names the line) or invalid values"},
    },
)
def predict_csv(data: CsvDep, request: Request, predictor: PredictorDep, settings: SettingsDep) -> Response:
    """A CSV with a header naming the feature columns. Answers CSV when `Accept: text/csv`."""
    try:
        rows = parse_csv(data, predictor.metadata.feature_names, predictor.schema.max_rows)
    except CsvError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    matrix = predictor.schema.parse_records(rows.records, rows.lines)
    try:
        predictions = _predict(predictor, matrix, settings)
    except RowError as exc:  # rows the model has no finite answer for
        raise exc.at_lines(rows.lines) from None
    if "text/csv" in request.headers.get("accept", ""):
        return Response(
            format_predictions(predictor.metadata, rows, predictions),
            media_type="text/csv",
            headers={"X-Model-Version": predictor.version},
        )
    return _response(predictor, predictions)
