"""The model currently served, and its load-then-swap reload.

Readers take `registry.current` once per request and keep that reference: a reload builds
the new Predictor fully (checksum, unpickle, sample prediction) before swapping a single
attribute, so requests in flight finish on the old model and none sees a half-loaded one.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime
from pathlib import Path

from app.observability import metrics
from app.observability.drift import DriftSettings
from app.serving.predictor import ModelLoadError, Predictor

log = logging.getLogger("predictor")


class ModelRegistry:
    def __init__(self, model_dir: Path, max_rows: int, drift: DriftSettings | None = None) -> None:
        self.model_dir = model_dir
        self.max_rows = max_rows
        self.drift = drift
        self._current: Predictor | None = None
        self._error: str | None = "not loaded yet"
        # Serialises reloads; readers never take it.
        self._lock = threading.Lock()

    @property
    def current(self) -> Predictor | None:
        return self._current

    @property
    def error(self) -> str | None:
        """Why no model is being served (None while one is)."""
        return None if self._current is not None else self._error

    def load_initial(self) -> None:
        """At start-up: a missing or bad model leaves the service up but not ready."""
        try:
            self.reload()
        except ModelLoadError as exc:
            self._error = str(exc)
            log.warning("model not loaded: %s", exc)

    def reload(self) -> Predictor:
        """Load and verify the model directory, then swap; raises ModelLoadError and keeps the old one."""
        with self._lock:
            new = Predictor.load(self.model_dir, self.max_rows, self.drift)
            self._current = new
            self._error = None
            meta = new.metadata
            metrics.model_served(
                meta.version, meta.name, meta.mlflow_run_id, _timestamp(meta.trained_at), new.labels
            )
        return new


def _timestamp(iso: str) -> float:
    try:
        return datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return float("nan")
