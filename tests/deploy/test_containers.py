"""The images, built and run for real (docker, or podman here): the serving image as the Helm chart runs
an API pod, and the full image's trainer and worker commands against a store.

The API container takes its pod settings from the chart's own render (tests/deploy/test_helm.py): the
command, the port, the probe paths, the UID and GID, the read-only root, the writable mounts (each an
empty scratch folder, as the chart's emptyDirs are) and the plain env values. What differs says why:
the port is a free one (the host's network), the database and the store are this test's.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.core.serving_pointer import ServingPointer
from app.db.pointer import DatabasePointer
from app.db.session import Database
from tests.deploy.test_helm import env, one, pod_spec
from tests.support import containers as engine
from tests.support.models import IRIS_ROW, write_model
from tests.support.paths import ROOT
from tests.support.postgres import scratch_database
from tests.support.s3 import S3Server, moto_s3
from tests.support.servers import free_port, http_ok, wait_until
from tests.support.tokens import ADMIN

pytestmark = [pytest.mark.containers, pytest.mark.postgres, pytest.mark.slow]

# The serving image: measured 462 MiB (podman, on the local Debian base); its bound is 10% above.
SERVING_MIB_BOUND = 508
START_TO_READY_SECONDS = 5.0


@pytest.fixture(scope="module")
def images() -> tuple[str, str]:
    return engine.images()


@pytest.fixture(scope="module")
def api_pod() -> dict[str, Any]:
    """The chart's API container, as it renders with the required values only."""
    (container,) = pod_spec(one("default", "Deployment", "api"))["containers"]
    return container


@pytest.fixture(scope="module")
def store() -> Iterator[S3Server]:
    with moto_s3("models") as server:
        yield server


@pytest.fixture
def database() -> Iterator[str]:
    with scratch_database("containers") as url:
        yield url


def served_from_the_store(
    database_url: str, store: S3Server, tmp_path: Path, version: str = "c-v1", onnx: bool = True
) -> str:
    """A version published to the store and named by the serving pointer, by this process's code
    (onnx=False: without model.onnx, as an older train wrote it)."""
    folder = tmp_path / version
    metadata = write_model(folder, "iris", version=version, onnx=onnx)
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "models", "publish", "--serve"],
        env=publisher_env(database_url, store, folder, tmp_path),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return metadata.version


def publisher_env(database_url: str, store: S3Server, folder: Path, tmp_path: Path) -> dict[str, str]:
    return (
        os.environ
        | store.env
        | {
            "DATABASE_URL": database_url,
            "MODEL_STORE_URL": store.url("versions"),
            "MODEL_DIR": str(folder),
            "MODEL_CACHE_DIR": str(tmp_path / "publisher-cache"),
            "ADMIN_PASSWORD": ADMIN[1],
        }
    )


def pod_options(
    pod: dict[str, Any], port: int | None, settings: dict[str, str], volumes: dict[str, str] | None = None
) -> list[str]:
    """`run` options for a chart container's settings, on the host's network (at `port`, if given).
    `volumes`: the mounts shared between containers (a named volume each), by the chart's volume name."""
    context = pod["securityContext"]
    options = [
        "--network=host",
        f"--user={context['runAsUser']}:{context['runAsGroup']}",
        "--cap-drop=ALL",
        "--security-opt=no-new-privileges",
    ]
    if context["readOnlyRootFilesystem"]:
        options.append("--read-only")
    for mount in pod["volumeMounts"]:
        if volumes and mount["name"] in volumes:
            # Owned by the container's user (podman's :U), as fsGroup makes an emptyDir writable.
            options.append(f"--volume={volumes[mount['name']]}:{mount['mountPath']}:U")
        else:
            # An emptyDir: empty, writable by the pod's user, gone with the pod.
            options.append(f"--tmpfs={mount['mountPath']}:rw,mode=1777")
    values = {name: variable["value"] for name, variable in env(pod).items() if "value" in variable}
    for name, value in (values | settings | ({"PORT": str(port)} if port else {})).items():
        options.append(f"--env={name}={value}")
    return options


def api_settings(database_url: str, store: S3Server) -> dict[str, str]:
    """What a user's values and Secrets give the pod: the database, the store, the first admin."""
    return store.env | {
        "DATABASE_URL": database_url,
        "MODEL_STORE_URL": store.url("versions"),
        "SECRET_KEY": "containers-test-secret-key-0123456789",
        "ADMIN_PASSWORD": ADMIN[1],
        "METRICS_TOKEN": "containers-metrics-token",
        "LOG_LEVEL": "WARNING",
    }


def token(url: str) -> dict[str, str]:
    answer = httpx.post(f"{url}/token", data={"username": ADMIN[0], "password": ADMIN[1]}, timeout=10)
    assert answer.status_code == 200, answer.text
    return {"Authorization": f"Bearer {answer.json()['access_token']}"}


def test_the_serving_image_leaves_the_training_stack_out_and_stays_small(images: tuple[str, str]) -> None:
    serving, full = images
    size = engine.size_mib(serving)
    print(f"serving image {size:.0f} MiB, full image {engine.size_mib(full):.0f} MiB")
    assert size <= SERVING_MIB_BOUND, f"{serving} is {size:.0f} MiB"
    probe = "import importlib.util as u; print([m for m in %r if u.find_spec(m)])"
    training = [
        "mlflow",
        "dvc",
        "sklearn",
        "pandas",
        "lightgbm",
        "xgboost",
        "catboost",
        "skl2onnx",
        "streamlit",
    ]
    done = engine.one_shot(serving, command=("python", "-c", probe % training), timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr
    serving_needs = [
        "fastapi",
        "uvicorn",
        "onnxruntime",
        "boto3",
        "psycopg",
        "redis",
        "sqlalchemy",
        "alembic",
    ]
    done = engine.one_shot(serving, command=("python", "-c", probe % serving_needs), timeout=60)
    assert done.stdout.strip() == str(serving_needs), done.stdout + done.stderr
    done = engine.one_shot(full, command=("python", "-c", probe % training), timeout=60)
    assert done.stdout.strip() == str(training), done.stdout + done.stderr


def test_the_api_container_runs_as_the_chart_runs_a_pod(
    images: tuple[str, str], api_pod: dict[str, Any], database: str, store: S3Server, tmp_path: Path
) -> None:
    serving, _ = images
    version = served_from_the_store(database, store, tmp_path)
    # The chart runs the serving image in API pods; its command, port and probes are the image's.
    repository, tag = api_pod["image"].rsplit(":", 1)
    assert (repository, tag.endswith("-serving"), serving) == (engine.IMAGE, True, f"{engine.IMAGE}:serving")
    assert api_pod["command"] == ["python", "-m", "app.serve"]
    assert engine.inspect(serving)["Config"]["Cmd"] == api_pod["command"]
    assert [p["containerPort"] for p in api_pod["ports"]] == [8000]
    health, ready = api_pod["livenessProbe"]["httpGet"]["path"], api_pod["readinessProbe"]["httpGet"]["path"]
    assert (health, ready) == ("/health", "/ready")

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with engine.container(serving, *pod_options(api_pod, port, api_settings(database, store))) as api:

        def is_ready() -> bool:
            if not api.running():
                raise AssertionError(f"the API container exited: {api.logs()[-3000:]}")
            try:
                return httpx.get(f"{url}{ready}", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(is_ready, 60, "the API container's /ready")
        to_ready = time.time() - api.started_at()
        print(f"API container: start to ready in {to_ready:.2f} s")
        assert to_ready <= START_TO_READY_SECONDS, to_ready
        assert httpx.get(f"{url}{health}", timeout=5).json()["model_version"] == version
        assert api.healthcheck(), "the image's HEALTHCHECK"

        headers = token(url)
        answer = httpx.post(f"{url}/predict", json={"instances": [IRIS_ROW]}, headers=headers, timeout=10)
        assert answer.status_code == 200, answer.text
        assert answer.json()["model_version"] == version

        # Read-only but for the chart's scratch mounts, as the chart's UID.
        assert api.exec("id", "-u").stdout.strip() == str(api_pod["securityContext"]["runAsUser"])
        assert api.exec("touch", "/app/x").returncode != 0
        assert api.exec("touch", "/srv/x").returncode != 0
        for mount in api_pod["volumeMounts"]:
            assert api.exec("touch", f"{mount['mountPath']}/x").returncode == 0, mount

        # SIGTERM under load: what was in flight is answered, whole.
        csv = ",".join(IRIS_ROW) + "\n" + (",".join(str(v) for v in IRIS_ROW.values()) + "\n") * 100_000
        results: list[Any] = []

        def upload() -> None:
            try:
                done = httpx.post(
                    f"{url}/predict/csv",
                    content=csv,
                    headers=headers | {"Content-Type": "text/csv", "Accept": "text/csv"},
                    timeout=60,
                )
                results.append((done.status_code, done.text.count("\n")))
            except httpx.HTTPError as exc:
                results.append(exc)

        threads = [threading.Thread(target=upload) for _ in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(0.3)  # the uploads are under way
        api.signal("TERM")
        for thread in threads:
            thread.join(90)
        assert api.wait(60) == 0, api.logs()[-3000:]
    assert results == [(200, 100_001)] * 4, results


@pytest.fixture(scope="module")
def mlflow(images: tuple[str, str], store: S3Server) -> Iterator[str]:
    """An MLflow tracking server from the full image, as compose runs one: runs in SQLite here,
    artifacts in the store's S3 (written there by the clients)."""
    _, full = images
    port = free_port()
    command = (
        "mlflow", "server", "--host=127.0.0.1", f"--port={port}", "--workers=1", "--no-serve-artifacts",
        "--backend-store-uri=sqlite:////tmp/mlflow.db", f"--default-artifact-root=s3://{store.bucket}/mlflow",
    )  # fmt: skip
    options = ["--network=host", "--read-only", "--tmpfs=/tmp:rw,mode=1777"]
    options += [f"--env={name}={value}" for name, value in store.env.items()]
    with engine.container(full, *options, command=command):
        url = f"http://127.0.0.1:{port}"
        wait_until(http_ok(f"{url}/health"), 120, "the MLflow server")
        yield url


def job_settings(database: str, store: S3Server, mlflow: str) -> dict[str, str]:
    """A trainer's or worker's settings: the API's, and the tracking server's address."""
    return api_settings(database, store) | {
        "MLFLOW_TRACKING_URI": mlflow,
        "MLFLOW_S3_ENDPOINT_URL": store.endpoint,
        "LOG_LEVEL": "INFO",
    }


def test_the_trainer_pod_trains_and_publishes_with_the_full_image(
    images: tuple[str, str], database: str, store: S3Server, mlflow: str
) -> None:
    """The chart's trainer Job: an init container copies /app into the workspace volume, then the
    trainer runs `dvc repro` and `models publish --serve` there, on a read-only root."""
    _, full = images
    pod = pod_spec(one("default", "Job", "trainer"))
    (init,), (trainer,) = pod["initContainers"], pod["containers"]
    volume = f"predictor-test-workspace-{uuid.uuid4().hex[:8]}"
    engine.run("volume", "create", volume)
    try:
        settings = job_settings(database, store, mlflow)
        copied = engine.one_shot(
            full,
            *pod_options(init, None, {}, {"workspace": volume}),
            command=tuple(init["command"]),
            timeout=120,
        )
        assert copied.returncode == 0, copied.stderr
        started = time.monotonic()
        trained = engine.one_shot(
            full,
            *pod_options(trainer, None, settings, {"workspace": volume}),
            command=tuple(trainer["command"]),
            timeout=900,
        )
        assert trained.returncode == 0, (trained.stdout + trained.stderr)[-4000:]
        print(f"trainer pod: dvc repro and publish in {time.monotonic() - started:.0f} s")
    finally:
        engine.run("volume", "rm", "--force", volume, check=False)
    pointer = read_pointer(database)
    assert pointer is not None and pointer.reason.startswith("published"), pointer


def read_pointer(database_url: str) -> ServingPointer | None:
    handle = Database(database_url)
    try:
        return DatabasePointer(handle.session).get()
    finally:
        handle.dispose()


def test_a_retraining_job_queued_through_the_api_container_is_run_by_the_worker_container(
    images: tuple[str, str],
    api_pod: dict[str, Any],
    database: str,
    store: S3Server,
    mlflow: str,
    tmp_path: Path,
) -> None:
    serving, full = images
    first = served_from_the_store(database, store, tmp_path)
    (worker,) = pod_spec(one("default", "Deployment", "worker"))["containers"]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with (
        engine.container(serving, *pod_options(api_pod, port, api_settings(database, store))),
        engine.container(
            full,
            *pod_options(worker, None, job_settings(database, store, mlflow)),
            command=tuple(worker["command"]),
        ) as jobs,
    ):
        wait_until(http_ok(f"{url}/ready"), 60, "the API container's /ready")
        headers = token(url)
        queued = httpx.post(f"{url}/train", json={}, headers=headers, timeout=10)
        assert queued.status_code in (200, 202), queued.text
        job = queued.json()["id"]

        def finished() -> bool:
            return httpx.get(f"{url}/train/{job}", headers=headers, timeout=5).json()["status"] in (
                "succeeded",
                "failed",
            )

        wait_until(finished, 600, "the retraining job")
        outcome = httpx.get(f"{url}/train/{job}", headers=headers, timeout=5).json()
        assert outcome["status"] == "succeeded", (outcome, jobs.logs()[-3000:])
        new = outcome["version"]
        assert new != first
        if outcome.get("promoted"):
            wait_until(
                lambda: httpx.get(f"{url}/health", timeout=5).json()["model_version"] == new,
                30,
                "the API container following the new version",
            )
        jobs.signal("TERM")
        assert jobs.wait(60) == 0, jobs.logs()[-3000:]


def test_a_version_without_model_onnx_is_refused_plainly_by_the_serving_image(
    images: tuple[str, str], database: str, store: S3Server, tmp_path: Path
) -> None:
    serving, _ = images
    served_from_the_store(database, store, tmp_path, "c-pickle", onnx=False)
    port = free_port()
    settings = api_settings(database, store) | {"LOG_LEVEL": "INFO"}
    options = ["--network=host", "--read-only", "--tmpfs=/tmp", "--tmpfs=/cache:rw,mode=1777"]
    settings |= {"PORT": str(port), "MODEL_CACHE_DIR": "/cache"}
    options += [f"--env={name}={value}" for name, value in settings.items()]
    with engine.container(serving, *options):
        url = f"http://127.0.0.1:{port}"

        def answers() -> bool:
            try:
                return httpx.get(f"{url}/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(answers, 60, "the API container's /health")
        not_ready = httpx.get(f"{url}/ready", timeout=5)
        assert not_ready.status_code == 503
        assert "scikit-learn is not installed here" in not_ready.text, not_ready.text
