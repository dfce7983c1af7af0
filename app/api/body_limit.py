"""Request bodies are counted as they arrive and refused with 413 once they pass their route's limit.

Limits, by path (the paths of app/api/routes, outside any root_path):

- `/predict/csv`: MAX_CSV_BYTES, 1 GiB unless the setting says otherwise. The route streams the file,
  scoring it a chunk at a time in bounded memory, so this is a quota per request, not a memory guard.
- `/predict`, `/train`, `/models/import` and the V2 infer routes
  (`/v2/models/{name}[/versions/{version}]/infer`): MAX_BODY_BYTES, 32 MiB. Far above MAX_BATCH_ROWS
  rows of any reasonable width, and room for a training CSV, or a model file and its sample CSV (a
  larger model is imported from the command line); a guard against memory abuse, not a quota.
- everything else: SMALL_BODY_BYTES, 64 KiB. The /token form and the admin JSON bodies (a user, a
  version to roll back to) are a few hundred bytes; the other routes take no body.

A Content-Length past the limit is refused before the app runs. Without one (Transfer-Encoding:
chunked) the bytes are counted as the app reads them, and the read that passes the limit raises
BodyTooLarge instead of returning: the app never holds more than the limit. It is an HTTPException,
so FastAPI's body parsing re-raises it unchanged (it turns other errors into a 400) and the app's
handler answers `{"detail": "request body too large (limit N bytes)"}`; this middleware answers the
same if it reaches it (`{"error": ...}` on the V2 routes, the protocol's shape). uvicorn then
discards the rest of the body on a connection it keeps open: no memory held, and the client reads
the 413 rather than a connection reset. uvicorn discards for as long as the client sends: a body
that never ends is cut by the proxy in front, whose lingering_time bounds it (deploy/nginx/
predictor.conf; docs/api.md, "Slow clients").

A pure ASGI middleware (no BaseHTTPMiddleware). FastAPI's own `max_body_size` answers plain text
when the app responds without reading the body, and does not say the limit.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from starlette import status
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_BODY_BYTES = 32 * 1024 * 1024
SMALL_BODY_BYTES = 64 * 1024
MAX_CSV_BYTES = 1024**3  # the setting's default
LARGE_BODY_PATHS = frozenset({"/predict", "/train", "/models/import"})
CSV_BODY_PATHS = frozenset({"/predict/csv"})
# The V2 infer routes, whatever the model's name and version.
_V2_INFER = re.compile(r"/v2/models/[^/]+(/versions/[^/]+)?/infer")


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(status.HTTP_413_CONTENT_TOO_LARGE, f"request body too large (limit {limit} bytes)")
        self.limit = limit


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


def _route_path(scope: Scope) -> str:
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return path.rstrip("/") or "/"


class BodyLimitMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        default: int = SMALL_BODY_BYTES,
        large: int = MAX_BODY_BYTES,
        csv: int = MAX_CSV_BYTES,
        large_paths: Iterable[str] = LARGE_BODY_PATHS,
        csv_paths: Iterable[str] = CSV_BODY_PATHS,
    ) -> None:
        self.app = app
        self.default = default
        self.large = large
        self.csv = csv
        self.large_paths = frozenset(large_paths)
        self.csv_paths = frozenset(csv_paths)

    def limit_for(self, scope: Scope) -> int:
        path = _route_path(scope)
        if path in self.csv_paths:
            return self.csv
        if path in self.large_paths or _V2_INFER.fullmatch(path):
            return self.large
        return self.default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope)
        declared = _declared_length(scope)
        if declared is not None and declared > limit:
            await _refuse(limit, scope, receive, send)
            return
        received = 0
        response_started = False

        async def counted_receive() -> Message:
            nonlocal received
            if received > limit:  # a second read after the refusal gets no more of the body
                raise BodyTooLarge(limit)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyTooLarge as exc:
            if response_started:
                raise
            await _refuse(exc.limit, scope, receive, send)


async def _refuse(limit: int, scope: Scope, receive: Receive, send: Send) -> None:
    # The V2 routes answer errors in the protocol's shape, as app/api/routes/v2.py does for the rest.
    key = "error" if _V2_INFER.fullmatch(_route_path(scope)) else "detail"
    response = JSONResponse({key: BodyTooLarge(limit).detail}, status_code=status.HTTP_413_CONTENT_TOO_LARGE)
    await response(scope, receive, send)
