"""Labelled predictions from the prediction log, as rows of the training data (POST /train's
include_feedback).

Each logged row becomes a line of the data's CSV: its features under the data's columns, its ground
truth under the target, nothing under data.drop's columns (serving never sees them). The lines go
right after the header, so prepare's messages name them by line (line 2 is the newest), and prepare
checks them as it checks any data: a value it refuses fails the job, saying which line.

A row whose features are not the data's feature columns (a feature renamed, added or dropped since it
was logged) has no place in the data: it is left out and counted, with the reason for the first one.
Failing the job instead would block retraining with feedback until such rows age out of the log.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pandas as pd

from app.core.messages import FeedbackOutcome, FeedbackRow
from app.pipeline.dataset import RawData, target_name
from app.pipeline.params import DataParams


class _Misfit(ValueError):
    """A logged row that cannot be placed under the data's columns; the message says why."""


def add_feedback(raw: RawData, rows_file: Path, params: DataParams) -> tuple[RawData, FeedbackOutcome]:
    """`raw` with the placeable rows of `rows_file` (FeedbackRows, one a line) after its header."""
    header, _, body = raw.csv_bytes.partition(b"\n")
    columns = _columns(header)
    target = target_name(raw, params)
    if columns is None or target not in columns:
        # The data itself is unusable: prepare says why, on the data as it is.
        return raw, FeedbackOutcome(rows=0)
    features = {c for c in columns if c != target and c not in params.drop}

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    rows = refused = 0
    reason = None
    for line in rows_file.read_text().splitlines():
        row = FeedbackRow.model_validate_json(line)
        try:
            cells = _cells(row, columns, target, features, raw.name)
        except _Misfit as exc:
            refused += 1
            reason = reason or str(exc)
            continue
        writer.writerow(cells)
        rows += 1
    outcome = FeedbackOutcome(rows=rows, refused=refused, reason=reason)
    if rows == 0:
        return raw, outcome
    lines = "line 2" if rows == 1 else f"lines 2-{rows + 1}"
    plural = "" if rows == 1 else "s"
    name = f"{raw.name} with {rows} labelled prediction{plural} ({lines})"
    return RawData(name=name, csv_bytes=header + b"\n" + out.getvalue().encode() + body), outcome


def _columns(header: bytes) -> list[str] | None:
    """The data's column names, read as prepare reads them; None when the header is unreadable."""
    try:
        frame = pd.read_csv(io.BytesIO(header), dtype=str, nrows=0, skipinitialspace=True)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError):
        return None
    return [str(c).strip() for c in frame.columns]


def _cells(row: FeedbackRow, columns: list[str], target: str, features: set[str], data: str) -> list[str]:
    try:
        values = json.loads(row.features)
    except ValueError:
        raise _Misfit("its logged features are not JSON") from None
    if not isinstance(values, dict):
        raise _Misfit("its logged features are not a JSON object")
    unexpected = sorted(values.keys() - features)
    if unexpected:
        raise _Misfit(f"feature '{unexpected[0]}' is not a column of {data}")
    missing = sorted(features - values.keys())
    if missing:
        raise _Misfit(f"column '{missing[0]}' of {data} is not among its features")
    truth = row.label if row.label is not None else row.value
    cells = []
    for column in columns:
        value = truth if column == target else values.get(column)  # data.drop's columns stay empty
        if isinstance(value, dict | list):
            raise _Misfit(f"feature '{column}' has a nested value")
        cells.append("" if value is None else str(value))
    return cells
