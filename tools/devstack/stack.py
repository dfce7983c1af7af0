"""Start, stop and report the local stack.

Every server runs in its own session (process group), so stopping one also stops its workers.
Each pid is written to `.stack/state.json` the moment the process starts: `down` can then stop
whatever a failed or interrupted `up` left behind. Ports default to the docker-compose ones and
each can be moved with an environment variable (the tests use free ports):

    STACK_S3_PORT=9000  STACK_MLFLOW_PORT=5000  STACK_API_PORT=8000
    STACK_PROMETHEUS_PORT=9090  STACK_ALERTMANAGER_PORT=9093

Other knobs: STACK_DIR (.stack), STACK_RETRAIN=1 (dvc repro --force), STACK_SCRAPE_INTERVAL (15s),
ALERT_WEBHOOK_URL (where Alertmanager posts), METRICS_TOKEN (random when unset).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from tools.devstack.configs import render_alertmanager, render_prometheus

HOST = "127.0.0.1"
DEFAULT_PORTS = {"s3": 9000, "mlflow": 5000, "api": 8000, "prometheus": 9090, "alertmanager": 9093}
# The buckets the compose stack creates in MinIO: the DVC remote (as in .dvc/config) and MLflow's artifacts.
DVC_BUCKET = "predictor-dvc"
MLFLOW_BUCKET = "mlflow"
# moto accepts any key: fixed dummy ones keep real AWS credentials from ever reaching the local server.
S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "devstack",
    "AWS_SECRET_ACCESS_KEY": "devstack",
    "AWS_DEFAULT_REGION": "us-east-1",
}
DEFAULT_WEBHOOK = "http://127.0.0.1:5001/alerts"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0


class StackError(RuntimeError):
    """A step failed; the message says which and where its log is."""


@dataclass
class Service:
    name: str
    pid: int
    url: str
    log: str
    argv0: str


@dataclass
class Stack:
    """The paths and ports of one stack, rooted at the project folder it runs from."""

    project: Path
    state_dir: Path
    ports: dict[str, int]

    @classmethod
    def from_env(cls, project: Path | None = None) -> Stack:
        project = (project or Path.cwd()).resolve()
        state_dir = project / os.environ.get("STACK_DIR", ".stack")
        ports = {
            name: int(os.environ.get(f"STACK_{name.upper()}_PORT", default))
            for name, default in DEFAULT_PORTS.items()
        }
        return cls(project, state_dir, ports)

    def url(self, name: str) -> str:
        return f"http://{HOST}:{self.ports[name]}"

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

    @property
    def logs(self) -> Path:
        return self.state_dir / "logs"

    # --- state: the services started so far, written after each start ---

    def services(self) -> list[Service]:
        if not self.state_file.exists():
            return []
        data = json.loads(self.state_file.read_text())
        return [Service(**item) for item in data.get("services", [])]

    def _record(self, service: Service) -> None:
        data = json.loads(self.state_file.read_text()) if self.state_file.exists() else {}
        data.setdefault("services", []).append(asdict(service))
        self.state_file.write_text(json.dumps(data, indent=2))

    def _remember(self, key: str, value: object) -> None:
        data = json.loads(self.state_file.read_text()) if self.state_file.exists() else {}
        data[key] = value
        self.state_file.write_text(json.dumps(data, indent=2))

    def _recalled(self, key: str) -> object:
        if not self.state_file.exists():
            return None
        return json.loads(self.state_file.read_text()).get(key)


def venv_tool(name: str) -> str:
    """A console script of the running interpreter's environment (moto_server, mlflow, dvc)."""
    path = Path(sys.executable).parent / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        raise StackError(f"{name} not found: run `make install` first")
    return found


def system_tool(variable: str, name: str) -> str:
    path = os.environ.get(variable) or shutil.which(name) or f"/usr/bin/{name}"
    if not Path(path).exists():
        raise StackError(f"{name} not found: `make obs-tools` installs it (Debian packages)")
    return path


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex((HOST, port)) != 0


def http_up(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (http on 127.0.0.1)
            return response.status < 400
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) is not running.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return True


def is_ours(service: Service) -> bool:
    """The pid still runs the program we started (pids get reused after a reboot)."""
    if not alive(service.pid):
        return False
    try:
        cmdline = Path(f"/proc/{service.pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True  # no /proc (macOS): trust the pid
    return any(Path(part.decode(errors="replace")).name == service.argv0 for part in cmdline[:3])


def tail(path: Path, lines: int = 25) -> str:
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def say(message: str) -> None:
    print(f"stack: {message}", flush=True)


class Runner:
    """`up`: starts each step in order, recording every process as soon as it exists."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.token = os.environ.get("METRICS_TOKEN") or secrets.token_urlsafe(24)
        self.env = self._base_env()

    def _base_env(self) -> dict[str, str]:
        env = dict(os.environ)
        # dvc runs the stage commands through the shell: the venv's python must come first.
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env.update(S3_CREDENTIALS)
        env["MLFLOW_S3_ENDPOINT_URL"] = self.stack.url("s3")
        env["MLFLOW_TRACKING_URI"] = self.stack.url("mlflow")
        env["MLFLOW_DISABLE_TELEMETRY"] = "true"
        env["METRICS_TOKEN"] = self.token
        return env

    def start(
        self,
        name: str,
        command: list[str],
        ready: str,
        *,
        env: dict[str, str] | None = None,
    ) -> None:
        port = self.stack.ports[name]
        if not port_free(port):
            raise StackError(f"{name}: port {port} is in use (set STACK_{name.upper()}_PORT to move it)")
        log = self.stack.logs / f"{name}.log"
        with log.open("w") as sink:
            process = subprocess.Popen(
                command,
                cwd=self.stack.project,
                env=env or self.env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        url = self.stack.url(name)
        self.stack._record(Service(name, process.pid, url, str(log), Path(command[0]).name))
        deadline = time.monotonic() + START_TIMEOUT
        while not http_up(url + ready):
            if process.poll() is not None:
                raise StackError(f"{name} exited with {process.returncode}; {log}:\n{tail(log)}")
            if time.monotonic() > deadline:
                raise StackError(f"{name} not ready after {START_TIMEOUT:.0f}s; {log}:\n{tail(log)}")
            time.sleep(0.2)
        say(f"{name:<13} {url} (pid {process.pid}, log {log.relative_to(self.stack.project)})")

    def run(self, name: str, command: list[str]) -> None:
        """A step that runs to completion (training, dvc push), logged like the servers."""
        log = self.stack.logs / f"{name}.log"
        with log.open("a") as sink:
            sink.write(f"$ {' '.join(command)}\n")
            sink.flush()
            result = subprocess.run(
                command, cwd=self.stack.project, env=self.env, stdout=sink, stderr=subprocess.STDOUT
            )
        if result.returncode != 0:
            raise StackError(f"{name}: {' '.join(command)} failed ({result.returncode}); {log}:\n{tail(log)}")

    # --- the steps, in dependency order ---

    def s3(self) -> None:
        self.start("s3", [venv_tool("moto_server"), "-H", HOST, "-p", str(self.stack.ports["s3"])], "/")
        import boto3  # the training extra; imported here so `status` and `down` never need it

        client = boto3.client(
            "s3",
            endpoint_url=self.stack.url("s3"),
            aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            region_name=S3_CREDENTIALS["AWS_DEFAULT_REGION"],
        )
        for bucket in (DVC_BUCKET, MLFLOW_BUCKET):
            client.create_bucket(Bucket=bucket)

    def mlflow(self) -> None:
        store = self.stack.state_dir / "mlflow.db"
        # moto keeps objects in memory: a fresh store, so no run points at artifacts that are gone.
        store.unlink(missing_ok=True)
        self.start(
            "mlflow",
            [
                venv_tool("mlflow"),
                "server",
                "--host", HOST,
                "--port", str(self.stack.ports["mlflow"]),
                "--workers", "1",
                "--backend-store-uri", f"sqlite:///{store}",
                # Clients write artifacts straight to S3 (MLFLOW_S3_ENDPOINT_URL), as in docker-compose.
                "--default-artifact-root", f"s3://{MLFLOW_BUCKET}/artifacts",
                "--no-serve-artifacts",
            ],
            "/health",
        )  # fmt: skip

    def train(self) -> None:
        dvc = venv_tool("dvc")
        repro = [dvc, "repro"] + (["--force"] if os.environ.get("STACK_RETRAIN") == "1" else [])
        say("train         dvc repro (log .stack/logs/train.log) ...")
        self.run("train", repro)
        self._point_dvc_remote()
        self.run("train", [dvc, "push"])
        say(f"train         trained, pushed to s3://{DVC_BUCKET}/store")

    def _point_dvc_remote(self) -> None:
        """app.pipeline.remote writes .dvc/config.local; `down` puts the developer's own back."""
        local = self.stack.project / ".dvc" / "config.local"
        if self.stack._recalled("dvc_config_local") is None:
            previous = local.read_text() if local.exists() else ""
            self.stack._remember("dvc_config_local", previous)
        self.env["DVC_REMOTE_URL"] = f"s3://{DVC_BUCKET}/store"
        self.env["DVC_S3_ENDPOINT_URL"] = self.stack.url("s3")
        self.run("train", [sys.executable, "-m", "app.pipeline.remote"])

    def api(self) -> None:
        env = dict(self.env)
        env.setdefault("DATABASE_URL", f"sqlite:///{self.stack.state_dir / 'predictor.db'}")
        env.setdefault("MODEL_DIR", str(self.stack.project / "models"))
        # The stack's MLflow starts empty each time: so do its model versions (their registry numbers).
        env.setdefault("VERSIONS_DIR", str(self.stack.state_dir / "model-versions"))
        port = str(self.stack.ports["api"])
        self.start(
            "api",
            [sys.executable, "-m", "app.serve", "--host", HOST, "--port", port, "--workers", "1"],
            "/ready",
            env=env,
        )

    def prometheus(self) -> None:
        out = self.stack.state_dir / "prometheus"
        config = render_prometheus(
            out,
            api=f"{HOST}:{self.stack.ports['api']}",
            alertmanager=f"{HOST}:{self.stack.ports['alertmanager']}",
            prometheus=f"{HOST}:{self.stack.ports['prometheus']}",
            token=self.token,
            interval=os.environ.get("STACK_SCRAPE_INTERVAL") or None,
        )
        self.start(
            "prometheus",
            [
                system_tool("PROMETHEUS_BIN", "prometheus"),
                f"--config.file={config}",
                f"--storage.tsdb.path={out / 'data'}",
                f"--web.listen-address={HOST}:{self.stack.ports['prometheus']}",
            ],
            "/-/ready",
        )

    def alertmanager(self) -> None:
        out = self.stack.state_dir / "alertmanager"
        config = render_alertmanager(out, os.environ.get("ALERT_WEBHOOK_URL") or DEFAULT_WEBHOOK)
        self.start(
            "alertmanager",
            [
                system_tool("ALERTMANAGER_BIN", "prometheus-alertmanager"),
                f"--config.file={config}",
                f"--storage.path={out / 'data'}",
                f"--web.listen-address={HOST}:{self.stack.ports['alertmanager']}",
                # A single instance: no gossip port (9094) to collide with anything.
                "--cluster.listen-address=",
            ],
            "/-/ready",
        )


def up(stack: Stack) -> None:
    running = [service.name for service in stack.services() if is_ours(service)]
    if running:
        raise StackError(f"already running: {', '.join(running)} (`make stack-down` first)")
    if stack.state_file.exists():
        down(stack)  # leftovers of a crashed run: restores .dvc/config.local before we replace it
    stack.state_dir.mkdir(parents=True, exist_ok=True)
    stack.logs.mkdir(exist_ok=True)
    runner = Runner(stack)
    token_file = stack.state_dir / "metrics_token"
    token_file.write_text(runner.token)
    token_file.chmod(0o600)
    try:
        steps = (runner.s3, runner.mlflow, runner.train, runner.api, runner.prometheus, runner.alertmanager)
        for step in steps:
            step()
    except BaseException:
        say("start failed: stopping what was started")
        down(stack)
        raise
    say(f"up: API {stack.url('api')}/docs, MLflow {stack.url('mlflow')}, alerts {stack.url('alertmanager')}")
    say(f"metrics token in {token_file.relative_to(stack.project)}; `make stack-down` stops everything")


def stop(service: Service) -> bool:
    """SIGTERM to the service's process group, SIGKILL after STOP_TIMEOUT; True when it was running."""
    if not is_ours(service):
        return False
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(service.pid, sig)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + STOP_TIMEOUT
        while time.monotonic() < deadline:
            if not alive(service.pid):
                return True
            time.sleep(0.1)
    return True


def down(stack: Stack) -> None:
    for service in reversed(stack.services()):
        say(f"{service.name:<13} {'stopped' if stop(service) else 'not running'}")
    previous = stack._recalled("dvc_config_local")
    if isinstance(previous, str):
        local = stack.project / ".dvc" / "config.local"
        if previous:
            local.write_text(previous)
        else:
            local.unlink(missing_ok=True)
        say("dvc remote    .dvc/config.local restored")
    stack.state_file.unlink(missing_ok=True)


def status(stack: Stack) -> bool:
    services = stack.services()
    if not services:
        say("not running")
        return False
    all_up = True
    for service in services:
        state = "up" if is_ours(service) else "DOWN"
        all_up &= state == "up"
        say(f"{service.name:<13} {state:<5} {service.url} (pid {service.pid}, log {service.log})")
    return all_up
