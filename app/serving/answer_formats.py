"""Answers written as text a chunk at a time: CSV, NDJSON, or one JSON document, as /predict/csv streams them.

Each format writes an opening, then each chunk's rows, then a closing that says why the stream ended
early when it did (`StreamError`): the CSV answer's last line starts with `# error: `, the NDJSON
answer's last object is `{"error": {...}}`, the JSON document gets an `"error"` member after its
`predictions` and stays valid JSON.

A million rows are written in well under a second because nothing is done per row in Python but
joining strings: probabilities (rounded to 6 places by the model call) are written with 6 decimals,
`0.982913`, by numpy for the whole chunk at once, together with the constant text around them
(`RowTemplate`); labels are encoded once per class. Regression values are written as Python's repr.
"""

from __future__ import annotations

import csv
import io
import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.core.artifacts import ModelMetadata
from app.serving.predictor import Answers

_DECIMALS = 6
_POWERS = 10 ** np.arange(_DECIMALS, -1, -1, dtype=np.int32)  # 10^6 ... 1
_ZERO, _POINT = ord("0"), ord(".")


def _json(value: Any) -> str:
    # As starlette's JSONResponse writes it.
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _csv_line(cells: list[str]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(cells)
    return out.getvalue()[:-1]


def _interleave(*columns: list[str]) -> str:
    """The columns' strings joined row by row: a[0] b[0] a[1] b[1] ..."""
    parts = [""] * (len(columns) * len(columns[0]))
    for i, column in enumerate(columns):
        parts[i :: len(columns)] = column
    return "".join(parts)


class RowTemplate:
    """Constant text with a probability in each `None` slot, written for every row of a chunk at once."""

    def __init__(self, pieces: list[str | None]) -> None:
        codes: list[int] = []
        self._slots: list[int] = []
        for piece in pieces:
            if piece is None:
                self._slots.append(len(codes))
                codes += [_ZERO, _POINT] + [_ZERO] * _DECIMALS
            else:
                codes += map(ord, piece)
        self._codes = np.array(codes, dtype=np.uint32)

    def fill(self, probabilities: np.ndarray) -> list[str]:
        """One string per row of the [rows, slots] probabilities, each in [0, 1]."""
        rows = np.empty((len(probabilities), len(self._codes)), dtype=np.uint32)
        rows[:] = self._codes
        # Exact: the values are already rounded to 6 places, so each is a whole number of millionths.
        millionths = np.clip(np.rint(probabilities * 10**_DECIMALS), 0, 10**_DECIMALS).astype(np.int32)
        digits = millionths[:, :, None] // _POWERS % 10 + _ZERO  # the units digit, then the decimals
        for column, start in enumerate(self._slots):
            rows[:, start] = digits[:, column, 0]
            rows[:, start + 2 : start + 2 + _DECIMALS] = digits[:, column, 1:]
        # The code points of each row, read as one string of that many characters.
        return rows.view(f"<U{len(self._codes)}").ravel().tolist()


class _Encoded(dict[str, str]):
    """Each label written once, in the format's encoding: a few classes, a million rows."""

    def __init__(self, encode: Callable[[str], str]) -> None:
        super().__init__()
        self._encode = encode

    def __missing__(self, label: str) -> str:
        self[label] = encoded = self._encode(label)
        return encoded

    def of(self, answers: Answers) -> list[str]:
        return [self[label] for label in answers.labels.tolist()] if answers.labels is not None else []


@dataclass(frozen=True)
class StreamError:
    """What ended an answer early: the problem, and the status it would have had before any answer."""

    status: int  # 422 for a bad line, 413 for a body past MAX_CSV_BYTES
    detail: str | list[dict[str, Any]]  # as in an error answer's {"detail": ...}
    line: int | None = None  # the bad line, when there is one

    def summary(self) -> str:
        """One line: `line 734512: sepal_width: Input should be a valid number, ...`."""
        if isinstance(self.detail, str):
            text = self.detail
        else:
            problems = "; ".join(
                f"{e['field']}: {e['msg']}" if "field" in e else e["msg"] for e in self.detail
            )
            text = f"line {self.line}: {problems}" if self.line is not None else problems
        return " ".join(text.split())  # one line, whatever a message holds

    def as_json(self) -> dict[str, Any]:
        return {"status": self.status, "line": self.line, "detail": self.detail}


class AnswerFormat(ABC):
    media_type: str

    def __init__(self, metadata: ModelMetadata) -> None:
        self.metadata = metadata

    def opening(self) -> str:
        return ""

    @abstractmethod
    def rows(self, echo: list[str], answers: Answers, ids: list[str], first: bool) -> str:
        """A chunk's answers; `echo` holds each row's input cells as CSV (the CSV format repeats them),
        `ids` each row's prediction id (URL-safe characters: written as they are)."""

    @abstractmethod
    def closing(self, error: StreamError | None) -> str:
        """The end of the answer: complete, or cut short by `error`."""


class _JsonItems(AnswerFormat):
    """Each row as the JSON object /predict answers for it, after `before` and followed by `after`."""

    before = ""
    after = ""

    def __init__(self, metadata: ModelMetadata) -> None:
        super().__init__(metadata)
        self._labels = _Encoded(_json)
        pieces: list[str | None] = []
        for i, name in enumerate(metadata.classes):
            pieces += [("," if i else "") + _json(name) + ":", None]
        self._probabilities = RowTemplate([',"probabilities":{', *pieces, "}}" + self.after])

    def items(self, answers: Answers, ids: list[str]) -> str:
        rows = len(answers)
        opening = self.before + '{"prediction_id":"'
        if answers.values is not None:
            values = list(map(repr, answers.values.tolist()))
            return _interleave(
                [opening] * rows, ids, ['","value":'] * rows, values, ["}" + self.after] * rows
            )
        if answers.probabilities is None:
            ends = [',"probabilities":null}' + self.after] * rows
        else:
            ends = self._probabilities.fill(answers.probabilities)
        return _interleave([opening] * rows, ids, ['","label":'] * rows, self._labels.of(answers), ends)


class JsonAnswer(_JsonItems):
    """`{"model_version": ..., "predictions": [...]}`, as the small CSVs were always answered."""

    media_type = "application/json"
    before = ","

    def opening(self) -> str:
        return '{"model_version":' + _json(self.metadata.version) + ',"predictions":['

    def rows(self, echo: list[str], answers: Answers, ids: list[str], first: bool) -> str:
        text = self.items(answers, ids)
        return text[1:] if first else text  # no comma before the very first object

    def closing(self, error: StreamError | None) -> str:
        return "]}" if error is None else '],"error":' + _json(error.as_json()) + "}"


class NdjsonAnswer(_JsonItems):
    """One JSON object per line and row; a last `{"error": ...}` line when a bad line ended it."""

    media_type = "application/x-ndjson"
    after = "\n"

    def rows(self, echo: list[str], answers: Answers, ids: list[str], first: bool) -> str:
        return self.items(answers, ids)

    def closing(self, error: StreamError | None) -> str:
        return "" if error is None else _json({"error": error.as_json()}) + "\n"


class CsvAnswer(AnswerFormat):
    """The input columns as sent, `prediction_id`, then `prediction` (regression) or `label` and one
    `proba_<class>` each."""

    media_type = "text/csv"

    def __init__(self, metadata: ModelMetadata, columns: list[str]) -> None:
        super().__init__(metadata)
        self.columns = columns
        self._labels = _Encoded(lambda label: "," + _csv_line([label]))
        self._probabilities = RowTemplate([*(piece for _ in metadata.classes for piece in (",", None)), "\n"])

    def opening(self) -> str:
        if self.metadata.task == "regression":
            return _csv_line([*self.columns, "prediction_id", "prediction"]) + "\n"
        probabilities = [f"proba_{c}" for c in self.metadata.classes]
        return _csv_line([*self.columns, "prediction_id", "label", *probabilities]) + "\n"

    def rows(self, echo: list[str], answers: Answers, ids: list[str], first: bool) -> str:
        commas = [","] * len(echo)
        if answers.values is not None:
            values = list(map(repr, answers.values.tolist()))
            return _interleave(echo, commas, ids, commas, values, ["\n"] * len(echo))
        if answers.probabilities is None:  # a classifier without probabilities: the columns stay, empty
            empty = "," * len(self.metadata.classes) + "\n"
            return _interleave(echo, commas, ids, self._labels.of(answers), [empty] * len(echo))
        return _interleave(
            echo, commas, ids, self._labels.of(answers), self._probabilities.fill(answers.probabilities)
        )

    def closing(self, error: StreamError | None) -> str:
        return "" if error is None else f"# error: {error.summary()}\n"
