"""The retraining queue in the database: one active job in the deployment, one worker per job, leases."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from app.db.jobs import LEASE_EXPIRED, JobConflict, JobQueue, UnknownJob
from app.db.session import Database


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def database(database_url: str) -> Database:
    database = Database(database_url)
    database.migrate()
    yield database
    database.dispose()


def test_one_job_at_a_time_and_each_claimed_by_exactly_one_worker(database: Database) -> None:
    queue = JobQueue(database.session, lease_seconds=30)
    job = queue.submit("admin", b"a,b\n1,2\n", "rows.csv")
    assert job.status == "queued" and job.data == "upload rows.csv"
    with pytest.raises(JobConflict):
        queue.submit("admin", None, None)
    with pytest.raises(JobConflict):  # with an upload too (once a 500: found by tests/api/test_fuzz.py)
        queue.submit("admin", b"a,b\n3,4\n", "more.csv")

    claimed: list[str] = []
    start = threading.Barrier(4)

    def claim(name: str) -> None:
        start.wait()
        if queue.claim(name) is not None:
            claimed.append(name)

    threads = [threading.Thread(target=claim, args=(f"worker-{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(claimed) == 1, claimed
    running = queue.get(job.id)
    assert running.status == "running" and running.started_at
    assert queue.upload(job.id) == (b"a,b\n1,2\n", "rows.csv")

    done = running.model_copy(update={"status": "succeeded", "message": "ok"})
    assert not queue.finish(done, "someone-else")  # only the lease holder records the outcome
    assert queue.finish(done, claimed[0])
    assert queue.get(job.id).status == "succeeded"
    assert queue.upload(job.id) is None  # the CSV goes with the job
    assert queue.submit("admin", None, None).data == "project data"  # the slot is free again


def test_an_expired_lease_fails_the_job_and_its_worker_can_no_longer_record_it(database: Database) -> None:
    clock = Clock()
    queue = JobQueue(database.session, lease_seconds=30, clock=clock)
    job = queue.submit("admin", None, None)
    assert queue.claim("worker-1") is not None
    clock.now += 20
    assert queue.renew(job.id, "worker-1")  # renewed: 30 s from now
    clock.now += 29
    assert queue.get(job.id).status == "running"
    clock.now += 2  # the worker died: nobody renewed
    failed = queue.get(job.id)
    assert failed.status == "failed" and failed.reason == LEASE_EXPIRED and failed.finished_at
    assert not queue.renew(job.id, "worker-1")
    assert not queue.finish(failed.model_copy(update={"status": "succeeded"}), "worker-1")
    assert queue.get(job.id).status == "failed"
    assert queue.claim("worker-2") is None  # a failed job is not run again


def test_unknown_and_malformed_job_ids(database: Database, tmp_path: Path) -> None:
    queue = JobQueue(database.session)
    for job_id in ("0" * 32, "../../etc", "", "A" * 32):
        with pytest.raises(UnknownJob):
            queue.get(job_id)
