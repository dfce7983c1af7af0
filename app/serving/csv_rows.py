"""CSV in: the header checked against the model's columns, then each chunk's rows as the model's matrix.

A chunk is read the fastest way that can vouch for it; one that cannot hands the chunk to the next:

1. an all-numeric model and a chunk of plain numbers (digits, signs, points, exponents, commas, line
   ends): numpy's C reader, a few million rows/s;
2. any chunk: the csv module's reader, then numpy a column at a time.

Either way the chunk becomes the model's input (app.serving.validation.ModelInput) and nothing is
judged here: the validator every protocol shares decides on the values (finite numbers, known
categories, gaps where training had some) and words the errors as /predict's; app.serving.csv_scoring
adds each bad row's line. A cell that is no number in a numeric column is marked `unreadable`, for
the validator to name. Cells are stripped of surrounding whitespace; an empty cell is a gap.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field

import numpy as np

from app.serving.csv_chunks import Chunk, CsvError
from app.serving.schema import RequestSchema
from app.serving.validation import ModelInput

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
    """A chunk's rows up to its first malformed record, not yet validated."""

    model_input: ModelInput  # the rows, numbered from the chunk's `first_row` in the file
    echo: list[str]  # each row's cells as one line of CSV, the columns in the file's order
    # A malformed record: it and every row after it are left out.
    csv_error: CsvError | None = None
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


def read_chunk(
    chunk: Chunk, header: CsvHeader, schema: RequestSchema, first_row: int, key: str | None
) -> ChunkRows:
    """The chunk's rows as the model's input, its first row numbered `first_row` (its place in the
    file), its prediction ids made under the request's `key`."""
    text = decode(chunk)
    fast = _plain_numbers(chunk, text, header, schema)
    if fast is not None:
        model_input = ModelInput(fast, None, None, first_row, key, False)
        return ChunkRows(model_input, _echo_of(text), text=text, first_line=chunk.first_line)
    cells, lines, csv_error = _records(text, chunk.first_line, len(header.names))
    if not cells:
        empty: np.ndarray = np.empty((0, len(header.order)), dtype=schema.dtype)
        return ChunkRows(ModelInput(empty, None, None, first_row, key, False), [], csv_error, known_lines=[])
    raw = np.array(cells, dtype=_STRINGS)
    table = np.strings.strip(raw)
    matrix, missing, unreadable = _columns(table, header, schema, text.isascii())
    if (np.strings.str_len(table) == np.strings.str_len(raw)).all() and '"' not in text:
        echo = [",".join(row) for row in cells]  # the cells as sent, none with spaces to strip
    else:
        echo = _csv_lines(table.tolist())
    model_input = ModelInput(matrix, missing, unreadable, first_row, key, False)
    return ChunkRows(model_input, echo, csv_error, lines)


def _echo_of(text: str) -> list[str]:
    """A chunk of plain numbers' rows as sent: its lines, blank ones left out."""
    return [line for line in text.replace("\r", "").split("\n") if line]


def _plain_numbers(chunk: Chunk, text: str, header: CsvHeader, schema: RequestSchema) -> np.ndarray | None:
    """Path 1: numpy's own reader, for an all-numeric model and a chunk of nothing but plain numbers."""
    if schema.dtype is not np.float64 or chunk.data.translate(None, _PLAIN_NUMBERS):
        return None
    rows = len(_echo_of(text))
    if not rows:
        return np.empty((0, len(header.order)))
    try:
        table = np.loadtxt(
            io.StringIO(text), delimiter=",", dtype=np.float64, ndmin=2, comments=None, quotechar=None
        )
    except ValueError:  # an empty cell, a field too many or too few, "1.2.3": path 2 says which
        return None
    if table.shape != (rows, len(header.names)):
        return None
    return table if header.order == list(range(len(header.order))) else table[:, header.order]


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
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Path 2: the matrix a column at a time, with its gaps (empty cells) and unreadable cells."""
    matrix: np.ndarray = np.empty((len(table), len(header.order)), dtype=schema.dtype)
    gaps = table == ""
    unreadable = np.zeros(matrix.shape, dtype=bool)
    for j, (feature, position) in enumerate(zip(schema.features, header.order, strict=True)):
        cells = table[:, position]
        if feature.type == "categorical":
            matrix[:, j] = cells.astype(object)  # a gap is "", MISSING_CATEGORY
        else:
            # floats stay Python floats in an object matrix: as the JSON body's rows build them
            matrix[:, j], unreadable[:, j] = _numbers(cells, gaps[:, position], ascii_only)
    missing = gaps[:, header.order]
    return matrix, missing if missing.any() else None, unreadable if unreadable.any() else None


def _numbers(cells: np.ndarray, gaps: np.ndarray, ascii_only: bool) -> tuple[np.ndarray, np.ndarray]:
    """A numeric column as floats (NaN for a gap or an unreadable cell), and which cells are unreadable."""
    unreadable = np.zeros(len(cells), dtype=bool)
    # numpy reads what Python's float() reads, digits of any script included; JSON only ASCII.
    if not ascii_only:  # a cell is ASCII when its UTF-8 bytes are as many as its characters
        unreadable = np.strings.str_len(np.strings.encode(cells, "utf-8")) != np.strings.str_len(cells)
    readable = np.where(gaps | unreadable, "nan", cells)
    try:
        return readable.astype(np.float64), unreadable
    except ValueError:  # some cell is no number: found one by one (the error path only)
        values = np.full(len(cells), np.nan)
        for i, value in enumerate(readable.tolist()):
            try:
                values[i] = float(value)
            except ValueError:
                unreadable[i] = True
        return values, unreadable


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
