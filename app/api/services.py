"""The API process's collaborators, built once at start-up and stopped in the reverse order.

`start_services(settings)` is an async context manager: each part is started and its stop is pushed
on an `AsyncExitStack` at once, so a failure halfway (a database that refuses, a bad setting) stops
what had already started, and at shutdown the background threads are stopped and joined before the
database they read is disposed. Routes reach the result through `app.api.deps` (typed), never
through `app.state` themselves.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio

from app.adapters.mlflow_alias import update_champion_alias
from app.adapters.model_store import ModelStore
from app.adapters.oidc_issuer import IssuerKeys
from app.api.rate_limits import RateLimits
from app.core.config import Settings
from app.core.credentials import ApiKeys
from app.core.oidc import OidcVerifier
from app.core.periodic import Periodic
from app.core.revocation import RevocationList
from app.db.api_keys import ApiKeyStore
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
from app.observability.metrics import OIDC_ISSUER_UP, REVOCATION_STORE_UP
from app.serving.canary_guard import CanaryGuard
from app.serving.champion_alias import ChampionAlias
from app.serving.inference import scoring_limiter
from app.serving.prediction_log import PredictionLog
from app.serving.state import ServingState
from app.serving.tracing import Tracing

# How often the API keys' last use is written (app.core.credentials.ApiKeys.flush).
LAST_USE_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class Draining:
    """Whether this replica is being taken out of rotation: a file every process of it can see."""

    file: Path

    def __call__(self) -> bool:
        return self.file.exists()


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings
    database: Database
    serving: ServingState  # the model served now, the pointer it follows, the shadow
    champion_alias: ChampionAlias  # MLflow's alias, moved after a swap, off the request
    throttle: DatabaseLoginThrottle  # failed logins per username
    revocations: RevocationList  # withdrawn tokens, checked on every request
    api_keys: ApiKeys  # the API keys this replica verified, in memory; their last use, written in batches
    rate_limits: RateLimits
    refresh_tokens: RefreshTokens
    jobs: JobQueue  # retraining jobs, run by the worker (python -m app.worker), never here
    predictions: PredictionLogStore  # the prediction log's table: feedback, live quality
    prediction_log: PredictionLog | None  # the sampled writer; None when PREDICTION_LOG_SAMPLE is 0
    tracing: Tracing  # ids, log and shadow for every answered row
    live_quality: LiveQuality
    canary_guard: CanaryGuard  # the canary's guards and steps, judged on this replica
    scoring: anyio.CapacityLimiter  # the threads that score large or slow requests
    draining: Draining  # /ready answers 503 once the preStop hook (python -m app.drain) ran
    oidc: OidcVerifier | None = None  # an external issuer's tokens (OIDC_ISSUER); None when unset


@asynccontextmanager
async def start_services(settings: Settings) -> AsyncIterator[Services]:
    async with AsyncExitStack() as stack:
        database = Database(settings.database_url)
        stack.callback(database.dispose)  # pushed first: the last to go
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
            canary_window_seconds=settings.canary_window_seconds,
        )
        serving.load_initial()
        stack.callback(serving.watch(settings.watch_seconds).stop)
        champion_alias = ChampionAlias(serving.pointer, update_champion_alias)
        stack.callback(champion_alias.close)

        revocations = RevocationList(
            revocation_store(settings.redis_url, database.session, settings.longest_token_seconds),
            max_staleness=settings.revocation_max_staleness_seconds,
            fail_closed_scopes=settings.revocation_fail_closed_scopes.split(),
            on_read=lambda answered: REVOCATION_STORE_UP.set(1 if answered else 0),
        )
        revocations.refresh()
        stack.callback(revocations.watch(settings.revocation_refresh_seconds).stop)

        api_keys = ApiKeys(ApiKeyStore(database.session))
        # The keys' last use, written every few seconds rather than on each request; at shutdown the
        # loop stops, then what is left is written, before the database goes.
        stack.callback(api_keys.flush)
        stack.callback(Periodic("api-key-use", LAST_USE_SECONDS, api_keys.flush).start().stop)
        oidc = _oidc(settings, stack)

        predictions = PredictionLogStore(database.session)
        prediction_log = None
        if settings.prediction_log_sample > 0:
            prediction_log = PredictionLog(
                predictions,
                settings.prediction_log_sample,
                settings.prediction_log_buffer_rows,
                settings.prediction_log_days,
            )
            # What is buffered is written before the database goes.
            stack.callback(prediction_log.start())
        tracing = Tracing(prediction_log)
        # The shadow challenger, if the pointer names one; stopped before the log it writes to.
        stack.callback(serving.trace_with(tracing))

        canary_guard = CanaryGuard(
            serving.canaries,
            predictions,
            settings.canary_limits,
            lambda canary, evidence: champion_alias.follow(
                serving.promote_canary(canary.version, "guard", evidence.figures()).metadata
            ),
            settings.promotion_min_labels,
            settings.promotion_tolerance,
        )
        stack.callback(canary_guard.watch(settings.canary_check_seconds).stop)

        live_quality = LiveQuality(predictions, settings.live_quality_window_hours)
        if settings.metrics_enabled:
            publish_thresholds(
                settings.live_accuracy_min, settings.live_mae_max, settings.live_quality_min_labels
            )
            stack.callback(live_quality.watch(settings.live_quality_refresh_seconds).stop)

        yield Services(
            settings=settings,
            database=database,
            serving=serving,
            champion_alias=champion_alias,
            throttle=DatabaseLoginThrottle(
                database.session, settings.login_max_failures, settings.login_window_seconds
            ),
            revocations=revocations,
            api_keys=api_keys,
            rate_limits=RateLimits.from_settings(settings),
            refresh_tokens=RefreshTokens(database.session, 60.0 * settings.refresh_token_expire_minutes),
            jobs=JobQueue(database.session, settings.job_lease_seconds),
            predictions=predictions,
            prediction_log=prediction_log,
            tracing=tracing,
            live_quality=live_quality,
            canary_guard=canary_guard,
            scoring=scoring_limiter(),
            draining=Draining(settings.drain_file),
            oidc=oidc,
        )


def _oidc(settings: Settings, stack: AsyncExitStack) -> OidcVerifier | None:
    """The external issuer's verifier, its keys fetched in the background: start-up does not wait
    for the issuer (a token before its keys arrive is refused, 401)."""
    config = settings.oidc
    if config is None:
        return None
    up = OIDC_ISSUER_UP.labels(issuer=config.issuer)
    verifier = OidcVerifier(config)
    keys = IssuerKeys(
        verifier,
        refresh_seconds=settings.oidc_jwks_refresh_seconds,
        min_refetch_seconds=settings.oidc_jwks_min_refetch_seconds,
        on_change=lambda answered: up.set(1 if answered else 0),
    )
    verifier.on_unknown_kid = keys.unknown_kid
    stack.callback(keys.watch().stop)
    return verifier
