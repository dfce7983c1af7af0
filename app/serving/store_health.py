"""Whether the model store answered this replica's last look: /ready, model_store_up, model_store_errors."""

from __future__ import annotations

from app.core.outage import Outage
from app.observability import metrics


class StoreHealth:
    def __init__(self, url: str) -> None:
        self._outage = Outage(
            f"model store {url} unreachable",
            f"model store {url} answers again",
            lambda up: metrics.MODEL_STORE_UP.set(1 if up else 0),
        )

    @property
    def error(self) -> str | None:
        """Why the store could not be read at the last look (None: it answered)."""
        return self._outage.error

    def failed(self, exc: Exception) -> None:
        metrics.MODEL_STORE_ERRORS.inc()
        self._outage.failed(str(exc))

    def answered(self) -> None:
        self._outage.answered()
