"""Predictor.load picks the compiled path for numeric models and keeps the pipeline's answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from api_support import write_model

from app.serving.predictor import Predictor


def test_numeric_model_serves_through_the_verified_fast_path(tmp_path: Path):
    write_model(tmp_path / "iris")
    predictor = Predictor.load(tmp_path / "iris", max_rows=10)
    assert predictor.fast is not None
    rows = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, np.nan, 2.3]])
    answers = predictor.predict(rows)
    expected = predictor.pipeline.predict_proba(rows)
    for answer, probabilities in zip(answers, expected, strict=True):
        assert list(answer["probabilities"].values()) == list(probabilities.round(6))


def test_categorical_model_serves_through_the_pipeline(tmp_path: Path):
    write_model(tmp_path / "colors", "colors")
    assert Predictor.load(tmp_path / "colors", max_rows=10).fast is None
