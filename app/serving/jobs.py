"""Retraining jobs started from the API, and the MLflow alias that follows the served version.

The job itself is `python -m app.pipeline.retrain` in a subprocess: the pipeline's own stages,
with mlflow and pandas imported there and never in the API process, and sklearn's fitting off the
API's GIL. One worker thread here starts it, waits, then swaps the new version in if it passed
the promotion gate. One job at a time, across worker processes too: a job holds an exclusive lock
on a file in the jobs folder until it ends. Job state is a JSON file, so any worker can answer
GET /train/{id}.
"""

from __future__ import annotations

import fcntl
import logging
import re
import shutil
import subprocess
import sys
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from app.core.artifacts import ModelMetadata, write_json_atomic
from app.core.loading import ModelLoadError
from app.core.messages import (
    REQUEST_FILE,
    RESULT_FILE,
    AliasOutcome,
    GateOutcome,
    RetrainFailed,
    RetrainRequest,
    RetrainResult,
)
from app.core.versions import UnknownVersion, VersionStore, now
from app.serving.state import ServingState

log = logging.getLogger("predictor")

JOB_FILE = "job.json"
LOG_FILE = "job.log"
UPLOAD_FILE = "upload.csv"
LOCK_FILE = ".train.lock"
ALIAS_TIMEOUT_SECONDS = 60
_JOB_ID = re.compile(r"^[0-9a-f]{32}$")
PROJECT_DATA = "project data"
_RESULT: TypeAdapter[RetrainResult] = TypeAdapter(RetrainResult)

JobStatus = Literal["queued", "running", "succeeded", "failed"]


class Job(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    status: JobStatus
    user: str
    # What it trains on: the uploaded file's name, or the project's data (its data.source once the
    # job has read params.yaml).
    data: str
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
    message: str | None = None
    # On failure: one line saying why.
    reason: str | None = None


class JobConflict(Exception):
    """A job is queued or running already."""


class UnknownJob(LookupError):
    pass


class TrainingJobs:
    def __init__(
        self,
        serving: ServingState,
        store: VersionStore,
        params: Path,
        tolerance: float,
        timeout: int,
    ) -> None:
        self.serving = serving
        self.store = store
        self.params = params
        self.tolerance = tolerance
        self.timeout = timeout
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="retrain")
        self._guard = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._stopping = False

    def recover(self) -> None:
        """At start-up: a job left queued or running while no process holds the lock died with its API."""
        if not self.store.jobs_dir.is_dir():
            return
        with (self.store.jobs_dir / LOCK_FILE).open("a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return  # another worker runs a job right now
            for folder in self.store.jobs_dir.iterdir():
                try:
                    job = self.get(folder.name)
                except UnknownJob:
                    continue
                if job.status in ("queued", "running"):
                    reason = "interrupted: the API stopped while the job ran"
                    self._save(
                        job.model_copy(update={"status": "failed", "reason": reason, "finished_at": now()})
                    )

    def shutdown(self) -> None:
        """Stop a running job's process (its job fails, saying why) and wait for the worker thread."""
        self._stopping = True
        process = self._process
        if process is not None and process.poll() is None:
            process.terminate()
        self._executor.shutdown(wait=True, cancel_futures=True)

    def _path(self, job_id: str) -> Path:
        if not _JOB_ID.match(job_id):
            raise UnknownJob(job_id)
        return self.store.jobs_dir / job_id

    def get(self, job_id: str) -> Job:
        try:
            return Job.model_validate_json((self._path(job_id) / JOB_FILE).read_text())
        except (OSError, ValueError):
            raise UnknownJob(job_id) from None

    def _save(self, job: Job) -> None:
        write_json_atomic(self._path(job.id) / JOB_FILE, job)

    def submit(self, user: str, upload: bytes | None, filename: str | None) -> Job:
        """Queue a job; raises JobConflict while another one is queued or running (in any worker)."""
        with self._guard:
            self.store.jobs_dir.mkdir(parents=True, exist_ok=True)
            lock = (self.store.jobs_dir / LOCK_FILE).open("a")
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.close()
                raise JobConflict from None
            try:
                job = Job(
                    id=uuid.uuid4().hex,
                    status="queued",
                    user=user,
                    data=f"upload {filename or UPLOAD_FILE}" if upload is not None else PROJECT_DATA,
                    created_at=now(),
                )
                folder = self._path(job.id)
                folder.mkdir(parents=True)
                if upload is not None:
                    (folder / UPLOAD_FILE).write_bytes(upload)
                self._save(job)
                self._executor.submit(self._run, job, filename, lock)
            except BaseException:
                lock.close()  # closing releases the lock
                raise
        return job

    def _run(self, job: Job, filename: str | None, lock: Any) -> None:
        try:
            job = job.model_copy(update={"status": "running", "started_at": now()})
            self._save(job)
            job = self._train(job, filename)
        except Exception as exc:
            log.exception("retraining job %s failed", job.id)
            job = job.model_copy(
                update={"status": "failed", "reason": f"internal error: {type(exc).__name__}"}
            )
        finally:
            job = job.model_copy(update={"finished_at": now()})
            self._save(job)
            lock.close()
        log.info(
            "retraining job %s %s",
            job.id,
            job.status,
            extra={"fields": {"version": job.version, "promoted": job.promoted, "reason": job.reason}},
        )

    def _train(self, job: Job, filename: str | None) -> Job:
        folder = self._path(job.id)
        current = self.serving.current
        upload = folder / UPLOAD_FILE
        request = RetrainRequest(
            versions_dir=self.store.root,
            params=self.params,
            tolerance=self.tolerance,
            upload=upload if upload.is_file() else None,
            upload_name=(filename or UPLOAD_FILE) if upload.is_file() else None,
            champion_dir=(
                self.store.path(current.version)
                if current is not None and self.store.exists(current.version)
                else None
            ),
        )
        write_json_atomic(folder / REQUEST_FILE, request)
        command = [sys.executable, "-m", "app.pipeline.retrain", str(folder)]
        try:
            with (folder / LOG_FILE).open("w") as sink:
                self._process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
                try:
                    self._process.wait(timeout=self.timeout)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    self._process.wait()
                    return job.model_copy(
                        update={"status": "failed", "reason": f"timed out after {self.timeout} s"}
                    )
            if self._stopping:
                return job.model_copy(
                    update={"status": "failed", "reason": "interrupted: the API stopped while the job ran"}
                )
        finally:
            self._process = None
            # The new model is in the store now; the scratch data is not worth keeping.
            shutil.rmtree(folder / "work", ignore_errors=True)
            (folder / UPLOAD_FILE).unlink(missing_ok=True)
        try:
            result = _RESULT.validate_json((folder / RESULT_FILE).read_text())
        except (OSError, ValidationError):
            return job.model_copy(
                update={
                    "status": "failed",
                    "reason": f"the training process ended without a result (see {LOG_FILE})",
                }
            )
        if isinstance(result, RetrainFailed):
            return job.model_copy(update={"status": "failed", "reason": result.error})

        data = f"{PROJECT_DATA} ({result.data})" if job.data == PROJECT_DATA else job.data
        update: dict[str, Any] = {
            "data": data,
            "version": result.version,
            "metric": result.metric,
            "metrics": result.metrics,
            "gate": result.gate,
            "promoted": False,
        }
        if not result.gate.passed:
            message = f"kept as a rejected challenger: {result.gate.reason}"
            return job.model_copy(update=update | {"status": "succeeded", "message": message})
        try:
            self.serving.serve_version(result.version, reason=f"promoted by retraining job {job.id}")
        except (ModelLoadError, UnknownVersion) as exc:
            return job.model_copy(update=update | {"status": "failed", "reason": f"promotion refused: {exc}"})
        mlflow = update_champion_alias(self.store.metadata(result.version))
        message = f"promoted: now serving {result.version} ({result.gate.reason})"
        return job.model_copy(
            update=update | {"status": "succeeded", "promoted": True, "mlflow": mlflow, "message": message}
        )


def update_champion_alias(metadata: ModelMetadata) -> AliasOutcome:
    """Move MLflow's `champion` alias to this version, in a subprocess; says how it went, never raises."""
    registered = {
        "registered_model": metadata.registered_model,
        "registered_version": metadata.registered_version,
    }
    if not metadata.registered_model or not metadata.registered_version:
        reason = f"version {metadata.version} has no MLflow registry version"
        return AliasOutcome(status="skipped", reason=reason, **registered)
    command = [
        sys.executable,
        "-m",
        "app.pipeline.alias",
        "--model",
        metadata.registered_model,
        "--version",
        metadata.registered_version,
    ]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=ALIAS_TIMEOUT_SECONDS, check=False
        )
        outcome = AliasOutcome.model_validate_json(done.stdout.strip().splitlines()[-1])
    except subprocess.TimeoutExpired:
        outcome = AliasOutcome(
            status="failed", reason=f"MLflow did not answer within {ALIAS_TIMEOUT_SECONDS} s"
        )
    except (ValidationError, IndexError):
        outcome = AliasOutcome(status="failed", reason="the alias update ended without an answer")
    return outcome.model_copy(update=registered)
