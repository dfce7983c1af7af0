"""The bench's view of a server's processes: which are its, the CPU time it reads from /proc, the stop."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from bench.processes import ProcessInfo, Server, parse_stat, server_tree, stop_group

# A parent and its child (as uvicorn and a worker) each spin 0.4 s of CPU, then idle.
SPIN = "import time\nend = time.process_time() + 0.4\nwhile time.process_time() < end: pass\n"
PARENT = (
    "import subprocess, sys, time\n"
    f"child = subprocess.Popen([sys.executable, '-c', {SPIN + 'time.sleep(60)'!r}])\n"
    f"{SPIN}"
    "time.sleep(60)\n"
)


def test_cpu_seconds_counts_every_process_of_the_servers_group(tmp_path: Path) -> None:
    process = subprocess.Popen([sys.executable, "-c", PARENT], start_new_session=True)
    server = Server("spin", process, "http://127.0.0.1:1", tmp_path / "log", time.monotonic())
    try:
        deadline = time.monotonic() + 30
        while server.cpu_seconds() < 0.8 and time.monotonic() < deadline:
            time.sleep(0.05)
        # The parent alone cannot reach 0.8 s: the child's time is counted too.
        assert 0.8 <= server.cpu_seconds() < 5
    finally:
        stop_group(process)


def test_server_tree_is_the_group_and_every_descendant_whatever_its_group():
    table = {
        100: ProcessInfo(ppid=1, pgid=100, cpu_ticks=5, start_ticks=1),  # the server, its group's leader
        101: ProcessInfo(ppid=100, pgid=100, cpu_ticks=5, start_ticks=2),  # a uvicorn worker
        102: ProcessInfo(ppid=100, pgid=102, cpu_ticks=5, start_ticks=3),  # BentoML's worker: own session
        103: ProcessInfo(ppid=102, pgid=102, cpu_ticks=5, start_ticks=4),  # ... and its child
        104: ProcessInfo(ppid=1, pgid=100, cpu_ticks=5, start_ticks=5),  # orphaned, still in the group
        200: ProcessInfo(ppid=1, pgid=200, cpu_ticks=5, start_ticks=6),  # someone else
        201: ProcessInfo(ppid=200, pgid=200, cpu_ticks=5, start_ticks=7),
    }
    assert server_tree(table, 100) == {100, 101, 102, 103, 104}
    assert server_tree(table, 999) == set()


def test_parse_stat_reads_a_command_name_with_spaces_and_parentheses():
    text = "4242 (py (worker) 1) S 17 4242 4242 0 -1 4194560 1 0 0 0 30 12 0 0 20 0 1 0 987 0 0\n"
    assert parse_stat(text) == ProcessInfo(ppid=17, pgid=4242, cpu_ticks=42, start_ticks=987)


# A parent that starts a child in a session of its own (as BentoML's arbiter starts its workers),
# prints the child's pid, then sleeps; SIGTERM ends the parent alone.
ESCAPING_PARENT = (
    "import subprocess, sys, time\n"
    "sleeper = [sys.executable, '-c', 'import time; time.sleep(60)']\n"
    "child = subprocess.Popen(sleeper, start_new_session=True)\n"
    "print(child.pid, flush=True)\n"
    "time.sleep(60)\n"
)


def test_stop_group_also_stops_a_child_that_left_the_group(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", ESCAPING_PARENT], start_new_session=True, stdout=subprocess.PIPE
    )
    assert process.stdout is not None
    child = int(process.stdout.readline())
    server = Server("escaping", process, "http://127.0.0.1:1", tmp_path / "log", time.monotonic())
    try:
        assert child in server.pids()
    finally:
        stop_group(process, grace_s=1)
    stat = Path(f"/proc/{child}/stat")
    # Gone, or a zombie until init reaps it.
    assert not stat.exists() or stat.read_text().split(") ")[1].startswith("Z")
