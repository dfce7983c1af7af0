"""One loaded model: what serves it, its metadata and the request schema built from it.

A model folder holds the pipeline (model.joblib, a pickle) and, when it converted, the same model as
ONNX (model.onnx, app/pipeline/onnx_export.py). Serving runs the ONNX file in onnxruntime: no pickle,
no scikit-learn import (most of a cold start), one session created at load. A folder without one (a
model that did not convert, or an older train) serves through the unpickled pipeline. Either way
every file is checked against model.json's sha256 before anything is read out of it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np

from app.adapters.onnx_model import OnnxError, OnnxModel, finite_rows
from app.core.artifacts import (
    METADATA_FILE,
    MODEL_FILE,
    REFERENCE_PROFILE_FILE,
    Feature,
    ModelFile,
    ModelMetadata,
    ReferenceProfile,
)
from app.core.loading import ModelLoadError, pipeline_answers, read_inside, unpickle
from app.observability.confidence import ConfidenceWindow
from app.observability.drift import DriftMonitor, DriftSettings
from app.serving.schema import RequestSchema
from app.serving.validation import RowError, no_finite_answer

log = logging.getLogger("predictor")


@dataclass(frozen=True)
class Model:
    """One loaded model and the one function serving calls on a batch."""

    # Probabilities (classification), values (regression), or labels when `labels_only`; NaN for
    # a row the model cannot answer.
    call: Callable[[np.ndarray], np.ndarray] = field(repr=False)
    # onnx: model.onnx in onnxruntime; pipeline: the unpickled scikit-learn pipeline.
    source: Literal["onnx", "pipeline"]
    pipeline: Any | None = field(default=None, repr=False)  # None when ONNX serves
    labels_only: bool = False  # a classifier without predict_proba
    # The order of the model's probability columns, checked against model.json's at load.
    classes: tuple[str, ...] = ()


@dataclass
class CallTime:
    """The model's recent mean call time, which decides where its requests are scored."""

    mean: float | None = None

    def add(self, seconds: float) -> None:
        # An exponential moving average: recent calls count most, no history is kept.
        self.mean = seconds if self.mean is None else self.mean + 0.1 * (seconds - self.mean)


@dataclass(frozen=True)
class Predictor:
    metadata: ModelMetadata
    model: Model
    schema: RequestSchema
    # None when drift is off or the model directory has no reference profile.
    drift: DriftMonitor | None = None
    loaded_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    call_time: CallTime = field(default_factory=CallTime, compare=False, repr=False)
    # The label-free estimate of live accuracy (a classifier's top probabilities), kept with drift.
    confidence: ConfidenceWindow | None = field(default=None, compare=False, repr=False)
    # False for a canary: its drift monitor feeds its guard, not the champion's gauges.
    publishes_drift: bool = field(default=True, compare=False, repr=False)

    @property
    def version(self) -> str:
        return self.metadata.version

    @classmethod
    def load(
        cls, model_dir: Path, max_rows: int, drift: DriftSettings | None = None, threads: int = 1
    ) -> Predictor:
        try:
            metadata = ModelMetadata.read(model_dir)
        except FileNotFoundError:
            raise ModelLoadError(f"{model_dir / METADATA_FILE} not found: train a model first") from None
        except ValueError as exc:
            raise ModelLoadError(
                f"{model_dir / METADATA_FILE} is invalid: {str(exc).splitlines()[0]}"
            ) from None

        model = load_model(model_dir, metadata, MODEL_FILE, metadata.sha256, metadata.onnx, threads=threads)
        predictor = cls(metadata, model, RequestSchema.build(metadata, max_rows))
        predictor._check()
        # After the check, so the made-up sample row is not counted as traffic.
        if drift is not None:
            monitor = _drift_monitor(model_dir, metadata, drift)
            confidence = ConfidenceWindow(drift.window) if metadata.task == "classification" else None
            predictor = dataclasses.replace(predictor, drift=monitor, confidence=confidence)
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
        """One call into the model for the whole batch; RowError naming each row it cannot answer."""
        return answers(self.model, matrix, self.metadata)

    def infer(self, matrix: np.ndarray) -> Answers:
        """The same call, answered as arrays (for the CSV and V2 formats and the metrics)."""
        return infer(self.model, matrix, self.metadata)


def load_model(
    model_dir: Path,
    metadata: ModelMetadata,
    path: str,
    sha256: str | None,
    onnx: ModelFile | None,
    owner: str = "",
    threads: int = 1,
) -> Model:
    """The ONNX model when there is one that checks out, else the unpickled pipeline.

    Both files are checked against their sha256 either way: a folder with a tampered model.joblib
    is refused even when its ONNX file would serve. `owner` prefixes errors ("candidate svc: ").
    """
    if sha256 is None:  # imported: the graph alone, nothing to fall back to
        if onnx is None:
            raise ModelLoadError(f"{owner}{METADATA_FILE} names neither a pipeline nor an ONNX graph")
        graph = read_inside(model_dir, onnx.path, onnx.sha256, owner)
        try:
            model = OnnxModel.from_bytes(graph, threads=threads)
        except OnnxError as exc:
            raise ModelLoadError(f"{owner}{onnx.path} cannot serve: {exc}") from None
        return Model(model, "onnx", classes=model.classes)
    payload = read_inside(model_dir, path, sha256, owner)
    if onnx is not None:
        graph = read_inside(model_dir, onnx.path, onnx.sha256, owner)
        try:
            model = OnnxModel.from_bytes(graph, threads=threads)
            return Model(model, "onnx", classes=model.classes)
        except OnnxError as exc:
            # Not a security matter (the checksum matched): this onnxruntime disagrees, say.
            log.warning("%s%s not used (%s): serving the pipeline", owner, onnx.path, exc)
    else:
        log.info("%s%s has no ONNX file: serving the pickled pipeline", owner, path)
    pipeline = unpickle(payload, f"{owner}{path}")
    task = metadata.task
    classes = tuple(str(c) for c in getattr(pipeline, "classes_", ())) if task == "classification" else ()
    if task == "classification" and not hasattr(pipeline, "predict_proba"):
        return Model(pipeline.predict, "pipeline", pipeline, labels_only=True, classes=classes)
    return Model(pipeline_answers(pipeline, task), "pipeline", pipeline, classes=classes)


@dataclass(frozen=True)
class Answers:
    """A batch's answers as arrays, one row per input row: what every response format is built from."""

    classes: tuple[str, ...]  # the probability columns' order (classification)
    # int per row, the label's position in `classes` (classification): the metrics and the drift
    # window count these in bulk, with no string per row.
    label_index: np.ndarray | None = None
    probabilities: np.ndarray | None = None  # float64 [rows, classes], rounded to 6 places
    values: np.ndarray | None = None  # float64 per row (regression)

    def __len__(self) -> int:
        present = self.label_index if self.label_index is not None else self.values
        return 0 if present is None else len(present)

    @cached_property
    def labels(self) -> np.ndarray | None:
        """The label per row (str, in an object array), for the formats that write it."""
        if self.label_index is None:
            return None
        return np.asarray(self.classes, dtype=object)[self.label_index]

    def label_counts(self) -> dict[str, int]:
        """Rows per label, or per `value` for a regression: what the metrics count."""
        if self.label_index is None:
            return {"value": len(self)}
        counts = np.bincount(self.label_index, minlength=len(self.classes)).tolist()
        return {label: count for label, count in zip(self.classes, counts, strict=True) if count}

    def rows(self) -> list[dict[str, Any]]:
        """The JSON answer's `predictions`: label and probabilities, or value, per row."""
        if self.values is not None:
            return [{"value": v} for v in self.values.tolist()]
        labels = self.labels.tolist() if self.labels is not None else []
        if self.probabilities is None:
            return [{"label": label, "probabilities": None} for label in labels]
        classes = self.classes
        return [
            {"label": label, "probabilities": dict(zip(classes, p, strict=True))}
            for label, p in zip(labels, self.probabilities.tolist(), strict=True)
        ]


def infer(model: Model, matrix: np.ndarray, metadata: ModelMetadata) -> Answers:
    """One model call for the batch.

    A row without a finite answer (or whose probabilities do not sum to 1) refuses the whole
    request with a RowError naming every such row, never a 500 or a silently shorter answer."""
    task, classes = metadata.task, tuple(metadata.classes)
    if task == "classification" and model.labels_only:
        # The model's classes are model.json's (checked at load): each label has its position.
        position = {label: i for i, label in enumerate(classes)}
        index = np.fromiter((position[str(label)] for label in model.call(matrix)), dtype=np.intp)
        return Answers(classes, label_index=index)
    found = model.call(matrix)
    usable = finite_rows(found, task)
    if not usable.all():
        raise RowError(unanswerable(matrix, np.flatnonzero(~usable), metadata.features))
    if task == "regression":
        return Answers(classes, values=np.asarray(found, dtype=np.float64))
    return Answers(classes, label_index=found.argmax(axis=1), probabilities=found.round(6))


def answers(model: Model, matrix: np.ndarray, metadata: ModelMetadata) -> list[dict[str, Any]]:
    """infer()'s answers shaped as the JSON API answers them."""
    return infer(model, matrix, metadata).rows()


def unanswerable(matrix: np.ndarray, rows: np.ndarray, features: list[Feature]) -> list[dict[str, Any]]:
    """One error per refused row and feature far outside its training range (the likely cause)."""
    errors: list[dict[str, Any]] = []
    for row in rows.tolist():
        found = []
        for i, feature in enumerate(features):
            value = matrix[row, i]
            if feature.type != "numeric" or feature.min is None or feature.max is None or value != value:
                continue
            span = max(feature.max - feature.min, 1e-12)
            if not feature.min - span <= float(value) <= feature.max + span:
                found.append(no_finite_answer(row, feature))
        errors += found or [no_finite_answer(row, None)]
    return errors


def _drift_monitor(model_dir: Path, metadata: ModelMetadata, settings: DriftSettings) -> DriftMonitor | None:
    path = model_dir / REFERENCE_PROFILE_FILE
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
