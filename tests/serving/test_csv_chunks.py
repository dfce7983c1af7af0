"""The CSV stream cut into chunks: whole records only, however the bytes arrive, with their lines."""

from __future__ import annotations

import csv
import io
import random

import pytest

from app.serving.csv_chunks import Chunk, CsvError, RecordChunker


def cut(data: bytes, rows: int, max_bytes: int, piece: int) -> list[Chunk]:
    chunker = RecordChunker(rows, max_bytes)
    chunks = [c for start in range(0, len(data), piece) for c in chunker.feed(data[start : start + piece])]
    return chunks + chunker.finish()


def records(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode(), newline="")))


def random_csv(rng: random.Random) -> bytes:
    lines = ["h1,h2"]
    for _ in range(rng.randint(0, 60)):
        kind = rng.random()
        if kind < 0.2:
            lines.append(f'"a\nb",{rng.random()}')  # a line break inside quotes
        elif kind < 0.3:
            lines.append('"x""y\n",1')  # an escaped quote
        elif kind < 0.35:
            lines.append("")
        else:
            lines.append(f"{rng.random()},{rng.random()}")
    return ("\n".join(lines) + rng.choice(["", "\n"])).encode()


def test_chunks_hold_whole_records_their_lines_and_offsets_however_the_bytes_arrive() -> None:
    rng = random.Random(0)
    for _ in range(300):
        data = random_csv(rng)
        rows, piece = rng.randint(1, 7), rng.randint(1, 50)
        chunks = cut(data, rows, rng.randint(200, 400), piece)
        assert b"".join(c.data for c in chunks) == data
        assert [r for c in chunks for r in records(c.data)] == records(data)
        assert len(records(chunks[0].data)) == 1  # the header alone
        assert all(len(records(c.data)) <= rows for c in chunks[1:])
        for c in chunks:
            assert c.first_line == data.count(b"\n", 0, c.first_byte) + 1
            assert data[c.first_byte : c.first_byte + len(c.data)] == c.data


def test_the_last_records_of_a_small_file_come_as_one_chunk() -> None:
    assert [c.data for c in cut(b"h\n1\n2\n3", 10, 1000, 3)] == [b"h\n", b"1\n2\n3"]
    assert cut(b"", 10, 1000, 3) == []
    assert [c.data for c in cut(b"h", 10, 1000, 3)] == [b"h"]


def test_a_row_that_does_not_end_is_refused_after_the_chunks_before_it() -> None:
    chunker = RecordChunker(2, 64)
    assert [c.data for c in chunker.feed(b"h\n1\n2\n3\n" + b"9" * 200)] == [b"h\n", b"1\n2\n", b"3\n"]
    with pytest.raises(CsvError, match="line 5: a row longer than") as raised:
        chunker.feed(b"9")
    assert raised.value.line == 5
    unclosed = RecordChunker(2, 64)
    unclosed.feed(b'h\n"1\n' + b"2\n" * 100)
    with pytest.raises(CsvError, match="line 2: malformed CSV: a quoted field still open"):
        unclosed.finish()


def test_an_upload_cut_short_drops_its_last_partial_row() -> None:
    chunker = RecordChunker(10, 1000)
    assert [c.data for c in chunker.feed(b"h\n1\n22")] == [b"h\n"]
    assert [c.data for c in chunker.finish(cut_short=True)] == [b"1\n"]
