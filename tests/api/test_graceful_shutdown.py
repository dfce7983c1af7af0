"""A shutdown as Kubernetes runs it, under load: the preStop hook (python -m app.drain) turns /ready to
503 at once while every request keeps being answered; then SIGTERM, on which a request in flight
still finishes, no request gets a 5xx, and the process exits in time."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.models import IRIS_ROW, write_model
from tests.support.servers import api_server, wait_until
from tests.support.tokens import ADMIN, login

pytestmark = pytest.mark.slow

DRAIN = 2.0
CSV_HEADER = b"sepal_length,sepal_width,petal_length,petal_width\n"


def _slow_csv(rows: int, seconds: float) -> Iterator[bytes]:
    """A chunked upload that takes `seconds` to arrive."""
    yield CSV_HEADER
    for _ in range(rows):
        time.sleep(seconds / rows)
        yield b"5.1,3.5,1.4,0.2\n"


def test_sigterm_drains_then_finishes_what_is_in_flight(tmp_path: Path) -> None:
    write_model(tmp_path / "models")
    env = {"SHUTDOWN_DRAIN_SECONDS": str(DRAIN), "SHUTDOWN_TIMEOUT_SECONDS": "10", "RATE_LIMIT_TOKEN": ""}
    with api_server(tmp_path, tmp_path / "models", **env) as api:
        headers = login(api.url, *ADMIN)
        answers: list[tuple[float, int | str]] = []
        stop_loading = threading.Event()

        def load() -> None:
            # A new connection each time, as clients behind a load balancer's pool would open them.
            while not stop_loading.is_set():
                try:
                    status = httpx.post(
                        f"{api.url}/predict", json={"instances": [IRIS_ROW]}, headers=headers, timeout=10
                    ).status_code
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                answers.append((time.monotonic(), status))

        in_flight: dict[str, object] = {}

        def upload() -> None:
            response = httpx.post(
                f"{api.url}/predict/csv",
                content=_slow_csv(40, DRAIN + 1.5),
                headers=headers | {"Content-Type": "text/csv", "Accept": "text/csv"},
                timeout=30,
            )
            in_flight["status"], in_flight["lines"] = response.status_code, response.text.count("\n")

        loaders = [threading.Thread(target=load) for _ in range(3)]
        for thread in loaders:
            thread.start()
        slow = threading.Thread(target=upload)
        slow.start()
        time.sleep(0.5)
        assert httpx.get(f"{api.url}/ready", timeout=5).status_code == 200

        # The preStop hook, in the replica's folder and environment, as the kubelet runs it.
        pre_stop = subprocess.Popen([sys.executable, "-m", "app.drain"], cwd=tmp_path, env=api.env)
        signalled = time.monotonic()
        wait_until(lambda: httpx.get(f"{api.url}/ready", timeout=5).status_code == 503, 10, "draining")
        ready = httpx.get(f"{api.url}/ready", timeout=5)
        assert ready.json() == {"detail": "draining: this replica is shutting down"}
        assert httpx.get(f"{api.url}/v2/health/ready", timeout=5).status_code == 503
        assert httpx.get(f"{api.url}/health", timeout=5).status_code == 200  # alive, still serving

        # The load balancer has taken the replica out by the end of the drain: the clients stop.
        assert pre_stop.wait(timeout=DRAIN + 10) == 0
        stop_loading.set()
        for thread in loaders:
            thread.join()
        # Then the kubelet's SIGTERM: uvicorn stops accepting and lets the upload in flight finish.
        api.process.send_signal(signal.SIGTERM)
        slow.join(timeout=30)
        exit_code = api.process.wait(timeout=15)
        exited_after = time.monotonic() - signalled

    assert in_flight == {"status": 200, "lines": 41}  # header and 40 rows, uploaded past the drain's end
    during = [status for at, status in answers if at >= signalled]
    assert during, "no request was sent during the drain"
    assert set(status for _, status in answers) == {200}, answers
    assert DRAIN <= exited_after < DRAIN + 10
    assert exit_code in (0, -signal.SIGTERM)
