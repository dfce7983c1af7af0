"""What one model version answered in one role (champion or canary) lately: the canary's guards
read it, and the predictor_model_* metrics count it.

Recorded only while a canary runs: the request-context middleware adds each scoring request's
latency and whether it ended in a 5xx (app/observability/middleware.py calls the request's
`answered_by`: `answered`, or `answered_untimed` for a CSV file, whose time is its size's), and the
data plane each model call that failed. The guard's thread reads the
window; an append takes a lock for a fraction of a microsecond, never a wait on anything slow.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

import numpy as np

from app.core.canary_guards import WindowFigures
from app.observability import metrics

# Requests a window holds at most, whatever its length: 2,000 a second for 100 s.
MAX_ENTRIES = 200_000


class RoleOutcomes:
    def __init__(
        self, version: str, role: str, seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.version = version
        self.role = role
        self.seconds = seconds
        self._clock = clock
        self._answered: deque[tuple[float, float]] = deque(maxlen=MAX_ENTRIES)  # (at, seconds)
        self._errors: deque[float] = deque(maxlen=MAX_ENTRIES)  # when
        self._untimed: deque[float] = deque(maxlen=MAX_ENTRIES)  # when: requests counted, not timed
        self._lock = threading.Lock()
        self._requests = metrics.MODEL_REQUESTS.labels(model_version=version, role=role)
        self._failed = metrics.MODEL_ERRORS.labels(model_version=version, role=role)
        self._latency = metrics.MODEL_REQUEST_SECONDS.labels(model_version=version, role=role)

    def answered(self, seconds: float, server_error: bool) -> None:
        """One request this version answered (or failed to: a 5xx), and how long it took."""
        now = self._clock()
        with self._lock:
            self._answered.append((now, seconds))
            if server_error:
                self._errors.append(now)
        self._requests.inc()
        self._latency.observe(seconds)
        if server_error:
            self._failed.inc()

    def answered_untimed(self, seconds: float, server_error: bool) -> None:
        """A request whose time is its size's, not the model's (a CSV file): counted, not timed."""
        now = self._clock()
        with self._lock:
            self._untimed.append(now)
            if server_error:
                self._errors.append(now)
        self._requests.inc()
        if server_error:
            self._failed.inc()

    def model_failed(self) -> None:
        """A model call of this version that found rows it has no answer for."""
        with self._lock:
            self._errors.append(self._clock())
        self._failed.inc()

    def figures(self) -> WindowFigures:
        """The window as of now (older entries are dropped)."""
        since = self._clock() - self.seconds
        with self._lock:
            while self._answered and self._answered[0][0] < since:
                self._answered.popleft()
            for times in (self._errors, self._untimed):
                while times and times[0] < since:
                    times.popleft()
            latencies = np.fromiter((s for _, s in self._answered), dtype=float, count=len(self._answered))
            errors, untimed = len(self._errors), len(self._untimed)
        requests = len(latencies) + untimed
        p99 = float(np.quantile(latencies, 0.99)) if len(latencies) else None
        return WindowFigures(requests, errors, p99)
