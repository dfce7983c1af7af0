"""The streamed answer of /predict/csv: chunks cut from the upload as it arrives, each scored in a worker
thread, each chunk's answers sent as soon as they are ready.

The response is sent while the upload is still being read: uvicorn (httptools and h11 alike) lets an
ASGI app start its response before it has read the whole request body. A client that reads as it
sends (curl) gets answers while it uploads; one that sends everything first still gets its answer,
through the spool (app.api.upload_spool).

nginx (and so ingress-nginx) passes a request body on only until the answer starts: from then on
it sends the replica what the sockets already hold and no more, and a large upload stalls half-way
(tests/deploy/test_devstack.py). Behind such a proxy, CSV_UPLOAD_FIRST=true holds the answer back
until the whole upload is in the spool (on disk past its first MiBs), then streams it as usual; the
memory stays bounded, and an upload past MAX_CSV_BYTES is then a plain 413.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse, StreamingResponse
from starlette.types import Receive, Scope, Send

from app.api.upload_spool import UploadSpool
from app.observability.logging import LOGGER_NAME
from app.observability.metrics import validation_failed
from app.serving.answer_formats import StreamError
from app.serving.csv_chunks import Chunk, CsvError, RecordChunker
from app.serving.csv_scoring import ChunkAnswer, CsvScorer, stream_error
from app.serving.inference import off_loop

log = logging.getLogger(LOGGER_NAME)


def reader_of(pieces: AsyncIterator[bytes]) -> Callable[[], Awaitable[bytes]]:
    """A function that returns the next piece, b"" after the last."""

    async def read() -> bytes:
        return await anext(pieces, b"")

    return read


class ChunkSource:
    """Chunks of whole records from a function that returns the upload's next bytes (b"" at its end)."""

    def __init__(self, read: Callable[[], Awaitable[bytes]], chunker: RecordChunker | None = None) -> None:
        self.read = read
        self._chunker = chunker or RecordChunker()
        self._ready: deque[Chunk] = deque()
        self._ended = False
        self._failure: HTTPException | None = None

    async def next(self) -> Chunk | None:
        """The next chunk, None after the last; raises CsvError for a row that does not end, and
        what ended the upload early (an HTTPException: 413 past MAX_CSV_BYTES, a broken form)."""
        while not self._ready and not self._ended:
            try:
                data = await self.read()
            except HTTPException as exc:
                # The upload was cut: the records that arrived whole are answered, then the error.
                self._ended, self._failure = True, exc
                self._ready.extend(self._chunker.finish(cut_short=True))
                break
            if data:
                self._ready.extend(self._chunker.feed(data))
            else:
                self._ended = True
                self._ready.extend(self._chunker.finish())
        if self._ready:
            return self._ready.popleft()
        if self._failure is not None:
            raise self._failure
        return None


class AnswerStream(StreamingResponse):
    """The answer after its first chunk: the rest of the upload read by a task of its own, meanwhile."""

    def __init__(
        self,
        first: str,
        scorer: CsvScorer,
        chunks: ChunkSource,
        spool: UploadSpool,
        headers: dict[str, str],
        limiter: anyio.CapacityLimiter,
    ) -> None:
        self.scorer = scorer
        self.limiter = limiter
        self.chunks = chunks
        self.spool = spool
        chunks.read = spool.read  # the rest of the upload comes through the spool, which reads ahead
        super().__init__(self._texts(first), media_type=scorer.format.media_type, headers=headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Not StreamingResponse's own __call__: it would read the body to hear a disconnect, and the
        # body is the spool's to read.
        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(self.spool.fill, receive)
                # A spool that reads the whole upload first (CSV_UPLOAD_FIRST) holds the answer back.
                failure = await self.spool.complete() if self.spool.whole else None
                if isinstance(failure, HTTPException):  # nothing sent yet: a plain error answer
                    await JSONResponse({"detail": failure.detail}, failure.status_code)(scope, receive, send)
                else:
                    await self.stream_response(self.spool.tracking(send))
                tasks.cancel_scope.cancel()
        finally:
            self.spool.close()

    async def _texts(self, first: str) -> AsyncIterator[str]:
        yield first
        answer_format = self.scorer.format
        while not self.spool.disconnected:
            try:
                chunk = await self.chunks.next()
            except ClientDisconnect:
                return
            except (CsvError, HTTPException) as exc:
                yield answer_format.closing(_ended_by(exc))
                return
            if chunk is None:
                yield answer_format.closing(None)
                return
            try:
                answer: ChunkAnswer = await off_loop(self.limiter, self.scorer.answer, chunk)
            except Exception:
                # Past the 200 a 500 cannot be sent: the answer ends saying so, the log says why.
                log.exception("CSV answer failed", extra={"fields": {"line": chunk.first_line}})
                yield answer_format.closing(StreamError(500, "Internal server error", chunk.first_line))
                return
            if answer.error is not None:
                _count(answer.error, self.scorer)
                yield answer.text + answer_format.closing(answer.error)
                return
            if answer.text:
                yield answer.text


def _ended_by(exc: CsvError | HTTPException) -> StreamError:
    if isinstance(exc, CsvError):
        return stream_error(exc)
    return StreamError(exc.status_code, str(exc.detail))


def _count(error: StreamError, scorer: CsvScorer) -> None:
    """Invalid values late in a file count as the 422s of the others do."""
    if isinstance(error.detail, list):
        validation_failed([e.get("field") for e in error.detail], set(scorer.header.names))
