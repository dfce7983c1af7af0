"""Withdrawn tokens, as every replica checks them: on each request, in memory, with no I/O.

A revocation names an access token (its jti), a refresh family (every token descended from one
login: logout, or a refresh token used twice), or a user (every token issued to them up to then:
disabled, deleted, demoted, password reset). They are written to a shared store (Redis when
REDIS_URL is set, the SQL database otherwise: app.db.revocations, app.adapters.redis_revocations),
and each replica reads what was added since its last read every REVOCATION_REFRESH_SECONDS
(`RevocationList.watch`), so a revocation made on any replica, or by the CLI, holds everywhere within
that time. A replica applies its own at once.

When the store has not answered for REVOCATION_MAX_STALENESS_SECONDS, this replica's list may be
missing revocations: the tokens of the scopes in REVOCATION_FAIL_CLOSED_SCOPES (admin, by default)
are refused until it answers again, the others still checked against what it has.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal, Protocol

from app.core.outage import Outage
from app.core.periodic import Periodic
from app.core.security import TokenClaims

log = logging.getLogger("predictor")

Kind = Literal["token", "family", "user"]


@dataclass(frozen=True)
class Revocation:
    kind: Kind
    subject: str  # the jti, the family id, or the username
    revoked_at: float  # Unix time; for a user, tokens issued at or before it fail
    expires_at: float  # Unix time after which no token it covers can be valid any more


class RevocationStore(Protocol):
    """Where revocations are shared: appended, and read back by a cursor from any process."""

    def add(self, revocation: Revocation) -> None: ...

    def read_since(self, cursor: str | None) -> tuple[list[Revocation], str | None]:
        """The revocations added after `cursor` (all live ones for None), and the new cursor."""
        ...


class StoreUnreadable(Exception):
    """The revocation store did not answer."""


class RevocationList:
    """This replica's copy of the revocations, checked on every authenticated request."""

    def __init__(
        self,
        store: RevocationStore,
        *,
        max_staleness: float = 30.0,
        fail_closed_scopes: Iterable[str] = ("admin",),
        clock: Callable[[], float] = time.time,
        on_read: Callable[[bool], None] = lambda answered: None,
    ) -> None:
        self.store = store
        self.health = Outage(
            "revocation store unreadable, checking against what this replica has",
            "revocation store answers again",
            on_read,  # the metrics: whether the store answers
        )
        self.max_staleness = max_staleness
        self.fail_closed_scopes = frozenset(fail_closed_scopes)
        self._clock = clock
        self._tokens: dict[str, float] = {}  # jti -> expires_at
        self._families: dict[str, float] = {}
        self._users: dict[str, tuple[float, float]] = {}  # username -> (latest revoked_at, expires_at)
        self._cursor: str | None = None  # read and written by refresh() alone
        self._lock = threading.Lock()  # between refresh() and revoke(), which both apply
        self._read_at = -math.inf  # when the store last answered (this process's clock)

    def revoked(self, claims: TokenClaims) -> bool:
        """Whether this verified token was withdrawn: three dictionary lookups."""
        cutoff = self._users.get(claims.sub)
        return (
            claims.jti in self._tokens
            or (claims.fam is not None and claims.fam in self._families)
            # iat is in whole seconds: a token issued in the revocation's own second fails too.
            or (cutoff is not None and claims.iat <= int(cutoff[0]))
        )

    def unverifiable(self, claims: TokenClaims) -> str | None:
        """Why this token cannot be checked now (a fail-closed scope, a list too old), or None."""
        if not self.fail_closed_scopes.intersection(claims.scopes) or self.fresh():
            return None
        return f"token revocations cannot be checked: {self.error or 'not read yet'}"

    def fresh(self) -> bool:
        return self._clock() - self._read_at <= self.max_staleness

    def revoke(self, revocation: Revocation) -> None:
        """Written to the store (StoreUnreadable if it does not answer), and applied here at once."""
        try:
            self.store.add(revocation)
        except Exception as exc:
            raise StoreUnreadable(f"{type(exc).__name__}: {exc}") from None
        self._apply([revocation])

    def refresh(self) -> None:
        """Read what was revoked since the last read; forget what has expired."""
        try:
            found, cursor = self.store.read_since(self._cursor)
        except Exception as exc:
            self.health.failed(exc)
            return
        self._cursor = cursor
        self._apply(found)
        self._read_at = self._clock()
        self.health.answered()

    @property
    def error(self) -> str | None:
        """Why the last read failed; None while the store answers."""
        return self.health.error

    def watch(self, interval: float) -> Periodic:
        """refresh() every `interval` seconds (started; stop() stops and joins it)."""
        return Periodic("revocation-watch", interval, self.refresh).start()

    def _apply(self, revocations: Iterable[Revocation]) -> None:
        now = self._clock()
        with self._lock:
            # Copies swapped in whole: a request reading the old dict meanwhile sees a consistent one.
            tokens = {k: v for k, v in self._tokens.items() if v > now}
            families = {k: v for k, v in self._families.items() if v > now}
            users = {k: v for k, v in self._users.items() if v[1] > now}
            for r in revocations:
                if r.expires_at <= now:
                    continue  # nothing it covers is valid any more
                if r.kind == "token":
                    tokens[r.subject] = max(r.expires_at, tokens.get(r.subject, 0.0))
                elif r.kind == "family":
                    families[r.subject] = max(r.expires_at, families.get(r.subject, 0.0))
                else:
                    known = users.get(r.subject, (0.0, 0.0))
                    users[r.subject] = (max(r.revoked_at, known[0]), max(r.expires_at, known[1]))
            self._tokens, self._families, self._users = tokens, families, users


def revoke_token(claims: TokenClaims) -> Revocation:
    """This access token, until it would have expired anyway."""
    return Revocation("token", claims.jti, time.time(), float(claims.exp))


def revoke_family(family: str, longest_token_seconds: float) -> Revocation:
    """Every token issued in this refresh family so far."""
    now = time.time()
    return Revocation("family", family, now, now + longest_token_seconds)


def revoke_user(username: str, longest_token_seconds: float) -> Revocation:
    """Every token issued to this user so far: disabled, deleted, demoted, a new password."""
    now = time.time()
    return Revocation("user", username, now, now + longest_token_seconds)
