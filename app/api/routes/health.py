from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.api.deps import DatabaseDep, ServingDep

router = APIRouter(tags=["health"])


@router.get("/health")
def health(serving: ServingDep) -> dict[str, str | None]:
    """Liveness: the process answers. Says which model version it serves, if any."""
    current = serving.current
    return {"status": "ok", "model_version": current.version if current else None}


@router.get("/ready", responses={503: {"description": "Model not loaded or database down"}})
def ready(serving: ServingDep, database: DatabaseDep) -> JSONResponse:
    """Readiness: a model is loaded and the database answers."""
    current = serving.current
    if current is None:
        return JSONResponse({"detail": f"model not loaded: {serving.error}"}, status_code=503)
    try:
        database.ping()
    except Exception as exc:
        return JSONResponse({"detail": f"database unavailable: {type(exc).__name__}"}, status_code=503)
    return JSONResponse({"status": "ready", "model_version": current.version})
