"""Stateless replicas, proven with processes on 127.0.0.1: three API replicas and one worker started at
the same moment on a fresh PostgreSQL database, each with its own empty model cache, sharing a moto S3
model store and one SECRET_KEY; then a load across them while versions are published, rolled back,
a replica is killed and another started; the lockout, a retraining job and Prometheus across them.

The timings it measures (a new version reaching every replica, failed requests per event) are
printed; run it alone with `.venv/bin/pytest tests/deploy/test_replicas.py -s` to read them.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.support.models import IRIS_ROW, write_model
from tests.support.paths import ROOT
from tests.support.pipeline import mlflow_store, write_iris_params
from tests.support.postgres import scratch_database
from tests.support.s3 import moto_s3
from tests.support.servers import free_ports, running, stop, wait_until
from tests.support.tokens import ADMIN, SECRET, bearer
from tools.devstack.configs import render_prometheus

pytestmark = pytest.mark.slow

METRICS_TOKEN = "replicas-metrics-token"
WATCH_SECONDS = 2.0
REACH_LIMIT = 5.0  # the bound for a new version to reach every replica
CONCURRENCY = 16
LOAD_SECONDS = 30.0


@dataclass
class Replica:
    name: str
    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Cluster:
    """The processes of one deployment, and the environment they share."""

    root: Path
    env: dict[str, str]
    replicas: dict[str, Replica] = field(default_factory=dict)
    others: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start_replica(self, name: str, port: int) -> Replica:
        folder = self.root / name
        folder.mkdir()
        env = self.env | {
            "MODEL_DIR": str(folder / "models"),  # empty: this replica has no model of its own
            "MODEL_CACHE_DIR": str(folder / "cache"),
            "PORT": str(port),
        }
        log = (folder / "api.log").open("w")
        process = subprocess.Popen(
            [sys.executable, "-m", "app.serve", "--port", str(port)],
            env=env,
            cwd=folder,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.replicas[name] = Replica(name, port, process)
        return self.replicas[name]

    def start_worker(self) -> subprocess.Popen[bytes]:
        folder = self.root / "worker"
        folder.mkdir()
        env = self.env | {"MODEL_CACHE_DIR": str(folder / "cache"), "JOBS_DIR": str(folder / "jobs")}
        log = (folder / "worker.log").open("w")
        process = subprocess.Popen(
            [sys.executable, "-m", "app.worker"], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
        )
        self.others.append(process)
        return process

    def publish(self, model_dir: Path, *flags: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "app.cli", "models", "publish", *flags],
            env=self.env | {"MODEL_DIR": str(model_dir), "MODEL_CACHE_DIR": str(self.root / "publisher")},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def stop(self) -> None:
        for process in [*(r.process for r in self.replicas.values()), *self.others]:
            stop(process, grace=15)


def served_version(replica: Replica) -> str | None:
    try:
        return httpx.get(f"{replica.url}/health", timeout=2).json()["model_version"]
    except (httpx.HTTPError, ValueError):
        return None


def answers(replica: Replica) -> bool:
    if replica.process.poll() is not None:
        raise RuntimeError(f"replica {replica.name} exited with {replica.process.returncode}")
    try:
        return httpx.get(f"{replica.url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def time_to_reach(replicas: list[Replica], version: str, since: float, limit: float = 15) -> float:
    """Seconds from `since` until every replica serves `version`."""
    wait_until(
        lambda: all(served_version(r) == version for r in replicas), limit, f"{version} on every replica"
    )
    return time.monotonic() - since


@dataclass
class Outcome:
    replica: str
    at: float
    status: int | None  # None: no answer (connection refused or reset)
    version: str | None


class Load:
    """CONCURRENCY clients spreading /predict over the replicas in rotation, as a load balancer would:
    a replica that stops answering leaves the rotation (its in-flight requests fail)."""

    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = headers
        self.rotation: list[Replica] = []
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._turn = itertools.count()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(CONCURRENCY)]

    def add(self, replica: Replica) -> None:
        with self._lock:
            self.rotation.append(replica)

    def drop(self, name: str) -> None:
        with self._lock:
            self.rotation = [r for r in self.rotation if r.name != name]

    def _client(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set():
                with self._lock:
                    replica = self.rotation[next(self._turn) % len(self.rotation)]
                try:
                    answer = client.post(
                        f"{replica.url}/predict", json={"instances": [IRIS_ROW]}, headers=self.headers
                    )
                    outcome = Outcome(replica.name, time.monotonic(), answer.status_code, None)
                    if answer.status_code == 200:
                        outcome.version = answer.json()["model_version"]
                except httpx.TransportError:
                    outcome = Outcome(replica.name, time.monotonic(), None, None)
                    self.drop(replica.name)
                with self._lock:
                    self.outcomes.append(outcome)

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=15)

    def failures(self, since: float = 0, until: float = float("inf")) -> Counter[str]:
        with self._lock:
            return Counter(o.replica for o in self.outcomes if o.status != 200 and since <= o.at <= until)

    def predictions(self, replica: str) -> int:
        """The /predict requests that reached `replica` and were answered (whatever the status)."""
        with self._lock:
            return sum(1 for o in self.outcomes if o.replica == replica and o.status is not None)


def prom_query(prometheus: str, expr: str) -> list[dict]:
    answer = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10)
    answer.raise_for_status()
    return answer.json()["data"]["result"]


def direct_predictions(replica: Replica) -> float:
    """The replica's own count of /predict requests, read from its /metrics."""
    page = httpx.get(f"{replica.url}/metrics", headers=bearer(METRICS_TOKEN), timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in page.splitlines()
        if line.startswith("predictor_http_requests_total{") and 'route="/predict"' in line
    )


def login(replica: Replica, username: str, password: str) -> httpx.Response:
    return httpx.post(f"{replica.url}/token", data={"username": username, "password": password}, timeout=10)


@pytest.mark.postgres
@pytest.mark.prometheus
def test_three_replicas_and_a_worker_share_one_deployment(tmp_path: Path) -> None:
    prometheus_bin = shutil.which("prometheus")
    if prometheus_bin is None:
        pytest.fail("prometheus is not installed: `make test` installs it (make obs-tools)")
    write_model(tmp_path / "v1", version="2026-12-01T00-00-01")
    write_model(tmp_path / "v2", version="2026-12-01T00-00-02")
    v1, v2 = "2026-12-01T00-00-01", "2026-12-01T00-00-02"
    port_a, port_b, port_c, port_d, prom_port = free_ports(5)
    report: list[str] = []

    with contextlib.ExitStack() as stack:
        s3 = stack.enter_context(moto_s3("models", set_env=False, log=tmp_path / "moto.log"))
        database_url = stack.enter_context(scratch_database("replicas"))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "TEST_"))} | s3.env
        env |= {
            "DATABASE_URL": database_url,
            "MODEL_STORE_URL": s3.url("versions"),
            "SECRET_KEY": SECRET,
            "ADMIN_USERNAME": ADMIN[0],
            "ADMIN_PASSWORD": ADMIN[1],
            "METRICS_TOKEN": METRICS_TOKEN,
            "WATCH_SECONDS": str(WATCH_SECONDS),
            "HOST": "127.0.0.1",
            "PYTHONPATH": str(ROOT),
            "TRAIN_PARAMS": str(write_iris_params(tmp_path / "params.yaml")),
            "PROMOTION_TOLERANCE": "1.0",  # the retraining job's model is promoted, to follow it too
            "MLFLOW_TRACKING_URI": mlflow_store(tmp_path),
            "DRIFT_ENABLED": "false",
        }
        cluster = Cluster(tmp_path / "cluster", env)
        cluster.root.mkdir()
        stack.callback(cluster.stop)

        # All at once on a fresh database: each migrates or waits for the one that does.
        a, b, c = (cluster.start_replica(n, p) for n, p in (("a", port_a), ("b", port_b), ("c", port_c)))
        worker = cluster.start_worker()
        for replica in (a, b, c):
            wait_until(lambda r=replica: answers(r), 90, f"replica {replica.name}")
            assert httpx.get(f"{replica.url}/ready", timeout=5).status_code == 503  # nothing published yet
        assert worker.poll() is None

        prom_config = render_prometheus(
            tmp_path / "prometheus",
            api=[f"127.0.0.1:{p}" for p in (port_a, port_b, port_c, port_d)],
            alertmanager="127.0.0.1:9",
            prometheus=f"127.0.0.1:{prom_port}",
            token=METRICS_TOKEN,
            interval="1s",
        )
        prometheus = f"http://127.0.0.1:{prom_port}"
        stack.enter_context(
            running(
                [prometheus_bin, f"--config.file={prom_config}", f"--web.listen-address={prometheus[7:]}",
                 f"--storage.tsdb.path={tmp_path}/prom-data"],
                ready_url=f"{prometheus}/-/ready", log=tmp_path / "prometheus.log",
            )
        )  # fmt: skip

        # The first version, published from the pipeline's output: every replica downloads and serves it.
        published = time.monotonic()
        cluster.publish(tmp_path / "v1", "--serve")
        report.append(f"first version on 3 replicas: {time_to_reach([a, b, c], v1, published):.1f} s")
        assert all(httpx.get(f"{r.url}/ready", timeout=5).json()["model_store"] == "ok" for r in (a, b, c))

        # A token from one replica works on the others (one SECRET_KEY, users in the shared database).
        token = login(a, *ADMIN).json()["access_token"]
        admin = bearer(token)
        for replica in (b, c):
            assert httpx.get(f"{replica.url}/model-info", headers=admin, timeout=5).json()["version"] == v1

        load = Load(admin)
        for replica in (a, b, c):
            load.add(replica)
        load.start()
        began = time.monotonic()
        try:
            time.sleep(3)
            # A new version, published and served while the load runs.
            command = time.monotonic()
            cluster.publish(tmp_path / "v2", "--serve", "--force")
            published = time.monotonic()  # the command moved the pointer just before it exited
            reach = time_to_reach([a, b, c], v2, published)
            report.append(
                f"publish --serve under load: the command took {published - command:.1f} s, then every "
                f"replica served it within {reach:.1f} s"
            )
            assert reach <= REACH_LIMIT

            # A rollback through one replica reaches the others.
            time.sleep(2)
            rolled = time.monotonic()
            answer = httpx.post(f"{b.url}/model/rollback", json={"version": v1}, headers=admin, timeout=30)
            answered = time.monotonic() - rolled
            assert answer.status_code == 200, answer.text
            reach = time_to_reach([a, b, c], v1, rolled)
            report.append(
                f"rollback through b under load: answered in {answered:.1f} s (MLflow's alias after), "
                f"on every replica in {reach:.1f} s"
            )
            assert reach <= REACH_LIMIT
            assert not load.failures(), f"requests failed while versions changed: {load.failures()}"

            # kill -9 of one replica: only its in-flight requests fail.
            time.sleep(2)
            c.process.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            c.process.wait()
            time.sleep(2)
            failed = load.failures(since=killed)
            report.append(f"kill -9 of c: {failed.get('c', 0)} requests to c failed, others {dict(failed)}")
            assert set(failed) <= {"c"} and failed["c"] <= CONCURRENCY, failed

            # A replica started meanwhile, with an empty cache, serves the current champion.
            d = cluster.start_replica("d", port_d)
            started = time.monotonic()
            wait_until(lambda: served_version(d) == v1, 60, "d serving the champion")
            report.append(
                f"new replica d serving the champion {time.monotonic() - started:.1f} s after start"
            )
            load.add(d)
            time.sleep(max(0.0, LOAD_SECONDS - (time.monotonic() - began)))
        finally:
            load.stop()
        total = len(load.outcomes)
        failures = load.failures()
        report.append(f"load: {total} requests in {time.monotonic() - began:.0f} s, failed {dict(failures)}")
        assert set(failures) <= {"c"}, failures
        live = [a, b, d]

        # Five wrong passwords spread over the replicas lock the user out on all of them.
        created = httpx.post(
            f"{a.url}/users",
            json={"username": "carol", "password": "carol-password-1"},
            headers=admin,
            timeout=10,
        )
        assert created.status_code == 201, created.text
        for replica in [a, b, d, a, b]:
            assert login(replica, "carol", "wrong-password").status_code == 401
        for replica in live:
            locked = login(replica, "carol", "carol-password-1")
            assert locked.status_code == 429, (replica.name, locked.text)

        # A retraining job requested on one replica is run by the worker and followed on another.
        started = httpx.post(f"{a.url}/train", headers=admin, timeout=10)
        assert started.status_code == 202, started.text
        job_id = started.json()["id"]
        job: dict = {}

        def finished() -> bool:
            nonlocal job
            job = httpx.get(f"{d.url}/train/{job_id}", headers=admin, timeout=10).json()
            return job["status"] in ("succeeded", "failed")

        wait_until(finished, 240, "the retraining job")
        assert job["status"] == "succeeded" and job["promoted"] is True, job
        promoted = time.monotonic()
        reach = time_to_reach(live, job["version"], promoted)
        report.append(f"retraining job promoted; on every replica {reach:.1f} s later")
        # The replicas only queue: the job ran in the worker process.
        assert "runs retraining job " + job_id in (tmp_path / "cluster" / "worker" / "worker.log").read_text()

        # Prometheus sums the replicas' request counters: the same total as each replica's own /metrics,
        # and as the requests the load sent them.
        expected = sum(direct_predictions(r) for r in live)
        sent = sum(load.predictions(r.name) for r in live)
        assert expected == sent, (expected, sent)
        instances = "|".join(f"127.0.0.1:{r.port}" for r in live)
        expr = f'sum(predictor_http_requests_total{{route="/predict",instance=~"{instances}"}})'

        def summed() -> bool:
            result = prom_query(prometheus, expr)
            return bool(result) and float(result[0]["value"][1]) == expected

        wait_until(summed, 20, "Prometheus's sum over the replicas")
        up = prom_query(prometheus, 'sum(up{job="predictor-api"})')
        assert float(up[0]["value"][1]) == 3  # a, b and d; c was killed

    print("\n".join(["", "replicas:", *report]))
