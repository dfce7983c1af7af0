"""The retraining worker: runs the jobs any replica queued (POST /train), one at a time.

python -m app.worker

It claims the oldest queued job from the database, renews the job's lease while the training
process runs, and records the outcome. Killed mid-job, it stops renewing: once the lease runs out
(JOB_LEASE_SECONDS) the job is failed with that reason, by the next worker or replica that looks.
SIGTERM stops it cleanly: the running job is stopped and failed, saying why. `python -m app.serve`
starts one itself on SQLite (the embedded default); deployments run it as its own process or pod.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import uuid
from types import FrameType

from sqlalchemy.exc import SQLAlchemyError

from app.adapters.model_store import ModelStore
from app.core.config import Settings, load_settings, missing_project
from app.core.messages import FeedbackRow, Job
from app.core.versions import now
from app.db.bootstrap import bootstrap
from app.db.jobs import JobQueue
from app.db.pointer import DatabasePointer
from app.db.prediction_log import PredictionLogStore
from app.db.session import Database
from app.jobs.retraining import Retrainer
from app.observability.logging import configure_logging

log = logging.getLogger("predictor")

POLL_SECONDS = 1.0
# Set by python -m app.serve for the worker it starts beside itself.
PARENT_PID = "PREDICTOR_PARENT_PID"


class Worker:
    def __init__(self, settings: Settings, database: Database) -> None:
        self.name = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.queue = JobQueue(database.session, settings.job_lease_seconds)
        self.prediction_log = PredictionLogStore(database.session)
        self.feedback_max_rows = settings.train_feedback_max_rows
        store = ModelStore.from_url(settings.model_store_url, settings.model_cache_dir)
        self.retrainer = Retrainer(
            store,
            DatabasePointer(database.session),
            settings.jobs_dir,
            settings.train_params,
            settings.promotion_tolerance,
            settings.train_timeout_seconds,
            settings.max_batch_rows,
        )
        self.stop = threading.Event()
        self._cancel = threading.Event()  # the running job's

    def shutdown(self) -> None:
        """Stop after the running job, which is stopped (and failed, saying why) at once."""
        self.stop.set()
        self._cancel.set()

    def run(self) -> None:
        """Claim and run jobs until `stop` is set (or the server that started this worker is gone)."""
        log.info("worker %s waiting for retraining jobs", self.name)
        parent = os.environ.get(PARENT_PID)
        while not self.stop.is_set():
            if parent is not None and str(os.getppid()) != parent:
                log.info("worker %s stopping: the server that started it is gone", self.name)
                return
            try:
                job = self.queue.claim(self.name)
            except SQLAlchemyError as exc:  # the database is away: try again shortly
                log.warning("worker: jobs not read: %s", str(exc).splitlines()[0])
                job = None
            if job is None:
                self.stop.wait(POLL_SECONDS)
                continue
            self._run(job)

    def _run(self, job: Job) -> None:
        log.info("worker %s runs retraining job %s", self.name, job.id)
        lost = threading.Event()
        done = threading.Event()
        cancel = self._cancel = threading.Event()
        if self.stop.is_set():
            cancel.set()

        def keep_lease() -> None:
            while not done.wait(self.queue.lease_seconds / 3):
                try:
                    if not self.queue.renew(job.id, self.name):
                        lost.set()
                        cancel.set()
                        return
                except SQLAlchemyError as exc:
                    log.warning("worker: lease of job %s not renewed: %s", job.id, str(exc).splitlines()[0])

        renewer = threading.Thread(target=keep_lease, name="lease", daemon=True)
        renewer.start()
        try:
            outcome = self._outcome(job, cancel)
        finally:
            done.set()
            renewer.join()
        if lost.is_set():
            log.warning("worker %s lost the lease of job %s: its outcome is not recorded", self.name, job.id)
            return
        if not self.queue.finish(outcome, self.name):
            log.warning(
                "job %s was failed meanwhile (lease expired): outcome %s dropped", job.id, outcome.status
            )

    def _outcome(self, job: Job, cancel: threading.Event) -> Job:
        try:
            feedback = self._feedback(job)
        except SQLAlchemyError as exc:
            reason = f"the labelled predictions could not be read: {type(exc).__name__}"
            log.warning("retraining job %s failed: %s", job.id, reason)
            return job.model_copy(update={"status": "failed", "reason": reason, "finished_at": now()})
        return self.retrainer.run(job, self.queue.upload(job.id), cancel, feedback)

    def _feedback(self, job: Job) -> list[FeedbackRow] | None:
        """The labelled predictions a job with include_feedback adds to its data: the newest, at most
        TRAIN_FEEDBACK_MAX_ROWS; None when it did not ask."""
        if not job.include_feedback:
            return None
        rows = self.prediction_log.labelled(self.feedback_max_rows)
        return [FeedbackRow(features=r.features, label=r.label, value=r.value) for r in rows]


def main() -> None:
    settings = load_settings()
    configure_logging(settings.log_level)
    problem = missing_project(settings)
    if problem is not None:
        print(problem, file=sys.stderr)
        raise SystemExit(2)
    database = Database(settings.database_url)
    if settings.migrate_on_startup:
        bootstrap(database, settings)
    worker = Worker(settings, database)

    def stop(signum: int, _: FrameType | None) -> None:
        log.info("worker %s stopping (%s)", worker.name, signal.Signals(signum).name)
        worker.shutdown()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        worker.run()
    finally:
        database.dispose()


if __name__ == "__main__":
    main()
