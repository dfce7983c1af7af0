"""Revocations kept in the SQL database (app.core.revocation.RevocationStore), when REDIS_URL is unset.

Rows are appended; a replica reads those with an id above its cursor. Expired rows are deleted by
whoever adds one, so the table holds only what can still matter.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager

from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session

from app.adapters.redis_revocations import RedisRevocations, redis_client
from app.core.revocation import Revocation, RevocationStore
from app.db.models import RevocationRow

LATE_COMMIT_SECONDS = 60.0


class DatabaseRevocations:
    def __init__(self, sessions: Callable[[], AbstractContextManager[Session]]) -> None:
        self._sessions = sessions

    def add(self, revocation: Revocation) -> None:
        with self._sessions() as session:
            session.execute(delete(RevocationRow).where(RevocationRow.expires_at < time.time()))
            session.add(
                RevocationRow(
                    kind=revocation.kind,
                    subject=revocation.subject[:255],
                    revoked_at=revocation.revoked_at,
                    expires_at=revocation.expires_at,
                )
            )
            session.commit()

    def read_since(self, cursor: str | None) -> tuple[list[Revocation], str | None]:
        after = int(cursor) if cursor else 0
        # Ids are handed out at insert but may commit out of order (two replicas revoking at once):
        # the last minute's rows are read again, so one that committed late is not skipped for good.
        # Reading a revocation twice changes nothing.
        recent = time.time() - LATE_COMMIT_SECONDS
        query = (
            select(RevocationRow)
            .where(or_(RevocationRow.id > after, RevocationRow.revoked_at > recent))
            .order_by(RevocationRow.id)
        )
        if cursor is None:
            query = query.where(RevocationRow.expires_at > time.time())
        with self._sessions() as session:
            rows = session.scalars(query).all()
            found = [
                Revocation(row.kind, row.subject, row.revoked_at, row.expires_at)  # type: ignore[arg-type]
                for row in rows
            ]
            if not rows and cursor is None:
                # Nothing live: start after the last row there is, so it is not read again.
                last = session.scalar(select(RevocationRow.id).order_by(RevocationRow.id.desc()).limit(1))
                return [], str(last or 0)
        return found, str(max(rows[-1].id, after)) if rows else cursor


def revocation_store(
    redis_url: str | None, sessions: Callable[[], AbstractContextManager[Session]], keep_seconds: float
) -> RevocationStore:
    """Redis when REDIS_URL is set (shared by every replica, no SQL write per logout), else the database."""
    if redis_url:
        return RedisRevocations(redis_client(redis_url), keep_seconds)
    return DatabaseRevocations(sessions)
