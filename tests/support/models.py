"""Tiny models fitted in a few seconds and written the way train writes them, for tests that serve one."""

from __future__ import annotations

import tempfile
from pathlib import Path

import joblib
import numpy as np
from sklearn.datasets import load_iris

from app.core.artifacts import (
    METADATA_FILE,
    ONNX_FILE,
    CandidateInfo,
    Feature,
    ModelMetadata,
    ReferenceProfile,
    matrix_dtype,
    sha256_of,
    write_json_atomic,
)
from app.pipeline.candidates import Fitted, build_pipeline
from app.pipeline.profile import build_profile
from app.pipeline.train import FolderFacts, write_model_folder, write_onnx

IRIS_FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
IRIS_ROW = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
COLOR_ROW = {"color": "red", "size": 2.0}


def _iris() -> tuple[list[Feature], np.ndarray, np.ndarray, list[str]]:
    data = load_iris()
    x = data.data.astype(np.float64)
    classes = [str(c) for c in data.target_names]
    y = np.array([classes[i] for i in data.target])
    features = [
        Feature(name=n, type="numeric", min=float(x[:, i].min()), max=float(x[:, i].max()))
        for i, n in enumerate(IRIS_FEATURES)
    ]
    return features, x, y, classes


def _colors() -> tuple[list[Feature], np.ndarray, np.ndarray]:
    """A regression with a categorical feature and a numeric one that had gaps in training."""
    rng = np.random.default_rng(0)
    colors = np.array(["red", "green", "blue"])[rng.integers(0, 3, 120)]
    size = rng.uniform(0, 10, 120)
    y = size * 2 + (colors == "red") * 5
    size_with_gaps = size.astype(object)
    size_with_gaps[::10] = np.nan
    features = [
        Feature(name="color", type="categorical", categories=["blue", "green", "red"]),
        Feature(name="size", type="numeric", min=0.0, max=10.0, missing_fraction=0.1),
    ]
    x = np.column_stack([colors.astype(object), size_with_gaps]).astype(matrix_dtype(features))
    return features, x, y


def write_model(
    model_dir: Path,
    kind: str = "iris",
    version: str = "v1",
    onnx: bool = True,
    candidate: str | None = None,
) -> ModelMetadata:
    """Fit a small model with the pipeline's own code and write what train writes.

    kind: iris (numeric classification), colors (regression on a categorical and a numeric column
    with gaps) or shades (the same columns, classified). onnx=False leaves out model.onnx, as an
    older train (or a model that did not convert) did. candidate: any of the task's candidates."""
    model_dir.mkdir(parents=True, exist_ok=True)
    if kind == "iris":
        features, x, y, classes = _iris()
        task, name, target = "classification", "logistic_regression", "species"
    elif kind == "shades":
        features, x, values = _colors()
        y = np.where(values > np.median(values), "dark", "light")
        classes, task, name, target = ["dark", "light"], "classification", "logistic_regression", "shade"
    else:
        features, x, y = _colors()
        classes, task, name, target = [], "regression", "ridge", "price"
    name = candidate or name
    pipeline = build_pipeline(name, task, {}, features, seed=0)
    pipeline.fit(x, y)
    facts = FolderFacts(
        version=version,
        task=task,  # type: ignore[arg-type]
        target=target,
        features=features,
        classes=classes,
        metric="f1_macro" if task == "classification" else "rmse",
        params={"seed": 0},
        trained_at="2026-11-23T00:00:00+00:00",
        git_commit="0" * 40,
        data_md5="0" * 32,
    )
    fitted = Fitted(name, pipeline, {}, cv_score=0.9, metrics={"score": 0.9})
    with tempfile.TemporaryDirectory() as scratch:
        profile = Path(scratch) / "profile.json"
        write_json_atomic(profile, build_reference_profile(features, target, task, x, y))
        metadata = write_model_folder(model_dir, [fitted], fitted, facts, profile)
    if not onnx:
        for path in [ONNX_FILE, *(c.onnx.path for c in metadata.candidates if c.onnx)]:
            (model_dir / path).unlink(missing_ok=True)
        candidates = [c.model_copy(update={"onnx": None}) for c in metadata.candidates]
        metadata = metadata.model_copy(update={"onnx": None, "candidates": candidates})
        write_json_atomic(model_dir / METADATA_FILE, metadata)
    return metadata


def build_reference_profile(
    features: list[Feature], target: str, task: str, x: np.ndarray, y: np.ndarray
) -> ReferenceProfile:
    """The training profile, as prepare builds it: serving measures drift against it."""
    import pandas as pd

    frame = pd.DataFrame(x, columns=[f.name for f in features])
    for feature in features:
        if feature.type == "numeric":
            frame[feature.name] = frame[feature.name].astype(float)
    frame[target] = y if task == "regression" else y.astype(str)
    return build_profile(frame, features, target, task, bins=10)  # type: ignore[arg-type]


def add_candidate(model_dir: Path, name: str, score: float, labels_prefix: str = "") -> None:
    """Fit one more iris candidate and list it in model.json, the way train keeps every candidate.

    labels_prefix fits it on renamed classes: a candidate that does not belong with this champion."""
    from app.core.artifacts import CANDIDATES_DIR

    metadata = ModelMetadata.read(model_dir)
    features, x, y, _ = _iris()
    y = np.array([labels_prefix + label for label in y])
    pipeline = build_pipeline(name, "classification", {}, features, seed=0)
    pipeline.fit(x, y)
    path = Path(CANDIDATES_DIR) / f"{name}.joblib"
    (model_dir / CANDIDATES_DIR).mkdir(exist_ok=True)
    joblib.dump(pipeline, model_dir / path)
    info = CandidateInfo(
        name=name,
        path=str(path),
        sha256=sha256_of(model_dir / path),
        onnx=write_onnx(name, pipeline, "classification", features, model_dir, path.with_suffix(".onnx"))[0],
        cv_score=score,
        metrics={metadata.metric: score},
    )
    updated = metadata.model_copy(update={"candidates": [*metadata.candidates, info]})
    write_json_atomic(model_dir / METADATA_FILE, updated)
