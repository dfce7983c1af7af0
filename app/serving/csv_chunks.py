"""A CSV byte stream cut into chunks of whole records as it arrives: the header, then the rows.

A record ends at a line end outside quotes (RFC 4180: a quoted field may hold line breaks, and `""`
is a quote inside one), so a chunk never splits a record. A chunk holds up to CHUNK_ROWS records
and CHUNK_BYTES bytes: memory stays bounded whatever the file's size, and a record that does not end
within CHUNK_BYTES is refused rather than buffered. Nothing here decodes or parses the records.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Rows scored per model call: large enough that the per-chunk costs (a thread hop, a model call,
# the drift update) vanish, small enough that the first answer bytes come within ~0.1 s.
CHUNK_ROWS = 20_000
CHUNK_BYTES = 2 * 1024 * 1024
_NEWLINE, _QUOTE = ord("\n"), ord('"')


class CsvError(ValueError):
    """The file is not a CSV of the model's columns; the message names the line."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line


@dataclass(frozen=True)
class Chunk:
    data: bytes  # whole records with their line ends (the file's last one may have none)
    first_line: int  # the line its first byte is on, 1 for the file's first line
    first_byte: int  # its offset in the file, for encoding errors


def record_ends(data: bytes | bytearray) -> np.ndarray:
    """Offsets of the line ends that end a record: those outside quotes."""
    codes = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(codes == _NEWLINE)
    if _QUOTE in data:
        # The quotes before each line end, mod 2 (uint8 wraps at 256, an even number): odd is inside.
        inside = np.cumsum(codes == _QUOTE, dtype=np.uint8)[ends] & 1
        ends = ends[inside == 0]
    return ends


class RecordChunker:
    """Feed it the bytes as they come; it hands back the header first, then chunks of rows."""

    def __init__(self, rows: int = CHUNK_ROWS, max_bytes: int = CHUNK_BYTES) -> None:
        self.rows = rows
        self.max_bytes = max_bytes
        self._buffer = bytearray()
        self._newlines = 0  # line ends in the buffer, quoted or not
        self._retry_at = 0  # the line ends it takes before a chunk may be complete
        self._line = 1  # the line the buffer starts on
        self._offset = 0  # the file offset the buffer starts at
        self._header_done = False
        self._error: CsvError | None = None  # found after some chunks: raised once they are taken

    def feed(self, data: bytes) -> list[Chunk]:
        """The chunks these bytes complete (often none). A row that does not end within max_bytes
        raises CsvError, once the chunks before it were taken."""
        self._raise_found()
        chunks: list[Chunk] = []
        for start in range(0, len(data), self.max_bytes):  # a large piece, a slice at a time
            piece = data[start : start + self.max_bytes]
            self._buffer += piece
            self._newlines += piece.count(b"\n")
            if len(self._buffer) >= self.max_bytes or self._newlines >= self._retry_at:
                chunks += self._cut(final=False)
            if self._error is not None:
                break
        return chunks or self._raise_found()

    def finish(self, cut_short: bool = False) -> list[Chunk]:
        """The rest, at the end of the file: the last chunks, and the last record without a line end
        (left out when the upload was `cut_short`: it may be a part of one)."""
        self._raise_found()
        if cut_short:
            ends = record_ends(self._buffer)
            del self._buffer[int(ends[-1]) + 1 if len(ends) else 0 :]
        return self._cut(final=True) or self._raise_found()

    def _raise_found(self) -> list[Chunk]:
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        return []

    def _cut(self, final: bool) -> list[Chunk]:
        ends = record_ends(self._buffer)
        chunks: list[Chunk] = []
        start, first = 0, 0  # the next chunk's offset in the buffer, and the index of its first record end
        while True:
            rest = len(self._buffer) - start
            # The record ends this chunk may take: within max_bytes, at most `rows` (the header: one).
            fit = int(np.searchsorted(ends, start + self.max_bytes, side="left")) - first
            wanted = self.rows if self._header_done else 1
            if fit >= wanted:
                end = int(ends[first + wanted - 1]) + 1
            elif final and 0 < rest <= self.max_bytes:
                end = len(self._buffer)  # the last records, the very last one with or without a line end
            elif rest >= self.max_bytes and fit > 0:
                end = int(ends[first + fit - 1]) + 1
            elif rest >= self.max_bytes:
                self._error = self._too_long(start)
                break
            else:
                break
            chunks.append(self._chunk(start, end))
            start, first = end, int(np.searchsorted(ends, end, side="left"))
            self._header_done = True
        records = len(ends) - first
        self._line += self._buffer.count(b"\n", 0, start)
        self._offset += start
        del self._buffer[:start]
        self._newlines = self._buffer.count(b"\n")
        # Each record still missing needs one more line end at least.
        self._retry_at = self._newlines + (self.rows if self._header_done else 1) - records
        return chunks

    def _too_long(self, start: int) -> CsvError:
        line = self._line + self._buffer.count(b"\n", 0, start)
        limit = f"{self.max_bytes / 2**20:g} MiB"
        if b'"' in self._buffer[start:]:
            return CsvError(f"line {line}: malformed CSV: a quoted field still open after {limit}", line)
        return CsvError(f"line {line}: a row longer than {limit}", line)

    def _chunk(self, start: int, end: int) -> Chunk:
        line = self._line + self._buffer.count(b"\n", 0, start)
        return Chunk(bytes(self._buffer[start:end]), line, self._offset + start)
