"""Running one retraining job, as the worker claimed it, and the MLflow alias that follows the champion.

The job itself is `python -m app.pipeline.retrain JOB_DIR` in a subprocess: the pipeline's own
stages, with mlflow and pandas imported there and never in a serving process. It publishes the
new version to the model store, as accepted or as a rejected challenger; if it passed the promotion
gate, the version is verified (downloaded, checksums, loaded) before the serving pointer moves to
it, and every replica follows within WATCH_SECONDS.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from app.adapters.mlflow_alias import update_champion_alias
from app.adapters.model_store import ModelStore
from app.core.artifacts import ModelMetadata, write_json_atomic
from app.core.loading import ModelLoadError
from app.core.messages import (
    FEEDBACK_FILE,
    PROJECT_DATA,
    REQUEST_FILE,
    RESULT_FILE,
    FeedbackRow,
    Job,
    RetrainFailed,
    RetrainRequest,
    RetrainResult,
)
from app.core.serving_pointer import PointerStore, ServingPointer
from app.core.versions import CacheFull, StoreUnavailable, UnknownVersion, now
from app.serving.champion_alias import record_alias
from app.serving.predictor import Predictor

log = logging.getLogger("predictor")

LOG_FILE = "job.log"
UPLOAD_FILE = "upload.csv"
INTERRUPTED = "interrupted: the worker stopped while the job ran"
_RESULT: TypeAdapter[RetrainResult] = TypeAdapter(RetrainResult)


class Retrainer:
    """Runs claimed jobs for the worker; one at a time (the queue lets only one be active)."""

    def __init__(
        self,
        store: ModelStore,
        pointer: PointerStore,
        jobs_dir: Path,
        params: Path,
        tolerance: float,
        timeout: int,
        max_rows: int = 1000,
    ) -> None:
        self.store = store
        self.pointer = pointer
        self.jobs_dir = jobs_dir
        self.params = params
        self.tolerance = tolerance
        self.timeout = timeout
        self.max_rows = max_rows

    def run(
        self,
        job: Job,
        upload: tuple[bytes, str] | None,
        cancel: threading.Event,
        feedback: Sequence[FeedbackRow] | None = None,
    ) -> Job:
        """The job's outcome (succeeded or failed, with why); `cancel` stops its training process.
        `feedback`: the labelled predictions to add to the data (None: the job did not ask)."""
        folder = self.jobs_dir / job.id
        try:
            folder.mkdir(parents=True, exist_ok=True)
            outcome = self._train(job, folder, upload, cancel, feedback)
        except Exception as exc:
            log.exception("retraining job %s failed", job.id)
            outcome = job.model_copy(
                update={"status": "failed", "reason": f"internal error: {type(exc).__name__}"}
            )
        finally:
            # The new model is in the store now; the scratch folder is not worth keeping.
            shutil.rmtree(folder, ignore_errors=True)
        outcome = outcome.model_copy(update={"finished_at": now()})
        log.info(
            "retraining job %s %s",
            job.id,
            outcome.status,
            extra={
                "fields": {
                    "version": outcome.version,
                    "promoted": outcome.promoted,
                    "feedback_rows": outcome.feedback_rows,
                    "reason": outcome.reason,
                }
            },
        )
        return outcome

    def _champion_dir(self) -> Path | None:
        """The serving version's folder, which the gate scores on the job's test split."""
        pointer = self.pointer.get()
        if pointer is None:
            return None
        try:
            return self.store.fetch(pointer.version)
        except UnknownVersion:
            return None  # the pointer names a version the store lost: nothing to compare against

    def _train(
        self,
        job: Job,
        folder: Path,
        upload: tuple[bytes, str] | None,
        cancel: threading.Event,
        feedback: Sequence[FeedbackRow] | None,
    ) -> Job:
        upload_file = folder / UPLOAD_FILE
        if upload is not None:
            upload_file.write_bytes(upload[0])
        feedback_file = folder / FEEDBACK_FILE
        if feedback is not None:
            with feedback_file.open("w") as sink:
                sink.writelines(row.model_dump_json() + "\n" for row in feedback)
        try:
            champion_dir = self._champion_dir()
        except (StoreUnavailable, CacheFull, ModelLoadError) as exc:
            return _failed(job, f"the serving version could not be fetched for the gate: {exc}")
        request = RetrainRequest(
            model_store_url=self.store.url,
            cache_dir=self.store.cache_dir,
            params=self.params,
            tolerance=self.tolerance,
            upload=upload_file if upload is not None else None,
            upload_name=upload[1] if upload is not None else None,
            champion_dir=champion_dir,
            feedback=feedback_file if feedback is not None else None,
        )
        write_json_atomic(folder / REQUEST_FILE, request)
        stopped = self._run_process(folder, cancel)
        if stopped is not None:
            return _failed(job, stopped)
        try:
            result = _RESULT.validate_json((folder / RESULT_FILE).read_text())
        except (OSError, ValidationError):
            tail = _log_tail(folder / LOG_FILE)
            return _failed(job, f"the training process ended without a result{tail}")
        if isinstance(result, RetrainFailed):
            return _failed(job, result.error)

        data = f"{PROJECT_DATA} ({result.data})" if job.data == PROJECT_DATA else job.data
        update: dict[str, Any] = {
            "data": data,
            "version": result.version,
            "metric": result.metric,
            "metrics": result.metrics,
            "gate": result.gate,
            "promoted": False,
        }
        left_out = ""
        if result.feedback is not None:
            refused = result.feedback.refused
            update |= {"feedback_rows": result.feedback.rows, "feedback_refused": refused}
            if refused:
                plural = "" if refused == 1 else "s"
                left_out = f"; {refused} labelled prediction{plural} left out: {result.feedback.reason}"
        if not result.gate.passed:
            message = f"kept as a rejected challenger: {result.gate.reason}{left_out}"
            return job.model_copy(update=update | {"status": "succeeded", "message": message})
        try:
            metadata = self.promote(result.version, f"promoted by retraining job {job.id}")
        except (ModelLoadError, UnknownVersion, StoreUnavailable, CacheFull) as exc:
            return job.model_copy(update=update | {"status": "failed", "reason": f"promotion refused: {exc}"})
        mlflow = update_champion_alias(metadata)
        record_alias(self.pointer, metadata.version, mlflow)
        message = f"promoted: now serving {result.version} ({result.gate.reason}){left_out}"
        return job.model_copy(
            update=update | {"status": "succeeded", "promoted": True, "mlflow": mlflow, "message": message}
        )

    def promote(self, version: str, reason: str) -> ModelMetadata:
        """Verify a stored version loads (download, checksums, a sample prediction), then point every
        replica at it."""
        folder = self.store.fetch(version)
        predictor = Predictor.load(folder, self.max_rows, None)
        self.pointer.set(ServingPointer(version=version, since=now(), reason=reason))
        return predictor.metadata

    def _run_process(self, folder: Path, cancel: threading.Event) -> str | None:
        """Run the training process; None when it ended by itself, else why it was stopped."""
        command = [sys.executable, "-m", "app.pipeline.retrain", str(folder)]
        with (folder / LOG_FILE).open("w") as sink:
            # The job stops itself if this worker dies (app.pipeline.retrain watches its parent).
            env = os.environ | {"PREDICTOR_PARENT_PID": str(os.getpid())}
            process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env)
            try:
                waited = 0.0
                while process.poll() is None:
                    if cancel.wait(0.5):
                        process.terminate()
                        return INTERRUPTED
                    waited += 0.5
                    if waited >= self.timeout:
                        process.kill()
                        return f"timed out after {self.timeout} s"
                return None
            finally:
                if process.poll() is None:
                    process.kill()
                process.wait()


def _failed(job: Job, reason: str) -> Job:
    return job.model_copy(update={"status": "failed", "reason": reason})


def _log_tail(log_file: Path) -> str:
    """The training log's last line, which says why it ended (the job's folder goes with the job)."""
    try:
        lines = [line for line in log_file.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return f": {lines[-1][:300]}" if lines else ""
