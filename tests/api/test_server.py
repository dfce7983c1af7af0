"""The real thing: python -m app.serve in a subprocess, on a free port, over HTTP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from api_support import IRIS_ROW, write_model

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_served_over_http_token_then_predict(tmp_path: Path) -> None:
    model_dir = tmp_path / "models"
    write_model(model_dir)
    port = _free_port()
    env = os.environ | {
        "DATABASE_URL": f"sqlite:///{tmp_path}/users.db",
        "MODEL_DIR": str(model_dir),
        "ADMIN_USERNAME": "admin",
        "ADMIN_PASSWORD": "server-test-password",
        "SECRET_KEY": "server-test-secret",
        "HOST": "127.0.0.1",
        "PORT": str(port),
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "app.serve"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, server.stdout.read() if server.stdout else ""
            try:
                if httpx.get(f"{base}/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not become ready in 60 s"
            time.sleep(0.1)
        token = httpx.post(
            f"{base}/token", data={"username": "admin", "password": "server-test-password"}, timeout=10
        )
        assert token.status_code == 200
        headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
        response = httpx.post(f"{base}/predict", json={"instances": [IRIS_ROW]}, headers=headers, timeout=10)
        assert response.status_code == 200
        assert response.json()["predictions"][0]["label"] == "setosa"
        assert response.headers["X-Request-ID"]
        assert httpx.post(f"{base}/predict", json={"instances": [IRIS_ROW]}, timeout=10).status_code == 401
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
