"""The model currently served, its load-then-swap reload, and the versions it can switch between.

Readers take `serving.current` (or `serving.with_candidates()`, with the candidates) once per
request and keep that reference: a reload, promotion or rollback builds the new Predictor fully
(checksum, unpickle, sample prediction, candidates) before swapping a single attribute, so requests
in flight finish on the old model and none sees a half-loaded one.

MODEL_DIR is the pipeline's latest output (models/, which `dvc repro` replaces wholesale). The
serving records each MODEL_DIR model in the versions store (VERSIONS_DIR) as a version and
serves from the store: the version in its serving.json, which promotions and rollbacks move and
which survives restarts. At start-up serving.json wins while MODEL_DIR still holds the version it
held when serving.json was written; once the pipeline has written another one (a fresh `make train`
is meant to be served), MODEL_DIR's model is served and recorded. Every worker process polls
serving.json, so a rollback handled by one worker reaches the others within WATCH_SECONDS.

A promotion or rollback swaps the champion with its candidates (for /predict?compare=true) loaded
and verified. Only at start-up do the candidates follow the champion, from a background thread:
they would otherwise add their unpickling (and sklearn imports) to the cold start.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from app.core.artifacts import ModelMetadata
from app.core.loading import ModelLoadError
from app.core.versions import UnknownVersion, VersionRecord, VersionStore, now
from app.observability import metrics
from app.observability.drift import DriftSettings
from app.serving.comparison import Served, load_candidates
from app.serving.predictor import Predictor

log = logging.getLogger("predictor")

WATCH_SECONDS = 2.0


class ServingState:
    def __init__(
        self,
        model_dir: Path,
        max_rows: int,
        drift: DriftSettings | None,
        versions_dir: Path,
        threads: int = 1,
    ) -> None:
        self.model_dir = model_dir
        self.threads = threads  # onnxruntime intra-op threads per model
        self.max_rows = max_rows
        self.drift = drift
        self.store = VersionStore(versions_dir)
        self._served: Served | None = None
        self._error: str | None = "not loaded yet"
        # Serialises swaps; readers never take it.
        self._lock = threading.Lock()

    @property
    def current(self) -> Predictor | None:
        served = self._served
        return served.predictor if served is not None else None

    @property
    def error(self) -> str | None:
        """Why no model is being served (None while one is)."""
        return None if self._served is not None else self._error

    def load_initial(self) -> None:
        """At start-up: a missing or bad model leaves the service up but not ready.

        The champion serves first; its candidates load in a background thread (see with_candidates)."""
        self._load_initial()
        if self._served is not None:
            threading.Thread(target=self.with_candidates, name="candidates", daemon=True).start()

    def _load_initial(self) -> None:
        pointer = self.store.serving()
        if pointer and self.store.exists(pointer.version):
            pipeline_version = self._model_dir_version()
            if pipeline_version is None or pipeline_version == pointer.model_dir_version:
                try:
                    self.serve_version(pointer.version, candidates=False)
                    return
                except ModelLoadError as exc:
                    log.warning(
                        "serving version %s not loaded (%s): trying %s", pointer.version, exc, self.model_dir
                    )
        try:
            self.reload(candidates=False)
        except ModelLoadError as exc:
            self._error = str(exc)
            log.warning("model not loaded: %s", exc)

    def _load(self, folder: Path, candidates: bool = True) -> Served:
        predictor = Predictor.load(folder, self.max_rows, self.drift, self.threads)
        if not candidates:
            return Served(predictor, folder)
        return Served(predictor, folder, load_candidates(folder, predictor, self.threads))

    def with_candidates(self) -> Served | None:
        """The served model with its candidates, loading them now if start-up deferred them."""
        served = self._served
        if served is None or served.candidates is not None:
            return served
        with self._lock:
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

    def _swap(self, served: Served) -> Predictor:
        self._served = served
        self._error = None
        meta = served.predictor.metadata
        metrics.model_served(
            meta.version, meta.name, meta.mlflow_run_id, _timestamp(meta.trained_at), served.predictor.labels
        )
        return served.predictor

    def reload(self, candidates: bool = True) -> Predictor:
        """Load and verify MODEL_DIR, record it as a version, then swap.

        Raises ModelLoadError and keeps the old model serving."""
        with self._lock:
            new = self._load(self.model_dir, candidates)
            version = new.predictor.version
            try:
                self.store.add(self.model_dir, VersionRecord(origin="pipeline", recorded_at=now()))
                self.store.set_serving(version, f"loaded from {self.model_dir}", version)
            except (OSError, UnknownVersion) as exc:
                # Serving goes on; only the history misses this version.
                log.warning("version %s not recorded in %s: %s", version, self.store.root, exc)
            return self._swap(new)

    def serve_version(self, version: str, reason: str | None = None, candidates: bool = True) -> Predictor:
        """Serve a stored version (promotion, rollback); UnknownVersion or ModelLoadError keep the old one.

        `reason` moves serving.json too; without it (start-up, another worker's change) it is only followed.
        """
        if not self.store.exists(version):
            raise UnknownVersion(version)
        with self._lock:
            new = self._load(self.store.path(version), candidates)
            if reason is not None:
                self.store.set_serving(version, reason, self._model_dir_version())
            return self._swap(new)

    def _model_dir_version(self) -> str | None:
        try:
            return ModelMetadata.read(self.model_dir).version
        except (OSError, ValueError):
            return None

    def sync(self) -> None:
        """Follow serving.json when another process (worker) moved it."""
        pointer = self.store.serving()
        current = self.current
        if pointer is None or (current is not None and current.version == pointer.version):
            return
        try:
            self.serve_version(pointer.version)
            log.info("now serving version %s (%s)", pointer.version, pointer.reason)
        except (ModelLoadError, UnknownVersion) as exc:
            log.warning("serving.json names version %s, which cannot be served: %s", pointer.version, exc)

    def watch(self, interval: float = WATCH_SECONDS) -> Callable[[], None]:
        """Poll serving.json in a daemon thread; returns the function that stops it."""
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(interval):
                try:
                    self.sync()
                except Exception:
                    log.exception("version watch failed")

        threading.Thread(target=loop, name="version-watch", daemon=True).start()
        return stop.set


def _timestamp(iso: str) -> float:
    try:
        return datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return float("nan")
