"""A task run every few seconds from a thread of its own, that can be stopped and waited for.

The replica's background loops (following the serving pointer, reading revocations, refreshing live
quality) are each one of these: started by the service container, stopped and joined before what they
use (the database) is closed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger("predictor")


class Periodic:
    def __init__(
        self, name: str, interval: float, task: Callable[[], None], *, at_start: bool = False
    ) -> None:
        self.name = name
        self.interval = interval
        self.task = task
        self.at_start = at_start  # run once as soon as started, rather than after the first interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Periodic:
        if self._thread is not None:
            raise RuntimeError(f"{self.name} already started")
        # A daemon thread: an interpreter that exits without stop() (a crash) does not hang on it.
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the loop to end and wait for the task in progress, if any, to finish."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("%s still running %.0f s after it was asked to stop", self.name, timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _loop(self) -> None:
        if self.at_start:
            self._run_once()
        while not self._stop.wait(self.interval):
            self._run_once()

    def _run_once(self) -> None:
        try:
            self.task()
        except Exception:  # the task reports what it expects; anything else is a bug, said and survived
            log.exception("%s failed", self.name)
