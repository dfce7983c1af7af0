"""Refresh tokens, in the SQL database: opaque random strings, stored as their SHA-256, usable once.

Each login starts a family; each refresh uses up its token and issues the next one in the same
family. A token presented a second time means it was copied: the whole family is withdrawn (OAuth 2.0
Security BCP, refresh token rotation). The use is one conditional UPDATE, so two replicas given
the same token at once cannot both honour it.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Literal
from uuid import uuid4

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from app.db.models import RefreshTokenRow


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Issued:
    token: str
    family: str


@dataclass(frozen=True)
class Use:
    """What presenting a refresh token came to: `ok` (it is used up now), or why it was refused."""

    outcome: Literal["ok", "unknown", "expired", "reused"]
    family: str | None = None
    username: str | None = None
    scopes: tuple[str, ...] = ()


class RefreshTokens:
    def __init__(self, sessions: Callable[[], AbstractContextManager[Session]], lifetime: float) -> None:
        self._sessions = sessions
        self.lifetime = lifetime

    def issue(self, username: str, scopes: list[str], family: str | None = None) -> Issued:
        token = secrets.token_urlsafe(32)
        family = family or uuid4().hex
        now = time.time()
        with self._sessions() as session:
            session.execute(delete(RefreshTokenRow).where(RefreshTokenRow.expires_at < now))
            session.add(
                RefreshTokenRow(
                    token_hash=_hash(token),
                    family=family,
                    username=username,
                    scopes=" ".join(scopes),
                    expires_at=now + self.lifetime,
                )
            )
            session.commit()
        return Issued(token, family)

    def use(self, token: str) -> Use:
        key, now = _hash(token), time.time()
        with self._sessions() as session:
            claimed = session.execute(
                update(RefreshTokenRow)
                .where(
                    RefreshTokenRow.token_hash == key,
                    RefreshTokenRow.used_at.is_(None),
                    RefreshTokenRow.expires_at > now,
                )
                .values(used_at=now)
            )
            session.commit()
            row = session.scalar(select(RefreshTokenRow).where(RefreshTokenRow.token_hash == key))
            if row is None:
                return Use("unknown")
            if getattr(claimed, "rowcount", 0) == 1:
                return Use("ok", row.family, row.username, tuple(row.scopes.split()))
            if row.expires_at <= now:
                return Use("expired", row.family, row.username)
            return Use("reused", row.family, row.username)

    def withdraw_family(self, family: str) -> None:
        """No token of the family can be used any more (logout, reuse)."""
        with self._sessions() as session:
            session.execute(delete(RefreshTokenRow).where(RefreshTokenRow.family == family))
            session.commit()

    def withdraw_user(self, username: str) -> None:
        with self._sessions() as session:
            session.execute(delete(RefreshTokenRow).where(RefreshTokenRow.username == username))
            session.commit()
