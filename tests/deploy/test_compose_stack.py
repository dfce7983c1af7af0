"""The compose stack, up (issue 28): docker-compose.yml run by podman-compose, the project's services
from the project's images, the third-party ones from local stand-ins (tests/deploy/compose).

No registry is reachable here, so tests/deploy/compose/stand-ins.yml maps postgres, redis, minio,
minio-init, lb, prometheus and alertmanager to images built from Debian packages (moto's server for
MinIO); trainer, api-1, api-2, worker, mlflow and ui run mlops-api-predictor:full and :serving as
docker-compose.yml says. What the test changes in its copy of docker-compose.yml, and why:

- no `ports`: podman-compose 1.0.3 extends lists when it merges files, so an override can only add
  ports; the host's 8000 may be taken, so stand-ins.yml publishes free ones on 127.0.0.1 instead;
- no grafana (no stand-in for it), and bind mounts by absolute path (the copy is not in the repo);
- `${NAME:-}` spelled `${NAME}`: podman-compose 1.0.3 does not expand an empty default (the API
  replicas read `${OIDC_SCOPE_MAP:-}` literally and refused to start).

podman-compose 1.0.3 ignores `depends_on: condition`: the infrastructure is brought up first and
waited for (each service's own healthcheck, run with `podman exec`), then the rest.
Every podman and podman-compose command runs under `nice -n 19`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support.models import IRIS_ROW
from tests.support.paths import ROOT
from tests.support.servers import free_ports, wait_until

pytestmark = [pytest.mark.containers, pytest.mark.slow]

COMPOSE_DIR = ROOT / "tests/deploy/compose"
STAND_INS = ("postgres", "redis", "s3", "nginx", "prometheus", "alertmanager")
INFRA = ("postgres", "redis", "minio")
# Every service of docker-compose.yml but grafana.
SERVICES = (
    *INFRA,
    "minio-init",
    "mlflow",
    "trainer",
    "api-1",
    "api-2",
    "worker",
    "lb",
    "prometheus",
    "alertmanager",
    "ui",
)
ADMIN = ("admin", "compose-admin-password-1")
# Created through the API before `down`: the admin alone would prove nothing, as every replica
# creates it again when the users table is empty.
USER = ("compose-user", "compose-user-password-1")
NICE = ("nice", "-n", "19")


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([*NICE, "podman", *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} exited {done.returncode}: {done.stderr[-2000:]}")
    return done


@pytest.fixture(scope="module")
def stand_ins() -> None:
    """The stand-in images, built (or found in the layer cache) from tests/deploy/compose/Containerfile."""
    if shutil.which("podman") is None or shutil.which("podman-compose") is None:
        pytest.skip("podman and podman-compose are needed")
    for target in STAND_INS:
        podman(
            "build",
            "--format",
            "docker",
            "--target",
            target,
            "-t",
            f"localhost/predictor-standin:{target}",
            str(COMPOSE_DIR),
            timeout=1800,
        )


def compose_copy(folder: Path) -> Path:
    """docker-compose.yml without ports and grafana, its bind mounts by absolute path."""
    # podman-compose 1.0.3 leaves `${NAME:-}` (an empty default) as it is: `${NAME}` is empty when unset.
    spec = yaml.safe_load((ROOT / "docker-compose.yml").read_text().replace(":-}", "}"))
    spec = {key: value for key, value in spec.items() if not key.startswith("x-")}
    del spec["services"]["grafana"]
    del spec["volumes"]["grafana-data"]
    for service in spec["services"].values():
        service.pop("ports", None)
        service.pop("build", None)
        service["volumes"] = [
            str(ROOT / volume[2:]) if volume.startswith("./") else volume
            for volume in service.get("volumes", [])
        ]
        if not service["volumes"]:
            del service["volumes"]
    path = folder / "docker-compose.yml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@dataclass
class Stack:
    project: str
    files: tuple[Path, ...]
    env: dict[str, str]
    lb: str
    prometheus: str
    healthchecks: dict[str, list[str]]

    def compose(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        command = [*NICE, "podman-compose", "-p", self.project]
        for file in self.files:
            command += ["-f", str(file)]
        done = subprocess.run(
            [*command, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=os.environ | self.env,
            cwd=ROOT,
        )
        if done.returncode != 0:
            raise AssertionError(
                f"podman-compose {' '.join(args)}: {done.stdout[-3000:]} {done.stderr[-3000:]}"
            )
        return done

    def up(self, *services: str) -> None:
        self.compose("up", "-d", "--no-build", *services)

    def container(self, service: str) -> str:
        return f"{self.project}_{service}_1"

    def state(self, service: str) -> dict[str, Any]:
        done = podman("inspect", "--format", "json", self.container(service), check=False)
        if done.returncode != 0:
            return {}
        return json.loads(done.stdout)[0]["State"]

    def healthy(self, service: str) -> bool:
        """The service's healthcheck from docker-compose.yml, run in its container by `podman exec`:
        podman-compose 1.0.3 passes a CMD test with spaces in an argument to podman mangled (mlflow's
        `python -c '...'` becomes `/bin/sh -c python' '-c' ...`), so `podman healthcheck run` fails."""
        test = self.healthchecks[service]
        command = test[1:] if test[0] == "CMD" else ["sh", "-c", test[1].replace("$$", "$")]
        return podman("exec", self.container(service), *command, check=False, timeout=60).returncode == 0

    def logs(self, service: str) -> str:
        done = podman("logs", self.container(service), check=False)
        return done.stdout + done.stderr

    def wait_healthy(self, *services: str, timeout: float = 180) -> None:
        for service in services:
            try:
                wait_until(lambda s=service: self.healthy(s), timeout, f"{service}'s healthcheck")
            except TimeoutError as exc:
                raise AssertionError(f"{exc}\n{self.logs(service)[-4000:]}") from None

    def wait_exited(self, service: str, timeout: float) -> None:
        def exited() -> bool:
            state = self.state(service)
            return state.get("Status") == "exited"

        wait_until(exited, timeout, f"{service} to finish")
        code = self.state(service)["ExitCode"]
        assert code == 0, f"{service} exited {code}:\n{self.logs(service)[-4000:]}"


def stack_env(folder: Path, ports: list[int]) -> dict[str, str]:
    token_file = folder / "metrics_token"
    token_file.write_text("compose-metrics-token")
    return {
        "APP_ENV": "development",
        "SECRET_KEY": "compose-test-secret-key-" + uuid.uuid4().hex,
        "ADMIN_USERNAME": ADMIN[0],
        "ADMIN_PASSWORD": ADMIN[1],
        "POSTGRES_USER": "predictor",
        "POSTGRES_PASSWORD": "postgres-compose-test",
        "POSTGRES_DB": "predictor",
        "MINIO_ROOT_USER": "minio-admin",
        "MINIO_ROOT_PASSWORD": "minio-compose-test",
        "DVC_BUCKET": "predictor-dvc",
        "MLFLOW_BUCKET": "mlflow",
        "MODEL_BUCKET": "predictor-models",
        "METRICS_TOKEN": token_file.read_text(),
        "ALERT_WEBHOOK_URL": "http://127.0.0.1:5001/alerts",
        "PREDICTOR_TEST_METRICS_TOKEN_FILE": str(token_file),
        "PREDICTOR_TEST_LB_PORT": str(ports[0]),
        "PREDICTOR_TEST_MLFLOW_PORT": str(ports[1]),
        "PREDICTOR_TEST_PROMETHEUS_PORT": str(ports[2]),
        "PREDICTOR_TEST_UI_PORT": str(ports[3]),
    }


@pytest.fixture
def stack(stand_ins: None, tmp_path: Path) -> Iterator[Stack]:
    ports = free_ports(4)
    project = "predictortest" + uuid.uuid4().hex[:8]
    stack = Stack(
        project=project,
        files=(compose_copy(tmp_path), COMPOSE_DIR / "stand-ins.yml"),
        env=stack_env(tmp_path, ports),
        lb=f"http://127.0.0.1:{ports[0]}",
        prometheus=f"http://127.0.0.1:{ports[2]}",
        healthchecks={
            name: service["healthcheck"]["test"]
            for name, service in yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"].items()
            if "healthcheck" in service
        },
    )
    try:
        yield stack
    finally:
        try:
            stack.compose("down", "-v", timeout=300)
        finally:
            podman("network", "rm", "-f", f"{project}_default", check=False)
            leftover = podman(
                "ps", "-a", "-q", "--filter", f"label=io.podman.compose.project={project}", check=False
            )
            for cid in leftover.stdout.split():
                podman("rm", "-f", cid, check=False)
            volumes = podman(
                "volume", "ls", "-q", "--filter", f"label=io.podman.compose.project={project}", check=False
            )
            for volume in volumes.stdout.split():
                podman("volume", "rm", "-f", volume, check=False)


def token(url: str, who: tuple[str, str] = ADMIN) -> dict[str, str]:
    answer = httpx.post(f"{url}/token", data={"username": who[0], "password": who[1]}, timeout=30)
    assert answer.status_code == 200, answer.text
    return {"Authorization": f"Bearer {answer.json()['access_token']}"}


def replica_versions(stack: Stack) -> dict[str, str | None]:
    """What each replica serves, asked inside its own container (the replicas publish no port)."""
    versions = {}
    for service in ("api-1", "api-2"):
        done = podman(
            "exec",
            stack.container(service),
            "python",
            "-c",
            "import json, urllib.request; "
            "print(json.load(urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4))"
            ".get('model_version'))",
            check=False,
        )
        versions[service] = done.stdout.strip() if done.returncode == 0 else None
    return versions


def both_serve(stack: Stack, version: str) -> bool:
    return set(replica_versions(stack).values()) == {version}


def bring_up(stack: Stack, timings: dict[str, float]) -> None:
    start = time.monotonic()
    stack.up(*INFRA)
    stack.wait_healthy(*INFRA)
    stack.up("minio-init")
    stack.wait_exited("minio-init", 120)
    stack.up("mlflow")
    stack.wait_healthy("mlflow")
    timings["infrastructure and mlflow"] = time.monotonic() - start


@pytest.mark.timeout(2400)
def test_the_compose_stack_trains_serves_scrapes_retrains_and_keeps_its_state(stack: Stack) -> None:
    timings: dict[str, float] = {}
    begin = time.monotonic()
    bring_up(stack, timings)

    # The trainer trains and publishes; both replicas follow it.
    start = time.monotonic()
    stack.up("trainer", "api-1", "api-2", "worker")
    stack.wait_exited("trainer", 1200)
    timings["trainer"] = time.monotonic() - start
    # `models publish --serve` says "published to s3://...: VERSION".
    (first,) = [
        line.rsplit(": ", 1)[1].strip()
        for line in stack.logs("trainer").splitlines()
        if line.startswith("published to ")
    ]
    wait_until(lambda: both_serve(stack, first), 120, f"both replicas serving {first}")

    # Through the load balancer: a token, a prediction, answered by the published version.
    stack.up("lb", "prometheus", "alertmanager", "ui")
    stack.wait_healthy("lb", "alertmanager", "prometheus")
    headers = token(stack.lb)
    answer = httpx.post(f"{stack.lb}/predict", json={"instances": [IRIS_ROW]}, headers=headers, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json()["model_version"] == first
    seen = {httpx.get(f"{stack.lb}/health", timeout=15).json()["model_version"] for _ in range(6)}
    assert seen == {first}
    # nginx spread them over both replicas: its log names the upstream that answered each.
    upstreams = {
        line.split("upstream=")[1].split()[0]
        for line in stack.logs("lb").splitlines()
        if '"GET /health ' in line and "upstream=" in line
    }
    assert len(upstreams) == 2, upstreams

    # Prometheus scrapes both replicas.
    def targets_up() -> bool:
        try:
            answer = httpx.get(f"{stack.prometheus}/api/v1/targets", timeout=15)
        except httpx.HTTPError:
            return False
        active = answer.json()["data"]["activeTargets"]
        return {t["labels"]["instance"] for t in active if t["health"] == "up"} >= {
            "api-1:8000",
            "api-2:8000",
        }

    wait_until(targets_up, 90, "Prometheus's targets api-1 and api-2 up")

    # A retraining job queued through the API, run by the worker, followed by both replicas.
    start = time.monotonic()
    queued = httpx.post(f"{stack.lb}/train", json={}, headers=headers, timeout=10)
    assert queued.status_code in (200, 202), queued.text
    job = queued.json()["id"]

    def finished() -> bool:
        # The machine is busy while the job trains: a slow answer is asked again, not a failure.
        try:
            status = httpx.get(f"{stack.lb}/train/{job}", headers=headers, timeout=15).json()["status"]
        except httpx.HTTPError:
            return False
        return status in ("succeeded", "failed")

    wait_until(finished, 900, "the retraining job")
    outcome = httpx.get(f"{stack.lb}/train/{job}", headers=headers, timeout=30).json()
    assert outcome["status"] == "succeeded", (outcome, stack.logs("worker")[-4000:])
    timings["retraining job"] = time.monotonic() - start
    serving = first
    if outcome.get("promoted"):
        serving = outcome["version"]
        wait_until(lambda: both_serve(stack, serving), 60, "both replicas following the new version")
    else:
        assert both_serve(stack, first)

    # down (volumes kept) and up again: the users and the versions are still there.
    created = httpx.post(
        f"{stack.lb}/users",
        json={"username": USER[0], "password": USER[1], "scopes": ["predict"]},
        headers=headers,
        timeout=30,
    )
    assert created.status_code in (200, 201), created.text
    print(
        f"compose stack: first {first}, retrained {outcome['version']} (promoted: {outcome.get('promoted')})"
    )
    start = time.monotonic()
    stack.compose("down", timeout=300)
    bring_up(stack, timings)
    stack.up("api-1", "api-2", "worker")
    wait_until(lambda: both_serve(stack, serving), 180, "both replicas serving the same version after up")
    stack.up("lb")
    stack.wait_healthy("lb")
    headers = token(stack.lb, USER)
    answer = httpx.post(f"{stack.lb}/predict", json={"instances": [IRIS_ROW]}, headers=headers, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json()["model_version"] == serving
    # The S3 stand-in's objects came back from its volume (moto's recorded requests, replayed).
    minio_logs = stack.logs("minio")
    replayed = [line for line in minio_logs.splitlines() if "replayed" in line]
    assert replayed, minio_logs[-3000:]
    print("compose stack after up:", replayed)
    timings["down and up"] = time.monotonic() - start
    timings["total"] = time.monotonic() - begin
    print("compose stack timings (s):", {k: round(v) for k, v in timings.items()})
