"""One loaded model: its verified pipeline, its metadata and the request schema built from it."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import joblib
import numpy as np

from app.core.artifacts import METADATA_FILE, MODEL_FILE, PROFILE_FILE, ModelMetadata, ReferenceProfile
from app.observability.drift import DriftMonitor, DriftSettings
from app.serving.fastpath import Compiled, compile_pipeline, verified
from app.serving.schema import RequestSchema

log = logging.getLogger("predictor")


class ModelLoadError(Exception):
    """The model directory cannot be served: missing files, a checksum mismatch, a broken pickle."""


class ChecksumMismatch(ModelLoadError):
    pass


@dataclass(frozen=True)
class Predictor:
    metadata: ModelMetadata
    pipeline: Any
    schema: RequestSchema
    # None when drift is off or the model directory has no reference profile.
    drift: DriftMonitor | None = None
    # The pipeline's arithmetic without its per-step checks, when verified equal (fastpath.py).
    fast: Compiled | None = field(default=None, repr=False)
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

        path = model_dir / MODEL_FILE
        pipeline = load_verified(path, metadata.sha256, str(path))
        schema = RequestSchema.build(metadata, max_rows)
        predictor = cls(metadata, pipeline, schema, fast=_fast_path(pipeline, metadata, schema))
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
        if self.metadata.task == "classification":
            classes = [str(c) for c in getattr(self.pipeline, "classes_", [])]
            if self.metadata.classes and classes != self.metadata.classes:
                raise ModelLoadError(f"the model's classes {classes} differ from model.json's")
        row = [
            ((f.min or 0.0) + (f.max or 0.0)) / 2 if f.type == "numeric" else (f.categories or [""])[0]
            for f in self.metadata.features
        ]
        try:
            self.predict(np.array([row], dtype=self.schema.dtype))
        except Exception as exc:
            raise ModelLoadError(f"the model fails on a sample row: {type(exc).__name__}: {exc}") from None

    def predict(self, matrix: np.ndarray) -> list[dict[str, Any]]:
        """One call into the model for the whole batch (the verified fast path when there is one)."""
        return answers(self.pipeline, matrix, self.metadata.task, self.fast)


def load_verified(path: Path, sha256: str, what: str) -> Any:
    """Unpickle `path` only if its sha256 is the one the pipeline recorded (joblib is pickle).

    The bytes are read once, hashed, and those very bytes unpickled: no window in which the file
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
            "refusing to unpickle it"
        )
    try:
        return joblib.load(io.BytesIO(payload))
    except Exception as exc:
        raise ModelLoadError(f"{what} cannot be unpickled: {type(exc).__name__}") from None


def answers(
    pipeline: Any, matrix: np.ndarray, task: str, fast: Compiled | None = None
) -> list[dict[str, Any]]:
    """One model call for the batch, shaped as the API answers: label and probabilities, or value."""
    if task == "regression":
        values = fast(matrix) if fast else pipeline.predict(matrix)
        return [{"value": float(v)} for v in values]
    classes = [str(c) for c in pipeline.classes_]
    if not hasattr(pipeline, "predict_proba"):
        return [{"label": str(label), "probabilities": None} for label in pipeline.predict(matrix)]
    probabilities = fast(matrix) if fast else pipeline.predict_proba(matrix)
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


def _fast_path(pipeline: Any, metadata: ModelMetadata, schema: RequestSchema) -> Compiled | None:
    """The compiled path for all-numeric pipelines, if it matches the pipeline on probe rows."""
    if schema.dtype is not np.float64:
        return None
    rng = np.random.default_rng(0)
    low = np.array([f.min if f.min is not None else -1.0 for f in metadata.features])
    high = np.array([f.max if f.max is not None else 1.0 for f in metadata.features])
    # Inside and beyond the training range, with some gaps: where a mismatch would hide.
    probe = rng.uniform(low - (high - low), high + (high - low), size=(64, len(low)))
    probe[rng.random(probe.shape) < 0.1] = np.nan
    reference = (
        pipeline.predict if metadata.task == "regression" else getattr(pipeline, "predict_proba", None)
    )
    if reference is None:
        return None
    compiled = verified(compile_pipeline(pipeline, metadata.task), reference, probe)
    if compiled is None:
        log.info("serving through the sklearn pipeline (no verified fast path for %s)", metadata.name)
    return compiled
