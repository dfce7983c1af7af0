"""A worker killed (kill -9) in the middle of a retraining job, while predictions run: the job is
failed once its lease runs out, its training process stops too, predictions never notice, and the
next job is accepted and run to the end by another worker."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from app.db.jobs import LEASE_EXPIRED
from tests.faults.conftest import LEASE_SECONDS, Stack, record
from tests.support.paths import ROOT
from tests.support.servers import stop, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]


def _worker(stack: Stack, name: str) -> subprocess.Popen[bytes]:
    env = stack.env | {"MODEL_CACHE_DIR": str(stack.folder / f"{name}-cache"), "PYTHONPATH": str(ROOT)}
    log = (stack.folder / f"{name}.log").open("w")
    return subprocess.Popen(
        [sys.executable, "-m", "app.worker"], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
    )


def _training_processes(jobs_dir: Path) -> list[str]:
    found = subprocess.run(
        ["pgrep", "-f", f"app.pipeline.retrain {jobs_dir}"], capture_output=True, text=True
    )
    return found.stdout.split()


def test_a_killed_worker_leaves_its_job_failed_not_running(stack: Stack) -> None:
    jobs_dir = Path(stack.env["JOBS_DIR"])

    def job(job_id: str) -> dict:
        answer = httpx.get(f"{stack.url}/train/{job_id}", headers=stack.admin, timeout=15)
        assert answer.status_code == 200, answer.text
        return answer.json()

    def submit() -> str:
        answer = httpx.post(f"{stack.url}/train", headers=stack.admin, timeout=15)
        assert answer.status_code == 202, answer.text
        return answer.json()["id"]

    first = _worker(stack, "first-worker")
    second = None
    try:
        with stack.load() as load:
            start = time.monotonic()
            running = submit()
            wait_until(lambda: job(running)["status"] == "running", 60, "the job running")
            wait_until(lambda: bool(_training_processes(jobs_dir)), 30, "its training process")
            first.send_signal(signal.SIGKILL)
            first.wait()
            killed = time.monotonic()

            wait_until(lambda: job(running)["status"] == "failed", LEASE_SECONDS + 5, "the job failed")
            failed_after = time.monotonic() - killed
            assert job(running)["reason"] == LEASE_EXPIRED
            # The training process noticed its worker was gone and stopped, publishing nothing.
            wait_until(lambda: not _training_processes(jobs_dir), 10, "the training process gone")

            # The slot is free: the next job is accepted, and another worker runs it to the end.
            second = _worker(stack, "second-worker")
            retry = submit()
            wait_until(lambda: job(retry)["status"] in ("succeeded", "failed"), 240, "the second job")
            assert job(retry)["status"] == "succeeded", job(retry)
            assert job(running)["status"] == "failed"
            outcomes = load.since(start)
    finally:
        for process in (first, second):
            if process is not None:
                stop(process, grace=15)
    lost = [o for o in outcomes if o.lost]
    assert outcomes and not lost, f"{len(lost)} of {len(outcomes)} predictions lost: {lost[:3]}"
    # Recovered: the job failed (and its slot free) this long after the kill.
    record("worker killed during a job", outcomes, failed_after)
