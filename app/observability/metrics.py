"""Every Prometheus metric the service exports, declared once, at import.

Label values are bounded: route templates (never raw paths), model versions, class labels,
feature names from model.json, and fixed reason lists. With several worker processes,
prometheus-client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set by `python -m app.serve`)
sums counters and histograms over processes; each gauge says how to merge.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

from app.core.oidc import REASONS as OIDC_REFUSALS

if TYPE_CHECKING:
    from app.observability.confidence import ConfidenceWindow
    from app.observability.drift import DriftMonitor

# The `_created` series double what is scraped and no dashboard or alert reads them.
disable_created_metrics()

NAMESPACE = "predictor"
AUTH_FAILURE_REASONS = (
    "bad_credentials",
    "locked",
    "expired",
    "invalid_token",
    "insufficient_scope",
    "revoked",  # a logged-out, reused-family or withdrawn user's token
    "unverifiable",  # a fail-closed scope's token while the revocation store does not answer
    "refresh_invalid",  # an unknown, expired or withdrawn refresh token
    "refresh_reuse",  # a refresh token presented a second time: its family is revoked
    "invalid_client",  # a service client's unknown id, wrong secret, or a disabled client
    "invalid_key",  # an unknown, tampered, expired or revoked API key
    *OIDC_REFUSALS,  # an external issuer's token: bad alg, signature, iss, aud, expired, unknown kid
)
# How callers authenticate (app.core.security.METHODS), and how it went.
AUTH_METHODS = ("password", "client_credentials", "api_key", "oidc")
AUTH_RESULTS = ("ok", "refused")
RELOAD_RESULTS = ("success", "refused")

HTTP_REQUESTS = Counter(
    "http_requests", "HTTP requests served.", ["method", "route", "status"], namespace=NAMESPACE
)
HTTP_DURATION = Histogram(
    "http_request_duration_seconds",
    "Time from request received to response sent.",
    ["method", "route"],
    namespace=NAMESPACE,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
HTTP_IN_FLIGHT = Gauge(
    "http_requests_in_flight", "Requests being served.", namespace=NAMESPACE, multiprocess_mode="livesum"
)

PREDICTIONS = Counter(
    "predictions", "Rows predicted, by predicted label.", ["model_version", "label"], namespace=NAMESPACE
)
PREDICTION_ROWS = Histogram(
    "prediction_rows",
    "Rows per prediction request.",
    namespace=NAMESPACE,
    buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 5000),
)
INFERENCE_SECONDS = Histogram(
    "inference_duration_seconds",
    "Time inside the model call, per request.",
    ["model_version"],
    namespace=NAMESPACE,
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
MODEL_INFO = Gauge(
    "model_info",
    "1 for the model being served.",
    ["version", "name", "run_id"],
    namespace=NAMESPACE,
    multiprocess_mode="livemax",
)
MODEL_LOADED = Gauge(
    "model_loaded", "1 when a model is loaded.", namespace=NAMESPACE, multiprocess_mode="livemin"
)
# 0 while this replica cannot reach the model store (MODEL_STORE_URL): it keeps serving what it has.
MODEL_STORE_UP = Gauge(
    "model_store_up",
    "1 when the model store answered this replica's last look, 0 when it did not.",
    namespace=NAMESPACE,
    multiprocess_mode="livemin",
)
MODEL_STORE_ERRORS = Counter(
    "model_store_errors", "Failed reads of the model store (list, download, verify).", namespace=NAMESPACE
)
# 1 while the version this replica should serve does not fit in its model cache (MODEL_CACHE_DIR):
# it serves the old one and tries again at every look.
MODEL_CACHE_FULL = Gauge(
    "model_cache_full",
    "1 while this replica's model cache has no room for a version it was asked to serve.",
    namespace=NAMESPACE,
    multiprocess_mode="livemax",
)
MODEL_RELOADS = Counter("model_reloads", "Model reload attempts.", ["result"], namespace=NAMESPACE)
# POST /models/import (app/api/routes/model_import.py): imported, refused by one of the import's
# steps, invalid (refused before it ran: a pickle, an archive, an empty file, a bad field), failed
# (the command ended without an answer) or timeout (stopped after IMPORT_TIMEOUT_SECONDS).
MODEL_IMPORT_RESULTS = ("imported", "refused", "invalid", "failed", "timeout")
MODEL_IMPORTS = Counter(
    "model_imports", "Models uploaded to POST /models/import, by result.", ["result"], namespace=NAMESPACE
)
MODEL_TRAINED = Gauge(
    "model_trained_timestamp_seconds",
    "When the serving model was trained (Unix time).",
    namespace=NAMESPACE,
    multiprocess_mode="livemin",
)

TOKENS_ISSUED = Counter("tokens_issued", "Access tokens issued.", namespace=NAMESPACE)
AUTH = Counter(
    "auth",
    "Authentications by method: tokens issued (password, client_credentials), API keys and external "
    "issuers' tokens checked (api_key, oidc).",
    ["method", "result"],
    namespace=NAMESPACE,
)
DATABASE_ERRORS = Counter(
    "database_errors",
    "Requests answered 503 because the database failed: down, unreachable, locked or out of connections.",
    ["route"],
    namespace=NAMESPACE,
)
AUTH_FAILURES = Counter("auth_failures", "Refused authentications.", ["reason"], namespace=NAMESPACE)
REVOCATIONS = Counter(
    "token_revocations",
    "Revocations written: a token, a refresh family, a user's tokens.",
    ["kind"],
    namespace=NAMESPACE,
)
RATE_LIMITED = Counter(
    "rate_limited",
    "Requests refused 429 by a rate limit: per client address (client) or per user (user).",
    ["route", "reason"],
    namespace=NAMESPACE,
)
RATE_LIMIT_STORE_UP = Gauge(
    "rate_limit_store_up",
    "1 when the rate limits' store (Redis) answered this replica's last check, 0 when it did not.",
    namespace=NAMESPACE,
    multiprocess_mode="livemin",
)
# 0 while this replica cannot read the revocation store (Redis or the database): it checks tokens
# against what it read last, and refuses the fail-closed scopes' tokens once that is too old.
REVOCATION_STORE_UP = Gauge(
    "revocation_store_up",
    "1 when the revocation store answered this replica's last read, 0 when it did not.",
    namespace=NAMESPACE,
    multiprocess_mode="livemin",
)

# 0 while this replica cannot fetch the OpenID Connect issuer's keys: tokens signed by the keys it has
# still verify, those signed by a new key are refused. Labelled by OIDC_ISSUER, so that without one
# there is no series (an unlabelled gauge would read 0, down).
OIDC_ISSUER_UP = Gauge(
    "oidc_issuer_up",
    "1 when the OpenID Connect issuer answered this replica's last key fetch, 0 when it did not.",
    ["issuer"],
    namespace=NAMESPACE,
    multiprocess_mode="livemin",
)

# Deprecated, no longer counted: slow clients are cut by the proxy in front now, which logs them
# (status 408 or 413 in nginx's access log; docs/operations.md). Still declared, at zero, so that a
# dashboard or alert that names it keeps a series rather than a gap; removed in a later release.
CONNECTIONS_CLOSED = Counter(
    "connections_closed",
    "Deprecated, always 0: slow clients are cut by the proxy in front (docs/operations.md).",
    ["reason"],
    namespace=NAMESPACE,
)

VALIDATION_ERRORS = Counter("validation_errors", "Rejected inputs, by field.", ["field"], namespace=NAMESPACE)
FEATURE_PSI = Gauge(
    "feature_psi",
    "Population stability index of recent inputs against the training profile.",
    ["feature"],
    namespace=NAMESPACE,
    multiprocess_mode="livemax",
)
PREDICTION_PSI = Gauge(
    "prediction_psi",
    "Population stability index of recent predicted labels against the training class balance.",
    namespace=NAMESPACE,
    multiprocess_mode="livemax",
)

# The prediction log (app/serving/prediction_log.py): rows written, or dropped (buffer_full: the
# buffer held PREDICTION_LOG_BUFFER_ROWS; write_failed: the database refused the batch).
PREDICTION_LOG_RESULTS = ("written", "buffer_full", "write_failed")
PREDICTION_LOG_ROWS = Counter(
    "prediction_log_rows", "Prediction log rows, by what became of them.", ["result"], namespace=NAMESPACE
)
PREDICTION_LOG_BUFFER = Gauge(
    "prediction_log_buffer_rows",
    "Rows the prediction log's writer took from its buffer at its last flush.",
    namespace=NAMESPACE,
    multiprocess_mode="livesum",
)
FEEDBACK_STATUSES = ("recorded", "relabelled", "unknown", "invalid")
FEEDBACK_ITEMS = Counter(
    "feedback_items", "Ground-truth items sent to POST /feedback, by status.", ["status"], namespace=NAMESPACE
)
# Live quality (app/observability/live_quality.py), from the labelled predictions of the last
# LIVE_QUALITY_WINDOW_HOURS; role is served (the answers sent) or shadow (a shadow challenger's).
# Every replica reads the same database: the gauges merge by max.
_LIVE = ["model_version", "role"]
LIVE_LABELLED = Gauge(
    "live_labelled",
    "Labelled predictions in the live window.",
    _LIVE,
    namespace=NAMESPACE,
    multiprocess_mode="livemax",
)
LIVE_ACCURACY = Gauge(
    "live_accuracy",
    "Accuracy on the labelled predictions in the live window.",
    _LIVE,
    namespace=NAMESPACE,
    multiprocess_mode="livemax",
)
LIVE_MACRO_F1 = Gauge(
    "live_macro_f1",
    "Macro-F1 on the labelled predictions in the live window.",
    _LIVE,
    namespace=NAMESPACE,
    multiprocess_mode="livemax",
)
LIVE_MAE = Gauge(
    "live_mae",
    "Mean absolute error on the labelled predictions in the live window.",
    _LIVE,
    namespace=NAMESPACE,
    multiprocess_mode="livemax",
)
LIVE_RMSE = Gauge(
    "live_rmse",
    "Root mean squared error on the labelled predictions in the live window.",
    _LIVE,
    namespace=NAMESPACE,
    multiprocess_mode="livemax",
)
# The settings the LiveQualityLow alert compares with, exported so the rule needs no copy of them.
LIVE_ACCURACY_MIN = Gauge(
    "live_accuracy_min",
    "LIVE_ACCURACY_MIN: the live accuracy below which LiveQualityLow fires.",
    namespace=NAMESPACE,
    multiprocess_mode="livemax",
)
LIVE_MAE_MAX = Gauge(
    "live_mae_max",
    "LIVE_MAE_MAX: the live MAE above which LiveQualityLow fires (+Inf: unset).",
    namespace=NAMESPACE,
    multiprocess_mode="livemax",
)
LIVE_MIN_LABELS = Gauge(
    "live_min_labels",
    "LIVE_QUALITY_MIN_LABELS: labels needed before LiveQualityLow may fire.",
    namespace=NAMESPACE,
    multiprocess_mode="livemax",
)
# The label-free estimate: the mean top probability of the recent answers (app/observability/confidence.py).
EXPECTED_ACCURACY = Gauge(
    "expected_accuracy",
    "Estimated accuracy from the served model's own probabilities over recent answers (no labels).",
    ["model_version"],
    namespace=NAMESPACE,
    multiprocess_mode="livemax",
)

# The shadow challenger (app/serving/shadow.py), per shadow version: the rows offered to it, by
# whether its answer agreed with the champion's, or it had none (dropped: its queue was full; failed:
# its model call raised, or the champion's rows do not fit it); and its model calls, each of which
# may score several requests' rows at once. Its live quality is predictor_live_*{role="shadow"}.
SHADOW_RESULTS = ("agreed", "disagreed", "dropped", "failed")
SHADOW_ROWS = Counter(
    "shadow_rows",
    "Rows offered to the shadow challenger, by outcome.",
    ["model_version", "result"],
    namespace=NAMESPACE,
)
SHADOW_INFERENCE_SECONDS = Histogram(
    "shadow_inference_duration_seconds",
    "Time inside the shadow challenger's model call, per call (one or more requests' rows).",
    ["model_version"],
    namespace=NAMESPACE,
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)

# A canary release (app/serving/canary.py): while one runs, every scoring request counted by the
# version that answered it and its role (champion or canary), the guards' state on this replica, and
# the automatic rollbacks by the guard that tripped.
CANARY_ROLES = ("champion", "canary")
CANARY_GUARDS = ("errors", "latency", "quality", "drift")
MODEL_REQUESTS = Counter(
    "model_requests",
    "Scoring requests answered by each version in its role, while a canary runs.",
    ["model_version", "role"],
    namespace=NAMESPACE,
)
MODEL_ERRORS = Counter(
    "model_errors",
    "Of those, the 5xx answers and the failed model calls (rows the model has no answer for).",
    ["model_version", "role"],
    namespace=NAMESPACE,
)
MODEL_REQUEST_SECONDS = Histogram(
    "model_request_seconds",
    "Whole-request latency of the scoring requests each version answered in its role, while a canary runs.",
    ["model_version", "role"],
    namespace=NAMESPACE,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
CANARY_PERCENT = Gauge(
    "canary_percent",
    "The share of requests (percent) the canary answers on this replica; 0 when none runs.",
    namespace=NAMESPACE,
    multiprocess_mode="livemax",
)
CANARY_STEP = Gauge(
    "canary_step",
    "The canary's step (0-based index in its steps); -1 when none runs.",
    namespace=NAMESPACE,
    multiprocess_mode="livemax",
)
CANARY_GUARD_BREACHED = Gauge(
    "canary_guard_breached",
    "1 while this guard is breached on this replica (errors, latency, quality, drift).",
    ["guard"],
    namespace=NAMESPACE,
    multiprocess_mode="livemax",
)
CANARY_ROLLBACKS = Counter(
    "canary_rollbacks",
    "Canaries rolled back automatically, by the guard that tripped.",
    ["reason"],
    namespace=NAMESPACE,
)

# Series that exist from the start, so rate() sees zeros rather than nothing.
for _reason in AUTH_FAILURE_REASONS:
    AUTH_FAILURES.labels(reason=_reason)
for _method in AUTH_METHODS:
    for _result in AUTH_RESULTS:
        AUTH.labels(method=_method, result=_result)
for _result in RELOAD_RESULTS:
    MODEL_RELOADS.labels(result=_result)
for _result in MODEL_IMPORT_RESULTS:
    MODEL_IMPORTS.labels(result=_result)
MODEL_LOADED.set(0)
CANARY_PERCENT.set(0)
CANARY_STEP.set(-1)
for _guard in CANARY_GUARDS:
    CANARY_ROLLBACKS.labels(reason=_guard)
    CANARY_GUARD_BREACHED.labels(guard=_guard).set(0)
MODEL_STORE_UP.set(1)
REVOCATION_STORE_UP.set(1)
RATE_LIMIT_STORE_UP.set(1)
for _kind in ("token", "family", "user"):
    REVOCATIONS.labels(kind=_kind)
for _result in PREDICTION_LOG_RESULTS:
    PREDICTION_LOG_ROWS.labels(result=_result)
for _status in FEEDBACK_STATUSES:
    FEEDBACK_ITEMS.labels(status=_status)
for _reason in ("header_timeout", "unread_body"):  # deprecated: the series at zero, as before
    CONNECTIONS_CLOSED.labels(reason=_reason)


def shadow_started(version: str) -> None:
    """The shadow's series, at zero, before its first row."""
    for result in SHADOW_RESULTS:
        SHADOW_ROWS.labels(model_version=version, result=result)
    SHADOW_INFERENCE_SECONDS.labels(model_version=version)


_served: dict[str, str] = {}


def model_served(
    version: str, name: str, run_id: str | None, trained_at: float, labels: Iterable[str]
) -> None:
    """Point the model gauges at a newly loaded model (0, not removal: other processes share the files)."""
    if _served:
        MODEL_INFO.labels(**_served).set(0)
    _served.update(version=version, name=name, run_id=run_id or "")
    MODEL_INFO.labels(**_served).set(1)
    MODEL_LOADED.set(1)
    MODEL_TRAINED.set(trained_at)
    for label in labels:
        PREDICTIONS.labels(model_version=version, label=label)


def validation_failed(fields: Iterable[object], known: set[str]) -> None:
    """Count rejected fields; names a client made up are pooled, so labels stay bounded."""
    for field in fields:
        name = (
            field if isinstance(field, str) and field in known else ("_body" if field is None else "_other")
        )
        VALIDATION_ERRORS.labels(field=name).inc()


# Label children, looked up once: `.labels()` validates and locks on every call, which showed in
# the /predict benchmark. The label values are bounded, so are these caches.
@lru_cache(maxsize=4096)
def _http(method: str, route: str, status: str) -> tuple[Any, Any]:
    return HTTP_REQUESTS.labels(method, route, status), HTTP_DURATION.labels(method, route)


@lru_cache(maxsize=4096)
def _predictions(version: str, label: str) -> Any:
    return PREDICTIONS.labels(version, label)


@lru_cache(maxsize=256)
def _inference(version: str) -> Any:
    return INFERENCE_SECONDS.labels(version)


def request_served(method: str, route: str, status: int, seconds: float) -> None:
    requests, duration = _http(method, route, str(status))
    requests.inc()
    duration.observe(seconds)


def predictions_served(version: str, label_counts: Mapping[str, int], rows: int, seconds: float) -> None:
    """One request's rows, counted by label (Answers.label_counts)."""
    _inference(version).observe(seconds)
    PREDICTION_ROWS.observe(rows)
    for label, count in label_counts.items():
        _predictions(version, label).inc(count)


def publish_drift(monitor: DriftMonitor) -> None:
    """Set the PSI gauges from this process's monitor, as of now (NaN: too few rows yet, left as is)."""
    for feature, value in monitor.feature_psi().items():
        if not math.isnan(value):
            FEATURE_PSI.labels(feature=feature).set(value)
    prediction_psi = monitor.prediction_psi()
    if not math.isnan(prediction_psi):
        PREDICTION_PSI.set(prediction_psi)


def publish_expected_accuracy(version: str, confidence: ConfidenceWindow | None) -> None:
    """Set the label-free estimate of the served version (NaN: no answer yet, left as is)."""
    if confidence is None:
        return
    estimate = confidence.expected_accuracy()
    if not math.isnan(estimate):
        EXPECTED_ACCURACY.labels(model_version=version).set(estimate)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def exposition() -> tuple[bytes, str]:
    """The text format, merged over worker processes when there are several."""
    if multiprocess_dir():
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
