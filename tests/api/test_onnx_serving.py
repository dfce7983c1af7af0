"""Predictor.load serves every model folder from its ONNX file, with the pipeline's answers."""

from __future__ import annotations

from pathlib import Path

import joblib
import numpy as np
import pytest

from app.serving.predictor import Predictor
from app.serving.validation import RowError
from tests.support.models import write_model

ROWS = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, np.nan, 2.3]])


def _pipeline_answers(model_dir: Path, rows: np.ndarray) -> np.ndarray:
    return joblib.load(model_dir / "model.joblib").predict_proba(rows)


def _probabilities(answers: list[dict]) -> np.ndarray:
    return np.array([list(a["probabilities"].values()) for a in answers])


def test_a_numeric_model_serves_from_onnx_without_unpickling(tmp_path: Path):
    write_model(tmp_path / "iris")
    predictor = Predictor.load(tmp_path / "iris", max_rows=10)
    assert predictor.model.source == "onnx"
    assert predictor.model.pipeline is None
    expected = _pipeline_answers(tmp_path / "iris", ROWS)
    np.testing.assert_allclose(_probabilities(predictor.predict(ROWS)), expected, atol=1e-6)


def test_a_folder_without_onnx_serves_the_unpickled_pipeline(tmp_path: Path):
    write_model(tmp_path / "iris", onnx=False)
    predictor = Predictor.load(tmp_path / "iris", max_rows=10)
    assert predictor.model.source == "pipeline"
    assert predictor.model.pipeline is not None
    expected = _pipeline_answers(tmp_path / "iris", ROWS).round(6)
    np.testing.assert_array_equal(_probabilities(predictor.predict(ROWS)), expected)


def test_a_categorical_model_with_gaps_serves_from_onnx(tmp_path: Path):
    metadata = write_model(tmp_path / "colors", "colors")
    assert metadata.onnx is not None
    predictor = Predictor.load(tmp_path / "colors", max_rows=10)
    assert predictor.model.source == "onnx"
    rows = np.array([["red", 2.0], ["blue", np.nan], ["", 4.0]], dtype=object)
    pipeline = joblib.load(tmp_path / "colors" / "model.joblib")
    values = [a["value"] for a in predictor.predict(rows)]
    np.testing.assert_allclose(values, pipeline.predict(rows), rtol=1e-6)


@pytest.mark.parametrize("onnx", [True, False], ids=["onnx", "pipeline"])
def test_extreme_floats_get_a_row_error_naming_the_row_and_field_never_nan(tmp_path: Path, onnx: bool):
    # The fuzzer's rows: the compiled RBF kernel used to give NaN probabilities, then a 500.
    write_model(tmp_path / "iris", onnx=onnx)
    predictor = Predictor.load(tmp_path / "iris", max_rows=10)
    rows = np.array([[5.1, 3.5, 1.4, 0.2], [5.1, 1.7976931348623157e308, -5e-324, 0.2], [6.7, 3.0, 5.2, 2.3]])
    with pytest.raises(RowError) as refused:
        predictor.predict(rows)
    errors = refused.value.errors
    assert {e["row"] for e in errors} == {1}
    assert [e["field"] for e in errors] == ["sepal_width"]
    assert "far outside the training range" in errors[0]["msg"]
    # The other rows alone are answered, as the pipeline answers them.
    good = rows[[0, 2]]
    np.testing.assert_allclose(
        _probabilities(predictor.predict(good)), _pipeline_answers(tmp_path / "iris", good), atol=1e-6
    )
