"""The upload, read ahead of its answer, so that a client that sends all of a file before it reads any of
the answer cannot deadlock a streamed answer.

Such clients are the common kind (httpx, requests): once the answer fills the socket buffers, the
server's send waits for the client, which waits for the server to take the rest of its upload. So one
task keeps reading the upload while the answer's send is waiting (`sending`): those bytes go to an
unnamed temporary file (in TMPDIR), read back in order. Otherwise it reads only while less than
MEMORY_BYTES wait in memory, so a client that does read along is held back by TCP, as usual, and
nothing touches the disk. Memory stays bounded either way; disk use at most the upload's size.

With `whole`, it reads the upload to its end as fast as it comes, whatever the answer does: for an
answer that waits for all of it (CSV_UPLOAD_FIRST, behind nginx).
"""

from __future__ import annotations

import os
import tempfile
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import IO

import anyio
from starlette.types import Message, Receive, Send

MEMORY_BYTES = 4 * 1024 * 1024
WRITE_BYTES = 1024 * 1024  # bytes for the file are gathered into writes of this size
READ_BYTES = 1024 * 1024


class UploadSpool:
    def __init__(
        self, pieces: AsyncIterator[bytes], memory_bytes: int = MEMORY_BYTES, whole: bool = False
    ) -> None:
        self._pieces = pieces
        # Read everything as it comes, never held back by TCP: for an answer that starts after it.
        self.whole = whole
        self._memory_limit = memory_bytes
        self._memory: deque[bytes] = deque()
        self._memory_bytes = 0
        self._file: IO[bytes] | None = None
        self._written = 0  # file offsets: written so far, read back so far
        self._read = 0
        self._for_file = bytearray()  # on its way to the file, after what is there
        self._sending = 0
        self._done = False
        self._error: Exception | None = None
        self._changed = anyio.Event()
        self.disconnected = False

    async def fill(self, receive: Receive) -> None:
        """The reading task: the upload into the spool, then `receive` until the client leaves."""
        try:
            async for piece in self._pieces:
                while self._memory_bytes >= self._memory_limit and not (self._sending or self.whole):
                    await self._wait()
                await self._put(piece)
        except Exception as exc:  # raised by read() once the bytes before it were taken
            self._error = exc
            return
        finally:
            self._done = True
            self._notify()
        # A client that leaves stops the answer, even when its whole upload is already here.
        while (await receive())["type"] != "http.disconnect":
            pass  # what is left of a multipart body after its file
        self.disconnected = True
        self._notify()

    async def complete(self) -> Exception | None:
        """Once the whole upload is in the spool: None, or what ended it early (a 413)."""
        while not self._done:
            await self._wait()
        return self._error

    async def read(self) -> bytes:
        """The next bytes of the upload, b"" at its end; raises what ended the reading early."""
        while True:
            if self._memory:
                piece = self._memory.popleft()
                self._memory_bytes -= len(piece)
                self._notify()
                return piece
            if self._read < self._written:
                size = min(READ_BYTES, self._written - self._read)
                data = await anyio.to_thread.run_sync(self._read_file, size)
                self._read += len(data)
                return data
            if self._for_file:
                data = bytes(self._for_file)
                self._for_file.clear()
                return data
            if self._done:
                if self._error is not None:
                    raise self._error
                return b""
            await self._wait()

    @asynccontextmanager
    async def sending(self) -> AsyncIterator[None]:
        """While the answer waits for the client to take it, the upload may be read past the memory."""
        self._sending += 1
        self._notify()
        try:
            yield
        finally:
            self._sending -= 1

    def tracking(self, send: Send) -> Send:
        """`send`, telling the spool while it waits."""

        async def tracked(message: Message) -> None:
            async with self.sending():
                await send(message)

        return tracked

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

    async def _put(self, piece: bytes) -> None:
        # In order: once bytes went towards the file, the next ones follow them there.
        if self._for_file or self._read < self._written or self._memory_bytes >= self._memory_limit:
            self._for_file += piece
            if len(self._for_file) >= WRITE_BYTES:
                data = bytes(self._for_file)
                self._for_file.clear()
                await anyio.to_thread.run_sync(self._write_file, data)
                self._written += len(data)
        else:
            self._memory.append(piece)
            self._memory_bytes += len(piece)
        self._notify()

    def _write_file(self, data: bytes) -> None:
        if self._file is None:
            self._file = tempfile.TemporaryFile(prefix="predict-csv-")  # noqa: SIM115 - closed by close()
        os.pwrite(self._file.fileno(), data, self._written)

    def _read_file(self, size: int) -> bytes:
        assert self._file is not None
        return os.pread(self._file.fileno(), size, self._read)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def _wait(self) -> None:
        await self._changed.wait()
