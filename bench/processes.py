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


@dataclass(frozen=True)
class ProcessInfo:
    """The fields of /proc/<pid>/stat the bench reads."""

    ppid: int
    pgid: int
    cpu_ticks: int  # utime + stime
    start_ticks: int  # since boot: with the pid, names one process even if the pid is reused


def parse_stat(text: str) -> ProcessInfo:
    # The fields after the command name, which may itself hold spaces and parentheses.
    fields = text[text.rindex(")") + 2 :].split()
    return ProcessInfo(
        ppid=int(fields[1]),
        pgid=int(fields[2]),
        cpu_ticks=int(fields[11]) + int(fields[12]),
        start_ticks=int(fields[19]),
    )


def process_table() -> dict[int, ProcessInfo]:
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            table[int(stat.parent.name)] = parse_stat(stat.read_text())
        except (OSError, ValueError, IndexError):
            continue  # the process ended meanwhile
    return table


def server_tree(table: dict[int, ProcessInfo], leader: int) -> set[int]:
    """The server's processes: its process group (start_new_session made the leader's pid its id)
    and every descendant of those, in whatever group. BentoML's arbiter starts each worker in a
    session of its own, out of the group, yet still its child."""
    found = {pid for pid, info in table.items() if info.pgid == leader}
    children: dict[int, list[int]] = {}
    for pid, info in table.items():
        children.setdefault(info.ppid, []).append(pid)
    stack = list(found)
    while stack:
        for child in children.get(stack.pop(), ()):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path
    started_at: float  # time.monotonic() just before the process was created

    def pids(self) -> list[int]:
        """Every live process of the server: uvicorn and its workers, BentoML's arbiter and its."""
        return sorted(server_tree(process_table(), self.process.pid))

    def worker_rss_mib(self) -> float:
        """The largest resident set among the server's processes: one worker with its model."""
        largest = 0
        for pid in self.pids():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("VmRSS:"):
                    largest = max(largest, int(line.split()[1]))
        return largest / 1024

    def cpu_seconds(self) -> float:
        """CPU time (user + system) used so far by every live process of the server: uvicorn and
        its workers. Unlike throughput, it hardly moves with the machine's other load."""
        table = process_table()
        ticks = sum(table[pid].cpu_ticks for pid in server_tree(table, self.process.pid))
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
    """SIGTERM to the process group, SIGKILL after `grace_s` seconds to whatever of the server is left.

    The server's processes are listed first: a descendant in a session of its own (BentoML's
    workers) is out of the group, and once its parent is gone nothing links it to the server.
    """
    table = process_table()
    tree = {pid: table[pid].start_ticks for pid in server_tree(table, process.pid)}
    deadline = time.monotonic() + grace_s
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace_s)
    # The leader may be gone while its children are not (uvicorn's workers, mlflow's uvicorn).
    while _survivors(tree) and time.monotonic() < deadline:
        time.sleep(POLL_INTERVAL_S * 5)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    for pid in _survivors(tree):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.wait()
    # SIGKILL takes effect when the process next runs: wait until it has.
    deadline = time.monotonic() + 5
    while _survivors(tree) and time.monotonic() < deadline:
        time.sleep(POLL_INTERVAL_S)


def _survivors(tree: dict[int, int]) -> list[int]:
    """The processes of `tree` (pid: start time) still alive: same pid, same start, not a zombie."""
    alive = []
    for pid, start_ticks in tree.items():
        try:
            text = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if parse_stat(text).start_ticks == start_ticks and text[text.rindex(")") + 2] != "Z":
            alive.append(pid)
    return alive


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


def first_prediction(server: Server, path: str, body: bytes, timeout_s: float = 120) -> float:
    """POST `body` to `path` until it answers 200 (a peer, the ceiling): the cold start in seconds."""

    def attempt() -> bool:
        status, answer = post(f"{server.base_url}{path}", body, {"Content-Type": "application/json"})
        if status in (400, 415, 422):
            raise BenchError(f"{server.name}: POST {path} answered {status}: {answer[:300]!r}")
        return status == 200

    return wait_for(server, attempt, timeout_s, f"successful {path}")
