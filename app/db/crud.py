"""User operations shared by the API, the CLI and the start-up bootstrap."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.core.security import DEFAULT_SCOPES, SCOPES, hash_password
from app.db.models import User

MIN_PASSWORD_LENGTH = 8


class UserError(ValueError):
    """A request about users that cannot be honoured (duplicate, unknown scope, weak password)."""


def normalise_scopes(scopes: Iterable[str]) -> str:
    wanted = sorted({s.strip() for s in scopes if s.strip()})
    unknown = [s for s in wanted if s not in SCOPES]
    if unknown:
        raise UserError(f"unknown scope {', '.join(unknown)} (known: {', '.join(SCOPES)})")
    return " ".join(wanted or DEFAULT_SCOPES)


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UserError(f"password too short: use at least {MIN_PASSWORD_LENGTH} characters")


def get_user(session: Session, username: str) -> User | None:
    return session.scalar(select(User).where(User.username == username))


def list_users(session: Session) -> list[User]:
    return list(session.scalars(select(User).order_by(User.username)))


def count_users(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(User)) or 0


def create_user(
    session: Session,
    username: str,
    password: str,
    scopes: Iterable[str] = DEFAULT_SCOPES,
    hashed: str | None = None,
) -> User:
    username = username.strip()
    if not username or len(username) > 64:
        raise UserError("username must be 1 to 64 characters")
    if ":" in username:  # client:<id> and key:<id> name service clients and API keys in tokens
        raise UserError("a username cannot contain ':'")
    if get_user(session, username) is not None:
        raise UserError(f"user '{username}' already exists")
    _check_password(password)
    # `hashed`: the password's hash, when the caller computed it already (bootstrap, in parallel).
    user = User(
        username=username, hashed_password=hashed or hash_password(password), scopes=normalise_scopes(scopes)
    )
    session.add(user)
    session.commit()
    return user


def _require(session: Session, username: str) -> User:
    user = get_user(session, username)
    if user is None:
        raise UserError(f"no user '{username}'")
    return user


def set_disabled(session: Session, username: str, disabled: bool = True) -> User:
    user = _require(session, username)
    user.disabled = disabled
    session.commit()
    return user


def set_scopes(session: Session, username: str, scopes: Iterable[str]) -> User:
    user = _require(session, username)
    user.scopes = normalise_scopes(scopes)
    session.commit()
    return user


def set_password(session: Session, username: str, password: str) -> User:
    _check_password(password)
    user = _require(session, username)
    user.hashed_password = hash_password(password)
    session.commit()
    return user


def delete_user(session: Session, username: str) -> None:
    session.delete(_require(session, username))
    session.commit()


def ensure_admin(session: Session, username: str, password: str, hashed: str | None = None) -> User | None:
    """Create the first admin from the settings when the table is empty; returns it, or None."""
    if count_users(session) > 0:
        return None
    return create_user(session, username, password, scopes=SCOPES.keys(), hashed=hashed)
