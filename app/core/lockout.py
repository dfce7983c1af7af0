"""Login throttling: too many failed logins for one username lock it out for a while.

This one counts in the process's memory: the rule for a single process. The service counts in the
users database instead (app/db/throttle.py, the same interface), so every worker and replica
shares one count.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Protocol


class Throttle(Protocol):
    def retry_after(self, username: str) -> int | None: ...
    def record_failure(self, username: str) -> None: ...
    def reset(self, username: str) -> None: ...


class LoginThrottle:
    def __init__(
        self,
        max_failures: int = 5,
        window_seconds: float = 15 * 60,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_usernames: int = 100_000,
    ) -> None:
        self.max_failures = max_failures
        self.window_seconds = window_seconds
        self._clock = clock
        # Bounded, so a flood of made-up usernames cannot grow memory without limit.
        self._max_usernames = max_usernames
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _key(username: str) -> str:
        return username.casefold()

    def _recent(self, key: str, now: float) -> deque[float] | None:
        failures = self._failures.get(key)
        if failures is None:
            return None
        while failures and failures[0] <= now - self.window_seconds:
            failures.popleft()
        if not failures:
            del self._failures[key]
            return None
        return failures

    def retry_after(self, username: str) -> int | None:
        """Seconds until this username may try again, or None when it is not locked out."""
        with self._lock:
            now = self._clock()
            failures = self._recent(self._key(username), now)
            if failures is None or len(failures) < self.max_failures:
                return None
            # Locked until enough failures age out of the window to drop below the limit.
            released_at = failures[-self.max_failures] + self.window_seconds
            return max(1, math.ceil(released_at - now))

    def record_failure(self, username: str) -> None:
        with self._lock:
            now = self._clock()
            key = self._key(username)
            failures = self._recent(key, now)
            if failures is None:
                failures = self._failures[key] = deque(maxlen=self.max_failures)
                while len(self._failures) > self._max_usernames:
                    self._failures.popitem(last=False)
            failures.append(now)

    def reset(self, username: str) -> None:
        with self._lock:
            self._failures.pop(self._key(username), None)
