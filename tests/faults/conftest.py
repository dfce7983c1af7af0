"""The fault-injection suite's deployment, and the report of what each fault cost.

One replica (python -m app.serve) on PostgreSQL, Redis and an S3 model store (moto), each reached
through a TCP proxy the tests cut and restore; its model cache on a small tmpfs that a test fills; a
predict user whose /predict requests run as a steady load under every fault. In front of it, for the
tests of abusive clients, the shipped nginx config (deploy/nginx/predictor.conf) rendered as `make
stack` runs it: what cuts slow and endless clients in every deployment. The suite prints, at the end,
each fault's requests, those lost, and the seconds to recover after the fault was lifted.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
from sqlalchemy.engine import make_url

from tests.support.load import Load, Outcome
from tests.support.models import write_model
from tests.support.pipeline import mlflow_store, write_iris_params
from tests.support.postgres import scratch_database
from tests.support.proxy import CuttableProxy
from tests.support.redis_db import FAULTS_DB, REDIS_ADDRESS
from tests.support.s3 import S3Server, moto_s3
from tests.support.servers import Served, api_server, free_port, running
from tests.support.tokens import ADMIN, USER, login
from tools.devstack.configs import NGINX_FILE, render_nginx

CACHE_BYTES = 2 * 1024 * 1024  # the tmpfs: room for the served model and little more
LEASE_SECONDS = 3
CSV_LIMIT = 4 * 1024 * 1024  # MAX_CSV_BYTES


@dataclass(frozen=True)
class Figure:
    fault: str
    requests: int  # /predict requests begun while the fault lasted and until recovery
    lost: int  # of those, answered other than 200, or not at all
    recovered_seconds: float | None  # from lifting the fault to normal again (None: nothing to lift)


FIGURES: list[Figure] = []


def record(fault: str, outcomes: list[Outcome], recovered: float | None) -> Figure:
    figure = Figure(fault, len(outcomes), sum(o.lost for o in outcomes), recovered)
    FIGURES.append(figure)
    return figure


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not FIGURES:
        return
    terminalreporter.section("faults: requests lost and time to recover")
    for figure in FIGURES:
        recovered = "-" if figure.recovered_seconds is None else f"{figure.recovered_seconds:.1f} s"
        terminalreporter.write_line(
            f"{figure.fault:<34} {figure.lost:>4} lost of {figure.requests:>5}   recovered in {recovered}"
        )


@dataclass
class Stack:
    api: Served
    folder: Path
    model_dir: Path
    cache: Path | None  # the model cache's tmpfs; None where no tmpfs can be mounted
    database: CuttableProxy
    redis: CuttableProxy
    store: CuttableProxy
    s3: S3Server
    store_url: str
    env: dict[str, str]  # the replica's environment, for a worker or the CLI beside it
    admin: dict[str, str]
    user: dict[str, str]

    @property
    def url(self) -> str:
        return self.api.url

    def load(self, clients: int = 2) -> Load:
        return Load(self.url, self.user, clients=clients)

    def metric(self, name: str) -> float | None:
        for line in httpx.get(f"{self.url}/metrics", timeout=10).text.splitlines():
            if line.startswith(f"{name} ") or line.startswith(f"{name}{{"):
                return float(line.rsplit(" ", 1)[1])
        return None

    def log_lines(self) -> list[dict]:
        lines = (self.folder / "api.log").read_text().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]


@contextlib.contextmanager
def tmpfs(folder: Path, size: int) -> Iterator[Path | None]:
    """A tmpfs of `size` bytes mounted on `folder`, or None where mounting is not allowed (not root)."""
    folder.mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode != 0:
        yield None
        return
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def _flush_redis() -> None:
    client = redis.Redis(*REDIS_ADDRESS, db=FAULTS_DB, socket_timeout=3)
    try:
        client.flushdb()
    finally:
        client.close()


def _proxy(stack: contextlib.ExitStack, upstream: tuple[str, int]) -> CuttableProxy:
    proxy = CuttableProxy(upstream)
    proxy.listen()
    stack.callback(proxy.stop)
    return proxy


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp("faults")
    model_dir = folder / "models"
    write_model(model_dir, version="v1")
    _flush_redis()
    with contextlib.ExitStack() as stack:
        direct = make_url(stack.enter_context(scratch_database("faults")))
        s3 = stack.enter_context(moto_s3("faults", log=folder / "moto.log"))
        database = _proxy(stack, (direct.host or "127.0.0.1", direct.port or 5432))
        redis_proxy = _proxy(stack, REDIS_ADDRESS)
        store = _proxy(stack, ("127.0.0.1", int(s3.endpoint.rsplit(":", 1)[1])))
        cache = stack.enter_context(tmpfs(folder / "cache", CACHE_BYTES))
        store_url = s3.url("versions")
        env = s3.env | {
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{store.port}",
            "DATABASE_URL": direct.set(host="127.0.0.1", port=database.port).render_as_string(
                hide_password=False
            ),
            "REDIS_URL": f"redis://127.0.0.1:{redis_proxy.port}/{FAULTS_DB}",
            "MODEL_STORE_URL": store_url,
            "MODEL_CACHE_DIR": str(cache or folder / "cache"),
            "WATCH_SECONDS": "1",
            "REVOCATION_REFRESH_SECONDS": "1",
            "REVOCATION_MAX_STALENESS_SECONDS": "3",
            "RATE_LIMIT_TOKEN": "1000/minute",
            "RATE_LIMIT_PREDICT": "100000/second",  # counted in Redis on every request
            "MAX_CSV_BYTES": str(CSV_LIMIT),
            "CSV_UPLOAD_FIRST": "true",  # as compose, make stack and the chart run it
            "JOB_LEASE_SECONDS": str(LEASE_SECONDS),
            "JOBS_DIR": str(folder / "jobs"),
            "TRAIN_PARAMS": str(write_iris_params(folder / "params.yaml")),
            "MLFLOW_TRACKING_URI": mlflow_store(folder),
            "START_WORKER": "false",  # the worker test starts and kills its own
        }
        api = stack.enter_context(api_server(folder, model_dir, **env))
        admin = login(api.url, *ADMIN)
        created = httpx.post(
            f"{api.url}/users",
            json={"username": USER[0], "password": USER[1], "scopes": ["predict"]},
            headers=admin,
            timeout=10,
        )
        assert created.status_code == 201, created.text
        user = login(api.url, *USER)
        yield Stack(
            api, folder, model_dir, cache, database, redis_proxy, store, s3, store_url, api.env, admin, user
        )
    _flush_redis()


def nginx_seconds(directive: str) -> float:
    """A timeout of the shipped nginx config, in seconds (written there as `name Ns;`)."""
    found = re.search(rf"^[ \t]*{directive}[ \t]+(\d+)s;", NGINX_FILE.read_text(), re.MULTILINE)
    assert found, f"no {directive} in {NGINX_FILE}"
    return float(found[1])


@dataclass(frozen=True)
class Proxy:
    url: str
    access_log: Path

    def statuses(self) -> list[int]:
        """The status of each request nginx has logged (its log_format has it after the request line)."""
        return [int(status) for status in re.findall(r'" (\d{3}) ', self.access_log.read_text())]


@pytest.fixture(scope="package")
def proxy(stack: Stack) -> Iterator[Proxy]:
    """nginx with the shipped config, unchanged but for its addresses, in front of the replica."""
    nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    assert nginx, "nginx is not installed: make stack-tools"
    out = stack.folder / "nginx"
    port = free_port()
    access_log = out / "access.log"
    config = render_nginx(
        out,
        listen=f"127.0.0.1:{port}",
        replicas=[stack.url.removeprefix("http://")],
        access_log=access_log,
    )
    url = f"http://127.0.0.1:{port}"
    command = [nginx, "-p", f"{out}/", "-c", str(config), "-e", "stderr"]
    with running(command, ready_url=f"{url}/ready", log=stack.folder / "nginx.log"):
        yield Proxy(url, access_log)


def recovery(check: Callable[[], bool], since: float, limit: float, what: str) -> float:
    """Seconds from `since` until `check` holds, polled every 0.1 s; fails past `limit`."""
    deadline = since + limit
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not back within {limit:.0f} s")
        time.sleep(0.1)
    return time.monotonic() - since
