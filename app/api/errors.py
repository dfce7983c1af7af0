"""Every error answers JSON {"detail": ...}, and never echoes what the client sent."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from app.api.deps import known_features
from app.observability.logging import LOGGER_NAME
from app.observability.metrics import DATABASE_ERRORS, validation_failed
from app.serving.validation import RowError

log = logging.getLogger(LOGGER_NAME)

# The database is down, unreachable, locked or out of connections: retrying later may work.
# Constraint and SQL errors (IntegrityError, ProgrammingError) are bugs and stay 500s.
DATABASE_UNAVAILABLE = (OperationalError, InterfaceError, PoolTimeoutError)


class ErrorDetail(BaseModel):
    """The body of an error that says why in one sentence, for the `responses=` of the routes."""

    detail: str


class FieldError(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class FieldErrors(BaseModel):
    """A 422 for fields FastAPI or a route refused (RequestValidationError), each with where and why:
    for the `responses=` of the routes that read their form themselves."""

    detail: list[FieldError]


async def _row_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RowError)
    validation_failed([e.get("field") for e in exc.errors], known_features(request))
    return JSONResponse({"detail": exc.errors}, status_code=422)


async def _request_validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # FastAPI's default handler returns each failing input: for /token that is the password.
    detail = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
    return JSONResponse({"detail": detail}, status_code=422)


async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    route = getattr(request.scope.get("route"), "path", None) or "<unmatched>"
    error = type(exc).__name__
    DATABASE_ERRORS.labels(route=route).inc()
    # The driver's own message (no SQL, no parameters) for the log; the client gets the class only.
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    log.error(
        "database unavailable",
        extra={
            "fields": {
                "route": route,
                "error": error,
                "reason": reason[0][:300] if reason else "",
                "request_id": request.scope.get("state", {}).get("request_id"),
            }
        },
    )
    return JSONResponse({"detail": f"database unavailable: {error}"}, status_code=503)


def install(app: FastAPI) -> None:
    app.add_exception_handler(RowError, _row_error)
    app.add_exception_handler(RequestValidationError, _request_validation_error)
    for database_error in DATABASE_UNAVAILABLE:
        app.add_exception_handler(database_error, _database_unavailable)
