from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, HTTPException, status

from app.api.deps import AdminDep, ClaimsDep, PredictorDep, RegistryDep
from app.observability.metrics import MODEL_RELOADS
from app.serving.predictor import ModelLoadError

router = APIRouter(tags=["model"])
log = logging.getLogger("predictor")


def _info(predictor: Any) -> dict[str, Any]:
    return predictor.metadata.model_dump(mode="json") | {"loaded_at": predictor.loaded_at}


@router.get("/model-info")
def model_info(_: ClaimsDep, predictor: PredictorDep) -> dict[str, Any]:
    """model.json as served: version, metrics, feature schema, classes, candidates."""
    return _info(predictor)


@router.post(
    "/model/reload",
    responses={409: {"description": "Checksum mismatch or broken model: the current one keeps serving"}},
)
def reload_model(admin: AdminDep, registry: RegistryDep) -> dict[str, Any]:
    """Load the model directory again; the old model serves until the new one is verified."""
    previous = registry.current
    try:
        new = registry.reload()
    except ModelLoadError as exc:
        MODEL_RELOADS.labels(result="refused").inc()
        log.warning("model reload refused: %s", exc, extra={"fields": {"user": admin.username}})
        raise HTTPException(status.HTTP_409_CONFLICT, f"reload refused: {exc}") from None
    MODEL_RELOADS.labels(result="success").inc()
    log.info(
        "model reloaded",
        extra={"fields": {"user": admin.username, "version": new.version, "sha256": new.metadata.sha256}},
    )
    return {"previous_version": previous.version if previous else None, "model_version": new.version}
