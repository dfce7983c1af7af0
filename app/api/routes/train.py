"""Retraining from the API: POST /train queues a job, GET /train/{id} follows it.

Jobs live in the database, so any replica answers for any job; a worker (python -m app.worker)
runs them, the pipeline's own stages in a subprocess. Nothing of the training side is imported here.
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Response, status
from starlette.concurrency import run_in_threadpool

from app.api.deps import AdminDep, JobsDep
from app.api.errors import ErrorDetail
from app.api.uploads import TRAINING_REQUEST_DOC, TrainingRequestDep
from app.core.messages import Job
from app.db.jobs import JobConflict, UnknownJob

router = APIRouter(tags=["train"])


@router.post(
    "/train",
    status_code=status.HTTP_202_ACCEPTED,
    response_model_exclude_none=True,
    openapi_extra=TRAINING_REQUEST_DOC,
    responses={
        409: {"model": ErrorDetail, "description": "A retraining job is already queued or running"},
        415: {"model": ErrorDetail, "description": "A body neither multipart/form-data nor JSON"},
        422: {"description": "An unknown option, one of the wrong type, or a form field 'file' not a file"},
    },
)
async def start_training(
    admin: AdminDep,
    jobs: JobsDep,
    # After the admin check (dependencies resolve in this order): no token, a 401, whatever the body.
    body: TrainingRequestDep,
    response: Response,
) -> Job:
    """Retrain on an uploaded CSV (feature columns and the target), or on the project's data without one.

    `include_feedback` (a JSON body, or a form field beside the upload) adds the labelled predictions
    of the log to that data. Answers 202 at once with the job; the model replaces the champion only
    if it passes the gate.
    """
    upload = body.upload
    data = upload.data if upload is not None else None
    name = upload.filename if upload is not None else None
    try:
        # Writes the upload to the database: off the event loop.
        job = await run_in_threadpool(
            jobs.submit, admin.username, data, name, include_feedback=body.options.include_feedback
        )
    except JobConflict:
        raise HTTPException(
            status.HTTP_409_CONFLICT, "a retraining job is already running: wait for it to finish"
        ) from None
    response.headers["Location"] = f"/train/{job.id}"
    return job


@router.get(
    "/train/{job_id}",
    response_model_exclude_none=True,
    responses={404: {"model": ErrorDetail, "description": "No such job"}},
)
def training_status(job_id: str, _: AdminDep, jobs: JobsDep) -> Job:
    """queued, running, succeeded (with the metrics, the gate and whether it was promoted) or failed (why)."""
    # A job whose worker died is failed here once its lease ran out, so it never stays "running".
    try:
        return jobs.get(job_id)
    except UnknownJob:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"unknown training job {job_id!r}") from None
