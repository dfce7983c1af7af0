"""What the API, the worker and the training subprocesses hand each other: typed, one definition.

The API records a Job in the database; the worker (python -m app.worker) claims it, writes a
RetrainRequest into the job folder and starts `python -m app.pipeline.retrain JOB_DIR`; the job
writes a RetrainResult back; `python -m app.pipeline.alias` prints an AliasOutcome.
Each crosses the process boundary as `model_dump_json()` and comes back with `model_validate_json()`,
never as a dict read by string keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.core.artifacts import ImportedFlavor, Parity

REQUEST_FILE = "request.json"  # the job's arguments, in jobs/<job id>/
RESULT_FILE = "result.json"  # its answer, beside them
FEEDBACK_FILE = "feedback.jsonl"  # the labelled predictions it adds, one FeedbackRow a line


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GateOutcome(BaseModel):
    """The promotion gate's verdict on a challenger, as the job decided it and version.json keeps it."""

    # Records written before this type existed carry the same fields: read them as they are.
    model_config = ConfigDict(extra="ignore", frozen=True)

    metric: str
    challenger: float  # the new model's test score
    tolerance: float
    champion: float | None = None  # the serving model's score on the same test split, if comparable
    champion_version: str | None = None
    passed: bool
    reason: str


class FeedbackRow(_Message):
    """A labelled prediction from the prediction log, as the worker hands it to the retraining job."""

    features: str  # the logged input row, a JSON object {feature name: value or null}, as logged
    label: str | None = None  # the ground truth of a classification
    value: float | None = None  # ... or of a regression


class FeedbackOutcome(_Message):
    """What the job did with the labelled predictions it was given."""

    rows: int  # added to the training data
    refused: int = 0  # left out: their features are not the data's columns (e.g. one renamed since)
    reason: str | None = None  # why the first one was left out


class RetrainRequest(_Message):
    """The retraining job's arguments."""

    model_store_url: str  # where the new version is published (MODEL_STORE_URL)
    cache_dir: Path  # the worker's download cache, for an S3 store
    params: Path
    tolerance: float = Field(ge=0)
    upload: Path | None = None  # a CSV to train on instead of the project's data.source
    upload_name: str | None = None  # the name the user gave it, for messages
    champion_dir: Path | None = None  # the serving version, which the gate compares against
    feedback: Path | None = None  # FeedbackRows to add to the data (FEEDBACK_FILE); None: not asked


class RetrainSucceeded(_Message):
    status: Literal["succeeded"] = "succeeded"
    version: str
    name: str
    data: str  # what it trained on, as prepare read it (data.source or the upload's name)
    metric: str
    metrics: dict[str, float]
    mlflow_run_id: str | None = None
    registered_model: str | None = None
    registered_version: str | None = None
    gate: GateOutcome
    feedback: FeedbackOutcome | None = None  # when the request had feedback


class RetrainFailed(_Message):
    status: Literal["failed"] = "failed"
    error: str  # one line: a data or params problem, or "internal error: ..."


RetrainResult = Annotated[RetrainSucceeded | RetrainFailed, Field(discriminator="status")]


class AliasOutcome(_Message):
    """How moving MLflow's `champion` alias went: reported, never raised (the swap is done). An API
    swap answers `pending` (the move runs after it, off the request); GET /models says how it ended."""

    status: Literal["updated", "failed", "skipped", "pending"]
    alias: str | None = None
    reason: str | None = None
    registered_model: str | None = None
    registered_version: str | None = None


JobStatus = Literal["queued", "running", "succeeded", "failed"]
# Job.data of a job that trains on params.yaml's data.source rather than an upload.
PROJECT_DATA = "project data"


class Job(BaseModel):
    """A retraining job as GET /train/{id} shows it; the database keeps it (app/db/jobs.py)."""

    model_config = ConfigDict(extra="forbid")

    id: str
    status: JobStatus
    user: str
    # What it trains on: the uploaded file's name, or the project's data (its data.source once the
    # job has read params.yaml).
    data: str
    # POST /train's include_feedback: the labelled prediction log is added to that data.
    include_feedback: bool = False
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    # On success: the new version, its metrics, the gate's verdict and whether it now serves.
    version: str | None = None
    metric: str | None = None
    metrics: dict[str, float] | None = None
    gate: GateOutcome | None = None
    promoted: bool | None = None
    mlflow: AliasOutcome | None = None
    # With include_feedback: the rows that came from the prediction log, and those left out.
    feedback_rows: int | None = None
    feedback_refused: int | None = None
    message: str | None = None
    # On failure: one line saying why.
    reason: str | None = None


ImportStep = Literal["source", "schema", "compile", "parity", "gate", "publish"]


class ImportOutcome(_Message):
    """What `models import --json` prints as its last line, and POST /models/import answers: the
    version it published, or the step that refused it and why (nothing published then)."""

    status: Literal["imported", "refused"]
    step: ImportStep | None = None  # refused: where
    error: str | None = None  # refused: one line saying why and what to pass
    version: str | None = None
    name: str | None = None
    task: str | None = None
    flavor: ImportedFlavor | None = None
    parity: Parity | None = None
    gate: GateOutcome | None = None  # when the sample had the target and a version was serving
    served: bool = False  # --serve: every replica now serves it
    lines: list[str] = []  # what the command said, step by step
