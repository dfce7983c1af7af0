"""What a replica serves when it starts.

MODEL_DIR is the pipeline's latest output (models/, which `dvc repro` replaces wholesale). Where a
replica has one (`make run` on one machine), a model there that the pointer has not seen yet is
published to the store and served: a fresh `make train` is meant to be served. Otherwise, and on a
replica without one (a pod), it serves what the pointer names. A missing or bad model leaves the
service up but not ready, saying why.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from app.core.loading import ModelLoadError
from app.core.versions import CacheFull, StoreUnavailable, UnknownVersion

if TYPE_CHECKING:
    from app.serving.state import ServingState

log = logging.getLogger("predictor")


def serve_at_start(state: ServingState) -> None:
    try:
        pointer = state.pointer.get()
    except Exception as exc:  # the database: /ready says so; the watch retries
        log.warning("serving pointer not read: %s", exc)
        pointer = None
    local = state.model_dir_version()
    if pointer is not None and (local is None or local == pointer.model_dir_version):
        try:
            state.serve_version(pointer.version, candidates=False)
            return
        except (ModelLoadError, UnknownVersion, StoreUnavailable, CacheFull) as exc:
            state.model.not_served(f"version {pointer.version} not served: {exc}")
            log.warning("serving version %s not loaded: %s", pointer.version, exc)
            if isinstance(exc, ModelLoadError | UnknownVersion):
                state.follower.refuse(pointer.version)
    if local is None:
        if pointer is None:
            state.model.not_served(
                f"no model: {state.model_dir} holds none (train a model first: make train) and no "
                "version was published to serve (python -m app.cli models publish --serve)"
            )
        return
    try:
        state.reload(candidates=False, published=False)
    except ModelLoadError as exc:
        state.model.not_served(str(exc))
        log.warning("model not loaded: %s", exc)
