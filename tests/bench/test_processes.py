"""The bench's view of a server's processes: the CPU time it reads from /proc."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from bench.processes import Server, stop_group

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
