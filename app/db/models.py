"""The database tables, as typed SQLAlchemy 2 models. Alembic migrations create them."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Boolean, DateTime, Float, Integer, String
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
