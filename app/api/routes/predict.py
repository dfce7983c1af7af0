"""Predictions: JSON rows or a CSV file in, one model call per request.

The routes are plain `def`: FastAPI runs them in its thread pool, so validation and the
sklearn call never block the event loop. The body is read by an async dependency first.
"""

from __future__ import annotations

import csv
import io
import time
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Security, status
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from app.api.deps import PredictorDep, current_claims
from app.observability import metrics
from app.serving.comparison import Served
from app.serving.predictor import Predictor
from app.serving.schema import RowError

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


async def read_body(request: Request) -> bytes:
    # Its size is bounded by app.api.body_limit (413 past MAX_BODY_BYTES, declared or not).
    return await request.body()


async def read_csv_upload(request: Request) -> bytes:
    """The CSV as bytes: a multipart upload (field `file`) or a text/csv body."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_fields=10)
        try:
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise HTTPException(
                    status.HTTP_422_UNPROCESSABLE_CONTENT, "send the CSV as the form field 'file'"
                )
            data = await upload.read()  # within the body's limit
        finally:  # its spooled files, also when the field is missing
            await form.close()
    else:
        data = await read_body(request)
    return data


# The JSON body's schema depends on the loaded model: create_app fills it in /openapi.json.
PREDICT_BODY_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}}},
    }
}
CSV_BODY_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "required": ["file"],
                }
            },
            "text/csv": {"schema": {"type": "string"}},
        },
    }
}


def _predict(predictor: Predictor, matrix: np.ndarray, request: Request) -> list[dict[str, Any]]:
    """One model call, then what it tells the metrics: counts, timing and drift."""
    started = time.perf_counter()
    predictions = predictor.predict(matrix)
    seconds = time.perf_counter() - started
    if request.app.state.settings.metrics_enabled:
        classification = predictor.metadata.task == "classification"
        labels = [p["label"] for p in predictions] if classification else ["value"] * len(predictions)
        metrics.predictions_served(predictor.version, labels, seconds)
        if predictor.drift is not None:
            predictor.drift.observe(matrix, labels if classification else None)
            if predictor.drift.refresh_due():
                metrics.publish_drift(predictor.drift)
    return predictions


def _response(predictor: Predictor, predictions: list[dict[str, Any]]) -> JSONResponse:
    return JSONResponse({"model_version": predictor.version, "predictions": predictions})


@router.post(
    "/predict",
    response_model=PredictResponse,
    response_model_exclude_none=True,
    openapi_extra=PREDICT_BODY_DOC,
    responses={422: {"description": "Invalid rows: each error names the row and the field"}},
)
def predict(
    body: Annotated[bytes, Depends(read_body)],
    request: Request,
    predictor: PredictorDep,
    compare: Annotated[
        bool, Query(description="Also answer every candidate's predictions from the last training run")
    ] = False,
) -> Response:
    """Predict for 1 to MAX_BATCH_ROWS rows, given as `{"instances": [{feature: value, ...}]}`."""
    if compare:
        return _compare(body, request)
    matrix = predictor.schema.parse_json(body)
    return _response(predictor, _predict(predictor, matrix, request))


def _compare(body: bytes, request: Request) -> Response:
    # One read: the champion and its candidates come from the same swap.
    served: Served | None = request.app.state.serving.with_candidates()
    if served is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "model not loaded")
    if served.candidates_error:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, f"candidates unavailable: {served.candidates_error}"
        )
    predictor = served.predictor
    matrix = predictor.schema.parse_json(body)
    predictions = _predict(predictor, matrix, request)
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
    return JSONResponse(
        {"model_version": predictor.version, "predictions": predictions, "candidates": candidates}
    )


def _error(message: str) -> HTTPException:
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, message)


def read_csv(data: bytes, predictor: Predictor) -> tuple[list[str], list[dict[str, Any]], list[int]]:
    """Header, records (empty cells as None) and each record's line number; raises 422 naming the line."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _error(f"the CSV is not UTF-8 text (byte {exc.start})") from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = [name.strip() for name in next(reader, [])]
        if not any(header):
            raise _error("line 1: the CSV is empty: the first line must name the feature columns")
        expected = [f.name for f in predictor.metadata.features]
        duplicates = sorted({n for n in header if header.count(n) > 1})
        missing = [n for n in expected if n not in header]
        unexpected = [n for n in header if n not in expected]
        if duplicates or missing or unexpected:
            problems = [
                f"{label} column(s) {', '.join(names)}"
                for label, names in (
                    ("duplicate", duplicates),
                    ("missing", missing),
                    ("unexpected", unexpected),
                )
                if names
            ]
            raise _error(f"line 1: {'; '.join(problems)} (expected: {', '.join(expected)})")
        records: list[dict[str, Any]] = []
        lines: list[int] = []
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank lines, e.g. a trailing newline
            if len(row) != len(header):
                raise _error(f"line {reader.line_num}: expected {len(header)} fields, found {len(row)}")
            if len(records) == predictor.schema.max_rows:
                raise _error(f"line {reader.line_num}: more than {predictor.schema.max_rows} rows")
            records.append({name: (v.strip() or None) for name, v in zip(header, row, strict=True)})
            lines.append(reader.line_num)
    except csv.Error as exc:
        raise _error(f"line {reader.line_num}: malformed CSV: {exc}") from None
    if not records:
        raise _error("the CSV has a header but no rows")
    return header, records, lines


def _csv_response(
    predictor: Predictor, header: list[str], records: list[dict[str, Any]], predictions: list[dict[str, Any]]
) -> Response:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if predictor.metadata.task == "regression":
        writer.writerow([*header, "prediction"])
        for record, p in zip(records, predictions, strict=True):
            writer.writerow([*(record[n] or "" for n in header), p["value"]])
    else:
        classes = predictor.metadata.classes or list((predictions[0]["probabilities"] or {}).keys())
        writer.writerow([*header, "label", *(f"proba_{c}" for c in classes)])
        for record, p in zip(records, predictions, strict=True):
            probabilities = p["probabilities"] or {}
            writer.writerow(
                [*(record[n] or "" for n in header), p["label"], *(probabilities.get(c, "") for c in classes)]
            )
    return Response(out.getvalue(), media_type="text/csv", headers={"X-Model-Version": predictor.version})


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
def predict_csv(
    data: Annotated[bytes, Depends(read_csv_upload)], request: Request, predictor: PredictorDep
) -> Response:
    """A CSV with a header naming the feature columns. Answers CSV when `Accept: text/csv`."""
    header, records, lines = read_csv(data, predictor)
    matrix = predictor.schema.parse_records(records, lines)
    try:
        predictions = _predict(predictor, matrix, request)
    except RowError as exc:  # rows the model has no finite answer for
        raise exc.at_lines(lines) from None
    if "text/csv" in request.headers.get("accept", ""):
        return _csv_response(predictor, header, records, predictions)
    return _response(predictor, predictions)
