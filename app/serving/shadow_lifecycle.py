"""The shadow challenger's lifecycle on this replica: started, replaced and stopped as the serving
pointer names it.

The pointer names the shadow, if any (app/serving/shadow.py scores it): every replica loads it and
hands it the traffic its Tracing sees, or drops it, within WATCH_SECONDS of POST /model/shadow or
DELETE /model/shadow through any replica. A change of champion leaves it running; a shadow that became
the champion (promoted, rolled back to) stops scoring.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from app.adapters.model_store import ModelStore
from app.core.loading import ModelLoadError
from app.core.serving_pointer import PointerStore, ServingPointer
from app.core.versions import CacheFull, StoreUnavailable, UnknownVersion
from app.serving.predictor import Predictor
from app.serving.served_model import ServedModel
from app.serving.shadow import ShadowRefused, ShadowRunner, mismatch
from app.serving.store_health import StoreHealth
from app.serving.tracing import Tracing

log = logging.getLogger("predictor")


class ShadowLifecycle:
    def __init__(
        self,
        model: ServedModel,
        store: ModelStore,
        store_health: StoreHealth,
        pointer: PointerStore,
        queue_batches: int = 256,
    ) -> None:
        self.model = model
        self.store = store
        self.store_health = store_health
        self.pointer = pointer
        self.queue_batches = queue_batches
        # The traffic to hand a shadow: None until trace_with() (and again once closed).
        self.tracing: Tracing | None = None
        self._runner: ShadowRunner | None = None
        self._lock = threading.Lock()  # serialises shadow swaps, as the model's lock does the champion's
        # When this replica last moved the shadow itself: a pointer read before then is stale.
        self._moved = 0.0
        # A shadow version the pointer names that cannot shadow: not retried at every watch tick.
        self._refused: str | None = None
        self._awaited: str | None = None  # not fetched yet: logged once, retried every tick
        model.on_swap.append(self._champion_changed)

    @property
    def runner(self) -> ShadowRunner | None:
        return self._runner

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
            self.follow(pointer, read_at)

        threading.Thread(target=start_up, name="shadow-start-up", daemon=True).start()
        return self.close

    def start(self, version: str) -> ShadowRunner:
        """Score the champion's traffic with `version` too, on every replica (through the pointer).

        Raises UnknownVersion, StoreUnavailable, CacheFull, ModelLoadError, or ShadowRefused (the
        champion itself, other features, no pointer yet); the shadow running before keeps running."""
        with self._lock:
            champion = self.model.current
            if champion is not None and version == champion.version:
                raise ShadowRefused(f"version {version} is the champion: a shadow is another version")
            runner = self._load(version)
            if not self.pointer.set_shadow(version):
                raise ShadowRefused("no version was served through the serving pointer yet")
            self._moved = time.monotonic()
            self._replace(runner)
            return runner

    def stop(self) -> str | None:
        """Stop the shadow on every replica; returns the version that was shadowing, if any."""
        with self._lock:
            pointer = self.pointer.get()
            named = pointer.shadow_version if pointer is not None else None
            self.pointer.set_shadow(None)
            self._moved = time.monotonic()
            stopped = self._runner
            self._replace(None)
            return named or (stopped.version if stopped else None)

    def follow(self, pointer: ServingPointer | None, read_at: float) -> None:
        """Load or drop the shadow as the pointer read at `read_at` names it."""
        wanted = pointer.shadow_version if pointer is not None else None
        champion = self.model.current
        if champion is not None and wanted == champion.version:
            wanted = None  # promoted, or the champion rolled back to it: nothing left to compare
        with self._lock:
            if self.tracing is None:
                return  # nothing would feed it (not given yet, or shut down)
            if read_at < self._moved:
                return  # this replica moved the shadow after that read: the next one will say
            current = self._runner.version if self._runner is not None else None
            if wanted == current:
                return
            if wanted is None:
                self._replace(None)
                log.info("shadow %s stopped", current)
                return
            if wanted == self._refused:
                return
            try:
                runner = self._load(wanted)
            except (StoreUnavailable, CacheFull) as exc:
                if wanted != self._awaited:
                    log.warning("shadow %s not fetched: %s", wanted, exc)
                self._awaited = wanted
                return
            except (ModelLoadError, UnknownVersion, ShadowRefused) as exc:
                self._refused = wanted
                log.warning("the serving pointer names shadow %s, which cannot shadow: %s", wanted, exc)
                return
            self._refused = self._awaited = None
            self._replace(runner)
            log.info("shadow %s started", wanted)

    def close(self) -> None:
        with self._lock:
            self._replace(None)
            self.tracing = None  # shut down: no watch tick or start-up read loads one again

    def _champion_changed(self) -> None:
        self._refused = None  # one that did not fit the old champion may fit this one

    def _load(self, version: str) -> ShadowRunner:
        """`version` fetched, verified and loaded, not started yet."""
        try:
            folder = self.store.fetch(version)
        except StoreUnavailable as exc:
            self.store_health.failed(exc)
            raise
        self.store_health.answered()
        # No drift monitor: the champion's traffic is already measured.
        predictor = Predictor.load(folder, self.model.max_rows, None, self.model.threads)
        champion = self.model.current
        why = mismatch(champion.metadata, predictor.metadata) if champion is not None else None
        if why is not None:
            raise ShadowRefused(why)
        return ShadowRunner(predictor, self.tracing.log if self.tracing else None, self.queue_batches)

    def _replace(self, runner: ShadowRunner | None) -> None:
        old = self._runner
        if runner is not None:
            runner.start()
        self._runner = runner
        if self.tracing is not None:
            self.tracing.shadow = runner
        if old is not None:
            old.stop()
