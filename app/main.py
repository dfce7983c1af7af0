"""create_app(): the service's wiring, and nothing else.

uvicorn app.main:create_app --factory     (or python -m app.serve, which migrates first)
"""

from __future__ import annotations

import gc
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute

from app.api import errors
from app.api.body_limit import BodyLimitMiddleware
from app.api.draining import drain_on_sigterm
from app.api.hot_routes import HotRoutes
from app.api.rate_limits import RateLimits
from app.api.routes import (
    auth,
    feedback,
    health,
    metrics,
    model,
    monitoring,
    predict,
    predict_csv,
    shadow,
    train,
    users,
    v2,
)
from app.core.config import Settings, load_settings
from app.core.model_store import ModelStore
from app.core.revocation import RevocationList
from app.core.security import use_password_cost
from app.db.bootstrap import bootstrap
from app.db.jobs import JobQueue
from app.db.pointer import DatabasePointer
from app.db.prediction_log import PredictionLogStore
from app.db.refresh_tokens import RefreshTokens
from app.db.revocations import revocation_store
from app.db.session import Database
from app.db.throttle import DatabaseLoginThrottle
from app.observability.drift import DriftSettings
from app.observability.live_quality import LiveQuality, publish_thresholds
from app.observability.logging import configure_logging
from app.observability.metrics import REVOCATION_STORE_UP
from app.observability.middleware import RequestContextMiddleware
from app.serving.inference import scoring_limiter
from app.serving.prediction_log import PredictionLog
from app.serving.state import ServingState
from app.serving.tracing import Tracing


def _lifespan(settings: Settings) -> Callable[[FastAPI], Any]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        database = Database(settings.database_url)
        if settings.migrate_on_startup:
            bootstrap(database, settings)
        drift = (
            DriftSettings(settings.drift_window, settings.drift_min_rows, settings.drift_refresh_seconds)
            # Drift is measured for the metrics: without them, nothing would read it.
            if settings.drift_enabled and settings.metrics_enabled
            else None
        )
        serving = ServingState(
            settings.model_dir,
            settings.max_batch_rows,
            drift,
            ModelStore.from_url(settings.model_store_url, settings.model_cache_dir),
            DatabasePointer(database.session),
            threads=settings.onnx_intra_op_threads,
            shadow_queue_batches=settings.shadow_queue_batches,
        )
        serving.load_initial()
        # What start-up built (the app, the model) lives as long as the process: out of the cycle
        # collector's sight, so that a full collection does not walk it between two requests (50-90 ms
        # here: it was the p99 at c=32). A model swapped in later stays collectable; the first one's
        # cyclic garbage, if any, is kept until shutdown. python -m app.serve turned the collector
        # off for the start-up (the Python docs' pattern for gc.freeze): on from here.
        gc.freeze()
        gc.enable()
        stop_watching = serving.watch(settings.watch_seconds)
        app.state.database = database
        app.state.throttle = DatabaseLoginThrottle(
            database.session, settings.login_max_failures, settings.login_window_seconds
        )
        app.state.serving = serving
        revocations = RevocationList(
            revocation_store(settings.redis_url, database.session, settings.longest_token_seconds),
            max_staleness=settings.revocation_max_staleness_seconds,
            fail_closed_scopes=settings.revocation_fail_closed_scopes.split(),
            on_read=lambda answered: REVOCATION_STORE_UP.set(1 if answered else 0),
        )
        revocations.refresh()
        stop_revocations = revocations.watch(settings.revocation_refresh_seconds)
        app.state.revocations = revocations
        app.state.rate_limits = RateLimits.from_settings(settings)
        app.state.draining = threading.Event()
        restore_sigterm = drain_on_sigterm(app.state.draining, settings.shutdown_drain_seconds)
        app.state.refresh_tokens = RefreshTokens(
            database.session, 60.0 * settings.refresh_token_expire_minutes
        )
        app.state.scoring = scoring_limiter()  # the threads that score large or slow requests
        # Jobs are queued here and run by a worker (python -m app.worker), never in this process.
        app.state.jobs = JobQueue(database.session, settings.job_lease_seconds)
        predictions = PredictionLogStore(database.session)
        app.state.predictions = predictions
        prediction_log = (
            PredictionLog(
                predictions,
                settings.prediction_log_sample,
                settings.prediction_log_buffer_rows,
                settings.prediction_log_days,
            )
            if settings.prediction_log_sample > 0
            else None
        )
        stop_log = prediction_log.start() if prediction_log is not None else lambda: None
        app.state.prediction_log = prediction_log
        app.state.tracing = Tracing(prediction_log)
        stop_shadow = serving.trace_with(app.state.tracing)  # the shadow challenger, if any
        live_quality = LiveQuality(predictions, settings.live_quality_window_hours)
        app.state.live_quality = live_quality
        stop_live_quality = lambda: None  # noqa: E731
        if settings.metrics_enabled:
            publish_thresholds(
                settings.live_accuracy_min, settings.live_mae_max, settings.live_quality_min_labels
            )
            stop_live_quality = live_quality.watch(settings.live_quality_refresh_seconds)
        try:
            yield
        finally:
            restore_sigterm()
            stop_watching()
            stop_shadow()
            stop_revocations()
            stop_live_quality()
            stop_log()  # what is buffered is written before the database goes
            database.dispose()
            gc.unfreeze()  # an app made again in this process (tests) leaves nothing behind

    return lifespan


def _openapi(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """The /predict body schema comes from the loaded model, so it is filled in per model version."""
    cache: dict[str | None, dict[str, Any]] = {}

    def openapi() -> dict[str, Any]:
        serving: ServingState | None = getattr(app.state, "serving", None)
        current = serving.current if serving else None
        version = current.version if current else None
        if version not in cache:
            spec = get_openapi(title=app.title, version=app.version, routes=app.routes)
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
    app.state.settings = settings

    errors.install(app)
    # The last added runs first: the request context wraps the body limit, so a 413 is logged and
    # counted, which wraps the hot routes, so a prediction's body is limited too.
    hot = [_route(health.router, "/health"), _route(predict.router, "/predict")]
    app.add_middleware(HotRoutes, routes=hot, handlers=app.exception_handlers)
    app.add_middleware(BodyLimitMiddleware, csv=settings.max_csv_bytes)
    app.add_middleware(RequestContextMiddleware, metrics_enabled=settings.metrics_enabled)
    # In the order requests are matched, each route tried in turn: the ones called all the time first.
    routers = (
        predict,
        health,
        v2,
        predict_csv,
        auth,
        feedback,
        model,
        shadow,
        monitoring,
        train,
        users,
        metrics,
    )
    for router in (module.router for module in routers):
        app.include_router(router)
    app.openapi_url, app.docs_url, app.redoc_url = "/openapi.json", "/docs", "/redoc"
    app.setup()  # the documentation's routes, now after the API's
    # FastAPI documents overriding app.openapi; mypy sees a method assignment.
    app.openapi = _openapi(app)  # type: ignore[method-assign]
    return app
