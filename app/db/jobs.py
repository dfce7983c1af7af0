"""Retraining jobs in the SQL database: queued by any replica, claimed by a worker under a lease.

Why a table and not a queue library: a job here is one row that every replica must be able to
show (GET /train/{id}) long after it ran, on SQLite (the embedded default) as on PostgreSQL, and
at most one may be active in the whole deployment. procrastinate and pgqueuer are PostgreSQL-only;
huey, rq, arq and dramatiq need Redis or their own store, and would still leave the job's record
to be kept here. What remains is small: a unique `active` column (the database refuses a second
active job), a conditional UPDATE to claim (only one worker wins it), and a lease the worker renews,
so a job whose worker died is failed with a reason instead of staying "running".
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.core.messages import PROJECT_DATA, Job
from app.db.models import TrainingJobRow, TrainingUpload

_JOB_ID = re.compile(r"^[0-9a-f]{32}$")
UPLOAD_NAME = "upload.csv"
LEASE_EXPIRED = "interrupted: the worker running it stopped answering (its lease expired)"


class JobConflict(Exception):
    """A job is queued or running already."""


class UnknownJob(LookupError):
    pass


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="seconds")


class JobQueue:
    def __init__(
        self,
        sessions: Callable[[], AbstractContextManager[Session]],
        lease_seconds: float = 30,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._sessions = sessions
        self.lease_seconds = lease_seconds
        self._clock = clock

    def submit(
        self, user: str, upload: bytes | None, filename: str | None, *, include_feedback: bool = False
    ) -> Job:
        """Queue a job; JobConflict while another one is queued or running anywhere in the deployment."""
        created = self._clock()
        job = Job(
            id=uuid.uuid4().hex,
            status="queued",
            user=user,
            data=f"upload {filename or UPLOAD_NAME}" if upload is not None else PROJECT_DATA,
            include_feedback=include_feedback,
            created_at=_iso(created),
        )
        with self._sessions() as session:
            self._expire(session)
            session.add(
                TrainingJobRow(
                    id=job.id, status=job.status, active=1, created_at=created, record=job.model_dump_json()
                )
            )
            try:
                if upload is not None:
                    # The job row first: the upload refers to it. The flush is where a second active
                    # job meets the unique column, as the commit is without an upload.
                    session.flush()
                    session.add(TrainingUpload(job_id=job.id, filename=filename or UPLOAD_NAME, data=upload))
                session.commit()
            except IntegrityError:
                session.rollback()
                raise JobConflict from None
        return job

    def get(self, job_id: str) -> Job:
        if not _JOB_ID.match(job_id):
            raise UnknownJob(job_id)
        with self._sessions() as session:
            self._expire(session)
            record = session.scalar(select(TrainingJobRow.record).where(TrainingJobRow.id == job_id))
        if record is None:
            raise UnknownJob(job_id)
        return Job.model_validate_json(record)

    def upload(self, job_id: str) -> tuple[bytes, str] | None:
        """The job's CSV and the name it was uploaded as, or None when it trains on the project's data."""
        with self._sessions() as session:
            row = session.get(TrainingUpload, job_id)
            return (row.data, row.filename) if row is not None else None

    def claim(self, worker: str) -> Job | None:
        """The oldest queued job, now running under `worker`'s lease; None when there is none to run."""
        with self._sessions() as session:
            self._expire(session)
            candidate = session.scalar(
                select(TrainingJobRow)
                .where(TrainingJobRow.status == "queued")
                .order_by(TrainingJobRow.created_at)
                .limit(1)
            )
            if candidate is None:
                return None
            now = self._clock()
            job = Job.model_validate_json(candidate.record).model_copy(
                update={"status": "running", "started_at": _iso(now)}
            )
            # Conditional: of two workers claiming the same row, only the one whose update matched wins.
            claimed = session.execute(
                update(TrainingJobRow)
                .where(TrainingJobRow.id == job.id, TrainingJobRow.status == "queued")
                .values(
                    status="running",
                    lease_until=now + self.lease_seconds,
                    worker=worker[:128],
                    record=job.model_dump_json(),
                )
            )
            session.commit()
        return job if _rowcount(claimed) == 1 else None

    def renew(self, job_id: str, worker: str) -> bool:
        """Extend the lease; False when the job is no longer this worker's (it expired and was failed)."""
        with self._sessions() as session:
            renewed = session.execute(
                update(TrainingJobRow)
                .where(
                    TrainingJobRow.id == job_id,
                    TrainingJobRow.worker == worker[:128],
                    TrainingJobRow.status == "running",
                )
                .values(lease_until=self._clock() + self.lease_seconds)
            )
            session.commit()
        return _rowcount(renewed) == 1

    def finish(self, job: Job, worker: str) -> bool:
        """Record the job's outcome and free the deployment's one job slot; False if the lease was lost."""
        with self._sessions() as session:
            done = session.execute(
                update(TrainingJobRow)
                .where(
                    TrainingJobRow.id == job.id,
                    TrainingJobRow.worker == worker[:128],
                    TrainingJobRow.status == "running",
                )
                .values(status=job.status, active=None, lease_until=None, record=job.model_dump_json())
            )
            session.execute(delete(TrainingUpload).where(TrainingUpload.job_id == job.id))
            session.commit()
        return _rowcount(done) == 1

    def expire_leases(self) -> int:
        with self._sessions() as session:
            return self._expire(session)

    def _expire(self, session: Session) -> int:
        """Fail the running jobs whose worker stopped renewing their lease."""
        now = self._clock()
        stale = session.scalars(
            select(TrainingJobRow).where(TrainingJobRow.status == "running", TrainingJobRow.lease_until < now)
        ).all()
        for row in stale:
            job = Job.model_validate_json(row.record).model_copy(
                update={"status": "failed", "reason": LEASE_EXPIRED, "finished_at": _iso(now)}
            )
            session.execute(
                update(TrainingJobRow)
                .where(TrainingJobRow.id == row.id, TrainingJobRow.status == "running")
                .values(status="failed", active=None, lease_until=None, record=job.model_dump_json())
            )
            session.execute(delete(TrainingUpload).where(TrainingUpload.job_id == row.id))
        if stale:
            session.commit()
        return len(stale)


def _rowcount(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)
