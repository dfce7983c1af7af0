"""Per request: the X-Request-ID header, one JSON access-log line, and the HTTP metrics.

A pure ASGI middleware (no BaseHTTPMiddleware): it adds no task or body copy per request.
"""

from __future__ import annotations

import logging
import re
import time
from uuid import uuid4

from starlette.datastructures import MutableHeaders
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.observability import metrics
from app.observability.logging import LOGGER_NAME

log = logging.getLogger(LOGGER_NAME)
access_log = logging.getLogger(f"{LOGGER_NAME}.access")

REQUEST_ID_HEADER = "X-Request-ID"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# A client's own request id is kept when it is short and plain, so it cannot forge log lines.
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, metrics_enabled: bool = True) -> None:
        self.app = app
        self.metrics_enabled = metrics_enabled

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
        if self.metrics_enabled:
            metrics.HTTP_IN_FLIGHT.inc()

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

    def _finish(self, scope: Scope, status: int, seconds: float, request_id: str) -> None:
        route = getattr(scope.get("route"), "path", None) or "<unmatched>"
        # While a canary runs, a scoring route names where the version and role that answered count
        # it (app/observability/role_outcomes.py): the canary's guards judge these.
        answered_by = scope["state"].get("answered_by")
        if answered_by is not None:
            answered_by(seconds, status >= 500)
        if self.metrics_enabled:
            metrics.HTTP_IN_FLIGHT.dec()
            # The route template, never the raw path: label values stay bounded.
            method = scope["method"] if scope["method"] in _METHODS else "OTHER"
            metrics.request_served(method, route, status, seconds)
        if not access_log.isEnabledFor(logging.INFO):
            return
        fields = {
            "method": scope["method"],
            "route": route,
            "status": status,
            "latency_ms": round(seconds * 1000, 3),
            "user": scope.get("state", {}).get("user"),
            "request_id": request_id,
        }
        # The record made here rather than by access_log.info(), which walks the stack for the
        # caller's file and line on every request; the JSON line has no use for them.
        record = access_log.makeRecord(
            access_log.name, logging.INFO, __file__, 0, "request", (), None, extra={"fields": fields}
        )
        access_log.handle(record)
