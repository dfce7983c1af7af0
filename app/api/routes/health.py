from __future__ import annotations

from typing import Literal

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from app.api.deps import DatabaseDep, ServingDep, services
from app.api.errors import ErrorDetail
from app.serving.state import ServingState

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: Literal["ok"]
    model_version: str | None  # None while no model is loaded


class Ready(BaseModel):
    status: Literal["ready"]
    model_version: str
    # "ok", or why the model store did not answer: the replica keeps serving what it has, but
    # cannot follow a new version until the store answers again.
    model_store: str


def health_body(serving: ServingState) -> bytes:
    """/health's answer, as `Health` documents it (not validated through it: it is called all the time)."""
    current = serving.current
    return orjson.dumps({"status": "ok", "model_version": current.version if current else None})


@router.get("/health", response_model=Health)
async def health(request: Request) -> Response:
    """Liveness: the process answers. Says which model version it serves, if any."""
    # Served by a copy called directly (app.api.direct_routes); this declaration documents it.
    return Response(health_body(services(request).serving), media_type="application/json")


@router.get(
    "/ready",
    response_model=Ready,
    responses={
        503: {"model": ErrorDetail, "description": "Model not loaded, database down, or shutting down"}
    },
)
def ready(serving: ServingDep, database: DatabaseDep, request: Request) -> Ready | JSONResponse:
    """Readiness: a model is loaded and the database answers (and whether the model store does)."""
    if services(request).draining():
        return JSONResponse({"detail": "draining: this replica is shutting down"}, status_code=503)
    current = serving.current
    if current is None:
        return JSONResponse({"detail": f"model not loaded: {serving.error}"}, status_code=503)
    try:
        database.ping()
    except Exception as exc:
        return JSONResponse({"detail": f"database unavailable: {type(exc).__name__}"}, status_code=503)
    store = "ok" if serving.store_error is None else f"unreachable: {serving.store_error}"
    return Ready(status="ready", model_version=current.version, model_store=store)
