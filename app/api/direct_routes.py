"""The routes called all the time (`GET /health`, `POST /predict`), served without dependency solving.

Their endpoints take the request alone and read the token, the model, the query and the body from it
themselves (app.api.deps.bearer_claims, serving_predictor; app.api.routes.predict.query_flag), so
FastAPI has nothing to solve for them. Through FastAPI's router they would still pay for it: the
included routers' routes are matched through their inclusion context, and FastAPI's request handler
reads the endpoint's context and solves an empty dependency list, which cost more than a one-row
prediction (python -m bench.inprocess). So `direct_route()` makes, for each, a `RequestRoute` with
the same path, methods and endpoint: an `APIRoute` (FastAPI's documented `route_class` extension) whose
`get_route_handler()` returns the endpoint itself, there being nothing to solve. app.main puts them
first in the app's own routes: the router matches them first and sets `scope["route"]` (the metrics
and the access log name the request by its path), and the app's exception handlers answer their 401,
403, 422 and 503 as for any route. (A plain Starlette `Route` costs less still, but FastAPI's router
does not set `scope["route"]` for one.)

The declared `APIRoute`s stay in their routers, where they document the routes in OpenAPI (the copies
are left out of it). The copies, tried first, answer every request to these paths, a 405 included.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute


def takes_the_request_alone(route: APIRoute) -> bool:
    """Whether FastAPI would have nothing to solve for this route, so skipping it changes nothing."""
    parameters = list(inspect.signature(route.endpoint).parameters.values())
    return (
        not route.dependencies
        and len(parameters) == 1
        and parameters[0].annotation in (Request, "Request")
        and inspect.iscoroutinefunction(route.endpoint)
    )


class RequestRoute(APIRoute):
    """An APIRoute whose endpoint takes the request alone, called with it and nothing solved."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        if not takes_the_request_alone(self):
            raise ValueError(f"{self.path} has parameters or dependencies: it needs FastAPI's APIRoute")
        handler: Callable[[Request], Coroutine[Any, Any, Response]] = self.endpoint
        return handler


def direct_route(route: APIRoute) -> RequestRoute:
    """This APIRoute's path, methods and endpoint, called directly; left out of OpenAPI, which
    documents the declaration."""
    return RequestRoute(
        route.path, route.endpoint, methods=route.methods, name=route.name, include_in_schema=False
    )
