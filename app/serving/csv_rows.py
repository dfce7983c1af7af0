"""CSV in and out of /predict/csv: the rows of an uploaded file, and the predictions as CSV.

Parsing checks the file's shape only (encoding, header, field counts, the row limit); the values
are validated by the model's request schema, which names each bad value's line.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from typing import Any

from app.core.artifacts import ModelMetadata


class CsvError(ValueError):
    """The file is not a CSV of the model's columns; the message names the line."""


@dataclass(frozen=True)
class CsvRows:
    header: list[str]
    records: list[dict[str, Any]]  # column -> cell, an empty cell as None
    lines: list[int]  # each record's line in the file, for error messages


def parse_csv(data: bytes, expected: list[str], max_rows: int) -> CsvRows:
    """The header naming exactly the `expected` columns, then 1 to max_rows records."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CsvError(f"the CSV is not UTF-8 text (byte {exc.start})") from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = [name.strip() for name in next(reader, [])]
        if not any(header):
            raise CsvError("line 1: the CSV is empty: the first line must name the feature columns")
        _check_header(header, expected)
        records: list[dict[str, Any]] = []
        lines: list[int] = []
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank lines, e.g. a trailing newline
            if len(row) != len(header):
                raise CsvError(f"line {reader.line_num}: expected {len(header)} fields, found {len(row)}")
            if len(records) == max_rows:
                raise CsvError(f"line {reader.line_num}: more than {max_rows} rows")
            records.append({name: (v.strip() or None) for name, v in zip(header, row, strict=True)})
            lines.append(reader.line_num)
    except csv.Error as exc:
        raise CsvError(f"line {reader.line_num}: malformed CSV: {exc}") from None
    if not records:
        raise CsvError("the CSV has a header but no rows")
    return CsvRows(header, records, lines)


def _check_header(header: list[str], expected: list[str]) -> None:
    duplicates = sorted({n for n in header if header.count(n) > 1})
    missing = [n for n in expected if n not in header]
    unexpected = [n for n in header if n not in expected]
    if duplicates or missing or unexpected:
        problems = [
            f"{label} column(s) {', '.join(names)}"
            for label, names in (("duplicate", duplicates), ("missing", missing), ("unexpected", unexpected))
            if names
        ]
        raise CsvError(f"line 1: {'; '.join(problems)} (expected: {', '.join(expected)})")


def format_predictions(metadata: ModelMetadata, rows: CsvRows, predictions: list[dict[str, Any]]) -> str:
    """The input columns as sent, then `prediction` (regression) or `label` and one `proba_<class>` each."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    header = rows.header
    if metadata.task == "regression":
        writer.writerow([*header, "prediction"])
        for record, p in zip(rows.records, predictions, strict=True):
            writer.writerow([*(record[n] or "" for n in header), p["value"]])
    else:
        classes = metadata.classes or list((predictions[0]["probabilities"] or {}).keys())
        writer.writerow([*header, "label", *(f"proba_{c}" for c in classes)])
        for record, p in zip(rows.records, predictions, strict=True):
            probabilities = p["probabilities"] or {}
            writer.writerow(
                [*(record[n] or "" for n in header), p["label"], *(probabilities.get(c, "") for c in classes)]
            )
    return out.getvalue()
