"""Every error answers JSON {"detail": ...}, and never echoes what the client sent."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from app.observability.metrics import validation_failed
from app.serving.schema import RowError


async def _row_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RowError)
    registry = getattr(request.app.state, "registry", None)
    known = set(registry.current.metadata.feature_names) if registry and registry.current else set()
    validation_failed([e.get("field") for e in exc.errors], known)
    return JSONResponse({"detail": exc.errors}, status_code=422)


async def _request_validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # FastAPI's default handler returns each failing input: for /token that is the password.
    detail = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
    return JSONResponse({"detail": detail}, status_code=422)


def install(app: FastAPI) -> None:
    app.add_exception_handler(RowError, _row_error)
    app.add_exception_handler(RequestValidationError, _request_validation_error)
