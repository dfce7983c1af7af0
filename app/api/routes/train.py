"""Retraining from the API: POST /train starts a background job, GET /train/{id} follows it.

The job runs the pipeline's own stages in a subprocess (app.serving.jobs); nothing of
the training side is imported here.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from app.api.deps import AdminDep, JobsDep
from app.serving.jobs import JobConflict, UnknownJob

router = APIRouter(tags=["train"])

UPLOAD_DOC: dict[str, Any] = {
    "requestBody": {
        "required": False,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            }
        },
    }
}


async def _upload(request: Request) -> tuple[bytes | None, str | None]:
    """The CSV of the multipart field `file`, or None when the request carries no file.

    app.api.body_limit refuses a body past MAX_BODY_BYTES (413), declared or not."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        if await request.body():
            raise HTTPException(
                status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
                "send the training CSV as multipart/form-data, field 'file' (or no body at all)",
            )
        return None, None
    form = await request.form(max_files=1, max_fields=10)
    try:
        upload = form.get("file")
        if upload is None:
            return None, None
        if isinstance(upload, str):
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "the form field 'file' must be a file")
        data = await upload.read()
        name = upload.filename
    finally:
        await form.close()
    return data, name


@router.post(
    "/train",
    status_code=status.HTTP_202_ACCEPTED,
    openapi_extra=UPLOAD_DOC,
    responses={409: {"description": "A retraining job is already queued or running"}},
)
async def start_training(request: Request, admin: AdminDep, jobs: JobsDep) -> JSONResponse:
    """Retrain on an uploaded CSV (feature columns and the target), or on the project's data without one.

    Answers 202 at once with the job; the model replaces the champion only if it passes the gate.
    """
    data, name = await _upload(request)
    try:
        # Writes the upload to disk: off the event loop.
        job = await run_in_threadpool(jobs.submit, admin.username, data, _safe_name(name))
    except JobConflict:
        raise HTTPException(
            status.HTTP_409_CONFLICT, "a retraining job is already running: wait for it to finish"
        ) from None
    return JSONResponse(
        job.model_dump(mode="json", exclude_none=True),
        status_code=status.HTTP_202_ACCEPTED,
        headers={"Location": f"/train/{job.id}"},
    )


@router.get("/train/{job_id}", responses={404: {"description": "No such job"}})
def training_status(job_id: str, _: AdminDep, jobs: JobsDep) -> dict[str, Any]:
    """queued, running, succeeded (with the metrics, the gate and whether it was promoted) or failed (why)."""
    try:
        return jobs.get(job_id).model_dump(mode="json", exclude_none=True)
    except UnknownJob:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"unknown training job {job_id!r}") from None


def _safe_name(name: str | None) -> str | None:
    """The uploaded file's base name, for messages only; never used as a path."""
    if not name:
        return None
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = "".join(ch for ch in base if ch.isalnum() or ch in "._- ")[:100].strip()
    return cleaned or None
