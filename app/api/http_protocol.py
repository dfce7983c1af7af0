"""uvicorn's HTTP protocol, with the two guards against slow clients it lacks.

- **Headers on time.** uvicorn times out idle keep-alive connections only, and any byte resets that:
  a client that sends its headers a byte a second (slowloris), or opens a connection and sends
  nothing, holds it for good. An ASGI middleware cannot help, it runs once the headers are in. So a
  timer is armed when a connection opens and when a request's first byte arrives, and disarmed when
  the headers are complete; past REQUEST_HEADER_TIMEOUT_SECONDS the client gets a 408 and the
  connection is closed. The body is not under this deadline: a large CSV upload may take long, and
  the body limits (app/api/body_limit.py) bound its size.
- **No endless discarding.** A request answered before its body was read (a 413 past the limit, a
  401) leaves the rest of the body for uvicorn to read and throw away, so that the client, still
  sending, reads the answer rather than a connection reset. A body that never ends would be read
  forever: as nginx's lingering_time does, the discarding stops UNREAD_BODY_LINGER_SECONDS after the
  answer, or after UNREAD_BODY_LINGER_BYTES, and the connection is closed (its sending side first, so
  the answer is not lost to a reset).

uvicorn takes a protocol class for `http=`; this one extends its httptools protocol (the one "auto"
picks when httptools is installed, as it is here).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("predictor.security")

# Time and bytes for a client still sending a refused body to read the answer (nginx's lingering_time
# is 30 s); whichever runs out first ends it. The bytes keep a client that sends at full speed from
# making the server throw away gigabytes.
UNREAD_BODY_LINGER_SECONDS = 10.0
UNREAD_BODY_LINGER_BYTES = 8 * 1024 * 1024


def _timeout_response(seconds: float) -> bytes:
    body = orjson.dumps({"detail": f"request headers not received within {seconds:g} s"})
    head = (
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class GuardedHttpProtocol(HttpToolsProtocol):
    def __init__(
        self,
        *args: Any,
        header_timeout: float,
        linger_seconds: float = UNREAD_BODY_LINGER_SECONDS,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout = header_timeout
        self.linger_seconds = linger_seconds
        self._header_deadline: asyncio.TimerHandle | None = None
        self._linger_deadline: asyncio.TimerHandle | None = None
        self._discarded = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_deadline = self._arm(self.header_timeout, self._headers_too_slow)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._header_deadline is None:  # else it runs from the connection's opening
            self._header_deadline = self._arm(self.header_timeout, self._headers_too_slow)

    def on_headers_complete(self) -> None:
        self._header_deadline = self._cancel(self._header_deadline)
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if cycle is not None and cycle.response_complete:
            # Answered already: what comes now is thrown away, for a while.
            if self._linger_deadline is None:
                self._linger_deadline = self._arm(self.linger_seconds, self._body_never_ends)
                self._discarded = 0
            self._discarded += len(body)
            if self._discarded > UNREAD_BODY_LINGER_BYTES:
                self._linger_deadline = self._cancel(self._linger_deadline)
                self._body_never_ends()
            return
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._linger_deadline = self._cancel(self._linger_deadline)
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._header_deadline = self._cancel(self._header_deadline)
        self._linger_deadline = self._cancel(self._linger_deadline)
        super().connection_lost(exc)

    def _arm(self, seconds: float, callback: Any) -> asyncio.TimerHandle:
        return self.loop.call_later(seconds, callback)

    @staticmethod
    def _cancel(handle: asyncio.TimerHandle | None) -> asyncio.TimerHandle | None:
        """Cancels the timer; None, for the attribute that held it."""
        if handle is not None:
            handle.cancel()
        return None

    def _closing(self, reason: str, message: str, **fields: object) -> None:
        # Imported here, in the worker: python -m app.serve imports this module before it starts
        # them, and the metrics imported there would add the parent's zeros to the workers' gauges.
        from app.observability.metrics import CONNECTIONS_CLOSED

        CONNECTIONS_CLOSED.labels(reason=reason).inc()
        client = f"{self.client[0]}:{self.client[1]}" if self.client else None
        log.warning(message, extra={"fields": {"client": client, **fields}})

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if self.transport.is_closing():
            return
        self._closing(
            "header_timeout",
            "request headers too slow: connection closed",
            timeout_seconds=self.header_timeout,
        )
        self.transport.write(_timeout_response(self.header_timeout))
        self.transport.close()

    def _body_never_ends(self) -> None:
        self._linger_deadline = None
        if self.transport.is_closing():
            return
        self._closing(
            "unread_body",
            "refused request body still coming: connection closed",
            discarded_bytes=self._discarded,
        )
        if self.transport.can_write_eof():
            self.transport.write_eof()  # a FIN after the answer, ahead of the reset unread bytes cause
        self.transport.close()
