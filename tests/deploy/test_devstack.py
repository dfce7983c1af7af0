"""`make stack` for real, on free ports, in a scratch copy of the project (python -m tools.devstack).

One stack for the module: trained, pushed to the S3 server, tracked in MLflow with artifacts in S3,
published to the S3 model store and served by two replicas behind nginx, with a token; a retraining
job queued through nginx and run by the worker; each replica scraped by Prometheus. Stopped at the
end whatever happened, and checked stopped.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import boto3
import httpx
import pytest
import yaml

from app.api.body_limit import MAX_BODY_BYTES, BodyTooLarge
from app.core.config import Settings
from tests.support.answers import ID
from tests.support.paths import ROOT
from tests.support.servers import free_ports, wait_until
from tests.support.tokens import bearer, get_token
from tools.devstack.stack import (
    DVC_BUCKET,
    MLFLOW_BUCKET,
    MODEL_BUCKET,
    REPLICA_PORTS,
    S3_CREDENTIALS,
    Stack,
    alive,
)

pytestmark = [pytest.mark.slow, pytest.mark.nginx, pytest.mark.prometheus]

ADMIN = ("admin", "devstack-admin-password")
# Two quick candidates: the stack, not the models, is under test.
CANDIDATES = {"logistic_regression": {"max_iter": 1000}, "decision_tree": {"max_depth": 5}}
PORTS = ("s3", "mlflow", "api", "prometheus", "alertmanager")
REPLICAS = ("api-1", "api-2")
# What `make stack-status` lists, in start order.
SERVICES = ["s3", "mlflow", *REPLICAS, "worker", "lb", "prometheus", "alertmanager"]
IRIS_ROW = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


def port_env() -> dict[str, str]:
    """Free ports for every server: STACK_*_PORT, and the replicas' STACK_API_REPLICA_PORTS."""
    ports = free_ports(len(PORTS) + len(REPLICAS))
    env = {f"STACK_{name.upper()}_PORT": str(port) for name, port in zip(PORTS, ports, strict=False)}
    env[REPLICA_PORTS] = ",".join(str(port) for port in ports[len(PORTS) :])
    return env


def copy_project(folder: Path) -> None:
    skip = shutil.ignore_patterns("__pycache__", "cache", "tmp", "config.local")
    for name in ("app", "tools", "dashboards", "deploy/nginx", "data/input", ".dvc"):
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
    env.update(port_env())
    env.update(
        ADMIN_USERNAME=ADMIN[0],
        ADMIN_PASSWORD=ADMIN[1],
        SECRET_KEY="devstack-test-secret",
        METRICS_TOKEN="devstack-metrics-token",
        STACK_SCRAPE_INTERVAL="1s",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    )
    for name in ("DATABASE_URL", "MODEL_DIR", "MODEL_STORE_URL", "MODEL_CACHE_DIR", "JOBS_DIR", "STACK_DIR"):
        env.pop(name, None)
    state = Stack.from_env(folder, env)
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
    assert [service.name for service in state.services()] == SERVICES
    listed = re.findall(r"^stack: (\S+) +up ", result.stdout, re.MULTILINE)
    assert listed == SERVICES, result.stdout
    assert "worker        up    no port" in result.stdout


def test_trained_pushed_and_published_to_the_model_store(stack):
    state, _ = stack
    assert (state.project / "models" / "model.joblib").exists()
    listed = s3_client(state).list_objects_v2(Bucket=DVC_BUCKET, Prefix="store/")
    assert listed["KeyCount"] > 0
    assert "endpointurl" in (state.project / ".dvc" / "config.local").read_text()
    version = json.loads((state.project / "models" / "model.json").read_text())["version"]
    keys = [item["Key"] for item in s3_client(state).list_objects_v2(Bucket=MODEL_BUCKET)["Contents"]]
    assert any(key.startswith(f"versions/{version}/") for key in keys), keys


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


def test_both_replicas_serve_the_published_version_from_the_store(stack):
    state, _ = stack
    version = json.loads((state.project / "models" / "model.json").read_text())["version"]
    for name in REPLICAS:
        ready = httpx.get(f"{state.url(name)}/ready", timeout=5)
        assert ready.status_code == 200, (name, ready.text)
        assert ready.json()["model_version"] == version, name
        # Downloaded into its own cache: it has no models/ of its own.
        assert not (state.state_dir / name / "models").exists()
        assert any((state.state_dir / name / "cache").rglob("model.json")), name
    assert httpx.get(f"{state.url('api')}/health", timeout=5).json()["model_version"] == version


def test_the_api_serves_a_prediction_with_a_token_through_nginx(stack):
    state, _ = stack
    api = httpx.Client(base_url=state.url("api"), timeout=10)
    answer = api.post("/predict", headers=bearer(get_token(api, *ADMIN)), json={"instances": [IRIS_ROW]})
    assert answer.status_code == 200, answer.text
    assert answer.json()["predictions"][0]["label"] == "setosa"
    assert api.post("/predict", json={"instances": []}).status_code == 401


def lb_log(state: Stack) -> str:
    return (state.logs / "lb-access.log").read_text()


def lb_logged(state: Stack, text: str) -> None:
    """nginx writes a request's line just after the answer: a moment may pass before it is there."""
    wait_until(lambda: text in lb_log(state), 5, f"{text!r} in nginx's access log")


def lb_upstreams(state: Stack) -> Counter[str]:
    """How many requests nginx's access log shows each replica answering."""
    return Counter(re.findall(r" upstream=(\S+) ", lb_log(state)))


def test_nginx_spreads_requests_over_both_replicas(stack):
    state, _ = stack
    before = lb_upstreams(state)
    for _ in range(9):
        assert httpx.get(f"{state.url('api')}/health", timeout=5).status_code == 200
    last = httpx.get(f"{state.url('api')}/health", timeout=5)
    lb_logged(state, f"request_id={last.headers['X-Request-ID']}")
    answered = lb_upstreams(state) - before
    assert set(answered) == {f"127.0.0.1:{state.ports[name]}" for name in REPLICAS}, answered
    assert sum(answered.values()) == 10 and min(answered.values()) >= 3, answered


def test_nginx_passes_the_request_id_and_the_forwarded_headers(stack):
    state, _ = stack
    answer = httpx.get(f"{state.url('api')}/health", headers={"X-Request-ID": "devstack-trace-1"}, timeout=5)
    assert answer.headers["X-Request-ID"] == "devstack-trace-1"
    lb_logged(state, "request_id=devstack-trace-1")
    # Without one, the replica keeps nginx's: the same id in both logs.
    answer = httpx.get(f"{state.url('api')}/health", timeout=5)
    lb_logged(state, f"request_id={answer.headers['X-Request-ID']}")
    # The client's address reaches the replica (its security log) through X-Forwarded-For.
    refused = httpx.post(
        f"{state.url('api')}/token",
        data={"username": "nobody-from-afar", "password": "wrong-password"},
        headers={"X-Forwarded-For": "203.0.113.7"},
        timeout=10,
    )
    assert refused.status_code == 401

    def logged_by_a_replica() -> bool:
        return any("203.0.113.7" in (state.logs / f"{name}.log").read_text() for name in REPLICAS)

    wait_until(logged_by_a_replica, 5, "the forwarded client address in a replica's log")


def send_head(state: Stack, head: str) -> tuple[str, str]:
    """Send only a request's head; nginx's answer, read to its Content-Length (nginx keeps the
    connection open a while to read the body it refused, so its end is not awaited)."""
    answer = b""
    with socket.create_connection(("127.0.0.1", state.ports["api"]), timeout=10) as sock:
        sock.sendall(head.encode())
        while True:
            status, done, body = answer.partition(b"\r\n\r\n")
            length = re.search(rb"(?im)^content-length: *(\d+)", status)
            if done and length and len(body) >= int(length[1]):
                return status.decode(), body.decode()
            chunk = sock.recv(65536)
            assert chunk, f"closed before the whole answer: {answer!r}"
            answer += chunk


def test_nginx_refuses_a_body_past_the_api_limit_as_the_api_does(stack):
    """Only the headers are sent: nginx answers from the declared length, before any body."""
    state, _ = stack
    head = (
        f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {MAX_BODY_BYTES + 1}\r\nConnection: close\r\n\r\n"
    )
    status, body = send_head(state, head)
    assert status.startswith("HTTP/1.1 413 ") and "application/json" in status, status
    assert json.loads(body) == {"detail": BodyTooLarge(MAX_BODY_BYTES).detail}


def test_nginx_refuses_a_csv_past_the_apis_csv_limit_as_the_api_does(stack):
    state, _ = stack
    limit = Settings.model_fields["max_csv_bytes"].default
    head = (
        f"POST /predict/csv HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/csv\r\n"
        f"Content-Length: {limit + 1}\r\nConnection: close\r\n\r\n"
    )
    status, body = send_head(state, head)
    assert status.startswith("HTTP/1.1 413 "), status
    assert json.loads(body) == {"detail": BodyTooLarge(limit).detail}


def chunk_of(data: bytes) -> bytes:
    """One piece of a chunked request body."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def unchunked(data: bytes) -> bytes:
    """A chunked response body, joined."""
    body, at = bytearray(), 0
    while True:
        end = data.index(b"\r\n", at)
        size = int(data[at:end].split(b";")[0], 16)
        if size == 0:
            return bytes(body)
        body += data[end + 2 : end + 2 + size]
        at = end + 2 + size + 2


def test_a_csv_past_the_json_limit_goes_through_nginx_in_full(stack):
    """More than MAX_BODY_BYTES of CSV, chunked, from a client that reads as it sends. nginx stops
    passing a body on once the answer starts: the replicas (CSV_UPLOAD_FIRST) wait for all of it."""
    state, _ = stack
    token = get_token(httpx.Client(base_url=state.url("api"), timeout=10), *ADMIN)
    line = b"5.1,3.5,1.4,0.2\n"
    piece = line * 65536  # 1 MiB
    pieces = MAX_BODY_BYTES // len(piece) + 2
    head = (
        "POST /predict/csv HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/csv\r\n"
        f"Accept: text/csv\r\nAuthorization: Bearer {token}\r\n"
        "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    received = bytearray()
    with socket.create_connection(("127.0.0.1", state.ports["api"]), timeout=60) as sock:

        def read_all() -> None:
            while data := sock.recv(1 << 20):
                received.extend(data)

        reader = threading.Thread(target=read_all)
        reader.start()
        sock.sendall(head.encode() + chunk_of(b"sepal_length,sepal_width,petal_length,petal_width\n"))
        for _ in range(pieces):
            sock.sendall(chunk_of(piece))
        sock.sendall(b"0\r\n\r\n")
        reader.join(timeout=120)
        assert not reader.is_alive(), f"the answer stopped after {len(received)} bytes"
    status, _, body = bytes(received).partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 200 "), status
    answer = unchunked(body).decode().splitlines()
    assert answer[0].startswith("sepal_length,sepal_width,petal_length,petal_width,prediction_id,label,")
    assert len(answer) - 1 == pieces * 65536 and pieces * len(piece) > MAX_BODY_BYTES
    inputs, prediction_id, label = answer[-1].split(",")[:4], *answer[-1].split(",")[4:6]
    assert inputs == ["5.1", "3.5", "1.4", "0.2"] and ID.match(prediction_id) and label == "setosa"


def test_metrics_are_per_replica_not_through_nginx(stack):
    state, env = stack
    token = bearer(env["METRICS_TOKEN"])
    assert httpx.get(f"{state.url('api')}/metrics", headers=token, timeout=5).status_code == 404
    for name in REPLICAS:
        assert httpx.get(f"{state.url(name)}/metrics", headers=token, timeout=5).status_code == 200


def test_prometheus_scrapes_each_replica(stack):
    state, _ = stack
    prometheus = httpx.Client(base_url=state.url("prometheus"), timeout=5)

    def api_targets() -> list[dict]:
        # Empty for a moment after start, until the scrape manager has read the config.
        targets = prometheus.get("/api/v1/targets").json()["data"]["activeTargets"]
        return [t for t in targets if t["labels"]["job"] == "predictor-api"]

    try:
        wait_until(lambda: [t["health"] for t in api_targets()] == ["up", "up"], 20, "both API targets")
    except TimeoutError:
        pytest.fail(f"predictor-api targets: {json.dumps(api_targets())}")
    assert {t["scrapeUrl"] for t in api_targets()} == {f"{state.url(name)}/metrics" for name in REPLICAS}
    alertmanagers = prometheus.get("/api/v1/alertmanagers").json()["data"]["activeAlertmanagers"]
    assert alertmanagers and alertmanagers[0]["url"].startswith(state.url("alertmanager"))


def test_a_job_queued_through_nginx_runs_in_the_worker_and_reaches_both_replicas(stack):
    state, _ = stack
    api = httpx.Client(base_url=state.url("api"), timeout=10)
    admin = bearer(get_token(api, *ADMIN))
    started = api.post("/train", headers=admin)
    assert started.status_code == 202, started.text
    job_id = started.json()["id"]
    job: dict = {}

    def finished() -> bool:
        nonlocal job
        job = api.get(f"/train/{job_id}", headers=admin).json()  # whichever replica answers
        return job["status"] in ("succeeded", "failed")

    wait_until(finished, 240, "the retraining job")
    assert job["status"] == "succeeded", job
    assert f"runs retraining job {job_id}" in (state.logs / "worker.log").read_text()
    expected = job["version"] if job["promoted"] else None
    if expected is not None:

        def everywhere() -> bool:
            versions = {
                httpx.get(f"{state.url(n)}/health", timeout=5).json()["model_version"] for n in REPLICAS
            }
            return versions == {expected}

        wait_until(everywhere, 20, f"{expected} on both replicas")


def test_the_image_healthcheck_command_passes_against_a_replica(stack):
    """The Dockerfile's HEALTHCHECK, run as is (PORT tells it where the API listens)."""
    state, env = stack
    line = next(
        line
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if line.strip().startswith("CMD python")
    )
    command = shlex.split(line.strip().removeprefix("CMD "))
    result = subprocess.run(command, env=env | {"PORT": str(state.ports["api-1"])}, timeout=10)
    assert result.returncode == 0


def test_a_failed_start_stops_what_it_started(tmp_path):
    """The S3 server starts, MLflow cannot (its port is taken): up fails and leaves nothing running."""
    import socket

    # An empty folder: tools/ is not installed, python finds it from the project root.
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.update(port_env())
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env["STACK_MLFLOW_PORT"] = str(taken.getsockname()[1])
        result = devstack(tmp_path, env, "up", timeout=60)
    assert result.returncode == 1
    assert "port" in result.stderr and "STACK_MLFLOW_PORT" in result.stderr
    assert "s3            stopped" in result.stdout
    assert not (tmp_path / ".stack" / "state.json").exists()
