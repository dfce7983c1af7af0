"""The prediction log's record of one model call, encoded whole: the format the writer produces,
the store decodes and migration 0007 converts the old per-row log into.

A request (or a CSV chunk) answered by one model call shares its time, model version, caller and id
prefix (`<request key>-<row position>`), so it is stored once, as one record keyed by (request key,
first row), with its sampled rows' inputs and answers as arrays:
- inputs: the float64 matrix's bytes when every feature is numeric (a NaN is a missing value), else
  msgspec JSON of the rows (lists in the features' order: strings, numbers, null);
- answers: label indexes into `classes` (uint8 for up to 256 classes, else int32) with the
  probabilities (float32, rows x classes: they are rounded to 6 places, which float32 holds, so
  rounding again gives the float64 answered back exactly), or values (float64);
- positions: the stored rows' offsets in the call (int32), null when every row is stored;
- a shadow challenger's answers to the same stored rows, with how many agreed with the champion's.
Encoding is a few array copies per record, never a Python loop per row; a row is decoded back into
the JSON objects the per-row log held (feedback, the Monitoring page, drift) only when asked for.

This is a storage format: a change needs a migration of what is stored.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec
import numpy as np

FLOAT_INPUTS = "f8"  # the float64 matrix's bytes, C order
JSON_INPUTS = "json"  # msgspec JSON: a list of rows, each a list in the features' order

# The columns of a record, in the order the writer's tuples hold them (app.db.prediction_log).
RECORD_COLUMNS = (
    "request_key", "first_row", "created_at", "model_version", "username", "rows", "logged",
    "positions", "features", "inputs_format", "inputs", "classes", "label_index", "probabilities",
    "answer_values", "confidence_sum",
)  # fmt: skip
# A shadow challenger's answers to a record's stored rows, and its agreement with the champion's.
SHADOW_COLUMNS = (
    "shadow_version", "shadow_classes", "shadow_label_index", "shadow_values", "shadow_compared",
    "shadow_agreed", "shadow_difference_sum",
)  # fmt: skip

# The first row of a one-row record whose id is its key, whole (split_id).
WHOLE_ID = -1

_encode = msgspec.json.Encoder().encode  # in C; NaN (a missing value) is written null
_decode = msgspec.json.decode


def split_id(prediction_id: str) -> tuple[str, int]:
    """(request key, row position) of an id. An id not of that form (written by hand, by tests and
    tools) is a key of its own at row WHOLE_ID."""
    key, dash, position = prediction_id.rpartition("-")
    if not dash or not key or not position.isdigit() or len(position) > 9:
        return prediction_id, WHOLE_ID
    return key, int(position)


def _blob(array: np.ndarray | None, dtype: str) -> bytes | None:
    return None if array is None else np.ascontiguousarray(array, dtype=dtype).tobytes()


def _index_dtype(classes: int) -> str:
    return "u1" if classes <= 256 else "<i4"


def encode_record(
    key: str,
    first: int,
    at: float,
    version: str,
    user: str,
    rows: int,
    positions: np.ndarray | None,
    features: Sequence[str],
    matrix: np.ndarray,
    classes: Sequence[str],
    label_index: np.ndarray | None,
    probabilities: np.ndarray | None,
    values: np.ndarray | None,
) -> list[Any]:
    """One record in RECORD_COLUMNS' order. `matrix` and the answers hold the stored rows only."""
    call = CallRows(key, first, at, user, rows, positions, matrix, label_index, probabilities, values)
    return encode_calls(version, features, classes, [call])[0]


class Call(Protocol):
    """One model call's stored rows, as the writer holds them (app.serving.prediction_log)."""

    @property
    def key(self) -> str: ...
    @property
    def first(self) -> int: ...
    @property
    def at(self) -> float: ...
    @property
    def user(self) -> str: ...
    @property
    def rows(self) -> int: ...  # the call's rows, stored or not
    @property
    def positions(self) -> np.ndarray | None: ...  # the stored rows' offsets; None: every row
    @property
    def matrix(self) -> np.ndarray: ...  # the stored rows
    @property
    def label_index(self) -> np.ndarray | None: ...
    @property
    def probabilities(self) -> np.ndarray | None: ...
    @property
    def values(self) -> np.ndarray | None: ...


@dataclass(frozen=True, slots=True)
class CallRows:
    """A Call made of arrays already cut to the stored rows (a sampled call, a migrated row)."""

    key: str
    first: int
    at: float
    user: str
    rows: int
    positions: np.ndarray | None
    matrix: np.ndarray
    label_index: np.ndarray | None
    probabilities: np.ndarray | None
    values: np.ndarray | None


def _arrays(arrays: list[np.ndarray | None]) -> list[np.ndarray] | None:
    """The calls' arrays of one kind, or None when they have none (all alike: `encode_calls`)."""
    return None if arrays[0] is None else [a for a in arrays if a is not None]


def encode_calls(
    version: str, features: Sequence[str], classes: Sequence[str], calls: Sequence[Call]
) -> list[list[Any]]:
    """The records of calls of one model version whose arrays are alike (the same columns and kinds
    of answer), each array encoded once for all of them and its bytes cut per call: a one-row call,
    the most frequent, costs a few slices of bytes rather than a dozen numpy calls. The mean
    confidence's sum is taken column by column (a loop over the classes): numpy's max along a row of
    a few classes costs ~20x more per row."""
    counts = np.fromiter((len(c.matrix) for c in calls), dtype=np.intp, count=len(calls))
    starts = np.concatenate(([0], np.cumsum(counts)))
    bounds = starts.tolist()
    features_json = _encode(list(features)).decode()
    classes_json = None if calls[0].label_index is None else _encode(list(classes)).decode()

    def cut(arrays: list[np.ndarray] | None, dtype: str) -> list[bytes | None]:
        if arrays is None:
            return [None] * len(calls)
        whole = np.ascontiguousarray(np.concatenate(arrays), dtype=dtype)
        width = whole.itemsize * (whole.shape[1] if whole.ndim == 2 else 1)
        data = whole.tobytes()
        return [data[a * width : b * width] for a, b in itertools.pairwise(bounds)]

    matrices = [c.matrix for c in calls]
    numeric = all(m.dtype == np.float64 for m in matrices)
    inputs = cut(matrices, "<f8") if numeric else [_encode(m.tolist()) for m in matrices]
    label_index = _arrays([c.label_index for c in calls])
    probabilities_list = _arrays([c.probabilities for c in calls])
    labels = cut(label_index, _index_dtype(len(classes)))
    probabilities = cut(probabilities_list, "<f4")
    values = cut(_arrays([c.values for c in calls]), "<f8")
    if probabilities_list is None:
        confidences: list[float | None] = [None] * len(calls)
    else:
        stacked = np.concatenate(probabilities_list)
        top = stacked[:, 0]
        for column in stacked.T[1:]:
            top = np.maximum(top, column)
        confidences = np.add.reduceat(top, starts[:-1]).tolist()
    inputs_format = FLOAT_INPUTS if numeric else JSON_INPUTS
    return [
        [
            c.key,
            c.first,
            c.at,
            version,
            c.user[:64],
            c.rows,
            logged,
            _blob(c.positions, "<i4"),
            features_json,
            inputs_format,
            data,
            classes_json,
            label,
            probability,
            value,
            confidence,
        ]
        for c, logged, data, label, probability, value, confidence in zip(
            calls, counts.tolist(), inputs, labels, probabilities, values, confidences, strict=True
        )
    ]


def encode_shadow(
    version: str,
    classes: Sequence[str],
    label_index: np.ndarray | None,
    values: np.ndarray | None,
    agreed: int,
    difference: float | None,
) -> list[Any]:
    """A shadow's answers to a record's stored rows, in SHADOW_COLUMNS' order."""
    compared = len(label_index) if label_index is not None else len(values) if values is not None else 0
    return [
        version,
        None if label_index is None else _encode(list(classes)).decode(),
        _blob(label_index, _index_dtype(len(classes))),
        _blob(values, "<f8"),
        compared,
        agreed,
        difference,
    ]


@dataclass(frozen=True)
class LoggedPrediction:
    """One stored row decoded: what the per-row log held for it."""

    prediction_id: str
    created_at: float
    model_version: str
    username: str
    features: dict[str, Any]  # the input row; a missing value is None
    answer: dict[str, Any]  # as /predict gave it
    predicted_label: str | None
    predicted_value: float | None
    confidence: float | None  # the top probability
    shadow_version: str | None
    shadow_label: str | None
    shadow_value: float | None


@dataclass(frozen=True)
class StoredRecord:
    """A record as read back (the columns of RECORD_COLUMNS and SHADOW_COLUMNS, by name)."""

    request_key: str
    first_row: int
    created_at: float
    model_version: str
    username: str
    rows: int
    logged: int
    positions: bytes | None
    features: str
    inputs_format: str
    inputs: bytes
    classes: str | None
    label_index: bytes | None
    probabilities: bytes | None
    answer_values: bytes | None
    confidence_sum: float | None
    shadow_version: str | None = None
    shadow_classes: str | None = None
    shadow_label_index: bytes | None = None
    shadow_values: bytes | None = None
    shadow_compared: int | None = None
    shadow_agreed: int | None = None
    shadow_difference_sum: float | None = None

    def offsets(self) -> np.ndarray:
        """The stored rows' positions in the call, in storage order."""
        if self.positions is None:
            return np.arange(self.logged)
        return np.frombuffer(self.positions, dtype="<i4")

    def stored_index(self, position: int) -> int | None:
        """Where row `first_row + position` is stored, or None when it was sampled out."""
        if not 0 <= position < self.rows:
            return None
        if self.positions is None:
            return position if position < self.logged else None
        offsets = self.offsets()
        found = int(np.searchsorted(offsets, position))
        return found if found < len(offsets) and offsets[found] == position else None

    def decode(self, limit: int | None = None, only: int | None = None) -> list[LoggedPrediction]:
        """The stored rows (the first `limit`, or only the one stored at index `only`)."""
        picked = slice(0, self.logged if limit is None else min(limit, self.logged))
        if only is not None:
            picked = slice(only, only + 1)
        names: list[str] = _decode(self.features)
        inputs = self._inputs(len(names))[picked]
        offsets = self.offsets()[picked].tolist()
        answers, labels, values, confidences = _answers(
            self.classes, self.label_index, self.probabilities, self.answer_values, picked
        )
        _, shadow_labels, shadow_values, _ = _answers(
            self.shadow_classes, self.shadow_label_index, None, self.shadow_values, picked
        )
        return [
            LoggedPrediction(
                prediction_id=self._id(offset),
                created_at=self.created_at,
                model_version=self.model_version,
                username=self.username,
                features=dict(zip(names, row, strict=True)),
                answer=answer,
                predicted_label=label,
                predicted_value=value,
                confidence=confidence,
                shadow_version=self.shadow_version,
                shadow_label=shadow_label,
                shadow_value=shadow_value,
            )
            for offset, row, answer, label, value, confidence, shadow_label, shadow_value in zip(
                offsets,
                inputs,
                answers,
                labels,
                values,
                confidences,
                shadow_labels,
                shadow_values,
                strict=True,
            )
        ]

    def _id(self, offset: int) -> str:
        if self.first_row == WHOLE_ID:
            return self.request_key
        return f"{self.request_key}-{self.first_row + offset}"

    def input_rows(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The first `limit` stored rows' inputs only, as JSON objects (a missing value is None)."""
        names: list[str] = _decode(self.features)
        rows = self._inputs(len(names))
        return [dict(zip(names, row, strict=True)) for row in rows[:limit]]

    def _inputs(self, columns: int) -> list[list[Any]]:
        if self.inputs_format == FLOAT_INPUTS:
            matrix = np.frombuffer(self.inputs, dtype="<f8").reshape(-1, columns)
            rows = matrix.astype(object)
            rows[np.isnan(matrix)] = None  # as the per-row log's JSON had it: null
            return rows.tolist()
        found: list[list[Any]] = _decode(self.inputs)
        return found


def _answers(
    classes: str | None,
    label_index: bytes | None,
    probabilities: bytes | None,
    values: bytes | None,
    picked: slice,
) -> tuple[list[dict[str, Any]], list[Any], list[Any], list[Any]]:
    """Per picked row: the answer as /predict gave it, the label, the value, the top probability."""
    if values is not None:
        found = np.frombuffer(values, dtype="<f8")[picked].tolist()
        nones = [None] * len(found)
        return [{"value": v} for v in found], nones, found, nones
    if label_index is None or classes is None:
        rows = picked.stop - picked.start
        return [{}] * rows, [None] * rows, [None] * rows, [None] * rows
    names: list[str] = _decode(classes)
    index = np.frombuffer(label_index, dtype=_index_dtype(len(names)))[picked]
    labels = np.asarray(names, dtype=object)[index].tolist()
    nones = [None] * len(labels)
    if probabilities is None:
        return [{"label": label} for label in labels], labels, nones, nones
    table = (
        np.frombuffer(probabilities, dtype="<f4").reshape(-1, len(names))[picked].astype(np.float64).round(6)
    )
    tops = table.max(axis=1).tolist()
    answers = [
        {"label": label, "probabilities": dict(zip(names, p, strict=True))}
        for label, p in zip(labels, table.tolist(), strict=True)
    ]
    return answers, labels, nones, tops


def record_of_row(row: dict[str, Any]) -> list[Any]:
    """A one-row record of a per-row log row (PredictionLogRow's columns, as a dict): migration 0007
    and the tests build records this way. Its shadow columns follow if it has a shadow answer."""
    key, first = split_id(row["prediction_id"])
    features: dict[str, Any] = (
        _decode(row["features"]) if isinstance(row["features"], str) else row["features"]
    )
    answer: dict[str, Any] = _decode(row["answer"]) if isinstance(row["answer"], str) else row["answer"]
    values = [[math.nan if v is None else v for v in features.values()]]
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values[0])
    matrix = (
        np.array(values, dtype=np.float64)
        if numeric
        else np.array(list(features.values()), dtype=object)[None, :]
    )
    classes: list[str] = []
    label_index = probabilities = predicted = None
    value = answer.get("value", row.get("predicted_value"))
    label = answer.get("label", row.get("predicted_label"))
    if value is not None:
        predicted = np.array([value], dtype=np.float64)
    elif label is not None:
        table = answer.get("probabilities")
        classes = list(table) if table else [str(label)]
        label_index = np.array([classes.index(str(label))])
        if table:
            probabilities = np.array([list(table.values())], dtype=np.float64)
    record = encode_record(
        key,
        first,
        float(row["created_at"]),
        row["model_version"],
        row.get("username", ""),
        1,
        None,
        list(features),
        matrix,
        classes,
        label_index,
        probabilities,
        predicted,
    )
    if probabilities is None and row.get("confidence") is not None:  # a confidence without its table
        record[RECORD_COLUMNS.index("confidence_sum")] = float(row["confidence"])
    return record + shadow_of_row(row)


def shadow_of_row(row: dict[str, Any], rtol: float = 0.01) -> list[Any]:
    """The SHADOW_COLUMNS of a per-row log row's shadow answer (all None without one), judged by
    the rule the shadow counts agreement with (numpy.isclose, app/serving/shadow.py's AGREEMENT_RTOL)."""
    version = row.get("shadow_version")
    if version is None:
        return [None] * len(SHADOW_COLUMNS)
    label, value = row.get("shadow_label"), row.get("shadow_value")
    champion_label, champion_value = row.get("predicted_label"), row.get("predicted_value")
    if value is not None:
        difference = None if champion_value is None else abs(value - champion_value)
        close = champion_value is not None and abs(value - champion_value) <= 1e-9 + rtol * abs(
            champion_value
        )
        return encode_shadow(version, [], None, np.array([value]), int(close), difference)
    index = None if label is None else np.array([0])
    return encode_shadow(
        version, [label] if label is not None else [], index, None, int(label == champion_label), None
    )
