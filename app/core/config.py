"""Settings for the API, read from the environment and `.env`, once per process.

Nothing here runs at import time: call get_settings() (cached) where a setting is needed,
and get_settings.cache_clear() in tests after changing the environment.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.core.canary_guards import CanaryLimits
from app.core.oidc import OidcConfig, ScopeMap
from app.core.security import PRODUCTION_COST, SCOPES, PasswordCost

# The values .env.example ships with: fine on a laptop, refused in production.
EXAMPLE_SECRET_KEY = "dev-only-secret-key-change-me"  # noqa: S105
EXAMPLE_ADMIN_PASSWORD = "admin-change-me"  # noqa: S105
DEFAULT_DATABASE_URL = "sqlite:///var/predictor.db"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", extra="ignore", hide_input_in_errors=True, protected_namespaces=()
    )

    app_env: Literal["development", "production"] = "development"
    secret_key: SecretStr = SecretStr(EXAMPLE_SECRET_KEY)
    access_token_expire_minutes: int = Field(default=30, ge=1, le=24 * 60)
    # One-time use, each refresh issues the next (app/db/refresh_tokens.py).
    refresh_token_expire_minutes: int = Field(default=7 * 24 * 60, ge=1, le=90 * 24 * 60)
    # Revocations (logout, a reused refresh token, a user disabled, deleted or demoted) are shared
    # through Redis when set, the database otherwise; each replica reads them this often.
    redis_url: str | None = None
    revocation_refresh_seconds: float = Field(default=5.0, gt=0, le=30)
    # Past this without an answer from that store, the tokens of these scopes (space-separated) are
    # refused (503): a withdrawn admin token must not work because Redis is down. Others are checked
    # against what the replica read last.
    revocation_max_staleness_seconds: float = Field(default=30.0, gt=0)
    revocation_fail_closed_scopes: str = "admin"
    # An external OpenID Connect issuer whose access tokens are accepted beside ours (docs/identity.md);
    # unset: none. OIDC_AUDIENCE is the `aud` its tokens must carry for this API. OIDC_SCOPES_CLAIM is
    # the claim with their scopes or roles (a dotted path for a nested one: realm_access.roles), and
    # OIDC_SCOPE_MAP maps them to ours (theirs:ours,...; unset: taken as they are). Clocks may differ
    # by OIDC_LEEWAY_SECONDS. The keys are fetched again every OIDC_JWKS_REFRESH_SECONDS, and when a
    # token names an unknown key, at most once per OIDC_JWKS_MIN_REFETCH_SECONDS.
    oidc_issuer: str | None = None
    oidc_audience: str = ""
    oidc_scopes_claim: str = Field(default="scope", min_length=1)
    oidc_scope_map: str = ""
    oidc_leeway_seconds: float = Field(default=60.0, ge=0, le=300)
    oidc_jwks_refresh_seconds: float = Field(default=300.0, gt=0, le=24 * 3600)
    oidc_jwks_min_refetch_seconds: float = Field(default=30.0, ge=0, le=3600)
    # Limits (app/api/rate_limits.py), as the `limits` library reads them ("20/minute", "200/second");
    # empty: none. /token per client address across usernames, the prediction routes per user.
    rate_limit_token: str = "20/minute"  # noqa: S105 - a rate, not a secret
    rate_limit_predict: str = ""
    # When Redis (REDIS_URL) does not answer: let requests through (true) or answer 503.
    rate_limit_fail_open: bool = True
    # The proxies whose X-Forwarded-For names the client (uvicorn's setting): none by default, so a
    # client cannot pick its own address; "*" behind a proxy only it can reach.
    forwarded_allow_ips: str = ""
    database_url: str = DEFAULT_DATABASE_URL
    model_dir: Path = Path("models")
    admin_username: str = "admin"
    admin_password: SecretStr = SecretStr(EXAMPLE_ADMIN_PASSWORD)
    max_batch_rows: int = Field(default=1000, ge=1, le=100_000)
    # POST /predict/csv streams a file of any number of rows, scored a chunk at a time in bounded
    # memory; this caps its bytes only (413 past it). MAX_BATCH_ROWS is for JSON bodies.
    max_csv_bytes: int = Field(default=1024**3, ge=1024)
    # Behind nginx (compose, make stack, ingress-nginx): the answer to a CSV waits for the whole
    # upload, which nginx stops passing on once an answer starts (app/api/csv_stream.py).
    csv_upload_first: bool = False
    # onnxruntime's intra-op threads per loaded model: 1 per worker process, so workers do not
    # fight over the cores (raise it for one worker serving large batches).
    onnx_intra_op_threads: int = Field(default=1, ge=1, le=64)
    # argon2id's cost for new password hashes. Production refuses less than the defaults; a test
    # suite or a laptop may go down to the minimum (1, 8, 1), which hashes in microseconds.
    password_hash_time_cost: int = Field(default=PRODUCTION_COST.time_cost, ge=1, le=100)
    password_hash_memory_kib: int = Field(default=PRODUCTION_COST.memory_kib, ge=8, le=4 * 1024 * 1024)
    password_hash_parallelism: int = Field(default=PRODUCTION_COST.parallelism, ge=1, le=64)
    # Login throttling: this many failures for one username within the window lock it out.
    login_max_failures: int = Field(default=5, ge=1)
    login_window_seconds: int = Field(default=15 * 60, ge=1)
    # Off when a parent process (python -m app.serve) already migrated before forking workers.
    migrate_on_startup: bool = True
    log_level: str = "INFO"
    # Observability: a bearer token required on /metrics when set; drift over the last
    # DRIFT_WINDOW rows, reported once DRIFT_MIN_ROWS were seen. Both can be switched off.
    metrics_token: SecretStr | None = None
    metrics_enabled: bool = True
    drift_enabled: bool = True
    drift_window: int = Field(default=1000, ge=10, le=1_000_000)
    drift_min_rows: int = Field(default=100, ge=1)
    drift_refresh_seconds: float = Field(default=1.0, ge=0)
    # Every trained model is kept here by version (outside models/, which dvc repro replaces): a
    # local folder or s3://bucket/prefix, shared by every replica. VERSIONS_DIR is its old name.
    model_store_url: str = Field(
        default="var/model-versions",
        min_length=1,
        validation_alias=AliasChoices("model_store_url", "versions_dir"),
    )
    # Where a replica keeps the versions it downloaded from an S3 store (verified before loading).
    model_cache_dir: Path = Path("var/model-cache")
    # How often each replica re-reads which version serves (the database's serving pointer).
    watch_seconds: float = Field(default=2.0, gt=0, le=3600)
    # The worker (python -m app.worker): its jobs' scratch folders, and the lease it renews while a
    # job runs; a job whose lease ran out (its worker died) is failed, saying so.
    jobs_dir: Path = Path("var/jobs")
    job_lease_seconds: float = Field(default=30, ge=1, le=3600)
    # python -m app.serve starts one worker itself when set; unset: on SQLite (the embedded default) only.
    start_worker: bool | None = None
    # Retraining from the API (POST /train): the params file it trains with, the promotion gate's
    # tolerance (a new model replaces the champion when its test metric is at least the champion's
    # minus this, on the same test split), and how long one job may run.
    train_params: Path = Path("params.yaml")
    promotion_tolerance: float = Field(default=0.01, ge=0)
    train_timeout_seconds: int = Field(default=3600, ge=10)
    # POST /train with include_feedback: at most this many labelled predictions (the newest) are added.
    train_feedback_max_rows: int = Field(default=100_000, ge=1, le=10_000_000)
    # The prediction log (app/serving/prediction_log.py): the share of answered rows kept (0 to 1;
    # 1 in development, see docs/operations.md for production), for how many days, and the rows
    # its buffer holds before new ones are dropped (and counted) rather than wait.
    prediction_log_sample: float = Field(default=1.0, ge=0, le=1)
    prediction_log_days: float = Field(default=30, gt=0, le=3650)
    prediction_log_buffer_rows: int = Field(default=50_000, ge=1, le=10_000_000)
    # Live quality (POST /feedback's ground truth): over the predictions of the last hours, refreshed
    # this often; LiveQualityLow fires below LIVE_ACCURACY_MIN (classification) or above LIVE_MAE_MAX
    # (regression, off when empty) once LIVE_QUALITY_MIN_LABELS predictions are labelled.
    live_quality_window_hours: float = Field(default=24, gt=0, le=24 * 365)
    live_quality_refresh_seconds: float = Field(default=30, gt=0, le=3600)
    live_accuracy_min: float = Field(default=0.8, ge=0, le=1)
    live_mae_max: float | None = Field(default=None, ge=0)
    live_quality_min_labels: int = Field(default=50, ge=1)
    # The shadow challenger (POST /model/shadow): the champion's batches its queue holds before new
    # ones are dropped (and counted) rather than wait; and POST /model/promote's evidence, the labelled
    # predictions both models answered that it needs before it compares their live metric.
    shadow_queue_batches: int = Field(default=256, ge=1, le=10_000)
    promotion_min_labels: int = Field(default=100, ge=1)
    # Canary releases (POST /model/canary): each replica judges the canary every CANARY_CHECK_SECONDS
    # on what each role answered in the last CANARY_WINDOW_SECONDS, and rolls it back on every replica
    # once a guard stays breached for CANARY_HOLD_SECONDS. Errors: the canary's rate of 5xx answers
    # and failed model calls above the champion's plus CANARY_MAX_ERROR_RATE; latency: its p99 above
    # CANARY_MAX_P99_RATIO times the champion's and above CANARY_P99_FLOOR_MS; both once each role
    # answered CANARY_MIN_REQUESTS in the window. Quality: on CANARY_QUALITY_MIN_LABELS labelled
    # predictions of each in the last CANARY_QUALITY_WINDOW_SECONDS, the canary's live metric below the
    # champion's minus CANARY_QUALITY_TOLERANCE (MAE: above it plus). Drift: a feature's PSI above
    # CANARY_MAX_PSI. A step's defaults: CANARY_STEP_SECONDS and CANARY_STEP_MIN_LABELS.
    canary_check_seconds: float = Field(default=1.0, gt=0, le=60)
    canary_window_seconds: float = Field(default=60.0, ge=1, le=3600)
    canary_hold_seconds: float = Field(default=5.0, ge=0, le=3600)
    canary_min_requests: int = Field(default=20, ge=1)
    canary_max_error_rate: float = Field(default=0.02, ge=0, le=1)
    canary_max_p99_ratio: float = Field(default=2.0, ge=1)
    canary_p99_floor_ms: float = Field(default=50.0, ge=0)
    canary_quality_min_labels: int = Field(default=50, ge=1)
    canary_quality_tolerance: float = Field(default=0.05, ge=0)
    canary_quality_window_seconds: float = Field(default=3600.0, ge=1)
    canary_max_psi: float = Field(default=0.2, gt=0)
    canary_step_seconds: float = Field(default=600.0, ge=0, le=7 * 24 * 3600)
    canary_step_min_labels: int = Field(default=50, ge=0)
    # The server, for python -m app.serve.
    # Graceful shutdown, as Kubernetes does it (app/drain.py): the pod's preStop hook, python -m
    # app.drain, creates DRAIN_FILE, after which /ready answers 503 while the replica still serves, and
    # waits SHUTDOWN_DRAIN_SECONDS (the load balancer takes the replica out); then SIGTERM, on which
    # uvicorn stops accepting and gives the requests in flight SHUTDOWN_TIMEOUT_SECONDS to finish.
    shutdown_drain_seconds: float = Field(default=0.0, ge=0, le=300)
    shutdown_timeout_seconds: float = Field(default=30.0, gt=0, le=3600)
    drain_file: Path = Path("var/draining")
    # Deprecated, ignored: it timed out slow request headers in a protocol class of our own, which
    # uvicorn's public API has no place for. The proxy in front does it now (nginx's
    # client_header_timeout, deploy/nginx/predictor.conf). Still accepted, so that a deployment that sets
    # it starts; python -m app.serve says it is ignored.
    request_header_timeout_seconds: float = Field(default=15.0, gt=0, le=600)
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    workers: int = Field(default=1, ge=1)

    @field_validator("start_worker", "redis_url", "live_mae_max", "oidc_issuer", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # START_WORKER= in .env (as .env.example ships it) means "decide from DATABASE_URL".
        return None if value == "" else value

    @field_validator("rate_limit_token", "rate_limit_predict")
    @classmethod
    def _a_limit(cls, value: str) -> str:
        from limits import parse

        if value.strip():
            try:
                parse(value)
            except ValueError:
                raise ValueError(
                    f"{value!r} is not a rate limit: write e.g. 20/minute or 200/second"
                ) from None
        return value

    @field_validator("oidc_scope_map")
    @classmethod
    def _a_scope_map(cls, value: str) -> str:
        unknown = {ours for targets in ScopeMap.parse(value).pairs.values() for ours in targets} - set(SCOPES)
        if unknown:
            raise ValueError(f"maps to {', '.join(sorted(unknown))}: not a scope here ({', '.join(SCOPES)})")
        return value

    @model_validator(mode="after")
    def _an_issuer_with_its_audience(self) -> Settings:
        if self.oidc_issuer is None:
            return self
        if not self.oidc_audience.strip():
            raise ValueError("OIDC_AUDIENCE is empty: set the audience the issuer puts in this API's tokens")
        local = self.oidc_issuer.startswith(("http://127.0.0.1", "http://localhost"))
        if not self.oidc_issuer.startswith("https://") and (self.app_env == "production" or not local):
            raise ValueError("OIDC_ISSUER must be an https:// URL (http:// only to localhost in development)")
        return self

    @property
    def canary_limits(self) -> CanaryLimits:
        return CanaryLimits(
            window_seconds=self.canary_window_seconds,
            hold_seconds=self.canary_hold_seconds,
            min_requests=self.canary_min_requests,
            max_error_rate=self.canary_max_error_rate,
            max_p99_ratio=self.canary_max_p99_ratio,
            p99_floor_seconds=self.canary_p99_floor_ms / 1000,
            quality_min_labels=self.canary_quality_min_labels,
            quality_tolerance=self.canary_quality_tolerance,
            quality_window_seconds=self.canary_quality_window_seconds,
            max_psi=self.canary_max_psi,
        )

    @property
    def oidc(self) -> OidcConfig | None:
        """The external issuer's settings, or None when OIDC_ISSUER is unset."""
        if self.oidc_issuer is None:
            return None
        return OidcConfig(
            issuer=self.oidc_issuer,
            audience=self.oidc_audience,
            scopes_claim=self.oidc_scopes_claim,
            scope_map=ScopeMap.parse(self.oidc_scope_map),
            leeway_seconds=self.oidc_leeway_seconds,
        )

    @property
    def longest_token_seconds(self) -> float:
        """How long any token issued now can stay valid: what a revocation must cover."""
        return 60.0 * max(self.access_token_expire_minutes, self.refresh_token_expire_minutes)

    @property
    def embedded_worker(self) -> bool:
        """Whether python -m app.serve runs the retraining worker beside the API."""
        if self.start_worker is not None:
            return self.start_worker
        return self.database_url.startswith("sqlite")

    @property
    def password_cost(self) -> PasswordCost:
        return PasswordCost(
            self.password_hash_time_cost, self.password_hash_memory_kib, self.password_hash_parallelism
        )

    @model_validator(mode="after")
    def _argon2_memory_fits_its_lanes(self) -> Settings:
        if self.password_hash_memory_kib < 8 * self.password_hash_parallelism:
            raise ValueError(
                "PASSWORD_HASH_MEMORY_KIB must be at least 8 KiB per lane (8 x PASSWORD_HASH_PARALLELISM)"
            )
        return self

    @model_validator(mode="after")
    def _no_placeholders_in_production(self) -> Settings:
        if self.app_env != "production":
            return self
        secret = self.secret_key.get_secret_value()
        if not secret.strip():
            raise ValueError("SECRET_KEY is empty: set a long random value for production")
        if secret == EXAMPLE_SECRET_KEY:
            raise ValueError("SECRET_KEY is the example value: set a long random value for production")
        if self.admin_password.get_secret_value() == EXAMPLE_ADMIN_PASSWORD:
            raise ValueError("ADMIN_PASSWORD is the example value: set a real one for production")
        if (
            self.password_hash_time_cost < PRODUCTION_COST.time_cost
            or self.password_hash_memory_kib < PRODUCTION_COST.memory_kib
        ):
            raise ValueError(
                "PASSWORD_HASH_TIME_COST and PASSWORD_HASH_MEMORY_KIB may not be below "
                f"{PRODUCTION_COST.time_cost} and {PRODUCTION_COST.memory_kib} in production"
            )
        return self


@lru_cache
def get_settings() -> Settings:
    return Settings()


def settings_error(exc: ValidationError) -> str:
    """One line that says what is wrong with the configuration (never the values)."""
    first = exc.errors()[0]
    field = ".".join(str(part) for part in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    return f"configuration error: {field.upper() + ': ' if field else ''}{message}"


def load_settings() -> Settings:
    """get_settings() for entry points: a bad configuration exits with one line, not a traceback."""
    try:
        return get_settings()
    except ValidationError as exc:
        raise SystemExit(settings_error(exc)) from None


def settings_environment(settings: Settings) -> dict[str, str]:
    """The settings as the environment variables that set them, for a subprocess that reads its own
    (get_settings()): it then runs with this process's settings, however they were built (.env, the
    environment, a test's Settings). Unset ones (None) are left out."""
    environment = {}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        elif isinstance(value, bool):
            value = "true" if value else "false"
        environment[name.upper()] = str(value)
    return environment


def missing_project(settings: Settings) -> str | None:
    """Why a retraining worker could not run a job from here, or None: each job reads the project's
    params file (TRAIN_PARAMS, relative to the folder the worker runs in) afresh."""
    params = settings.train_params
    if params.is_file():
        return None
    where = params if params.is_absolute() else Path.cwd() / params
    return (
        f"worker: {where} not found: start the worker in the project folder (where params.yaml is), "
        "or set TRAIN_PARAMS to the project's params file"
    )
