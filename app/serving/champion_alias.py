"""MLflow's `champion` alias, moved after a rollback or a promotion through the API, off the request.

The swap is what the admin waits for; the alias is MLflow's view of it, and moving it costs a Python
process that imports MLflow (seconds, more under load: 22 s were measured through one of three busy
replicas). So the route answers `pending` once the version serves, and one thread of this process
moves the alias in the order the swaps happened. The outcome is written beside the serving pointer,
where GET /models on any replica shows it. A swap made since wins: an older outcome is not written.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from app.adapters.mlflow_alias import alias_outcome
from app.core.artifacts import ModelMetadata
from app.core.messages import AliasOutcome
from app.core.serving_pointer import PointerStore

log = logging.getLogger("predictor")


class ChampionAlias:
    def __init__(self, pointer: PointerStore, move: Callable[[ModelMetadata], AliasOutcome]) -> None:
        self.pointer = pointer
        self._move = move  # app.adapters.mlflow_alias.update_champion_alias: a subprocess, never raises
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="champion-alias")

    def follow(self, metadata: ModelMetadata) -> AliasOutcome:
        """Move the alias to the version just served, later; what can be said now (skipped, pending)."""
        outcome = alias_outcome(metadata, "pending")
        self._record(metadata.version, outcome)
        if outcome.status == "pending":
            self._thread.submit(self._moved, metadata)
        return outcome

    def close(self) -> None:
        """Finish the move in progress (bounded by its timeout); drop the ones not started."""
        self._thread.shutdown(wait=True, cancel_futures=True)

    def _moved(self, metadata: ModelMetadata) -> None:
        outcome = self._move(metadata)
        if outcome.status == "failed":
            log.warning("MLflow's champion alias not moved to %s: %s", metadata.version, outcome.reason)
        self._record(metadata.version, outcome)

    def _record(self, version: str, outcome: AliasOutcome) -> None:
        record_alias(self.pointer, version, outcome)


def record_alias(pointer: PointerStore, version: str, outcome: AliasOutcome) -> None:
    """Write how the alias move to `version` went beside the pointer, for GET /models; never raises."""
    try:
        pointer.set_alias(version, outcome)
    except Exception as exc:  # the database: the swap is done, the outcome is only a report
        log.warning("champion alias outcome for %s not recorded: %s", version, exc)
