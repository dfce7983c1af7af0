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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.db.pointer import DatabasePointer
from app.db.session import Database
from tests.deploy.test_helm import env, one, pod_spec
from tests.support import containers as engine
from tests.support.models import IRIS_ROW, write_model
from tests.support.paths import ROOT
from tests.support.postgres import scratch_database
from tests.support.s3 import S3Server, moto_s3
from tests.support.servers import free_port, wait_until
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


def served_from_the_store(database_url: str, store: S3Server, tmp_path: Path) -> str:
    """A version published to the store and named by the serving pointer, by this process's code."""
    folder = tmp_path / "model"
    metadata = write_model(folder, "iris", version="c-v1")
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


def pod_options(pod: dict[str, Any], port: int, settings: dict[str, str]) -> list[str]:
    """`run` options for the chart's pod settings, on the host's network at `port`."""
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
        # An emptyDir: empty, writable by the pod's group (fsGroup), gone with the pod.
        options.append(f"--tmpfs={mount['mountPath']}:rw,mode=1777")
    values = {name: variable["value"] for name, variable in env(pod).items() if "value" in variable}
    for name, value in (values | settings | {"PORT": str(port)}).items():
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
    started = time.monotonic()
    with engine.container(serving, *pod_options(api_pod, port, api_settings(database, store))) as api:

        def is_ready() -> bool:
            if not api.running():
                raise AssertionError(f"the API container exited: {api.logs()[-3000:]}")
            try:
                return httpx.get(f"{url}{ready}", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(is_ready, 60, "the API container's /ready")
        to_ready = time.monotonic() - started
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


def test_the_trainer_and_the_worker_commands_run_in_the_full_image(
    images: tuple[str, str], database: str, store: S3Server, tmp_path: Path
) -> None:
    _, full = images
    folder = tmp_path / "trained"
    write_model(folder, "iris", version="c-v2")
    # Readable by the image's user, as a volume the trainer wrote would be.
    subprocess.run(["chmod", "-R", "a+rX", str(folder)], check=True)
    settings = api_settings(database, store)
    # The chart's scratch paths (its worker's /cache and /jobs): a tmpfs over a folder of the image
    # would keep the folder's owner, root.
    options = ["--network=host", "--read-only", "--tmpfs=/tmp", "--tmpfs=/cache:rw,mode=1777"]
    options += [f"--env={name}={value}" for name, value in (settings | {"MODEL_CACHE_DIR": "/cache"}).items()]
    # The trainer's last step: models/ (what dvc repro wrote, here mounted) to the store, served.
    published = engine.one_shot(
        full,
        *options,
        f"--volume={folder}:/app/models:ro",
        "--env=MODEL_DIR=/app/models",
        command=("python", "-m", "app.cli", "models", "publish", "--serve"),
        timeout=300,
    )
    assert published.returncode == 0, published.stdout + published.stderr
    database_handle = Database(database)
    try:
        pointer = DatabasePointer(database_handle.session).get()
        assert pointer is not None and pointer.version == "c-v2"
    finally:
        database_handle.dispose()

    # The worker: in /app, the image's project (params.yaml), it waits for jobs; SIGTERM stops it.
    with engine.container(
        full,
        *options,
        "--tmpfs=/jobs:rw,mode=1777",
        "--env=JOBS_DIR=/jobs",
        "--env=LOG_LEVEL=INFO",
        command=("python", "-m", "app.worker"),
    ) as worker:
        wait_until(lambda: "waiting for retraining jobs" in worker.logs(), 60, "the worker's start")
        worker.signal("TERM")
        assert worker.wait(60) == 0, worker.logs()[-3000:]


def test_a_version_without_model_onnx_is_refused_plainly_by_the_serving_image(
    images: tuple[str, str], database: str, store: S3Server, tmp_path: Path
) -> None:
    serving, _ = images
    folder = tmp_path / "pickled"
    write_model(folder, "iris", version="c-pickle", onnx=False)
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "models", "publish", "--serve"],
        env=publisher_env(database, store, folder, tmp_path),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
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
