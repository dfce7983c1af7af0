"""Following the serving pointer: every WATCH_SECONDS, serve the version it names (and the shadow
and the canary it names), so a rollback or promotion through any replica, the worker or
`models publish` reaches this one.

A version that cannot be fetched now (the store is away, the cache is full) is retried every tick and
said once; one that fails verification is refused until the pointer names another.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from app.adapters.model_store import ModelStore
from app.core.loading import ModelLoadError
from app.core.outage import Outage
from app.core.periodic import Periodic
from app.core.serving_pointer import PointerStore, ServingPointer
from app.core.versions import CacheFull, StoreUnavailable, UnknownVersion
from app.observability import metrics
from app.serving.canary import CanaryLifecycle
from app.serving.predictor import Predictor
from app.serving.served_model import ServedModel
from app.serving.shadow_lifecycle import ShadowLifecycle
from app.serving.store_health import StoreHealth

log = logging.getLogger("predictor")

WATCH_SECONDS = 2.0


class PointerFollower:
    def __init__(
        self,
        pointer: PointerStore,
        model: ServedModel,
        shadows: ShadowLifecycle,
        canaries: CanaryLifecycle,
        serve_version: Callable[[str], Predictor],
        store: ModelStore,
        store_health: StoreHealth,
    ) -> None:
        self.pointer = pointer
        self.model = model
        self.shadows = shadows
        self.canaries = canaries
        self.serve_version = serve_version
        self.store = store
        self.store_health = store_health
        self.health = Outage(
            "serving pointer not read, still serving what this replica has", "serving pointer read again"
        )
        # A version the pointer names that failed verification: not retried at every tick.
        self._refused: str | None = None
        # A version the pointer names that the store has not given yet: said once, retried every tick.
        self._awaited: str | None = None
        model.on_swap.append(self._forget)

    def refuse(self, version: str) -> None:
        """Do not try `version` again (it failed verification) until the pointer names another."""
        self._refused = version

    def watch(self, interval: float = WATCH_SECONDS) -> Periodic:
        """sync() every `interval` seconds (started; stop() stops and joins it)."""
        return Periodic("version-watch", interval, self.sync).start()

    def sync(self) -> None:
        """Follow the serving pointer when another replica, the worker or `models publish` moved it."""
        read_at = time.monotonic()
        try:
            pointer = self.pointer.get()
        except Exception as exc:  # the database did not answer: keep serving, look again next tick
            self.health.failed(exc)
            return
        self.health.answered()
        self._follow_champion(pointer)
        self.shadows.follow(pointer, read_at)
        self.canaries.follow(pointer, read_at)

    def check_store(self) -> None:
        """Whether the store answers now, for /ready and model_store_up while nothing changes."""
        try:
            self.store.ping()
        except StoreUnavailable as exc:
            self.store_health.failed(exc)
            return
        self.store_health.answered()

    def _follow_champion(self, pointer: ServingPointer | None) -> None:
        current = self.model.current
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

    def _forget(self) -> None:
        self._refused = self._awaited = None
