"""The Open Inference Protocol (V2 REST) over the served model, beside the native routes.

/v2/health/live and /v2/health/ready are open, as /health and /ready are. The rest takes a bearer token:
any scope for the metadata and readiness (as /model-info), `predict` to infer (as /predict). `{name}`
is the registered model name (model.json's registered_model, else "predictor"). Only the served
version is loaded, so /versions/{version} answers 404 for any other.

Every error answers the protocol's `{"error": "..."}`: V2Route turns what these routes and their
dependencies raise (401, 403, 503, a 413 from the body limit) into that shape, and leaves the app's
handlers, which answer `{"detail": ...}` for the native routes, alone.

An inference is decoded by its codec (app.serving.v2.V2Codec) into the model input /predict's body
would give, and validated, scored and traced by the data plane (app.serving.data_plane) as /predict's:
the same errors in the same words, the same metrics and drift window.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response, Security
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from app.api.deps import (
    PREDICT_SECURITY,
    DatabaseDep,
    PredictorDep,
    ServingDep,
    SettingsDep,
    answering,
    current_claims,
    known_features,
    prediction_claims,
    services,
)
from app.api.uploads import BodyDep
from app.core.security import TokenClaims
from app.observability import metrics
from app.serving import v2
from app.serving.data_plane import DataPlane
from app.serving.predictor import Predictor
from app.serving.v2 import (
    ErrorResponse,
    InferenceRequest,
    InferenceResponse,
    ModelMetadataResponse,
    ModelReadyResponse,
    ServerLiveResponse,
    ServerMetadataResponse,
    ServerReadyResponse,
    V2Error,
)
from app.serving.validation import RowError, sentences


def _error(message: str, status: int, headers: Mapping[str, str] | None = None) -> Response:
    body = ErrorResponse(error=message).model_dump_json()
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def _count_refusal(request: Request, fields: list[str | None] | tuple[str | None, ...]) -> None:
    """Count the rejected fields in the validation metric, as the native routes' 422s are."""
    metrics.validation_failed(fields, known_features(request))


class V2Route(APIRoute):
    """A route whose every error answers `{"error": "..."}`, the protocol's error object."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def answer(request: Request) -> Response:
            try:
                return await handler(request)
            except V2Error as exc:
                if exc.fields:
                    _count_refusal(request, exc.fields)
                return _error(exc.message, exc.status)
            except RowError as exc:  # values the validator refuses, rows without a finite answer
                _count_refusal(request, [e.get("field") for e in exc.errors])
                return _error(sentences(exc.errors), 422)
            except HTTPException as exc:  # 401, 403 and 503 from the dependencies, 413 from the body limit
                return _error(str(exc.detail), exc.status_code, exc.headers)
            except RequestValidationError as exc:
                first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
                where = ".".join(str(part) for part in first["loc"])
                return _error(f"{where}: {first['msg']}", 400)

        return answer


router = APIRouter(prefix="/v2", tags=["v2"], route_class=V2Route)

_ANY_TOKEN = [Security(current_claims)]
# The prediction routes' one-dependency token check (app.api.deps.prediction_claims), as /predict's.
_PREDICT = [Security(prediction_claims, scopes=["predict"])]
# The same check, as a parameter (solved once: FastAPI caches it), for the prediction's user.
PredictClaimsDep = Annotated[TokenClaims, Security(prediction_claims, scopes=["predict"])]

_WHY = {
    400: "Not an inference request for this model's inputs (names, datatypes, shapes, data)",
    401: "Missing, expired or invalid token",
    403: "The token lacks the scope",
    404: "No model of this name, or not this version, is served",
    413: "Body past the route's limit",
    415: "A compressed body (Content-Encoding): send it uncompressed",
    422: "Values the model refuses: non-finite or missing numbers, unknown categories, "
    "an empty or oversized batch, rows without a finite answer",
    429: "Past RATE_LIMIT_PREDICT for this user; see Retry-After",
    503: "No model loaded (for server readiness: or the database is down)",
}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorResponse, "description": _WHY[status]} for status in statuses}


def _inline_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A pydantic JSON schema with its $defs written in place, for a requestBody in openapi_extra."""
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    return resolve(schema)


# The infer routes read the body themselves: it may carry binary tensors after its JSON.
_INFER_BODY_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": _inline_schema(InferenceRequest.model_json_schema())}},
    }
}


def _check_name(predictor: Predictor, name: str) -> None:
    served = v2.model_name(predictor.metadata)
    if name != served:
        raise V2Error(f"unknown model {name[:64]!r}: this server serves {served!r}", v2.NOT_FOUND)


async def named_model(name: str, predictor: PredictorDep) -> Predictor:
    _check_name(predictor, name)
    return predictor


async def named_model_version(name: str, version: str, predictor: PredictorDep) -> Predictor:
    _check_name(predictor, name)
    if version != predictor.version:
        raise V2Error(
            f"model {name!r} version {version[:64]!r} is not served: only the serving version, "
            f"{predictor.version}, is loaded",
            v2.NOT_FOUND,
        )
    return predictor


ModelDep = Annotated[Predictor, Depends(named_model)]
ModelVersionDep = Annotated[Predictor, Depends(named_model_version)]


@router.get("/health/live")
async def server_live() -> ServerLiveResponse:
    """Liveness: the process answers."""
    return ServerLiveResponse(live=True)


@router.get("/health/ready", responses=_errors(503))
def server_ready(serving: ServingDep, database: DatabaseDep, request: Request) -> ServerReadyResponse:
    """Readiness, as /ready: a model is loaded and the database answers."""
    if services(request).draining():
        raise V2Error("draining: this replica is shutting down", 503)
    if serving.current is None:
        raise V2Error(f"model not loaded: {serving.error}", 503)
    try:
        database.ping()
    except Exception as exc:
        raise V2Error(f"database unavailable: {type(exc).__name__}", 503) from None
    return ServerReadyResponse(ready=True)


@router.get("", dependencies=_ANY_TOKEN, responses=_errors(401))
async def server_metadata(request: Request) -> ServerMetadataResponse:
    """The server's name and version; no protocol extension is claimed (binary inputs are accepted)."""
    return ServerMetadataResponse(name=request.app.title, version=request.app.version, extensions=[])


_MODEL_ERRORS = _errors(401, 403, 404, 503)


@router.get(
    "/models/{name}", dependencies=_ANY_TOKEN, responses=_MODEL_ERRORS, response_model_exclude_none=True
)
async def model_metadata(model: ModelDep) -> ModelMetadataResponse:
    """The model's input tensors (one per feature) and outputs."""
    return v2.model_metadata(model)


@router.get(
    "/models/{name}/versions/{version}",
    dependencies=_ANY_TOKEN,
    responses=_MODEL_ERRORS,
    response_model_exclude_none=True,
)
async def model_version_metadata(model: ModelVersionDep) -> ModelMetadataResponse:
    """The same, for the serving version only."""
    return v2.model_metadata(model)


@router.get("/models/{name}/ready", dependencies=_ANY_TOKEN, responses=_MODEL_ERRORS)
async def model_ready(model: ModelDep) -> ModelReadyResponse:
    """200 while the model is loaded; 503 while none is."""
    return ModelReadyResponse(name=v2.model_name(model.metadata), ready=True)


@router.get("/models/{name}/versions/{version}/ready", dependencies=_ANY_TOKEN, responses=_MODEL_ERRORS)
async def model_version_ready(model: ModelVersionDep) -> ModelReadyResponse:
    return ModelReadyResponse(name=v2.model_name(model.metadata), ready=True)


_INFER: dict[str, Any] = {
    "dependencies": _PREDICT,
    "response_model": InferenceResponse,
    "openapi_extra": _INFER_BODY_DOC | PREDICT_SECURITY,
    "responses": _errors(400, 401, 403, 404, 413, 415, 422, 429, 503),
}


@router.post("/models/{name}/infer", **_INFER)
async def infer(
    model: ModelDep, body: BodyDep, request: Request, settings: SettingsDep, claims: PredictClaimsDep
) -> Response:
    """Predict for 1 to MAX_BATCH_ROWS rows given as V2 tensors: one per feature, or one [rows, features]
    tensor `input-0` for an all-numeric model."""
    return await _infer(model, body, request, settings.metrics_enabled, claims, split=True)


@router.post("/models/{name}/versions/{version}/infer", **_INFER)
async def infer_version(
    model: ModelVersionDep, body: BodyDep, request: Request, settings: SettingsDep, claims: PredictClaimsDep
) -> Response:
    """The same, for the serving version only (never a canary's share: the version was asked for)."""
    return await _infer(model, body, request, settings.metrics_enabled, claims)


async def _infer(
    predictor: Predictor,
    body: bytes,
    request: Request,
    metrics_enabled: bool,
    claims: TokenClaims,
    split: bool = False,
) -> Response:
    found = services(request)
    await found.rate_limits.check_user(request)
    outcomes = None
    if split:  # one version answers the whole batch: the champion, or the canary for its share
        predictor, outcomes = answering(request, predictor, claims.sub)
    encoding = request.headers.get("content-encoding", "identity")
    if encoding != "identity":
        raise V2Error(f"Content-Encoding {encoding[:32]!r} is not supported: send the body uncompressed", 415)
    codec = v2.V2Codec(body, request.headers.get(v2.JSON_LENGTH_HEADER))
    plane = DataPlane(claims.sub, found.tracing, found.scoring, metrics_enabled, outcomes)
    return Response(await plane.serve(codec, predictor, len(body)), media_type="application/json")
