"""The login lockout counted in the users database: one count for every worker and replica.

It implements app.core.lockout.Throttle (retry_after, record_failure, reset).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app.db.models import LoginFailure


class DatabaseLoginThrottle:
    """The same lockout, counted in the users database: one count for every worker and replica.

    /token already reads the database, so this adds a query or two per login, not per prediction.
    """

    def __init__(
        self,
        sessions: Callable[[], AbstractContextManager[Session]],
        max_failures: int = 5,
        window_seconds: float = 15 * 60,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.max_failures = max_failures
        self.window_seconds = window_seconds
        self._sessions = sessions
        self._clock = clock

    @staticmethod
    def _key(username: str) -> str:
        return username.casefold()[:255]

    def retry_after(self, username: str) -> int | None:
        now = self._clock()
        with self._sessions() as session:
            recent = session.scalars(
                select(LoginFailure.failed_at)
                .where(LoginFailure.username_key == self._key(username))
                .where(LoginFailure.failed_at > now - self.window_seconds)
                .order_by(LoginFailure.failed_at.desc())
                .limit(self.max_failures)
            ).all()
        if len(recent) < self.max_failures:
            return None
        # Locked until the oldest of the last `max_failures` failures leaves the window.
        return max(1, math.ceil(recent[-1] + self.window_seconds - now))

    def record_failure(self, username: str) -> None:
        now = self._clock()
        with self._sessions() as session:
            # Expired rows go as new ones come: a flood of made-up usernames stays bounded by the window.
            session.execute(delete(LoginFailure).where(LoginFailure.failed_at <= now - self.window_seconds))
            session.add(LoginFailure(username_key=self._key(username), failed_at=now))
            session.commit()

    def reset(self, username: str) -> None:
        with self._sessions() as session:
            session.execute(delete(LoginFailure).where(LoginFailure.username_key == self._key(username)))
            session.commit()
