"""CSV in: the header checked against the model's columns, then each chunk's rows as the model's matrix.

A chunk is read the fastest way that can vouch for it; one that cannot hands the chunk to the next:

1. an all-numeric model and a chunk of plain numbers (digits, signs, points, exponents, commas, line
   ends): numpy's C reader, a few million rows/s;
2. any chunk: the csv module's reader, then numpy a column at a time (floats, categories by np.isin);
3. a chunk that has a doubtful value: the model's request schema (pydantic), which words each error as
   /predict does and names its line.

1 and 2 take only what the schema takes (finite numbers, known categories, gaps where training had
some), so the schema decides every doubtful chunk and the values accepted never depend on the path.
Cells are stripped of surrounding whitespace; an empty cell is a gap.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app.core.artifacts import Feature
from app.serving.csv_chunks import Chunk, CsvError
from app.serving.schema import RequestSchema, RowError

_PLAIN_NUMBERS = b"0123456789+-.eE,\r\n"
_STRINGS = np.dtypes.StringDType()
EMPTY_CSV = "line 1: the CSV is empty: the first line must name the feature columns"
NO_ROWS = "the CSV has a header but no rows"


def decode(chunk: Chunk) -> str:
    """The chunk as text: UTF-8, with a byte order mark allowed at the start of the file."""
    try:
        return chunk.data.decode("utf-8-sig" if chunk.first_byte == 0 else "utf-8")
    except UnicodeDecodeError as exc:
        line = chunk.first_line + chunk.data.count(b"\n", 0, exc.start)
        raise CsvError(f"the CSV is not UTF-8 text (byte {chunk.first_byte + exc.start})", line) from None


@dataclass(frozen=True)
class CsvHeader:
    names: list[str]  # the file's columns, as sent (stripped)
    order: list[int]  # for each feature, in training order, its column in the file

    @classmethod
    def read(cls, chunk: Chunk | None, expected: list[str]) -> CsvHeader:
        """The first line, which must name exactly the `expected` columns (in any order)."""
        text = decode(chunk) if chunk is not None else ""
        try:
            header = next(csv.reader(io.StringIO(text, newline=""), strict=True), [])
        except csv.Error as exc:
            raise CsvError(f"line 1: malformed CSV: {exc}", 1) from None
        names = [name.strip() for name in header]
        if not any(names):
            raise CsvError(EMPTY_CSV, 1)
        _check_header(names, expected)
        return cls(names, [names.index(name) for name in expected])


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
        raise CsvError(f"line 1: {'; '.join(problems)} (expected: {', '.join(expected)})", 1)


@dataclass(frozen=True)
class ChunkRows:
    """A chunk's rows up to its first bad one, and what is wrong with that one."""

    matrix: np.ndarray  # the rows before the first bad one, as the model takes them
    echo: list[str]  # each of those rows' cells as one line of CSV, the columns in the file's order
    # A malformed record: it and every row after it are left out.
    csv_error: CsvError | None = None
    # Invalid values before it (every one the chunk has; rows from the first one on are left out).
    row_error: RowError | None = None
    # Each row's line in the file; None when numpy's reader took the chunk: lines() finds them in `text`.
    known_lines: list[int] | None = None
    text: str = field(default="", repr=False)
    first_line: int = 0

    def lines(self) -> list[int]:
        """Each row's line in the file (wanted for errors only)."""
        if self.known_lines is not None:
            return self.known_lines
        text_lines = self.text.split("\n")
        return [self.first_line + i for i, line in enumerate(text_lines) if line.replace("\r", "")]


def read_chunk(chunk: Chunk, header: CsvHeader, schema: RequestSchema, first_row: int) -> ChunkRows:
    """The chunk's rows; errors name each bad row by its place in the file (`first_row` + index)."""
    text = decode(chunk)
    fast = _plain_numbers(chunk, text, header, schema)
    if fast is not None:
        return fast
    cells, lines, csv_error = _records(text, chunk.first_line, len(header.names))
    if not cells:
        return ChunkRows(np.empty((0, len(header.order)), dtype=schema.dtype), [], csv_error, known_lines=[])
    raw = np.array(cells, dtype=_STRINGS)
    table = np.strings.strip(raw)
    matrix = _columns(table, header, schema, text.isascii())
    row_error = None
    if matrix is None:
        matrix, row_error = _validated(table.tolist(), lines, header, schema, first_row)
    kept = len(matrix)
    if (np.strings.str_len(table) == np.strings.str_len(raw)).all() and '"' not in text:
        echo = [",".join(row) for row in cells[:kept]]  # the cells as sent, none with spaces to strip
    else:
        echo = _csv_lines(table[:kept].tolist())
    return ChunkRows(matrix, echo, csv_error, row_error, lines[:kept])


def _plain_numbers(chunk: Chunk, text: str, header: CsvHeader, schema: RequestSchema) -> ChunkRows | None:
    """Path 1: numpy's own reader, for an all-numeric model and a chunk of nothing but plain numbers."""
    if schema.dtype is not np.float64 or chunk.data.translate(None, _PLAIN_NUMBERS):
        return None
    echo = [line for line in text.replace("\r", "").split("\n") if line]
    if not echo:
        return ChunkRows(np.empty((0, len(header.order))), [], known_lines=[])
    try:
        table = np.loadtxt(
            io.StringIO(text), delimiter=",", dtype=np.float64, ndmin=2, comments=None, quotechar=None
        )
    except ValueError:  # an empty cell, a field too many or too few, "1.2.3": path 2 says which
        return None
    if table.shape != (len(echo), len(header.names)) or not np.isfinite(table).all():
        return None
    matrix = table if header.order == list(range(len(header.order))) else table[:, header.order]
    return ChunkRows(matrix, echo, text=text, first_line=chunk.first_line)


def _records(text: str, first_line: int, width: int) -> tuple[list[list[str]], list[int], CsvError | None]:
    """The chunk's records (blank lines skipped) and their lines, up to a malformed one."""
    if '"' in text:
        return _quoted_records(text, first_line, width)
    # No quotes, so one record per line: the reader's C loop does all of it, and lines are positions.
    try:
        rows = list(csv.reader(io.StringIO(text, newline=""), strict=True))
    except csv.Error:  # a NUL byte, say: the slow reader names its line
        return _quoted_records(text, first_line, width)
    widths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    blank = widths == 0
    for i in np.flatnonzero(widths == 1).tolist():
        blank[i] = not rows[i][0].strip()  # a line of spaces; for a one-column model, also an empty cell
    wrong = np.flatnonzero((widths != width) & ~blank)
    end = int(wrong[0]) if len(wrong) else len(rows)
    kept = np.flatnonzero(~blank[:end])
    cells = [rows[i] for i in kept.tolist()]
    lines = (kept + first_line).tolist()
    if end == len(rows):
        return cells, lines, None
    line = first_line + end
    return cells, lines, CsvError(f"line {line}: expected {width} fields, found {widths[end]}", line)


def _quoted_records(
    text: str, first_line: int, width: int
) -> tuple[list[list[str]], list[int], CsvError | None]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    cells: list[list[str]] = []
    lines: list[int] = []
    starts = first_line  # the line the next record starts on: where an unclosed quote opened
    try:
        for row in reader:
            line, starts = first_line - 1 + reader.line_num, first_line + reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank lines, e.g. a trailing newline
            if len(row) != width:
                return cells, lines, CsvError(f"line {line}: expected {width} fields, found {len(row)}", line)
            cells.append(row)
            lines.append(line)
    except csv.Error as exc:
        return cells, lines, CsvError(f"line {starts}: malformed CSV: {exc}", starts)
    return cells, lines, None


def _columns(
    table: np.ndarray, header: CsvHeader, schema: RequestSchema, ascii_only: bool
) -> np.ndarray | None:
    """Path 2: the matrix a column at a time, or None when a value is doubtful (path 3 decides)."""
    columns = []
    for feature, position in zip(schema.features, header.order, strict=True):
        column = _column(table[:, position], feature, ascii_only)
        if column is None:
            return None
        columns.append(column)
    if schema.dtype is np.float64:
        return np.column_stack(columns)
    matrix = np.empty((len(table), len(columns)), dtype=object)
    for i, column in enumerate(columns):
        matrix[:, i] = column  # floats stay Python floats, categories str: as the schema builds them
    return matrix


def _column(cells: np.ndarray, feature: Feature, ascii_only: bool) -> np.ndarray | None:
    gaps = cells == ""
    if feature.missing_fraction <= 0 and gaps.any():
        return None
    if feature.type == "categorical":
        known = np.isin(cells, feature.categories) | gaps if feature.categories else np.True_
        return cells.astype(object) if known.all() else None  # a gap is "", MISSING_CATEGORY
    # numpy reads what Python's float() reads, digits of any script included; the schema only ASCII.
    if not ascii_only and not all(value.isascii() for value in cells.tolist()):
        return None
    try:
        values = np.where(gaps, "nan", cells).astype(np.float64)
    except ValueError:
        return None
    return values if np.isfinite(values[~gaps]).all() else None


def _validated(
    table: list[list[str]], lines: list[int], header: CsvHeader, schema: RequestSchema, first_row: int
) -> tuple[np.ndarray, RowError | None]:
    """Path 3: the schema's validation, in batches of its row limit (the limit of a JSON body)."""
    records: list[dict[str, Any]] = [
        {name: value or None for name, value in zip(header.names, row, strict=True)} for row in table
    ]
    parts: list[np.ndarray] = []
    errors: list[dict[str, Any]] = []
    first_bad: int | None = None
    for start in range(0, len(records), schema.max_rows):
        end = start + schema.max_rows
        try:
            part = schema.parse_records(records[start:end], lines[start:end])
        except RowError as exc:
            found = shifted(exc, start + first_row).errors
            errors += found
            if first_bad is None:
                first_bad = min(e["row"] for e in found if "row" in e) - first_row
            continue
        if first_bad is None:
            parts.append(part)
    if first_bad is None:
        return np.concatenate(parts), None
    batch = first_bad - first_bad % schema.max_rows
    if first_bad > batch:  # the failing batch's rows before the bad one validate on their own
        parts.append(schema.parse_records(records[batch:first_bad], lines[batch:first_bad]))
    empty: np.ndarray = np.empty((0, len(header.order)), dtype=schema.dtype)
    return np.concatenate([empty, *parts]), RowError(errors)


def shifted(error: RowError, offset: int) -> RowError:
    """The errors of a batch that starts `offset` rows into the file, naming each row by its place in it."""
    return RowError([_shift(e, offset) for e in error.errors])


def _shift(error: dict[str, Any], offset: int) -> dict[str, Any]:
    if "row" not in error or not offset:
        return error
    row = error["row"] + offset
    loc = error["loc"]
    return error | {"row": row, "loc": [loc[0], row, *loc[2:]] if len(loc) >= 2 else loc}


def _csv_lines(rows: list[list[str]]) -> list[str]:
    """Rows as CSV text without their line ends, quoted where a cell needs it."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    lines = []
    for row in rows:
        writer.writerow(row)
        lines.append(out.getvalue()[:-1])
        out.seek(0)
        out.truncate()
    return lines
