"""Start, stop and report the local stack.

The docker-compose topology from packages: moto S3 (the DVC remote, MLflow's artifacts and the model
store, s3://predictor-models/versions), MLflow, `dvc repro` + `dvc push`, then
`python -m app.cli models publish --serve`; two API replicas (`python -m app.serve`, each with its own
model cache and START_WORKER=false) and one `python -m app.worker`, sharing one SQLite database in
.stack/ (one machine: SQLite's file locks are enough), behind Debian's nginx on the API's one port;
Prometheus scraping each replica, Alertmanager. moto keeps objects in memory, so the model store, the
MLflow store and the database start empty on every `up`.

Every server runs in its own session (process group), so stopping one also stops its workers.
Each pid is written to `.stack/state.json` the moment the process starts: `down` can then stop
whatever a failed or interrupted `up` left behind. Ports default to the docker-compose ones and
each can be moved with an environment variable (the tests use free ports):

    STACK_S3_PORT=9000  STACK_MLFLOW_PORT=5000  STACK_API_PORT=8000 (nginx, in front of the replicas)
    STACK_API_REPLICA_PORTS=8001,8002 (one replica per port)
    STACK_PROMETHEUS_PORT=9090  STACK_ALERTMANAGER_PORT=9093

Other knobs: STACK_DIR (.stack), STACK_RETRAIN=1 (dvc repro --force), STACK_SCRAPE_INTERVAL (15s),
ALERT_WEBHOOK_URL (where Alertmanager posts), METRICS_TOKEN (random when unset), NGINX_BIN,
PROMETHEUS_BIN, ALERTMANAGER_BIN (the servers, when not on PATH).
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
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from tools.devstack.configs import render_alertmanager, render_nginx, render_prometheus

HOST = "127.0.0.1"
DEFAULT_PORTS = {"s3": 9000, "mlflow": 5000, "api": 8000, "prometheus": 9090, "alertmanager": 9093}
DEFAULT_REPLICA_PORTS = "8001,8002"
REPLICA_PORTS = "STACK_API_REPLICA_PORTS"
# The buckets the compose stack creates in MinIO: the DVC remote (as in .dvc/config), MLflow's
# artifacts and the model store (compose's MODEL_BUCKET default).
DVC_BUCKET = "predictor-dvc"
MLFLOW_BUCKET = "mlflow"
MODEL_BUCKET = "predictor-models"
MODEL_STORE_URL = f"s3://{MODEL_BUCKET}/versions"
# What `python -m app.worker` logs once it polls the queue.
WORKER_READY = "waiting for retraining jobs"
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
    """The paths and ports of one stack, rooted at the project folder it runs from.

    `ports` names each server's port: "api" is nginx's (the API's one port), "api-1", "api-2"... the
    replicas behind it."""

    project: Path
    state_dir: Path
    ports: dict[str, int]

    @classmethod
    def from_env(cls, project: Path | None = None, env: Mapping[str, str] | None = None) -> Stack:
        env = os.environ if env is None else env
        project = (project or Path.cwd()).resolve()
        state_dir = project / env.get("STACK_DIR", ".stack")
        ports = {
            name: int(env.get(f"STACK_{name.upper()}_PORT", default))
            for name, default in DEFAULT_PORTS.items()
        }
        listed = env.get(REPLICA_PORTS) or DEFAULT_REPLICA_PORTS
        try:
            replicas = [int(port) for port in listed.split(",") if port.strip()]
        except ValueError:
            replicas = []
        if not replicas:
            raise StackError(
                f"{REPLICA_PORTS}={listed!r}: one port per replica, e.g. {DEFAULT_REPLICA_PORTS}"
            )
        ports.update({f"api-{number}": port for number, port in enumerate(replicas, 1)})
        return cls(project, state_dir, ports)

    @property
    def replicas(self) -> list[str]:
        return [name for name in self.ports if name.startswith("api-")]

    def url(self, name: str) -> str:
        return f"http://{HOST}:{self.ports[name]}"

    def knob(self, name: str) -> str:
        """The variable that moves this port."""
        return REPLICA_PORTS if name in self.replicas else f"STACK_{name.upper()}_PORT"

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


@dataclass
class Started:
    """A server just spawned, not known to be ready yet."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    url: str  # "" for one without a port (the worker)


def venv_tool(name: str) -> str:
    """A console script of the running interpreter's environment (moto_server, mlflow, dvc)."""
    path = Path(sys.executable).parent / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        raise StackError(f"{name} not found: run `make install` first")
    return found


def system_tool(variable: str, name: str, installer: str = "make obs-tools") -> str:
    # /usr/sbin: where Debian puts nginx, and not always on a user's PATH.
    path = os.environ.get(variable) or shutil.which(name) or shutil.which(name, path="/usr/bin:/usr/sbin")
    if path is None or not Path(path).exists():
        raise StackError(f"{name} not found: `{installer}` installs it (Debian packages)")
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
        cmdline = [
            part.decode(errors="replace")
            for part in Path(f"/proc/{service.pid}/cmdline").read_bytes().split(b"\0")
        ]
    except OSError:
        return True  # no /proc (macOS): trust the pid
    # nginx renames its master process "nginx: master process /usr/sbin/nginx -p ...".
    return any(Path(part).name == service.argv0 for part in cmdline[:3]) or cmdline[0].startswith(
        f"{service.argv0}: "
    )


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
        # A developer's own AWS session or S3 endpoint must not steer the stack's clients away from moto.
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
            env.pop(name, None)
        # dvc runs the stage commands through the shell: the venv's python must come first.
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env.update(S3_CREDENTIALS)
        # boto3's own variable: the model store (and every other S3 client here) talks to moto.
        env["AWS_ENDPOINT_URL"] = self.stack.url("s3")
        env["MLFLOW_S3_ENDPOINT_URL"] = self.stack.url("s3")
        env["MLFLOW_TRACKING_URI"] = self.stack.url("mlflow")
        env["MLFLOW_DISABLE_TELEMETRY"] = "true"
        env["METRICS_TOKEN"] = self.token
        # What `models publish`, the replicas and the worker share, as in docker-compose.
        env["DATABASE_URL"] = f"sqlite:///{self.database}"
        env["MODEL_STORE_URL"] = MODEL_STORE_URL
        return env

    @property
    def database(self) -> Path:
        return self.stack.state_dir / "predictor.db"

    def spawn(
        self, name: str, command: list[str], *, port: str | None, env: dict[str, str] | None = None
    ) -> Started:
        """Start a server (its port named in stack.ports, or None for one without) and record it."""
        if port is not None and not port_free(self.stack.ports[port]):
            raise StackError(
                f"{name}: port {self.stack.ports[port]} is in use (set {self.stack.knob(port)} to move it)"
            )
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
        url = self.stack.url(port) if port is not None else ""
        self.stack._record(Service(name, process.pid, url, str(log), Path(command[0]).name))
        return Started(name, process, log, url)

    def wait(self, started: Started, ready: Callable[[], bool]) -> None:
        name, process, log = started.name, started.process, started.log
        deadline = time.monotonic() + START_TIMEOUT
        while not ready():
            if process.poll() is not None:
                raise StackError(f"{name} exited with {process.returncode}; {log}:\n{tail(log)}")
            if time.monotonic() > deadline:
                raise StackError(f"{name} not ready after {START_TIMEOUT:.0f}s; {log}:\n{tail(log)}")
            time.sleep(0.2)
        where = started.url or "no port"
        say(f"{name:<13} {where} (pid {process.pid}, log {log.relative_to(self.stack.project)})")

    def start(
        self,
        name: str,
        command: list[str],
        ready: str,
        *,
        port: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        """Start a server and wait until `ready` (a path) answers on its port (`port`, or its own name's)."""
        started = self.spawn(name, command, port=port or name, env=env)
        self.wait(started, lambda: http_up(started.url + ready))

    def run(self, name: str, command: list[str], env: dict[str, str] | None = None) -> None:
        """A step that runs to completion (training, dvc push), logged like the servers."""
        log = self.stack.logs / f"{name}.log"
        with log.open("a") as sink:
            sink.write(f"$ {' '.join(command)}\n")
            sink.flush()
            result = subprocess.run(
                command, cwd=self.stack.project, env=env or self.env, stdout=sink, stderr=subprocess.STDOUT
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
        for bucket in (DVC_BUCKET, MLFLOW_BUCKET, MODEL_BUCKET):
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

    def publish(self) -> None:
        """What compose's trainer does after dvc push: models/ into the store, served by every replica."""
        # The store is moto's memory: the database starts empty with it, or its serving pointer (and
        # its jobs) would name versions that are gone. The admin is created again from ADMIN_*.
        for path in self.stack.state_dir.glob(f"{self.database.name}*"):
            path.unlink()
        env = self.env | {
            "MODEL_DIR": str(self.stack.project / "models"),
            "MODEL_CACHE_DIR": str(self.stack.state_dir / "publish" / "cache"),
        }
        self.run("train", [sys.executable, "-m", "app.cli", "models", "publish", "--serve"], env=env)
        say(f"publish       models/ published to {MODEL_STORE_URL} and serving (log .stack/logs/train.log)")

    def api(self) -> None:
        """The replicas and the worker, started together: each migrates or waits for the one that does."""
        started: list[tuple[Started, Callable[[], bool]]] = []
        for name in self.stack.replicas:
            folder = self._scratch(name)
            env = self.env | {
                # No MODEL_DIR of its own, like a container: it serves what the serving pointer names,
                # downloaded from the store into its own cache.
                "MODEL_DIR": str(folder / "models"),
                "MODEL_CACHE_DIR": str(folder / "cache"),
                "START_WORKER": "false",
                # Behind nginx, as in compose: a CSV's answer waits for the whole upload, and the
                # client's address is nginx's X-Forwarded-For (the rate limits count by it).
                "CSV_UPLOAD_FIRST": "true",
                "FORWARDED_ALLOW_IPS": HOST,
            }
            port = str(self.stack.ports[name])
            command = [sys.executable, "-m", "app.serve", "--host", HOST, "--port", port, "--workers", "1"]
            replica = self.spawn(name, command, port=name, env=env)
            started.append((replica, lambda url=f"{replica.url}/ready": http_up(url)))
        folder = self._scratch("worker")
        env = self.env | {"MODEL_CACHE_DIR": str(folder / "cache"), "JOBS_DIR": str(folder / "jobs")}
        worker = self.spawn("worker", [sys.executable, "-m", "app.worker"], port=None, env=env)
        started.append((worker, lambda: WORKER_READY in worker.log.read_text(errors="replace")))
        for server, ready in started:
            self.wait(server, ready)

    def _scratch(self, name: str) -> Path:
        """An empty folder of the stack's for one process (its cache, its jobs), as a container has."""
        folder = self.stack.state_dir / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        return folder

    def lb(self) -> None:
        out = self.stack.state_dir / "nginx"
        config = render_nginx(
            out,
            listen=f"{HOST}:{self.stack.ports['api']}",
            replicas=[f"{HOST}:{self.stack.ports[name]}" for name in self.stack.replicas],
            access_log=self.stack.logs / "lb-access.log",
        )
        nginx = system_tool("NGINX_BIN", "nginx", "make stack-tools")
        # -e: the log nginx writes before it has read the config, otherwise /var/log/nginx.
        self.start("lb", [nginx, "-p", f"{out}/", "-c", str(config), "-e", "stderr"], "/ready", port="api")

    def prometheus(self) -> None:
        out = self.stack.state_dir / "prometheus"
        config = render_prometheus(
            out,
            # Each replica, not nginx: the counters are per replica.
            api=[f"{HOST}:{self.stack.ports[name]}" for name in self.stack.replicas],
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
        steps = (
            runner.s3,
            runner.mlflow,
            runner.train,
            runner.publish,
            runner.api,
            runner.lb,
            runner.prometheus,
            runner.alertmanager,
        )
        for step in steps:
            step()
    except BaseException:
        say("start failed: stopping what was started")
        down(stack)
        raise
    replicas = ", ".join(stack.url(name) for name in stack.replicas)
    say(f"up: API {stack.url('api')}/docs (nginx in front of {replicas}), MLflow {stack.url('mlflow')}")
    say(f"Prometheus {stack.url('prometheus')}, alerts {stack.url('alertmanager')}")
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
        say(
            f"{service.name:<13} {state:<5} {service.url or 'no port'} (pid {service.pid}, log {service.log})"
        )
    return all_up
