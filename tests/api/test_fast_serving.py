"""Predictor.load serves a numeric model from its compiled arrays, with the pipeline's answers."""

from __future__ import annotations

from pathlib import Path

import joblib
import numpy as np
from api_support import write_model

from app.serving.predictor import Predictor

ROWS = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, np.nan, 2.3]])


def _pipeline_answers(model_dir: Path) -> np.ndarray:
    return joblib.load(model_dir / "model.joblib").predict_proba(ROWS)


def test_a_numeric_model_serves_from_its_arrays_without_unpickling(tmp_path: Path):
    write_model(tmp_path / "iris")
    predictor = Predictor.load(tmp_path / "iris", max_rows=10)
    assert predictor.model.source == "compiled"
    assert predictor.model.pipeline is None
    for answer, probabilities in zip(
        predictor.predict(ROWS), _pipeline_answers(tmp_path / "iris"), strict=True
    ):
        assert list(answer["probabilities"].values()) == list(probabilities.round(6))


def test_a_folder_without_arrays_compiles_the_unpickled_pipeline(tmp_path: Path):
    write_model(tmp_path / "iris", compiled=False)
    predictor = Predictor.load(tmp_path / "iris", max_rows=10)
    assert predictor.model.source == "pipeline-compiled"
    assert predictor.model.pipeline is not None
    for answer, probabilities in zip(
        predictor.predict(ROWS), _pipeline_answers(tmp_path / "iris"), strict=True
    ):
        assert list(answer["probabilities"].values()) == list(probabilities.round(6))


def test_a_categorical_model_serves_through_the_pipeline(tmp_path: Path):
    metadata = write_model(tmp_path / "colors", "colors")
    assert metadata.compiled is None
    predictor = Predictor.load(tmp_path / "colors", max_rows=10)
    assert predictor.model.source == "pipeline"
