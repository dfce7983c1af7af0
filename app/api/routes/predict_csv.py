"""POST /predict/csv: a CSV of any size up to MAX_CSV_BYTES, answered as it streams in.

The upload is cut into chunks of whole rows (app.serving.csv_chunks), each chunk read into the
model's input and given to the data plane (validate, score with one model call, trace) in a worker
thread (app.serving.csv_scoring), and its answers sent before the next one is read
(app.api.csv_stream): memory stays bounded whatever the file's size, and
MAX_BATCH_ROWS, a limit for JSON bodies, does not apply. The first chunk is answered before the
response starts, so a problem in it (or a header that does not fit the model) is a plain 422.
"""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Request, Security, status
from fastapi.responses import Response
from pydantic import BaseModel

from app.api.csv_stream import AnswerStream, ChunkSource, reader_of
from app.api.csv_upload import csv_bytes
from app.api.deps import PredictorDep, SettingsDep, answering, current_claims, services
from app.api.routes.predict import Prediction
from app.api.upload_spool import UploadSpool
from app.api.uploads import CSV_BODY_DOC
from app.core.artifacts import ModelMetadata
from app.core.security import TokenClaims
from app.serving.answer_formats import AnswerFormat, CsvAnswer, JsonAnswer, NdjsonAnswer
from app.serving.csv_chunks import CsvError
from app.serving.csv_rows import NO_ROWS, CsvHeader
from app.serving.csv_scoring import CsvScorer
from app.serving.data_plane import DataPlane
from app.serving.inference import off_loop
from app.serving.prediction_log import request_key

router = APIRouter(tags=["predict"], dependencies=[Security(current_claims, scopes=["predict"])])

# The answers Accept may ask for: the one it names first, JSON when it names none of them (*/*).
JSON, CSV, NDJSON = "application/json", "text/csv", "application/x-ndjson"


class StreamErrorBody(BaseModel):
    status: int
    line: int | None = None
    detail: str | list[dict[str, Any]]


class CsvPredictResponse(BaseModel):
    model_version: str
    predictions: list[Prediction]
    # Only when a bad line after the first chunk ended the answer: the rows before it are answered.
    error: StreamErrorBody | None = None


def answer_format(accept: str, metadata: ModelMetadata, header: CsvHeader) -> AnswerFormat:
    named = {kind: accept.find(kind) for kind in (JSON, CSV, NDJSON) if kind in accept}
    chosen = min(named, key=named.__getitem__) if named else JSON
    if chosen == CSV:
        return CsvAnswer(metadata, header.names)
    return NdjsonAnswer(metadata) if chosen == NDJSON else JsonAnswer(metadata)


@router.post(
    "/predict/csv",
    openapi_extra=CSV_BODY_DOC,
    response_model=CsvPredictResponse,
    response_model_exclude_none=True,
    responses={
        200: {
            "content": {CSV: {}, NDJSON: {}},
            "description": "JSON; CSV with `Accept: text/csv`; NDJSON with `Accept: application/x-ndjson`. "
            "A bad line after the first chunk ends it with an error (see docs/api.md)",
        },
        413: {"description": "The body is past MAX_CSV_BYTES (before any answer was sent)"},
        429: {"description": "Past RATE_LIMIT_PREDICT for this user; see Retry-After"},
        422: {"description": "Malformed CSV (the error names the line) or invalid values in the first chunk"},
    },
)
async def predict_csv(
    request: Request,
    predictor: PredictorDep,
    settings: SettingsDep,
    # The router's own check, solved once per request: FastAPI caches it.
    claims: Annotated[TokenClaims, Security(current_claims, scopes=["predict"])],
) -> Response:
    """A CSV with a header naming the feature columns, as a text/csv body or the form field `file`."""
    found = services(request)
    await found.rate_limits.check_user(request)
    # One version answers the whole file: chosen once, here.
    predictor, outcomes = answering(request, predictor, claims.sub, timed=False)
    pieces = csv_bytes(request)
    chunks = ChunkSource(reader_of(pieces))
    try:
        header = CsvHeader.read(await chunks.next(), predictor.metadata.feature_names)
        scorer = CsvScorer(
            predictor,
            header,
            answer_format(request.headers.get("accept", ""), predictor.metadata, header),
            DataPlane(claims.sub, found.tracing, found.scoring, settings.metrics_enabled, outcomes),
            request_key(),  # the ids of every chunk's rows, numbered on under one key
        )
        # Until rows are answered, any problem refuses the request (a chunk may hold blank lines only).
        while True:
            chunk = await chunks.next()
            if chunk is None:
                raise CsvError(NO_ROWS)
            first = await off_loop(found.scoring, partial(scorer.answer, refuse=True), chunk)
            if first.rows:
                break
    except CsvError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    headers = {"X-Model-Version": predictor.version}
    spool = UploadSpool(pieces, whole=settings.csv_upload_first)
    opening = scorer.format.opening() + first.text
    return AnswerStream(opening, scorer, chunks, spool, headers, found.scoring)
