"""A small steady load of /predict requests, recorded one by one, for tests that break things under it."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import httpx

from tests.support.models import IRIS_ROW


@dataclass(frozen=True)
class Outcome:
    started: float  # time.monotonic()
    seconds: float
    status: int | None  # None: no answer (refused, reset, timed out)
    error: str | None = None

    @property
    def lost(self) -> bool:
        return self.status != 200


class Load:
    """`clients` threads, each posting one row to /predict, then pausing `pause` seconds, until stopped."""

    def __init__(self, url: str, headers: dict[str, str], clients: int = 2, pause: float = 0.02) -> None:
        self.url = url
        self.headers = headers
        self.pause = pause
        self._outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=15)

    def _client(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    answer = client.post(
                        f"{self.url}/predict", json={"instances": [IRIS_ROW]}, headers=self.headers
                    )
                    outcome = Outcome(started, time.monotonic() - started, answer.status_code)
                except httpx.HTTPError as exc:
                    outcome = Outcome(started, time.monotonic() - started, None, type(exc).__name__)
                with self._lock:
                    self._outcomes.append(outcome)
                self._stop.wait(self.pause)

    def since(self, start: float) -> list[Outcome]:
        """The requests that began at or after `start` (a time.monotonic())."""
        with self._lock:
            return [o for o in self._outcomes if o.started >= start]

    def wait_for(self, count: int, start: float, timeout: float = 30) -> list[Outcome]:
        """At least `count` requests begun since `start`, waiting for them if need be."""
        deadline = time.monotonic() + timeout
        while len(done := self.since(start)) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(done)} of {count} requests in {timeout:.0f}s")
            time.sleep(0.05)
        return done


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]
