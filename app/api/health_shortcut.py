"""GET /health answered before FastAPI's routing and middleware stack, by the same function as its route.

Probes and load balancers call it all the time, and matching it against every route, then solving its
(empty) dependencies, cost several times the answer itself (python -m bench.inprocess). This sits
inside the request context (app.observability.middleware), so the request id, the access log and the
metrics stay; the route in app/api/routes/health.py still documents it in OpenAPI and answers what
this leaves to it (HEAD, `/health/`).
"""

from __future__ import annotations

from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.routes.health import health_body

_HEADERS = [(b"content-type", b"application/json")]


class HealthShortcut:
    def __init__(self, app: ASGIApp, route: BaseRoute) -> None:
        self.app = app
        self.route = route  # what the metrics and the access log name the request by

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "GET"
            or scope["path"] != scope.get("root_path", "") + "/health"
        ):
            await self.app(scope, receive, send)
            return
        scope["route"] = self.route
        body = health_body(scope["app"].state.serving)
        headers = [*_HEADERS, (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
