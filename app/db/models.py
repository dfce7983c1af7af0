"""The database tables, as typed SQLAlchemy 2 models. Alembic migrations create them."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Boolean, DateTime, Float, ForeignKey, Integer, LargeBinary, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def _now() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    hashed_password: Mapped[str] = mapped_column(String(255))
    # Space-separated, as in OAuth2's scope parameter: portable across SQLite and PostgreSQL.
    scopes: Mapped[str] = mapped_column(String(255), default="predict")
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now, onupdate=_now)

    @property
    def scope_list(self) -> list[str]:
        return self.scopes.split()

    def __repr__(self) -> str:
        return f"User(username={self.username!r}, scopes={self.scopes!r}, disabled={self.disabled})"


class LoginFailure(Base):
    """One failed login; the lockout counts these, so every server process sees the same count."""

    __tablename__ = "login_failures"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username_key: Mapped[str] = mapped_column(String(255), index=True)
    # Unix time, not a monotonic clock: processes and hosts must agree on it.
    failed_at: Mapped[float] = mapped_column(Float, index=True)


class ServingPointerRow(Base):
    """The one row naming the version every replica serves (app.core.serving_pointer)."""

    __tablename__ = "serving_pointer"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)  # always 1
    version: Mapped[str] = mapped_column(String(64))
    since: Mapped[str] = mapped_column(String(40))
    reason: Mapped[str] = mapped_column(String(255))
    model_dir_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # The version scoring the same traffic in the background (POST /model/shadow), if any.
    shadow_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # MLflow's `champion` alias, moved after the pointer, off the request: for which version, and how
    # it went (an AliasOutcome as JSON; pending until the move ends).
    alias_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    alias_outcome: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The canary (a CanaryPlan as JSON; POST /model/canary), and its last decision (a CanaryDecision).
    canary: Mapped[str | None] = mapped_column(Text, nullable=True)
    canary_decision: Mapped[str | None] = mapped_column(Text, nullable=True)


class TrainingJobRow(Base):
    """A retraining job: the API queues it, a worker claims it under a lease and records the outcome."""

    __tablename__ = "training_jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    # 1 while queued or running, NULL after: unique, so the database itself allows one active job.
    active: Mapped[int | None] = mapped_column(Integer, unique=True, nullable=True)
    created_at: Mapped[float] = mapped_column(Float, index=True)
    # Unix time until which the claiming worker holds the job; it renews the lease while it runs.
    lease_until: Mapped[float | None] = mapped_column(Float, nullable=True)
    worker: Mapped[str | None] = mapped_column(String(128), nullable=True)
    # The job as GET /train/{id} shows it (app.core.messages.Job, as JSON).
    record: Mapped[str] = mapped_column(Text)


class TrainingUpload(Base):
    """The CSV a job trains on, until the job ends: the worker may run on another machine."""

    __tablename__ = "training_uploads"

    job_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("training_jobs.id", ondelete="CASCADE"), primary_key=True
    )
    filename: Mapped[str] = mapped_column(String(255))
    data: Mapped[bytes] = mapped_column(LargeBinary)


class RevocationRow(Base):
    """A withdrawn token, refresh family or user's tokens (app.core.revocation), kept until it expires.

    Replicas read the rows added since their last read (by id) every REVOCATION_REFRESH_SECONDS."""

    __tablename__ = "revocations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # token (a jti), family, user
    subject: Mapped[str] = mapped_column(String(255))
    # Unix times: when it was revoked (a user's tokens issued up to then fail), and when no token it
    # covers can still be valid, after which the row may go.
    revoked_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float, index=True)


class RefreshTokenRow(Base):
    """One refresh token, by the SHA-256 of its value (never stored itself); usable once."""

    __tablename__ = "refresh_tokens"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    # Every refresh token descended from one login: reusing any of them revokes them all.
    family: Mapped[str] = mapped_column(String(32), index=True)
    username: Mapped[str] = mapped_column(String(64), index=True)
    scopes: Mapped[str] = mapped_column(String(255))
    expires_at: Mapped[float] = mapped_column(Float, index=True)
    used_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class PredictionLogRow(Base):
    """One labelled prediction (POST /feedback), decoded from its PredictionBatchRow, with its truth.

    Kept PREDICTION_LOG_DAYS; never a token or a password, only the username."""

    __tablename__ = "prediction_log"

    prediction_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    created_at: Mapped[float] = mapped_column(Float, index=True)  # Unix time
    model_version: Mapped[str] = mapped_column(String(64), index=True)
    username: Mapped[str] = mapped_column(String(64))
    features: Mapped[str] = mapped_column(Text)  # the input row, a JSON object
    answer: Mapped[str] = mapped_column(Text)  # the row's answer as /predict gave it, JSON
    # The answer again, as columns the live metrics aggregate in SQL.
    predicted_label: Mapped[str | None] = mapped_column(String(255), nullable=True)
    predicted_value: Mapped[float | None] = mapped_column(Float, nullable=True)
    confidence: Mapped[float | None] = mapped_column(Float, nullable=True)  # the top probability
    # The ground truth (POST /feedback): a label (classification) or a value (regression).
    true_label: Mapped[str | None] = mapped_column(String(255), nullable=True)
    true_value: Mapped[float | None] = mapped_column(Float, nullable=True)
    labelled_at: Mapped[float | None] = mapped_column(Float, nullable=True, index=True)
    # A shadow challenger's answer to the same row (POST /model/shadow), judged against the same truth.
    shadow_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    shadow_label: Mapped[str | None] = mapped_column(String(255), nullable=True)
    shadow_value: Mapped[float | None] = mapped_column(Float, nullable=True)


class PredictionBatchRow(Base):
    """The log of one model call (a request, or a CSV chunk): its sampled rows' inputs and answers
    encoded whole (app.core.prediction_records), and a shadow challenger's answers to the same rows.

    Every logged prediction is here; PredictionLogRow holds the labelled ones, one row each."""

    __tablename__ = "prediction_batches"

    request_key: Mapped[str] = mapped_column(String(40), primary_key=True)
    first_row: Mapped[int] = mapped_column(Integer, primary_key=True)  # a CSV chunk's offset
    created_at: Mapped[float] = mapped_column(Float, index=True)  # Unix time
    model_version: Mapped[str] = mapped_column(String(64))
    username: Mapped[str] = mapped_column(String(64))
    rows: Mapped[int] = mapped_column(Integer)  # rows the model answered: ids first_row .. + rows - 1
    logged: Mapped[int] = mapped_column(Integer)  # of those, the sampled rows stored here
    positions: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)  # int32; None: all
    features: Mapped[str] = mapped_column(Text)  # the feature names, a JSON list
    inputs_format: Mapped[str] = mapped_column(String(8))
    inputs: Mapped[bytes] = mapped_column(LargeBinary)
    classes: Mapped[str | None] = mapped_column(Text, nullable=True)
    label_index: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    probabilities: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    answer_values: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    # The sum of the stored rows' top probabilities: the mean confidence, aggregated in SQL.
    confidence_sum: Mapped[float | None] = mapped_column(Float, nullable=True)
    shadow_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    shadow_classes: Mapped[str | None] = mapped_column(Text, nullable=True)
    shadow_label_index: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    shadow_values: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    # Of the stored rows: how many the shadow answered, how many as the champion did, and the sum of
    # the differences between their values (regression), for /monitoring's agreement in SQL.
    shadow_compared: Mapped[int | None] = mapped_column(Integer, nullable=True)
    shadow_agreed: Mapped[int | None] = mapped_column(Integer, nullable=True)
    shadow_difference_sum: Mapped[float | None] = mapped_column(Float, nullable=True)


class ServiceClientRow(Base):
    """A service that signs in with its own id and secret (OAuth2 client credentials), no user behind it.

    Secrets are stored as their SHA-256 (app.core.credentials says why that suffices); after a rotation
    the previous one still works until `previous_expires_at`, so the service can be redeployed."""

    __tablename__ = "service_clients"

    client_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    scopes: Mapped[str] = mapped_column(String(255))  # space-separated, as User.scopes
    secret_hash: Mapped[str] = mapped_column(String(64))
    previous_secret_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    previous_expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)  # Unix time
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)

    @property
    def scope_list(self) -> list[str]:
        return self.scopes.split()


class ApiKeyRow(Base):
    """An API key (`pk_<id>_<secret>`), by its public id and the SHA-256 of its secret (never stored)."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    # A username, or `client:<client_id>`: whose key it is (their scopes bound the key's).
    owner: Mapped[str] = mapped_column(String(64), index=True)
    scopes: Mapped[str] = mapped_column(String(255))
    secret_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Float)  # Unix times, as the revocations'
    expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    last_used_at: Mapped[float | None] = mapped_column(Float, nullable=True)

    @property
    def scope_list(self) -> list[str]:
        return self.scopes.split()
