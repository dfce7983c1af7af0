"""A worker killed mid-job (kill -9): its job is failed once the lease runs out, its training process
stops too, and the next job is accepted and run by another worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from app.db.jobs import LEASE_EXPIRED, JobQueue
from app.db.session import Database
from tests.support.models import write_model
from tests.support.paths import ROOT
from tests.support.servers import stop, wait_until
from tests.support.tokens import ADMIN, SECRET

pytestmark = pytest.mark.slow
LEASE = 3


def _worker(tmp_path: Path, env: dict[str, str], name: str) -> subprocess.Popen[bytes]:
    log = (tmp_path / f"{name}.log").open("w")
    return subprocess.Popen(
        [sys.executable, "-m", "app.worker"], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
    )


def _training_processes(jobs_dir: Path) -> list[str]:
    found = subprocess.run(
        ["pgrep", "-f", f"app.pipeline.retrain {jobs_dir}"], capture_output=True, text=True
    )
    return found.stdout.split()


def test_a_killed_worker_leaves_its_job_failed_not_running(tmp_path: Path) -> None:
    database_url = f"sqlite:///{tmp_path}/predictor.db"
    params = tmp_path / "params.yaml"
    params.write_text(
        yaml.safe_dump(
            {
                "seed": 1,
                "data": {"source": "sklearn:iris", "target": "species", "test_size": 0.3},
                "train": {"cv_folds": 2, "candidates": {"logistic_regression": {"max_iter": 500}}},
            }
        )
    )
    write_model(tmp_path / "models", version="v1")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEST_")} | {
        "DATABASE_URL": database_url,
        "MODEL_STORE_URL": str(tmp_path / "store"),
        "JOBS_DIR": str(tmp_path / "jobs"),
        "JOB_LEASE_SECONDS": str(LEASE),
        "TRAIN_PARAMS": str(params),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db",
        "SECRET_KEY": SECRET,
        "ADMIN_USERNAME": ADMIN[0],
        "ADMIN_PASSWORD": ADMIN[1],
        "PYTHONPATH": str(ROOT),
    }
    database = Database(database_url)
    database.migrate()
    queue = JobQueue(database.session, LEASE)
    first = _worker(tmp_path, env, "first")
    second = None
    try:
        job = queue.submit("admin", None, None)
        wait_until(lambda: queue.get(job.id).status == "running", 60, "the job running")
        wait_until(lambda: bool(_training_processes(tmp_path / "jobs")), 30, "its training process")
        first.send_signal(signal.SIGKILL)
        first.wait()
        killed = time.monotonic()

        wait_until(lambda: queue.get(job.id).status == "failed", LEASE + 5, "the job failed")
        failed = queue.get(job.id)
        assert failed.reason == LEASE_EXPIRED
        assert time.monotonic() - killed <= LEASE + 5
        # The training process noticed its worker was gone and stopped, publishing nothing.
        wait_until(lambda: not _training_processes(tmp_path / "jobs"), 10, "the training process gone")

        # The slot is free: the next job is accepted, and another worker runs it to the end.
        second = _worker(tmp_path, env, "second")
        retry = queue.submit("admin", None, None)
        wait_until(lambda: queue.get(retry.id).status in ("succeeded", "failed"), 240, "the second job")
        assert queue.get(retry.id).status == "succeeded", queue.get(retry.id)
        assert queue.get(job.id).status == "failed"
    finally:
        for process in (first, second):
            if process is not None:
                stop(process, grace=15)
        database.dispose()
