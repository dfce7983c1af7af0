"""A CSV scored a chunk at a time: each chunk read, scored with one model call, written in the asked format.

Until the first rows are answered a problem refuses the whole request (the caller answers 422, as
for a small file). After that the stream cannot take its 200 back: the rows before the first bad
line are answered, in order, then the format's closing names the problem, and the stream ends.
Everything here is CPU work, called from a worker thread.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.serving.answer_formats import AnswerFormat, StreamError
from app.serving.csv_chunks import Chunk, CsvError
from app.serving.csv_rows import CsvHeader, read_chunk, shifted
from app.serving.inference import score
from app.serving.predictor import Answers, Predictor
from app.serving.schema import RowError


@dataclass(frozen=True)
class ChunkAnswer:
    text: str  # the chunk's answers in the format
    rows: int
    error: StreamError | None = None  # the first bad line: the rows before it are in `text`


# A chunk's answers to their prediction ids (app.serving.tracing), given the chunk's first row number.
Trace = Callable[[np.ndarray, Answers, int], list[str]]


class CsvScorer:
    def __init__(
        self,
        predictor: Predictor,
        header: CsvHeader,
        answer_format: AnswerFormat,
        metrics_enabled: bool,
        trace: Trace,
    ) -> None:
        self.predictor = predictor
        self.trace = trace
        self.header = header
        self.format = answer_format
        self.metrics_enabled = metrics_enabled
        self.rows_answered = 0

    def answer(self, chunk: Chunk, refuse: bool = False) -> ChunkAnswer:
        """The chunk's answers. refuse: raise CsvError or RowError at its first problem, answering none
        of it (nothing was answered yet); else answer the rows before the problem and return it."""
        try:
            rows = read_chunk(chunk, self.header, self.predictor.schema, self.rows_answered)
        except CsvError as exc:  # not UTF-8
            if refuse:
                raise
            return ChunkAnswer("", 0, stream_error(exc))
        if refuse and (rows.csv_error or rows.row_error):
            # As for a whole file: a malformed line first, else every invalid value.
            raise rows.csv_error or rows.row_error  # type: ignore[misc]
        matrix, echo = rows.matrix, rows.echo
        problem: CsvError | RowError | None = rows.row_error or rows.csv_error
        answers = None
        if len(matrix):
            try:
                answers = score(self.predictor, matrix, self.metrics_enabled)
            except RowError as exc:  # rows the model has no finite answer for
                located = shifted(exc.at_lines(rows.lines()), self.rows_answered)
                if refuse:
                    raise located from None
                keep = _first_row(located) - self.rows_answered
                matrix, echo, problem = matrix[:keep], echo[:keep], located
                answers = score(self.predictor, matrix, self.metrics_enabled) if keep else None
        text = ""
        if answers is not None:
            ids = self.trace(matrix, answers, self.rows_answered)
            text = self.format.rows(echo, answers, ids, first=self.rows_answered == 0)
            self.rows_answered += len(echo)
        return ChunkAnswer(text, len(echo), stream_error(problem) if problem else None)


def _first_row(error: RowError) -> int:
    return min(e["row"] for e in error.errors if "row" in e)


def stream_error(problem: CsvError | RowError) -> StreamError:
    """The problem as the stream's last word: a malformed line, or the first bad row's errors."""
    if isinstance(problem, CsvError):
        return StreamError(422, str(problem), problem.line)
    first = _first_row(problem)
    errors: list[dict[str, Any]] = [e for e in problem.errors if e.get("row") == first]
    return StreamError(422, errors, errors[0].get("line"))
