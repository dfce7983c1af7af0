"""/predict's JSON answer, encoded by msgspec straight from the answers' arrays.

A row's answer as a dict of dicts, then serialised, cost more than scoring it once a batch has a few
dozen rows. Here each row is a msgspec Struct made for the model's classes (once per class order),
built by `map` over the arrays' columns and encoded in C: the same JSON as the dicts would give,
`{"prediction_id": "...", "label": "setosa", "probabilities": {"setosa": 0.98, ...}}`, with the
shortest float that reads back the same, as orjson writes it too.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import msgspec

from app.serving.predictor import Answers

_encoder = msgspec.json.Encoder()


class _Value(msgspec.Struct):
    prediction_id: str
    value: float


class _Label(msgspec.Struct):
    """A classifier without probabilities."""

    prediction_id: str
    label: str
    probabilities: None = None


@lru_cache(maxsize=64)
def _prediction_type(classes: tuple[str, ...]) -> tuple[type, type] | None:
    """The Struct of one row's answer, and of its probabilities, keyed by these class names; None
    when a name cannot be a Struct's key (msgspec refuses quotes, backslashes, control characters)."""
    fields = [f"p{i}" for i in range(len(classes))]
    try:
        probabilities = msgspec.defstruct(
            "Probabilities",
            [(name, float) for name in fields],
            rename=dict(zip(fields, classes, strict=True)),
        )
    except ValueError:
        return None
    prediction = msgspec.defstruct(
        "Prediction", [("prediction_id", str), ("label", str), ("probabilities", probabilities)]
    )
    return prediction, probabilities


def predictions(answers: Answers, ids: list[str]) -> list[Any]:
    """The `predictions` member, as Structs msgspec encodes: one per row, in order, with its id."""
    if answers.values is not None:
        return list(map(_Value, ids, answers.values.tolist()))
    labels = answers.labels.tolist() if answers.labels is not None else []
    if answers.probabilities is None:
        return list(map(_Label, ids, labels))
    types = _prediction_type(answers.classes)
    if types is None:  # dicts: slower, any key
        return [{"prediction_id": i, **row} for i, row in zip(ids, answers.rows(), strict=True)]
    prediction, probabilities = types
    columns = answers.probabilities.T.tolist()  # one list per class, so each row is one call
    return list(map(prediction, ids, labels, map(probabilities, *columns)))


def encode(document: dict[str, Any]) -> bytes:
    """A JSON document that holds `predictions(...)` lists (and plain values)."""
    return _encoder.encode(document)
