"""POST /models/import: a model trained elsewhere, uploaded, and imported as `models import` does it.

The serving process never loads the model's library: the upload is saved to a scratch folder and
`python -m app.cli models import` runs on it in a subprocess (app.adapters.import_command), reading,
compiling, checking and publishing it; its ImportOutcome is the answer. A pickle or an MLflow model is
refused before anything runs (app.api.import_form): they may run code as they load. The model and its
sample together are at most MAX_BODY_BYTES (32 MiB, app.api.body_limit): a larger model is imported
from the command line.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request, Response, status
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.adapters.import_command import IMPORT_TIMEOUT_SECONDS, ImportFailed, ImportTimedOut, run_import
from app.api.deps import AdminDep, SettingsDep
from app.api.errors import ErrorDetail, FieldErrors
from app.api.import_form import IMPORT_FORM_DOC, ImportForm, read_import_form
from app.core.messages import ImportOutcome
from app.db.models import User
from app.observability.metrics import MODEL_IMPORTS

router = APIRouter(tags=["model"])
log = logging.getLogger("predictor")


@router.post(
    "/models/import",
    status_code=status.HTTP_201_CREATED,
    summary="Import a model trained elsewhere",
    openapi_extra=IMPORT_FORM_DOC,
    responses={
        201: {"description": "Imported (`served`: with `serve`, when it passed the gate or `force`)"},
        413: {"model": ErrorDetail, "description": "The form is past MAX_BODY_BYTES (32 MiB)"},
        415: {
            "model": ErrorDetail,
            "description": "A pickle or an MLflow model (they may run code as they load: the command "
            "line imports them), or a body that is not multipart/form-data",
        },
        422: {
            "model": ImportOutcome | ErrorDetail | FieldErrors,
            "description": "Refused by a step of the import (an ImportOutcome: status refused, the step, "
            "why; nothing published), or a form that is not right (an empty file, an unknown field)",
        },
        502: {
            "model": ErrorDetail,
            "description": "The import command ended without an outcome (it crashed)",
        },
        504: {"model": ErrorDetail, "description": f"The import ran past {IMPORT_TIMEOUT_SECONDS} s"},
    },
)
async def import_model(
    admin: AdminDep, settings: SettingsDep, request: Request, response: Response
) -> ImportOutcome:
    """A LightGBM (text), XGBoost (.json, .ubj), CatBoost (.cbm) or ONNX file, in the form field `file`,
    compiled to one ONNX graph, checked for parity against its own library on real rows (`sample`, a
    CSV, else rows drawn from the schema) and published; `serve` makes it the champion through the
    promotion gate (`force`: without it). Answers 201 with what was imported, 422 with the step that
    refused it and why (nothing published then). As `python -m app.cli models import`, which is also
    the way for pickles and MLflow models, refused here."""
    with tempfile.TemporaryDirectory(prefix="model-import-") as scratch:
        try:
            form = await read_import_form(request, Path(scratch))
        except (StarletteHTTPException, RequestValidationError) as exc:  # a broken form, past the limit too
            _record(admin, "invalid", reason=_reason(exc))
            raise
        try:
            outcome = await run_import(form.files, form.options, settings)
        except ImportTimedOut as exc:
            _record(admin, "timeout", form, reason=str(exc))
            raise HTTPException(status.HTTP_504_GATEWAY_TIMEOUT, f"{exc}: see GET /models") from None
        except ImportFailed as exc:
            _record(admin, "failed", form, reason=str(exc))
            raise HTTPException(status.HTTP_502_BAD_GATEWAY, str(exc)) from None
    if outcome.status == "refused":
        response.status_code = status.HTTP_422_UNPROCESSABLE_CONTENT
        _record(admin, "refused", form, reason=f"{outcome.step}: {outcome.error}")
    else:
        _record(admin, "imported", form, version=outcome.version, served=outcome.served)
    return outcome


def _record(
    admin: User,
    result: str,
    form: ImportForm | None = None,
    *,
    reason: str | None = None,
    **fields: object,
) -> None:
    """Count the import and log who sent what, and what became of it."""
    MODEL_IMPORTS.labels(result=result).inc()
    details = {"user": admin.username, "result": result, **fields}
    if form is not None:
        details |= {"source": form.model.name, "sha256": form.model.sha256, "bytes": form.model.size}
    if reason is not None:
        details["reason"] = reason
    level = logging.INFO if result == "imported" else logging.WARNING
    log.log(level, f"model import {result}", extra={"fields": details})


def _reason(exc: StarletteHTTPException | RequestValidationError) -> str:
    if isinstance(exc, StarletteHTTPException):
        return str(exc.detail)
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
