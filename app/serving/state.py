"""The model currently served, its load-then-swap reload, and the versions it can switch between.

Readers take `serving.current` (or `serving.with_candidates()`, with the candidates) once per
request and keep that reference: a reload, promotion or rollback builds the new Predictor fully
(checksums, session, sample prediction, candidates) before swapping a single attribute, so
requests in flight finish on the old model and none sees a half-loaded one.

Every replica is stateless: the versions live in the model store (MODEL_STORE_URL, a folder or S3)
and which one serves is the serving pointer in the database. A replica downloads the version the
pointer names into its cache, verifies every checksum, loads it, and follows the pointer every
WATCH_SECONDS, so a rollback or promotion through any replica reaches all of them.

MODEL_DIR is the pipeline's latest output (models/, which `dvc repro` replaces wholesale). Where a
replica has one (`make run` on one machine), a model there that the pointer has not seen yet is
published to the store and served at start-up: a fresh `make train` is meant to be served. A
replica without one (a pod) serves what the pointer names.

A promotion or rollback swaps the champion with its candidates (for /predict?compare=true) loaded
and verified. Only at start-up do the candidates follow the champion, from a background thread:
they would otherwise add to the cold start.

The pointer also names the shadow challenger, if any (app/serving/shadow.py): every replica loads it
and hands it the traffic its Tracing sees, or drops it, within WATCH_SECONDS of POST /model/shadow
or DELETE /model/shadow through any replica. A change of champion leaves it running; a shadow that
became the champion (promoted, rolled back to) stops scoring.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from app.adapters.model_store import ModelStore
from app.core.artifacts import ModelMetadata
from app.core.loading import ModelLoadError
from app.core.outage import Outage
from app.core.periodic import Periodic
from app.core.serving_pointer import PointerStore, ServingPointer
from app.core.versions import CacheFull, StoreUnavailable, UnknownVersion, VersionRecord, now
from app.observability import metrics
from app.observability.drift import DriftSettings
from app.serving.comparison import Served, load_candidates
from app.serving.predictor import Predictor
from app.serving.shadow import ShadowRefused, ShadowRunner, mismatch
from app.serving.tracing import Tracing

log = logging.getLogger("predictor")

WATCH_SECONDS = 2.0


class ServingState:
    def __init__(
        self,
        model_dir: Path,
        max_rows: int,
        drift: DriftSettings | None,
        store: ModelStore,
        pointer: PointerStore,
        threads: int = 1,
        shadow_queue_batches: int = 256,
    ) -> None:
        self.model_dir = model_dir
        self.threads = threads  # onnxruntime intra-op threads per model
        self.max_rows = max_rows
        self.drift = drift
        self.store = store
        self.pointer = pointer
        self._served: Served | None = None
        self._error: str | None = "not loaded yet"
        self.store_health = Outage(
            f"model store {store.url} unreachable",
            f"model store {store.url} answers again",
            lambda up: metrics.MODEL_STORE_UP.set(1 if up else 0),
        )
        # A version the pointer names that failed verification: not retried at every watch tick.
        self._refused: str | None = None
        self.pointer_health = Outage(
            "serving pointer not read, still serving what this replica has", "serving pointer read again"
        )
        # A version the pointer names that the store has not given yet: logged once, retried every tick.
        self._awaited: str | None = None
        # Serialises swaps; readers never take it.
        self._lock = threading.Lock()
        # The shadow challenger: it gets traffic once trace_with() gave it the requests' Tracing.
        self.shadow_queue_batches = shadow_queue_batches
        self.tracing: Tracing | None = None
        self._shadow: ShadowRunner | None = None
        self._shadow_lock = threading.Lock()  # serialises shadow swaps, as _lock does the champion's
        # When this replica last moved the shadow itself: a pointer read before then is stale.
        self._shadow_moved = 0.0
        # A shadow version the pointer names that cannot shadow: not retried at every watch tick.
        self._shadow_refused: str | None = None
        self._shadow_awaited: str | None = None  # not fetched yet: logged once, retried every tick

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

    def load_initial(self) -> None:
        """At start-up: a missing or bad model leaves the service up but not ready.

        The champion serves first; its candidates load in a background thread (see with_candidates)."""
        self._load_initial()
        if self._served is not None:
            threading.Thread(target=self.with_candidates, name="candidates", daemon=True).start()

    def _load_initial(self) -> None:
        try:
            pointer = self.pointer.get()
        except Exception as exc:  # the database: /ready says so; the watch retries
            log.warning("serving pointer not read: %s", exc)
            pointer = None
        local = self._model_dir_version()
        if pointer is not None and (local is None or local == pointer.model_dir_version):
            try:
                self.serve_version(pointer.version, candidates=False)
                return
            except (ModelLoadError, UnknownVersion, StoreUnavailable, CacheFull) as exc:
                self._error = f"version {pointer.version} not served: {exc}"
                log.warning("serving version %s not loaded: %s", pointer.version, exc)
                if isinstance(exc, ModelLoadError | UnknownVersion):
                    self._refused = pointer.version
        if local is None:
            if pointer is None:
                self._error = (
                    f"no model: {self.model_dir} holds none (train a model first: make train) and no "
                    "version was published to serve (python -m app.cli models publish --serve)"
                )
            return
        try:
            self.reload(candidates=False, published=False)
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
        self._refused = None
        self._awaited = None
        self._shadow_refused = None  # one that did not fit the old champion may fit this one
        meta = served.predictor.metadata
        metrics.model_served(
            meta.version, meta.name, meta.mlflow_run_id, _timestamp(meta.trained_at), served.predictor.labels
        )
        return served.predictor

    def reload(self, candidates: bool = True, published: bool = True) -> Predictor:
        """Load and verify MODEL_DIR, publish it to the store, point every replica at it, then swap.

        Raises ModelLoadError, or StoreUnavailable when `published` (an admin's reload: serving a
        version no other replica can fetch would split them), and keeps the old model serving. At
        start-up (`published` False) a store that does not answer is logged and the model served."""
        with self._lock:
            new = self._load(self.model_dir, candidates)
            version = new.predictor.version
            try:
                self.store.publish(self.model_dir, VersionRecord(origin="pipeline", recorded_at=now()))
                self._store_answered()
            except StoreUnavailable as exc:
                self._store_failed(exc)
                if published:
                    raise
                # Serving goes on here; other replicas cannot have it until it is published.
                log.warning("version %s not published to %s: %s", version, self.store.url, exc)
                return self._swap(new)
            try:
                self.pointer.set(
                    ServingPointer(
                        version=version,
                        since=now(),
                        reason=f"loaded from {self.model_dir}",
                        model_dir_version=version,
                    )
                )
            except Exception as exc:  # the database: this replica serves it, the others keep theirs
                log.warning("version %s published but not pointed at: %s", version, exc)
            return self._swap(new)

    def serve_version(self, version: str, reason: str | None = None, candidates: bool = True) -> Predictor:
        """Serve a stored version (promotion, rollback). The old one keeps serving on UnknownVersion,
        StoreUnavailable, CacheFull or ModelLoadError (a checksum that does not match, a broken model).

        `reason` moves the serving pointer too; without it (start-up, following the pointer) it is
        only followed."""
        try:
            folder = self.store.fetch(version)
        except StoreUnavailable as exc:
            self._store_failed(exc)
            raise
        except CacheFull:
            metrics.MODEL_CACHE_FULL.set(1)
            raise
        self._store_answered()
        metrics.MODEL_CACHE_FULL.set(0)
        with self._lock:
            new = self._load(folder, candidates)
            if reason is not None:
                self.pointer.set(
                    ServingPointer(
                        version=version,
                        since=now(),
                        reason=reason,
                        model_dir_version=self._model_dir_version(),
                    )
                )
            return self._swap(new)

    def _model_dir_version(self) -> str | None:
        try:
            return ModelMetadata.read(self.model_dir).version
        except (OSError, ValueError):
            return None

    @property
    def store_error(self) -> str | None:
        """Why the store could not be read at the last look (None: it answered)."""
        return self.store_health.error

    def _store_failed(self, exc: Exception) -> None:
        metrics.MODEL_STORE_ERRORS.inc()
        self.store_health.failed(str(exc))

    def _store_answered(self) -> None:
        self.store_health.answered()

    def sync(self) -> None:
        """Follow the serving pointer when another replica, the worker or `models publish` moved it."""
        read_at = time.monotonic()
        try:
            pointer = self.pointer.get()
        except Exception as exc:  # the database did not answer: keep serving, look again next tick
            self.pointer_health.failed(exc)
            return
        self.pointer_health.answered()
        self._follow_champion(pointer)
        self._follow_shadow(pointer, read_at)

    def _follow_champion(self, pointer: ServingPointer | None) -> None:
        current = self.current
        if pointer is None or (current is not None and current.version == pointer.version):
            metrics.MODEL_CACHE_FULL.set(0)  # nothing awaited: a refusal the admin was told of
            self.check_store()
            return
        if pointer.version == self._refused:
            return
        try:
            self.serve_version(pointer.version)
            log.info("now serving version %s (%s)", pointer.version, pointer.reason)
        except (StoreUnavailable, CacheFull) as exc:
            # Retried every tick: the store may answer again, room may be made in the cache.
            if pointer.version != self._awaited:
                log.warning("version %s not fetched, still serving what it has: %s", pointer.version, exc)
            self._awaited = pointer.version
        except (ModelLoadError, UnknownVersion) as exc:
            self._refused = pointer.version
            log.warning(
                "the serving pointer names version %s, which cannot be served: %s", pointer.version, exc
            )

    # --- the shadow challenger ---

    @property
    def shadow(self) -> ShadowRunner | None:
        return self._shadow

    def trace_with(self, tracing: Tracing) -> Callable[[], None]:
        """Give the shadow challenger the traffic `tracing` sees, and load the one the pointer names
        (from a background thread: it would add to the cold start). Returns the function that stops
        this replica's shadow thread (the pointer keeps naming it)."""
        self.tracing = tracing

        def start_up() -> None:
            read_at = time.monotonic()
            try:
                pointer = self.pointer.get()
            except Exception as exc:  # the database: the watch tries again
                log.warning("serving pointer not read for the shadow: %s", exc)
                return
            self._follow_shadow(pointer, read_at)

        threading.Thread(target=start_up, name="shadow-start-up", daemon=True).start()
        return self._close_shadow

    def start_shadow(self, version: str) -> ShadowRunner:
        """Score the champion's traffic with `version` too, on every replica (through the pointer).

        Raises UnknownVersion, StoreUnavailable, CacheFull, ModelLoadError, or ShadowRefused (the
        champion itself, other features, no pointer yet); the shadow running before keeps running."""
        with self._shadow_lock:
            champion = self.current
            if champion is not None and version == champion.version:
                raise ShadowRefused(f"version {version} is the champion: a shadow is another version")
            runner = self._shadow_runner(version)
            if not self.pointer.set_shadow(version):
                raise ShadowRefused("no version was served through the serving pointer yet")
            self._shadow_moved = time.monotonic()
            self._replace_shadow(runner)
            return runner

    def stop_shadow(self) -> str | None:
        """Stop the shadow on every replica; returns the version that was shadowing, if any."""
        with self._shadow_lock:
            pointer = self.pointer.get()
            named = pointer.shadow_version if pointer is not None else None
            self.pointer.set_shadow(None)
            self._shadow_moved = time.monotonic()
            stopped = self._shadow
            self._replace_shadow(None)
            return named or (stopped.version if stopped else None)

    def _shadow_runner(self, version: str) -> ShadowRunner:
        """`version` fetched, verified and loaded, not started yet."""
        try:
            folder = self.store.fetch(version)
        except StoreUnavailable as exc:
            self._store_failed(exc)
            raise
        self._store_answered()
        # No drift monitor: the champion's traffic is already measured.
        predictor = Predictor.load(folder, self.max_rows, None, self.threads)
        champion = self.current
        why = mismatch(champion.metadata, predictor.metadata) if champion is not None else None
        if why is not None:
            raise ShadowRefused(why)
        return ShadowRunner(predictor, self.tracing.log if self.tracing else None, self.shadow_queue_batches)

    def _replace_shadow(self, runner: ShadowRunner | None) -> None:
        old = self._shadow
        if runner is not None:
            runner.start()
        self._shadow = runner
        if self.tracing is not None:
            self.tracing.shadow = runner
        if old is not None:
            old.stop()

    def _follow_shadow(self, pointer: ServingPointer | None, read_at: float) -> None:
        """Load or drop the shadow as the pointer read at `read_at` names it."""
        wanted = pointer.shadow_version if pointer is not None else None
        champion = self.current
        if champion is not None and wanted == champion.version:
            wanted = None  # promoted, or the champion rolled back to it: nothing left to compare
        with self._shadow_lock:
            if self.tracing is None:
                return  # nothing would feed it (not given yet, or shut down)
            if read_at < self._shadow_moved:
                return  # this replica moved the shadow after that read: the next one will say
            current = self._shadow.version if self._shadow is not None else None
            if wanted == current:
                return
            if wanted is None:
                self._replace_shadow(None)
                log.info("shadow %s stopped", current)
                return
            if wanted == self._shadow_refused:
                return
            try:
                runner = self._shadow_runner(wanted)
            except (StoreUnavailable, CacheFull) as exc:
                if wanted != self._shadow_awaited:
                    log.warning("shadow %s not fetched: %s", wanted, exc)
                self._shadow_awaited = wanted
                return
            except (ModelLoadError, UnknownVersion, ShadowRefused) as exc:
                self._shadow_refused = wanted
                log.warning("the serving pointer names shadow %s, which cannot shadow: %s", wanted, exc)
                return
            self._shadow_refused = self._shadow_awaited = None
            self._replace_shadow(runner)
            log.info("shadow %s started", wanted)

    def _close_shadow(self) -> None:
        with self._shadow_lock:
            self._replace_shadow(None)
            self.tracing = None  # shut down: no watch tick or start-up read loads one again

    def check_store(self) -> None:
        """Whether the store answers now, for /ready and model_store_up while nothing changes."""
        try:
            self.store.ping()
        except StoreUnavailable as exc:
            self._store_failed(exc)
            return
        self._store_answered()

    def watch(self, interval: float = WATCH_SECONDS) -> Periodic:
        """Follow the pointer every `interval` seconds (started; stop() stops and joins it)."""
        return Periodic("version-watch", interval, self.sync).start()


def _timestamp(iso: str) -> float:
    try:
        return datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return float("nan")
