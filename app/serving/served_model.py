"""The model answering now: one reference, replaced whole.

Readers take `current` (or `with_candidates()`) once per request and keep that reference: a swap
builds the new Served fully (checksums, session, sample prediction, candidates) before replacing the
one attribute, so requests in flight finish on the old model and none sees a half-loaded one. Swaps
are serialised by `lock`; readers never take it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from app.core.loading import ModelLoadError
from app.observability import metrics
from app.observability.drift import DriftSettings
from app.serving.comparison import Served, load_candidates
from app.serving.predictor import Predictor

log = logging.getLogger("predictor")


class ServedModel:
    def __init__(self, max_rows: int, drift: DriftSettings | None, threads: int = 1) -> None:
        self.max_rows = max_rows
        self.drift = drift
        self.threads = threads  # onnxruntime intra-op threads per model
        self._served: Served | None = None
        self._error: str | None = "not loaded yet"
        self.lock = threading.Lock()
        # Called after every swap (those that remember a version they refused forget it).
        self.on_swap: list[Callable[[], None]] = []

    @property
    def current(self) -> Predictor | None:
        served = self._served
        return served.predictor if served is not None else None

    @property
    def folder(self) -> Path | None:
        """The served model's folder (its reference profile, for GET /monitoring)."""
        served = self._served
        return served.folder if served is not None else None

    @property
    def error(self) -> str | None:
        """Why no model is being served (None while one is)."""
        return None if self._served is not None else self._error

    def not_served(self, why: str) -> None:
        """Why nothing serves yet, for /ready and the 503s (start-up)."""
        self._error = why

    def load(self, folder: Path, candidates: bool = True) -> Served:
        """A model folder loaded and verified (with its candidates, unless deferred): not served yet."""
        predictor = Predictor.load(folder, self.max_rows, self.drift, self.threads)
        if not candidates:
            return Served(predictor, folder)
        return Served(predictor, folder, load_candidates(folder, predictor, self.threads))

    def swap(self, served: Served) -> Predictor:
        """Serve this from now on (the caller holds `lock`)."""
        self._served = served
        self._error = None
        for hook in self.on_swap:
            hook()
        meta = served.predictor.metadata
        metrics.model_served(
            meta.version, meta.name, meta.mlflow_run_id, _timestamp(meta.trained_at), served.predictor.labels
        )
        return served.predictor

    def with_candidates(self) -> Served | None:
        """The served model with its candidates, loading them now if start-up deferred them."""
        served = self._served
        if served is None or served.candidates is not None:
            return served
        with self.lock:
            served = self._served
            if served is None or served.candidates is not None:
                return served  # a swap, or another thread, got there first
            try:
                complete = Served(
                    served.predictor,
                    served.folder,
                    load_candidates(served.folder, served.predictor, self.threads),
                )
            except ModelLoadError as exc:
                log.warning("candidates of %s not served: %s", served.predictor.version, exc)
                complete = Served(served.predictor, served.folder, (), str(exc))
            # The same champion, now with its candidates: no metrics to update.
            self._served = complete
            return complete


def _timestamp(iso: str) -> float:
    try:
        return datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return float("nan")
