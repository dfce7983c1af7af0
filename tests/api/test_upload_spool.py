"""The upload read ahead of its answer: in memory while the answer keeps up, to a file while it waits."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest

from app.api import upload_spool
from app.api.upload_spool import UploadSpool

PIECE = b"x" * 1000


async def pieces(count: int, pulled: list[int], fail: Exception | None = None) -> AsyncIterator[bytes]:
    for i in range(count):
        pulled.append(i)
        yield bytes([65 + i % 26]) * 1000
    if fail is not None:
        raise fail


async def disconnect() -> dict:
    await anyio.sleep_forever()
    return {"type": "http.disconnect"}


def test_it_reads_no_further_ahead_than_its_memory_while_the_answer_keeps_up() -> None:
    async def main() -> list[int]:
        pulled: list[int] = []
        spool = UploadSpool(pieces(100, pulled), memory_bytes=5000)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(spool.fill, disconnect)
            await anyio.sleep(0.05)
            tasks.cancel_scope.cancel()
        assert spool._file is None
        return pulled

    assert len(anyio.run(main)) == 6  # 5 pieces fill the memory, the 6th is pulled before it waits


def test_while_the_answer_waits_it_reads_on_into_a_file_and_gives_everything_back_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(upload_spool, "WRITE_BYTES", 3000)
    monkeypatch.setattr(upload_spool, "READ_BYTES", 2500)

    async def main() -> bytes:
        pulled: list[int] = []
        spool = UploadSpool(pieces(100, pulled), memory_bytes=5000)
        received = bytearray()
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(spool.fill, disconnect)
            async with spool.sending():  # a client that reads nothing until it has sent everything
                while len(pulled) < 100:
                    await anyio.sleep(0.01)
            assert spool._file is not None
            while data := await spool.read():
                received += data
            tasks.cancel_scope.cancel()
        spool.close()
        return bytes(received)

    assert anyio.run(main) == b"".join(bytes([65 + i % 26]) * 1000 for i in range(100))


def test_what_ended_the_upload_is_raised_after_the_bytes_before_it() -> None:
    async def main() -> tuple[bytes, Exception | None]:
        spool = UploadSpool(pieces(3, [], fail=ValueError("cut")))
        received, raised = bytearray(), None
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(spool.fill, disconnect)
            try:
                while data := await spool.read():
                    received += data
            except ValueError as exc:
                raised = exc
            tasks.cancel_scope.cancel()
        return bytes(received), raised

    received, raised = anyio.run(main)
    assert len(received) == 3000 and str(raised) == "cut"
