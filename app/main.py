"""create_app(): the service's wiring, and nothing else.

uvicorn app.main:create_app --factory     (or python -m app.serve, which migrates first)
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute

from app.api import errors
from app.api.body_limit import BodyLimitMiddleware
from app.api.direct_routes import direct_route
from app.api.routes import (
    api_keys,
    auth,
    canary,
    clients,
    feedback,
    health,
    metrics,
    model,
    model_import,
    monitoring,
    predict,
    predict_csv,
    shadow,
    train,
    users,
    v2,
)
from app.api.services import Services, start_services
from app.core.config import Settings, load_settings
from app.core.security import use_password_cost
from app.observability.logging import configure_logging
from app.observability.middleware import RequestContextMiddleware


def _lifespan(settings: Settings) -> Callable[[FastAPI], Any]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with start_services(settings) as services:
            app.state.services = services
            # What start-up built (the app, the model) lives as long as the process: out of the cycle
            # collector's sight, so that a full collection does not walk it between two requests
            # (50-90 ms here: it was the p99 at c=32). A model swapped in later stays collectable; the
            # first one's cyclic garbage, if any, is kept until shutdown. python -m app.serve turned
            # the collector off for the start-up (the Python docs' pattern for gc.freeze): on from here.
            gc.freeze()
            gc.enable()
            try:
                yield
            finally:
                gc.unfreeze()  # an app made again in this process (tests) leaves nothing behind

    return lifespan


def _openapi(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """The /predict body schema comes from the loaded model, so it is filled in per model version."""
    cache: dict[str | None, dict[str, Any]] = {}

    def openapi() -> dict[str, Any]:
        services: Services | None = getattr(app.state, "services", None)
        current = services.serving.current if services else None
        version = current.version if current else None
        if version not in cache:
            spec = get_openapi(title=app.title, version=app.version, routes=app.routes)
            api_keys.document_api_keys(spec)
            schemas = spec.setdefault("components", {}).setdefault("schemas", {})
            if current is not None:
                generated = current.schema.request_model.model_json_schema(
                    by_alias=True, ref_template="#/components/schemas/{model}"
                )
                schemas.update(generated.pop("$defs", {}))
                schemas["PredictRequest"] = generated
            else:
                schemas["PredictRequest"] = {"type": "object", "description": "No model loaded."}
            cache.clear()
            cache[version] = spec
        return cache[version]

    return openapi


def _route(router: APIRouter, path: str) -> APIRoute:
    return next(r for r in router.routes if isinstance(r, APIRoute) and r.path == path)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    configure_logging(settings.log_level)
    use_password_cost(settings.password_cost)

    app = FastAPI(
        title="MLOps API Predictor",
        version="0.1.0",
        description="Get a token at /token (Authorize button), then POST /predict.",
        lifespan=_lifespan(settings),
        # Added after the API's routes, below: FastAPI matches a request against the routes in order.
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        # FastAPI's own OpenTelemetry, checked on every request; the service exports Prometheus metrics.
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )

    errors.install(app)
    # The last added runs first: the request context wraps the body limit, so a 413 is logged and
    # counted.
    app.add_middleware(BodyLimitMiddleware, csv=settings.max_csv_bytes)
    app.add_middleware(RequestContextMiddleware, metrics_enabled=settings.metrics_enabled)
    # The routes called all the time, first and called directly (app.api.direct_routes);
    # their declarations, in the routers below, document them. /health first: a path match costs
    # /predict's scoring next to nothing, and /health's answer about as much as the match.
    app.router.routes[:0] = [
        direct_route(_route(health.router, "/health")),
        direct_route(_route(predict.router, "/predict")),
    ]
    # In the order requests are matched, each route tried in turn: the ones called all the time first.
    routers = (
        predict,
        health,
        v2,
        predict_csv,
        auth,
        feedback,
        model,
        model_import,
        shadow,
        canary,
        monitoring,
        train,
        users,
        clients,
        api_keys,
        metrics,
    )
    for router in (module.router for module in routers):
        app.include_router(router)
    app.openapi_url, app.docs_url, app.redoc_url = "/openapi.json", "/docs", "/redoc"
    app.setup()  # the documentation's routes, now after the API's
    # FastAPI documents overriding app.openapi; mypy sees a method assignment.
    app.openapi = _openapi(app)  # type: ignore[method-assign]
    return app
