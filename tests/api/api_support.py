"""Shared by the API tests: a tiny model written the way train writes it, and token helpers."""

from __future__ import annotations

import platform
from pathlib import Path

import joblib
import numpy as np
import sklearn
from fastapi.testclient import TestClient
from sklearn.datasets import load_iris

from app.core.artifacts import (
    METADATA_FILE,
    MODEL_FILE,
    ONNX_FILE,
    PROFILE_FILE,
    CandidateInfo,
    Feature,
    ModelMetadata,
    matrix_dtype,
    sha256_of,
    write_json_atomic,
)
from app.pipeline.candidates import build_pipeline
from app.pipeline.profile import build_profile
from app.pipeline.train import write_onnx

SECRET = "test-secret-key-for-the-api-suite"
ADMIN = ("admin", "admin-password-1")
USER = ("alice", "alice-password-1")

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
    joblib.dump(pipeline, model_dir / MODEL_FILE)
    sha = sha256_of(model_dir / MODEL_FILE)
    graph = write_onnx(name, pipeline, task, features, model_dir, Path(ONNX_FILE))[0] if onnx else None
    metadata = ModelMetadata(
        version=version,
        name=name,
        task=task,
        target=target,
        features=features,
        classes=classes,
        metric="f1_macro" if task == "classification" else "rmse",
        metrics={"score": 0.9},
        params={"seed": 0},
        trained_at="2026-11-23T00:00:00+00:00",
        git_commit="0" * 40,
        data_md5="0" * 32,
        sha256=sha,
        onnx=graph,
        python_version=platform.python_version(),
        sklearn_version=sklearn.__version__,
        candidates=[
            CandidateInfo(
                name=name, path=MODEL_FILE, sha256=sha, onnx=graph, cv_score=0.9, metrics={"score": 0.9}
            )
        ],
    )
    write_json_atomic(model_dir / METADATA_FILE, metadata)
    write_profile(model_dir, metadata, x, y)
    return metadata


def write_profile(model_dir: Path, metadata: ModelMetadata, x: np.ndarray, y: np.ndarray) -> None:
    """The training profile, as train copies it beside the model: serving measures drift against it."""
    import pandas as pd

    frame = pd.DataFrame(x, columns=metadata.feature_names)
    for feature in metadata.features:
        if feature.type == "numeric":
            frame[feature.name] = frame[feature.name].astype(float)
    frame[metadata.target] = y if metadata.task == "regression" else y.astype(str)
    profile = build_profile(frame, metadata.features, metadata.target, metadata.task, bins=10)
    write_json_atomic(model_dir / PROFILE_FILE, profile)


def get_token(client: TestClient, username: str, password: str, scope: str | None = None) -> str:
    form = {"username": username, "password": password} | ({"scope": scope} if scope else {})
    response = client.post("/token", data=form)
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


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
