"""The serving side of one replica, by job: the model answering now (served_model.py, swapped whole),
the versions it switches between (here: reload, serve_version), what it serves at start-up
(startup.py), the serving pointer it follows (pointer_follower.py), the shadow challenger's
lifecycle (shadow_lifecycle.py) and the canary's (canary.py). Routes and the service container use
this one object.

Every replica is stateless: the versions live in the model store (MODEL_STORE_URL, a folder or S3)
and which one serves is the serving pointer in the database. A replica downloads the version the
pointer names into its cache, verifies every checksum, loads it, and follows the pointer every
WATCH_SECONDS, so a rollback or promotion through any replica reaches all of them.

A promotion or rollback swaps the champion with its candidates (for /predict?compare=true) loaded
and verified. Only at start-up do the candidates follow the champion, from a background thread:
they would otherwise add to the cold start.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.adapters.model_store import ModelStore
from app.core.artifacts import ModelMetadata
from app.core.canary import CanaryDecision, CanaryPlan
from app.core.periodic import Periodic
from app.core.serving_pointer import PointerStore, ServingPointer
from app.core.versions import CacheFull, StoreUnavailable, VersionRecord, now
from app.observability import metrics
from app.observability.drift import DriftSettings
from app.serving.canary import Canary, CanaryLifecycle
from app.serving.comparison import Served
from app.serving.pointer_follower import WATCH_SECONDS, PointerFollower
from app.serving.predictor import Predictor
from app.serving.served_model import ServedModel
from app.serving.shadow import ShadowRefused, ShadowRunner
from app.serving.shadow_lifecycle import ShadowLifecycle
from app.serving.startup import serve_at_start
from app.serving.store_health import StoreHealth
from app.serving.tracing import Tracing

log = logging.getLogger("predictor")


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
        canary_window_seconds: float = 60.0,
    ) -> None:
        self.model_dir = model_dir
        self.store = store
        self.pointer = pointer
        self.model = ServedModel(max_rows, drift, threads)
        self.store_health = StoreHealth(store.url)
        self.shadows = ShadowLifecycle(self.model, store, self.store_health, pointer, shadow_queue_batches)
        self.canaries = CanaryLifecycle(
            self.model, store, self.store_health, pointer, drift, canary_window_seconds
        )
        self.follower = PointerFollower(
            pointer, self.model, self.shadows, self.canaries, self.serve_version, store, self.store_health
        )

    # --- what requests read ---

    @property
    def current(self) -> Predictor | None:
        return self.model.current

    @property
    def folder(self) -> Path | None:
        return self.model.folder

    @property
    def error(self) -> str | None:
        return self.model.error

    @property
    def store_error(self) -> str | None:
        return self.store_health.error

    @property
    def shadow(self) -> ShadowRunner | None:
        return self.shadows.runner

    @property
    def canary(self) -> Canary | None:
        """The canary answering a share of the requests on this replica, if any."""
        return self.canaries.current

    def with_candidates(self) -> Served | None:
        return self.model.with_candidates()

    # --- start-up, and following the pointer ---

    def load_initial(self) -> None:
        """At start-up: a missing or bad model leaves the service up but not ready.

        The champion serves first; its candidates load in a background thread (see with_candidates)."""
        serve_at_start(self)
        if self.model.current is not None:
            threading.Thread(target=self.model.with_candidates, name="candidates", daemon=True).start()

    def sync(self) -> None:
        self.follower.sync()

    def watch(self, interval: float = WATCH_SECONDS) -> Periodic:
        return self.follower.watch(interval)

    # --- switching versions ---

    def reload(self, candidates: bool = True, published: bool = True) -> Predictor:
        """Load and verify MODEL_DIR, publish it to the store, point every replica at it, then swap.

        Raises ModelLoadError, or StoreUnavailable when `published` (an admin's reload: serving a
        version no other replica can fetch would split them), and keeps the old model serving. At
        start-up (`published` False) a store that does not answer is logged and the model served."""
        with self.model.lock:
            new = self.model.load(self.model_dir, candidates)
            version = new.predictor.version
            try:
                self.store.publish(self.model_dir, VersionRecord(origin="pipeline", recorded_at=now()))
                self.store_health.answered()
            except StoreUnavailable as exc:
                self.store_health.failed(exc)
                if published:
                    raise
                # Serving goes on here; other replicas cannot have it until it is published.
                log.warning("version %s not published to %s: %s", version, self.store.url, exc)
                return self.model.swap(new)
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
            return self.model.swap(new)

    def serve_version(self, version: str, reason: str | None = None, candidates: bool = True) -> Predictor:
        """Serve a stored version (promotion, rollback). The old one keeps serving on UnknownVersion,
        StoreUnavailable, CacheFull or ModelLoadError (a checksum that does not match, a broken model).

        `reason` moves the serving pointer too; without it (start-up, following the pointer) it is
        only followed."""
        try:
            folder = self.store.fetch(version)
        except StoreUnavailable as exc:
            self.store_health.failed(exc)
            raise
        except CacheFull:
            metrics.MODEL_CACHE_FULL.set(1)
            raise
        self.store_health.answered()
        metrics.MODEL_CACHE_FULL.set(0)
        with self.model.lock:
            new = self.model.load(folder, candidates)
            if reason is not None:
                self.pointer.set(
                    ServingPointer(
                        version=version,
                        since=now(),
                        reason=reason,
                        model_dir_version=self.model_dir_version(),
                    )
                )
            return self.model.swap(new)

    def model_dir_version(self) -> str | None:
        try:
            return ModelMetadata.read(self.model_dir).version
        except (OSError, ValueError):
            return None

    # --- the shadow challenger ---

    def trace_with(self, tracing: Tracing) -> Callable[[], None]:
        return self.shadows.trace_with(tracing)

    def start_shadow(self, version: str) -> ShadowRunner:
        pointer = self.pointer.get()
        if pointer is not None and pointer.canary is not None and pointer.canary.version == version:
            raise ShadowRefused(
                f"version {version} is the canary: a shadow and a canary are different versions "
                "(DELETE /model/canary first)"
            )
        return self.shadows.start(version)

    def stop_shadow(self) -> str | None:
        return self.shadows.stop()

    # --- the canary ---

    def start_canary(self, plan: CanaryPlan) -> Canary:
        """Answer `plan.percent`% of the requests with `plan.version`, on every replica. Raises as
        CanaryLifecycle.start does; a version the pointer names as shadow is refused."""
        pointer = self.pointer.get()
        return self.canaries.start(plan, pointer.shadow_version if pointer is not None else None)

    def end_canary(self, by: str) -> str | None:
        """The champion answers everyone again, on every replica; the version that was the canary."""
        pointer = self.pointer.get()
        plan = pointer.canary if pointer is not None else None
        if plan is None:
            self.canaries.close()  # nothing named: whatever this replica still runs goes too
            return None
        decision = CanaryDecision(
            action="ended", version=plan.version, reason=f"ended by {by}", at=time.time(), by=by
        )
        ended = self.canaries.end(decision)
        return ended.version if ended is not None else None

    def promote_canary(self, version: str, by: str, figures: dict[str, Any]) -> Predictor:
        """Serve the canary as champion on every replica (its pointer moves first, then the canary
        ends); raises as serve_version does, and the canary keeps running then."""
        new = self.serve_version(version, reason=f"canary promoted by {by} on live evidence")
        decision = CanaryDecision(
            action="promoted",
            version=version,
            reason=f"promoted by {by} on live evidence",
            at=time.time(),
            by=by,
            figures={k: v for k, v in figures.items() if isinstance(v, int | float | str) or v is None},
        )
        try:
            self.canaries.end(decision)
        except Exception as exc:  # the database: the canary is the champion, which ends it on every replica
            log.warning("promoted canary %s, but the canary was not cleared: %s", version, exc)
        return new
