"""One loaded model: what serves it, its metadata and the request schema built from it.

A model folder holds the pipeline (model.joblib) and, when train could compile it, the same model
as numpy arrays (model.npz, app/core/compiled.py). Serving prefers the arrays: they load without
importing scikit-learn (most of a cold start) and run without its per-step checks. Either way the
files are checked against model.json's sha256 before anything is read out of them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np

from app.core.artifacts import (
    METADATA_FILE,
    MODEL_FILE,
    PROFILE_FILE,
    CompiledFile,
    ModelMetadata,
    ReferenceProfile,
)
from app.core.compiled import (
    CompiledError,
    CompiledModel,
    compile_verified,
    probe_rows,
    reference_function,
)
from app.observability.drift import DriftMonitor, DriftSettings
from app.serving.schema import RequestSchema

log = logging.getLogger("predictor")


class ModelLoadError(Exception):
    """The model directory cannot be served: missing files, a checksum mismatch, a broken pickle."""


class ChecksumMismatch(ModelLoadError):
    pass


@dataclass(frozen=True)
class Model:
    """One loaded model and the one function serving calls on a batch."""

    # Probabilities (classification), values (regression), or labels when `labels_only`.
    call: Callable[[np.ndarray], np.ndarray] = field(repr=False)
    # compiled: model.npz's arrays; pipeline-compiled: arrays read from the unpickled pipeline;
    # pipeline: the scikit-learn pipeline itself (a model compiled.py does not know).
    source: Literal["compiled", "pipeline-compiled", "pipeline"]
    pipeline: Any | None = field(default=None, repr=False)  # None when the arrays serve alone
    labels_only: bool = False  # a classifier without predict_proba
    # The order of the model's probability columns, checked against model.json's at load.
    classes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Predictor:
    metadata: ModelMetadata
    model: Model
    schema: RequestSchema
    # None when drift is off or the model directory has no reference profile.
    drift: DriftMonitor | None = None
    loaded_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @property
    def version(self) -> str:
        return self.metadata.version

    @classmethod
    def load(cls, model_dir: Path, max_rows: int, drift: DriftSettings | None = None) -> Predictor:
        try:
            metadata = ModelMetadata.read(model_dir)
        except FileNotFoundError:
            raise ModelLoadError(f"{model_dir / METADATA_FILE} not found: train a model first") from None
        except ValueError as exc:
            raise ModelLoadError(
                f"{model_dir / METADATA_FILE} is invalid: {str(exc).splitlines()[0]}"
            ) from None

        model = load_model(model_dir, metadata, MODEL_FILE, metadata.sha256, metadata.compiled)
        predictor = cls(metadata, model, RequestSchema.build(metadata, max_rows))
        predictor._check()
        # After the check, so the made-up sample row is not counted as traffic.
        if drift is not None:
            monitor = _drift_monitor(model_dir, metadata, drift)
            predictor = dataclasses.replace(predictor, drift=monitor)
        return predictor

    @property
    def labels(self) -> list[str]:
        """The values predictions are counted by: the classes, or `value` for a regression."""
        return self.metadata.classes if self.metadata.task == "classification" else ["value"]

    def _check(self) -> None:
        """Predict once on a made-up row, so a model that cannot serve is refused at load."""
        classes = list(self.model.classes)
        if self.metadata.task == "classification" and classes != self.metadata.classes:
            raise ModelLoadError(
                f"the model's classes {classes} differ from model.json's {self.metadata.classes}"
            )
        row = [
            ((f.min or 0.0) + (f.max or 0.0)) / 2 if f.type == "numeric" else (f.categories or [""])[0]
            for f in self.metadata.features
        ]
        try:
            self.predict(np.array([row], dtype=self.schema.dtype))
        except Exception as exc:
            raise ModelLoadError(f"the model fails on a sample row: {type(exc).__name__}: {exc}") from None

    def predict(self, matrix: np.ndarray) -> list[dict[str, Any]]:
        """One call into the model for the whole batch."""
        return answers(self.model, matrix, self.metadata.task, self.metadata.classes)


def load_model(
    model_dir: Path,
    metadata: ModelMetadata,
    path: str,
    sha256: str,
    compiled: CompiledFile | None,
    owner: str = "",
) -> Model:
    """The compiled arrays when there are some that check out, else the unpickled pipeline.

    Both files are checked against their sha256 either way: a folder with a tampered model.joblib
    is refused even when its arrays would serve. `owner` prefixes errors ("candidate svc: ").
    """
    payload = _read_inside(model_dir, path, sha256, owner)
    if compiled is not None:
        arrays = _read_inside(model_dir, compiled.path, compiled.sha256, owner)
        try:
            model = CompiledModel.from_bytes(arrays)
            return Model(model, "compiled", classes=model.classes)
        except CompiledError as exc:
            # Not a security matter (the checksum matched): numpy on this machine disagrees, say.
            log.warning("%s%s not used (%s): serving the pipeline", owner, compiled.path, exc)
    pipeline = unpickle(payload, f"{owner}{path}")
    task = metadata.task
    classes = tuple(str(c) for c in getattr(pipeline, "classes_", ())) if task == "classification" else ()
    if task == "classification" and not hasattr(pipeline, "predict_proba"):
        return Model(pipeline.predict, "pipeline", pipeline, labels_only=True, classes=classes)
    fast = _compiled_from(pipeline, metadata)
    if fast is not None:
        return Model(fast, "pipeline-compiled", pipeline, classes=classes)
    return Model(reference_function(pipeline, task), "pipeline", pipeline, classes=classes)


def _read_inside(model_dir: Path, relative: str, sha256: str, owner: str) -> bytes:
    path = (model_dir / relative).resolve()
    if not path.is_relative_to(model_dir.resolve()):
        raise ModelLoadError(f"{owner}path {relative} leaves the model folder")
    return read_verified(path, sha256, f"{owner}{relative}")


def read_verified(path: Path, sha256: str, what: str) -> bytes:
    """The file's bytes, if their sha256 is the one the pipeline recorded.

    The bytes are read once, hashed, and those very bytes used: no window in which the file
    could change between the check and the load.
    """
    try:
        payload = path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"{what} cannot be read: {exc.strerror}") from None
    digest = hashlib.sha256(payload).hexdigest()
    if digest != sha256:
        raise ChecksumMismatch(
            f"{what} sha256 {digest[:12]}... does not match {METADATA_FILE} ({sha256[:12]}...): "
            "refusing to load it"
        )
    return payload


def unpickle(payload: bytes, what: str) -> Any:
    """joblib is pickle: only ever called on bytes read_verified returned."""
    import joblib  # here, not at import: a compiled model never needs it

    try:
        return joblib.load(io.BytesIO(payload))
    except Exception as exc:
        raise ModelLoadError(f"{what} cannot be unpickled: {type(exc).__name__}") from None


def answers(model: Model, matrix: np.ndarray, task: str, classes: list[str]) -> list[dict[str, Any]]:
    """One model call for the batch, shaped as the API answers: label and probabilities, or value."""
    if task == "regression":
        return [{"value": float(v)} for v in model.call(matrix)]
    if model.labels_only:
        return [{"label": str(label), "probabilities": None} for label in model.call(matrix)]
    probabilities = model.call(matrix)
    best = probabilities.argmax(axis=1)
    return [
        {"label": classes[i], "probabilities": dict(zip(classes, map(float, p), strict=True))}
        for i, p in zip(best.tolist(), probabilities.round(6), strict=True)
    ]


def _drift_monitor(model_dir: Path, metadata: ModelMetadata, settings: DriftSettings) -> DriftMonitor | None:
    path = model_dir / PROFILE_FILE
    try:
        profile = ReferenceProfile.model_validate_json(path.read_text())
    except (OSError, ValueError) as exc:
        # Serving goes on without drift: the profile is a monitoring aid, not part of the model.
        log.warning("drift monitoring off: %s unreadable (%s)", path, type(exc).__name__)
        return None
    return DriftMonitor(
        profile,
        metadata.features,
        metadata.classes,
        window=settings.window,
        min_rows=settings.min_rows,
        refresh_seconds=settings.refresh_seconds,
    )


def _compiled_from(pipeline: Any, metadata: ModelMetadata) -> CompiledModel | None:
    """For a folder without model.npz (an older train): the arrays read from the pipeline itself,
    if they give its answers on probe rows."""
    compiled = compile_verified(pipeline, metadata.task, probe_rows(metadata.features))
    if compiled is None:
        log.info("serving through the sklearn pipeline (no compiled form of %s)", metadata.name)
    return compiled
