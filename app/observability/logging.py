"""One JSON log line per request, and the X-Request-ID header on every response.

A pure ASGI middleware (no BaseHTTPMiddleware): it adds no task or body copy per request.
Issue 4's request metrics belong in `_finish`, next to the log line: it already has the
route template (a bounded label), the status and the latency.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

from starlette.datastructures import MutableHeaders
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LOGGER_NAME = "predictor"
log = logging.getLogger(LOGGER_NAME)
access_log = logging.getLogger(f"{LOGGER_NAME}.access")

REQUEST_ID_HEADER = "X-Request-ID"
# A client's own request id is kept when it is short and plain, so it cannot forge log lines.
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str = "INFO") -> None:
    """Idempotent: create_app may run more than once in a process (tests)."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(level.upper())
    logger.propagate = False
    if not any(getattr(h, "_predictor", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(JsonFormatter())
        handler._predictor = True  # type: ignore[attr-defined]
        logger.addHandler(handler)


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        incoming = next((v for k, v in scope["headers"] if k == b"x-request-id"), b"").decode("latin-1")
        request_id = incoming if _SAFE_REQUEST_ID.match(incoming) else uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                MutableHeaders(scope=message).append(REQUEST_ID_HEADER, request_id)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            # The trace goes to the server log only; the client gets JSON and the request id.
            log.exception("unhandled error", extra={"fields": {"request_id": request_id}})
            if not response_started:
                response = JSONResponse(
                    {"detail": "Internal server error", "request_id": request_id}, status_code=500
                )
                await response(scope, receive, send_with_id)
        finally:
            self._finish(scope, status, time.perf_counter() - started, request_id)

    @staticmethod
    def _finish(scope: Scope, status: int, seconds: float, request_id: str) -> None:
        route = scope.get("route")
        access_log.info(
            "request",
            extra={
                "fields": {
                    "method": scope["method"],
                    "route": getattr(route, "path", None) or "<unmatched>",
                    "status": status,
                    "latency_ms": round(seconds * 1000, 3),
                    "user": scope.get("state", {}).get("user"),
                    "request_id": request_id,
                }
            },
        )
