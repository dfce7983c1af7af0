"""`make stack` for real, on free ports, in a scratch copy of the project (python -m tools.devstack).

One stack for the module: trained, pushed to the S3 server, tracked in MLflow with artifacts in S3,
served with a token, scraped by Prometheus. Stopped at the end whatever happened, and checked stopped.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import boto3
import httpx
import pytest
import yaml

from tests.support.paths import ROOT
from tests.support.servers import free_ports, wait_until
from tests.support.tokens import bearer, get_token
from tools.devstack.stack import DVC_BUCKET, MLFLOW_BUCKET, S3_CREDENTIALS, Stack, alive

pytestmark = pytest.mark.slow

ADMIN = ("admin", "devstack-admin-password")
# Two quick candidates: the stack, not the models, is under test.
CANDIDATES = {"logistic_regression": {"max_iter": 1000}, "decision_tree": {"max_depth": 5}}
PORTS = ("s3", "mlflow", "api", "prometheus", "alertmanager")


def copy_project(folder: Path) -> None:
    skip = shutil.ignore_patterns("__pycache__", "cache", "tmp", "config.local")
    for name in ("app", "tools", "dashboards", "data/input", ".dvc"):
        shutil.copytree(ROOT / name, folder / name, ignore=skip)
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(ROOT / name, folder / name)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"]["candidates"] = CANDIDATES
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=folder, check=True)


def devstack(folder: Path, env: dict[str, str], command: str, timeout: float = 150):
    return subprocess.run(
        [sys.executable, "-m", "tools.devstack", command],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, dict[str, str]]]:
    folder = tmp_path_factory.mktemp("project")
    copy_project(folder)
    env = {key: value for key, value in os.environ.items() if not key.startswith(("AWS_", "MLFLOW_", "DVC_"))}
    env.update(
        {
            f"STACK_{name.upper()}_PORT": str(port)
            for name, port in zip(PORTS, free_ports(len(PORTS)), strict=True)
        }
    )
    env.update(
        ADMIN_USERNAME=ADMIN[0],
        ADMIN_PASSWORD=ADMIN[1],
        SECRET_KEY="devstack-test-secret",
        METRICS_TOKEN="devstack-metrics-token",
        STACK_SCRAPE_INTERVAL="1s",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    )
    env.pop("DATABASE_URL", None)
    env.pop("MODEL_DIR", None)
    state = Stack.from_env(folder)
    state.ports = {name: int(env[f"STACK_{name.upper()}_PORT"]) for name in PORTS}
    try:
        result = devstack(folder, env, "up")
        assert result.returncode == 0, f"up failed:\n{result.stdout}\n{result.stderr}"
        yield state, env
    finally:
        started = state.services()
        down = devstack(folder, env, "down", timeout=90)
        assert down.returncode == 0, down.stdout + down.stderr
        left = [service.name for service in started if alive(service.pid)]
        assert not left, f"still running after down: {left}"
        assert not state.state_file.exists()


def s3_client(stack: Stack):
    return boto3.client(
        "s3",
        endpoint_url=stack.url("s3"),
        aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        region_name=S3_CREDENTIALS["AWS_DEFAULT_REGION"],
    )


def test_status_reports_every_service_up(stack):
    state, env = stack
    result = devstack(state.project, env, "status")
    assert result.returncode == 0, result.stdout
    assert [service.name for service in state.services()] == list(PORTS)


def test_trained_and_pushed_to_the_s3_remote(stack):
    state, _ = stack
    assert (state.project / "models" / "model.joblib").exists()
    listed = s3_client(state).list_objects_v2(Bucket=DVC_BUCKET, Prefix="store/")
    assert listed["KeyCount"] > 0
    assert "endpointurl" in (state.project / ".dvc" / "config.local").read_text()


def test_mlflow_shows_the_runs_with_artifacts_in_s3(stack):
    state, _ = stack
    mlflow = httpx.Client(base_url=state.url("mlflow") + "/api/2.0/mlflow", timeout=10)
    experiment = mlflow.get("/experiments/get-by-name", params={"experiment_name": "predictor"}).json()
    experiment_id = experiment["experiment"]["experiment_id"]
    runs = mlflow.post("/runs/search", json={"experiment_ids": [experiment_id]}).json()["runs"]
    assert {run["info"]["run_name"] for run in runs} == set(CANDIDATES)
    assert all(run["info"]["status"] == "FINISHED" for run in runs)
    assert all(run["info"]["artifact_uri"].startswith(f"s3://{MLFLOW_BUCKET}/") for run in runs)
    # The champion, as registered, holds the evaluation plots; its model lives in S3 too.
    champion = mlflow.get("/registered-models/alias", params={"name": "predictor", "alias": "champion"})
    run_id = champion.json()["model_version"]["run_id"]
    files = mlflow.get("/artifacts/list", params={"run_id": run_id}).json()["files"]
    assert "evaluation" in {entry["path"] for entry in files}
    models = mlflow.post("/logged-models/search", json={"experiment_ids": [experiment_id]}).json()["models"]
    assert models and all(m["info"]["artifact_uri"].startswith(f"s3://{MLFLOW_BUCKET}/") for m in models)
    keys = [item["Key"] for item in s3_client(state).list_objects_v2(Bucket=MLFLOW_BUCKET)["Contents"]]
    assert any(key.endswith("/MLmodel") for key in keys)
    assert any("evaluation" in key for key in keys)


def test_the_api_serves_a_prediction_with_a_token(stack):
    state, _ = stack
    api = httpx.Client(base_url=state.url("api"), timeout=10)
    answer = api.post(
        "/predict",
        headers=bearer(get_token(api, *ADMIN)),
        json={
            "instances": [{"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}]
        },
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["predictions"][0]["label"] == "setosa"
    assert api.post("/predict", json={"instances": []}).status_code == 401


def test_prometheus_scrapes_the_api(stack):
    state, _ = stack
    prometheus = httpx.Client(base_url=state.url("prometheus"), timeout=5)

    def api_target() -> dict:
        # Empty for a moment after start, until the scrape manager has read the config.
        targets = prometheus.get("/api/v1/targets").json()["data"]["activeTargets"]
        return next((t for t in targets if t["labels"]["job"] == "predictor-api"), {})

    try:
        wait_until(lambda: api_target().get("health") == "up", 20, "the API target")
    except TimeoutError:
        pytest.fail(f"predictor-api target: {json.dumps(api_target())}")
    assert api_target()["scrapeUrl"] == f"{state.url('api')}/metrics"
    alertmanagers = prometheus.get("/api/v1/alertmanagers").json()["data"]["activeAlertmanagers"]
    assert alertmanagers and alertmanagers[0]["url"].startswith(state.url("alertmanager"))


def test_the_image_healthcheck_command_passes_against_the_api(stack):
    """The Dockerfile's HEALTHCHECK, run as is (PORT tells it where the API listens)."""
    state, env = stack
    line = next(
        line
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if line.strip().startswith("CMD python")
    )
    command = shlex.split(line.strip().removeprefix("CMD "))
    result = subprocess.run(command, env=env | {"PORT": str(state.ports["api"])}, timeout=10)
    assert result.returncode == 0


def test_a_failed_start_stops_what_it_started(tmp_path):
    """The S3 server starts, MLflow cannot (its port is taken): up fails and leaves nothing running."""
    import socket

    # An empty folder: tools/ is not installed, python finds it from the project root.
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.update(
        {
            f"STACK_{name.upper()}_PORT": str(port)
            for name, port in zip(PORTS, free_ports(len(PORTS)), strict=True)
        }
    )
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env["STACK_MLFLOW_PORT"] = str(taken.getsockname()[1])
        result = devstack(tmp_path, env, "up", timeout=60)
    assert result.returncode == 1
    assert "port" in result.stderr and "STACK_MLFLOW_PORT" in result.stderr
    assert "s3            stopped" in result.stdout
    assert not (tmp_path / ".stack" / "state.json").exists()
