"""/predict's answer encoded by msgspec from the arrays reads back as the per-row dicts did."""

from __future__ import annotations

import json

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from app.serving import json_answer
from app.serving.predictor import Answers

# Class names a model may have: digits, spaces, non-ASCII; and ones no Struct key may hold.
CLASSES = ("0", "setosa", "two words", "back-slash", "café ☕")
AWKWARD = ("0", 'a "quoted" one', "back\\slash", "tab\there", "café ☕")


def _ids(answers: Answers) -> list[str]:
    return [f"key-{i}" for i in range(len(answers))]


def _document(answers: Answers) -> bytes:
    predictions = json_answer.predictions(answers, _ids(answers))
    return json_answer.encode({"model_version": "v1", "predictions": predictions})


def _rows(answers: Answers) -> list[dict[str, object]]:
    """The per-row dicts, each with its id first."""
    return [{"prediction_id": i, **row} for i, row in zip(_ids(answers), answers.rows(), strict=True)]


@given(arrays(np.float64, st.tuples(st.integers(0, 40), st.just(len(CLASSES))), elements=st.floats(0, 1)))
def test_classification_reads_back_as_the_rows(raw: np.ndarray) -> None:
    probabilities = raw.round(6)
    answers = Answers(CLASSES, label_index=probabilities.argmax(axis=1), probabilities=probabilities)
    assert json.loads(_document(answers)) == {"model_version": "v1", "predictions": _rows(answers)}
    assert all(next(iter(p)) == "prediction_id" for p in json.loads(_document(answers))["predictions"])


@given(arrays(np.float64, st.integers(0, 40), elements=st.floats(allow_nan=False, allow_infinity=False)))
def test_regression_reads_back_as_the_rows(values: np.ndarray) -> None:
    answers = Answers((), values=values)
    assert json.loads(_document(answers))["predictions"] == _rows(answers)


def test_labels_alone_keep_a_null_probabilities_member() -> None:
    answers = Answers(CLASSES, label_index=np.array([4, 0]))
    assert json.loads(_document(answers))["predictions"] == [
        {"prediction_id": "key-0", "label": "café ☕", "probabilities": None},
        {"prediction_id": "key-1", "label": "0", "probabilities": None},
    ]


def test_rows_are_counted_by_label_in_bulk() -> None:
    answers = Answers(CLASSES, label_index=np.array([1, 1, 3, 1]), probabilities=np.zeros((4, 5)))
    assert answers.label_counts() == {"setosa": 3, "back-slash": 1}
    assert Answers((), values=np.zeros(7)).label_counts() == {"value": 7}
