"""A server process's memory, read from /proc: its resident set now, and its peak since a reset."""

from __future__ import annotations

from pathlib import Path


def status_bytes(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def reset_peak_rss(pid: int) -> int:
    """Start the process's peak RSS (VmHWM) again from its current RSS, so start-up peaks do not hide
    what a test does next; returns the new baseline. Without the right to, the peak so far is it."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return status_bytes(pid, "VmHWM")
    return status_bytes(pid, "VmRSS")
