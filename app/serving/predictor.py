"""One loaded model: its verified pipeline, its metadata and the request schema built from it."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import joblib
import numpy as np

from app.core.artifacts import METADATA_FILE, MODEL_FILE, ModelMetadata
from app.serving.schema import RequestSchema


class ModelLoadError(Exception):
    """The model directory cannot be served: missing files, a checksum mismatch, a broken pickle."""


class ChecksumMismatch(ModelLoadError):
    pass


@dataclass(frozen=True)
class Predictor:
    metadata: ModelMetadata
    pipeline: Any
    schema: RequestSchema
    loaded_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @property
    def version(self) -> str:
        return self.metadata.version

    @classmethod
    def load(cls, model_dir: Path, max_rows: int) -> Predictor:
        try:
            metadata = ModelMetadata.read(model_dir)
        except FileNotFoundError:
            raise ModelLoadError(f"{model_dir / METADATA_FILE} not found: train a model first") from None
        except ValueError as exc:
            raise ModelLoadError(
                f"{model_dir / METADATA_FILE} is invalid: {str(exc).splitlines()[0]}"
            ) from None

        path = model_dir / MODEL_FILE
        try:
            # Read once, hash, then unpickle the very bytes that were hashed: no window in
            # which the file could change between the check and the load.
            payload = path.read_bytes()
        except OSError as exc:
            raise ModelLoadError(f"{path} cannot be read: {exc.strerror}") from None
        digest = hashlib.sha256(payload).hexdigest()
        if digest != metadata.sha256:
            raise ChecksumMismatch(
                f"{path} sha256 {digest[:12]}... does not match {METADATA_FILE} ({metadata.sha256[:12]}...): "
                "refusing to unpickle it"
            )
        try:
            pipeline = joblib.load(io.BytesIO(payload))
        except Exception as exc:
            raise ModelLoadError(f"{path} cannot be unpickled: {type(exc).__name__}") from None

        predictor = cls(metadata, pipeline, RequestSchema.build(metadata, max_rows))
        predictor._check()
        return predictor

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
        """One call into the model for the whole batch."""
        if self.metadata.task == "regression":
            return [{"value": float(v)} for v in self.pipeline.predict(matrix)]
        classes = [str(c) for c in self.pipeline.classes_]
        if not hasattr(self.pipeline, "predict_proba"):
            return [{"label": str(label), "probabilities": None} for label in self.pipeline.predict(matrix)]
        probabilities = self.pipeline.predict_proba(matrix)
        best = probabilities.argmax(axis=1)
        return [
            {"label": classes[i], "probabilities": dict(zip(classes, map(float, p), strict=True))}
            for i, p in zip(best.tolist(), probabilities.round(6), strict=True)
        ]
