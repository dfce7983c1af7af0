"""The servers under test: started in their own process group, timed to a first prediction, always stopped."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.harness import BenchError

POLL_INTERVAL_S = 0.02


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path
    started_at: float  # time.monotonic() just before the process was created

    def _group_stats(self) -> list[str]:
        """/proc/<pid>/stat of every live process of the server's group: uvicorn and its workers."""
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                text = stat.read_text()
            except OSError:
                continue  # the process ended meanwhile
            # The fields after the command name, which may itself hold spaces and parentheses.
            if int(text[text.rindex(")") + 2 :].split()[2]) == self.process.pid:  # start_new_session
                found.append(stat.parent.name)
        return found

    def worker_rss_mib(self) -> float:
        """The largest resident set among the server's processes: one worker with its model."""
        largest = 0
        for pid in self._group_stats():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("VmRSS:"):
                    largest = max(largest, int(line.split()[1]))
        return largest / 1024

    def cpu_seconds(self) -> float:
        """CPU time (user + system) used so far by every live process of the server's group:
        uvicorn and its workers. Unlike throughput, it hardly moves with the machine's other load."""
        ticks = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                text = stat.read_text()
            except OSError:
                continue  # the process ended meanwhile
            # The fields after the command name, which may itself hold spaces and parentheses.
            fields = text[text.rindex(")") + 2 :].split()
            if int(fields[2]) == self.process.pid:  # process group: start_new_session made it the pid
                ticks += int(fields[11]) + int(fields[12])  # utime, stime
        return ticks / os.sysconf("SC_CLK_TCK")

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise BenchError(
                f"{self.name} exited with code {self.process.returncode}: see {self.log_path}\n"
                + tail(self.log_path)
            )


@dataclass
class Processes:
    """Every process the benchmark started; stop_all() ends them, whatever happened."""

    running: list[Server] = field(default_factory=list)

    def start(
        self, name: str, command: list[str], *, port: int, env: dict[str, str], cwd: Path, log: Path
    ) -> Server:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as sink:
            started_at = time.monotonic()
            # A session of its own: `mlflow models serve` and uvicorn's workers are children,
            # and stopping the group stops them too. Ctrl-C reaches only this driver, which
            # then stops the group itself.
            process = subprocess.Popen(
                command, cwd=cwd, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
            )
        server = Server(name, process, f"http://127.0.0.1:{port}", log, started_at)
        self.running.append(server)
        return server

    def stop(self, server: Server) -> None:
        stop_group(server.process)
        if server in self.running:
            self.running.remove(server)
        trim_log(server.log_path)

    def stop_all(self) -> None:
        for server in list(reversed(self.running)):
            self.stop(server)


def stop_group(process: subprocess.Popen[bytes], grace_s: float = 10) -> None:
    """SIGTERM to the process group, SIGKILL after `grace_s` seconds if anything is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace_s)
    # The leader may be gone while its children are not (uvicorn's workers, mlflow's uvicorn).
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def trim_log(path: Path, keep: int = 200, limit_bytes: int = 1 << 20) -> None:
    """Our service logs a line per request: keep the start and the end of a long log only."""
    try:
        if path.stat().st_size <= limit_bytes:
            return
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return
    cut = len(lines) - 2 * keep
    if cut > 0:
        kept = [*lines[:keep], f"... {cut} lines cut by bench ...", *lines[-keep:]]
        path.write_text("\n".join(kept) + "\n")


# --- HTTP, for start-up and cold-start timing (the load itself is wrk's) ------------------


def post(url: str, data: bytes, headers: dict[str, str], timeout: float = 5) -> tuple[int, bytes]:
    """(status, body); raises OSError when nothing answers yet."""
    if not url.startswith("http://127.0.0.1:"):
        raise ValueError(f"the benchmark talks to 127.0.0.1 only, not {url}")
    request = urllib.request.Request(url, data=data, headers=headers, method="POST")  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (127.0.0.1 only, checked above)
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_for(server: Server, attempt: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Retry `attempt` until it returns True; the seconds since the server's process was created."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        server.check_alive()
        try:
            if attempt():
                return time.monotonic() - server.started_at
        except (OSError, ConnectionError):
            pass  # not listening yet
        time.sleep(POLL_INTERVAL_S)
    raise BenchError(
        f"{server.name}: no {what} after {timeout_s:.0f} s: see {server.log_path}\n{tail(server.log_path)}"
    )


def first_prediction_ours(
    server: Server, username: str, password: str, body: bytes, timeout_s: float = 60
) -> tuple[str, float]:
    """Token, then /predict, as a client would: returns the token and the cold start in seconds."""
    token: list[str] = []
    form = urllib.parse.urlencode({"username": username, "password": password}).encode()

    def attempt() -> bool:
        if not token:
            status, answer = post(
                f"{server.base_url}/token", form, {"Content-Type": "application/x-www-form-urlencoded"}
            )
            if status in (401, 403, 422, 429):
                raise BenchError(f"{server.name}: POST /token answered {status}: {answer[:300]!r}")
            if status != 200:
                return False  # starting up
            token.append(json.loads(answer)["access_token"])
        status, answer = post(
            f"{server.base_url}/predict",
            body,
            {"Content-Type": "application/json", "Authorization": f"Bearer {token[0]}"},
        )
        if status in (401, 403, 422):
            raise BenchError(f"{server.name}: POST /predict answered {status}: {answer[:300]!r}")
        return status == 200

    seconds = wait_for(server, attempt, timeout_s, "successful /predict")
    return token[0], seconds


def first_prediction_mlflow(server: Server, body: bytes, timeout_s: float = 120) -> float:
    def attempt() -> bool:
        status, answer = post(f"{server.base_url}/invocations", body, {"Content-Type": "application/json"})
        if status in (400, 415, 422):
            raise BenchError(f"{server.name}: POST /invocations answered {status}: {answer[:300]!r}")
        return status == 200

    return wait_for(server, attempt, timeout_s, "successful /invocations")
