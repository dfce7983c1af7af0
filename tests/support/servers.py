"""Start and stop real servers for tests: free ports on 127.0.0.1, always cleaned up, and the API itself."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.tokens import ADMIN, SECRET


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_ports(count: int) -> list[int]:
    """Distinct free ports: held open together while chosen, so no two calls return the same one."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def wait_until(ready: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.1)
    raise TimeoutError(f"{what} not ready after {timeout:.0f}s")


def http_ok(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status < 500
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    return check


def stop(process: subprocess.Popen, grace: float = 10) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds; nothing to do for a process already gone."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def running(
    command: list[str], *, ready_url: str, timeout: float = 30, log: Path | None = None, **popen
) -> Iterator[subprocess.Popen]:
    """Run a server until the block ends, killing it even when the block fails."""
    sink = log.open("w") if log else subprocess.DEVNULL
    process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, **popen)
    try:
        up = http_ok(ready_url)

        def ready() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"{command[0]} exited with {process.returncode} before it was ready")
            return up()

        wait_until(ready, timeout, " ".join(command[:2]))
        yield process
    finally:
        stop(process)
        if log:
            sink.close()


@dataclass(frozen=True)
class Served:
    url: str
    process: subprocess.Popen
    env: dict[str, str]


@contextlib.contextmanager
def api_server(
    folder: Path, model_dir: Path, *args: str, port: int | None = None, ready: str = "/ready", **env: str
) -> Iterator[Served]:
    """python -m app.serve on 127.0.0.1 until the block ends: its users in a SQLite file in `folder`,
    the tests' admin and secret, HOST and PORT read from the environment (as the image sets them).

    args go to app.serve (--workers 2), env to its environment; the log is folder/api.log."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    settings = {
        "DATABASE_URL": f"sqlite:///{folder}/users.db",
        "MODEL_DIR": str(model_dir),
        "ADMIN_USERNAME": ADMIN[0],
        "ADMIN_PASSWORD": ADMIN[1],
        "SECRET_KEY": SECRET,
        "HOST": "127.0.0.1",
        "PORT": str(port),
    }
    environment = {k: v for k, v in os.environ.items() if k != "TEST_DATABASE_URL"} | settings | env
    command = [sys.executable, "-m", "app.serve", *args]
    log = folder / "api.log"
    with running(command, ready_url=url + ready, env=environment, cwd=folder, timeout=60, log=log) as process:
        yield Served(url, process, environment)
