"""The routes called all the time (`GET /health`, `POST /predict`), answered before FastAPI's routing.

Matching a request against every route, then solving the endpoint's (empty) dependencies, cost more
than answering a one-row prediction (python -m bench.inprocess). These endpoints take the request
alone and read everything else from it, so nothing is left for FastAPI to do: each is called as
Starlette calls a plain request-response endpoint, inside an ExceptionMiddleware with the app's own
handlers, so a 401, 422 or 503 answers exactly as through the router. This sits inside the request
context (app.observability.middleware): the request id, the access log and the metrics stay. The
routes stay in the router too, which documents them in OpenAPI and answers what is not matched here
(`HEAD /health`, `/predict/`, a 405).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from typing import Any

from fastapi.routing import APIRoute
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.requests import Request
from starlette.routing import request_response
from starlette.types import ASGIApp, Receive, Scope, Send


def takes_the_request_alone(route: APIRoute) -> bool:
    """Whether FastAPI would have nothing to solve for this route, so skipping it changes nothing."""
    parameters = list(inspect.signature(route.endpoint).parameters.values())
    return (
        not route.dependencies
        and len(parameters) == 1
        and parameters[0].annotation in (Request, "Request")
        and inspect.iscoroutinefunction(route.endpoint)
    )


class HotRoutes:
    def __init__(self, app: ASGIApp, routes: Iterable[APIRoute], handlers: Mapping[Any, Any]) -> None:
        self.app = app
        self.hot: dict[tuple[str, str], tuple[APIRoute, ASGIApp]] = {}
        for route in routes:
            if not takes_the_request_alone(route):
                raise ValueError(f"{route.path} has parameters or dependencies: it needs the router")
            endpoint = ExceptionMiddleware(request_response(route.endpoint), handlers=handlers)
            for method in route.methods or ():
                self.hot[method, route.path] = (route, endpoint)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        hot = None
        if scope["type"] == "http":
            path, root = scope["path"], scope.get("root_path", "")
            if path.startswith(root):
                hot = self.hot.get((scope["method"], path[len(root) :]))
        if hot is None:
            await self.app(scope, receive, send)
            return
        route, endpoint = hot
        # What the router would have put in the scope: the metrics and the access log name the
        # request by its route.
        scope["route"], scope["endpoint"], scope["path_params"] = route, route.endpoint, {}
        await endpoint(scope, receive, send)
