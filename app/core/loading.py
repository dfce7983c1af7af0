"""Reading what the pipeline wrote: the bytes once, their sha256 checked against model.json, then used.

Serving, evaluate and the retraining job load model files only through here: no window in which a
file could change between the check and the load, and no pickle ever read before its checksum held.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from app.core.artifacts import METADATA_FILE, MODEL_FILE, ModelMetadata, Task


class ModelLoadError(Exception):
    """The model directory cannot be served: missing files, a checksum mismatch, a broken pickle."""


class ChecksumMismatch(ModelLoadError):
    pass


def read_verified(path: Path, sha256: str, what: str) -> bytes:
    """The file's bytes, if their sha256 is the one the pipeline recorded."""
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


def read_inside(model_dir: Path, relative: str, sha256: str, owner: str = "") -> bytes:
    """read_verified for a path model.json names, which must stay inside the model folder.
    `owner` prefixes errors ("candidate svc: ")."""
    path = (model_dir / relative).resolve()
    if not path.is_relative_to(model_dir.resolve()):
        raise ModelLoadError(f"{owner}path {relative} leaves the model folder")
    return read_verified(path, sha256, f"{owner}{relative}")


def unpickle(payload: bytes, what: str) -> Any:
    """joblib is pickle: only ever called on bytes read_verified returned."""
    try:
        import joblib  # here, not at import: an ONNX model never needs it
        import sklearn  # noqa: F401 - what the pickle holds
    except ImportError:
        # The serving image (Dockerfile, --target serving) leaves the training stack out.
        raise ModelLoadError(
            f"{what} is a scikit-learn pickle and scikit-learn is not installed here: serve a version "
            "with model.onnx, or run the full image"
        ) from None

    try:
        return joblib.load(io.BytesIO(payload))
    except Exception as exc:
        raise ModelLoadError(f"{what} cannot be unpickled: {type(exc).__name__}") from None


def load_pipeline(model_dir: Path, metadata: ModelMetadata | None = None) -> tuple[ModelMetadata, Any]:
    """model.json and the scikit-learn pipeline of model.joblib, verified first (training side:
    evaluate and the promotion gate score it)."""
    metadata = metadata or ModelMetadata.read(model_dir)
    if metadata.sha256 is None:
        raise ModelLoadError(f"version {metadata.version} was imported: it has no scikit-learn pipeline")
    payload = read_inside(model_dir, MODEL_FILE, metadata.sha256)
    return metadata, unpickle(payload, MODEL_FILE)


def pipeline_answers(pipeline: Any, task: Task) -> Callable[[np.ndarray], np.ndarray]:
    """A fitted pipeline's answers as serving gives them: predict_proba, or predict for a regression,
    as float64, with NaN for a row scikit-learn refuses. It refuses a whole batch for one row whose
    standardised value overflows: that batch is then asked again in halves, down to the rows refused
    (a few calls per refused row, not one per row: a forest pays a thread pool's start per call). The
    ONNX export checks its file against this very function, and serving falls back to it."""
    call = pipeline.predict if task == "regression" else pipeline.predict_proba
    refused = np.full((1,) if task == "regression" else (1, len(pipeline.classes_)), np.nan)

    def answer(rows: np.ndarray) -> np.ndarray:
        # np.errstate is per thread; warnings.catch_warnings would not be (serving calls this from
        # its thread pool), so the callers that want silence (the export) ask for it themselves.
        with np.errstate(all="ignore"):
            try:
                return np.asarray(call(rows), dtype=np.float64)
            except ValueError:
                if len(rows) == 1:
                    return refused.copy()
                middle = len(rows) // 2
                return np.concatenate([answer(rows[:middle]), answer(rows[middle:])])

    return answer
