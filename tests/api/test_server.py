"""The real thing: python -m app.serve in a subprocess, on a free port, over HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support.models import IRIS_ROW, write_model
from tests.support.servers import api_server, free_port
from tests.support.tokens import ADMIN, login

pytestmark = pytest.mark.slow


def test_served_over_http_token_then_predict(tmp_path: Path) -> None:
    model_dir = tmp_path / "models"
    write_model(model_dir)
    with api_server(tmp_path, model_dir) as api:  # HOST and PORT from the environment
        base = api.url
        headers = login(base, *ADMIN)
        response = httpx.post(f"{base}/predict", json={"instances": [IRIS_ROW]}, headers=headers, timeout=10)
        assert response.status_code == 200
        assert response.json()["predictions"][0]["label"] == "setosa"
        assert response.headers["X-Request-ID"]
        assert httpx.post(f"{base}/predict", json={"instances": [IRIS_ROW]}, timeout=10).status_code == 401


def test_an_unreachable_database_stops_the_server_with_one_line(tmp_path: Path) -> None:
    write_model(tmp_path / "models")
    env = os.environ | {
        "DATABASE_URL": "postgresql+psycopg://someone:hunter2@127.0.0.1:1/nowhere",
        "MODEL_DIR": str(tmp_path / "models"),
        "PORT": str(free_port()),
    }
    result = subprocess.run(
        [sys.executable, "-m", "app.serve"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert (
        "serve: cannot prepare the database postgresql+psycopg://someone:***@127.0.0.1:1/nowhere"
        in result.stderr
    )
    assert "hunter2" not in result.stderr + result.stdout and "Traceback" not in result.stderr
