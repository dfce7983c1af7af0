"""A CSV scored a chunk at a time: each chunk is the CSV codec's request, read into the model's input
(app.serving.csv_rows), given to the data plane's `infer` (validate, score, trace: as every
protocol's rows), and its answers written in the asked format.

Until the first rows are answered a problem refuses the whole request (the caller answers 422, as
for a small file). After that the stream cannot take its 200 back: the rows before the first bad
line are answered, in order, then the format's closing names the problem, and the stream ends.
Everything here is CPU work, called from a worker thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.serving.answer_formats import AnswerFormat, StreamError
from app.serving.csv_chunks import Chunk, CsvError
from app.serving.csv_rows import CsvHeader, read_chunk
from app.serving.data_plane import DataPlane, Inferred
from app.serving.predictor import Predictor
from app.serving.validation import RowError


@dataclass(frozen=True)
class ChunkAnswer:
    text: str  # the chunk's answers in the format
    rows: int
    error: StreamError | None = None  # the first bad line: the rows before it are in `text`


class CsvScorer:
    def __init__(
        self,
        predictor: Predictor,
        header: CsvHeader,
        answer_format: AnswerFormat,
        plane: DataPlane,
        key: str,
    ) -> None:
        self.predictor = predictor
        self.header = header
        self.format = answer_format
        self.plane = plane
        self.key = key  # the request's, for prediction ids numbered across its chunks
        self.rows_answered = 0

    def answer(self, chunk: Chunk, refuse: bool = False) -> ChunkAnswer:
        """The chunk's answers. refuse: raise CsvError or RowError at its first problem, answering none
        of it (nothing was answered yet); else answer the rows before the problem and return it."""
        first = self.rows_answered
        try:
            rows = read_chunk(chunk, self.header, self.predictor.schema, first, self.key)
        except CsvError as exc:  # not UTF-8
            if refuse:
                raise
            return ChunkAnswer("", 0, stream_error(exc))
        if refuse and rows.csv_error:  # as for a whole file: a malformed line first
            raise rows.csv_error
        model_input, echo = rows.model_input, rows.echo
        problem: CsvError | RowError | None = rows.csv_error
        inferred: Inferred | None = None
        if len(model_input):
            try:
                inferred = self.plane.infer(self.predictor, model_input)
            except RowError as exc:  # invalid values, or rows the model has no finite answer for
                located = exc.at_lines(rows.lines(), first)
                if refuse:
                    raise located from None
                keep = _first_row(located) - first
                model_input, echo, problem = model_input.head(keep), echo[:keep], located
                inferred = self.plane.infer(self.predictor, model_input) if keep else None
        text = ""
        if inferred is not None:
            text = self.format.rows(echo, inferred.answers, inferred.ids, first=first == 0)
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
