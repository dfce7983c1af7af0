"""Graceful shutdown: told to stop (SIGTERM), a replica first says it is not ready while it goes on
serving, so a load balancer or Kubernetes takes it out of rotation before it stops accepting.

For SHUTDOWN_DRAIN_SECONDS after SIGTERM, /ready and /v2/health/ready answer 503 (`draining`) and
every other request is served as before; then the signal reaches uvicorn, which stops accepting,
lets the requests in flight finish within SHUTDOWN_TIMEOUT_SECONDS, runs the lifespan's shutdown and
exits. A second SIGTERM, or Ctrl-C, stops at once. Installed by each serving process (every worker
of `--workers N`) from its lifespan, around the handler uvicorn installed.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

log = logging.getLogger("predictor")


def drain_on_sigterm(draining: threading.Event, seconds: float) -> Callable[[], None]:
    """Wrap the process's SIGTERM handler; returns what puts it back. Does nothing off the main thread
    (an app under a test client), where no signal arrives."""
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous: Any = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        if draining.is_set() or not callable(previous):
            _hand_on(previous, signum, frame)
            return
        draining.set()
        log.info("draining: /ready answers 503 for %g s, then requests in flight finish", seconds)
        timer = threading.Timer(seconds, _hand_on, (previous, signum, frame))
        timer.daemon = True
        timer.start()

    signal.signal(signal.SIGTERM, on_sigterm)

    def restore() -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)

    return restore


def _hand_on(handler: Any, signum: int, frame: FrameType | None) -> None:
    if callable(handler):
        handler(signum, frame)
    elif handler == signal.SIG_DFL:
        raise SystemExit(128 + signum)
