"""Service-client secrets and API keys: made, hashed, parsed, and checked on every request.

Both are stored as the SHA-256 of the secret, compared with hmac.compare_digest. Not argon2, as
passwords are: a slow hash protects what a person chose (guessable) from an offline search of a stolen
table; these secrets are 32 random bytes (secrets.token_urlsafe(32), 256 bits), which no search finds
whatever the hash costs, so one SHA-256 (a microsecond) is as safe and lets a key be checked on every
request.

An API key is `pk_<id>_<secret>`: the id (public, KEY_ID_LENGTH characters) finds the key, the
secret proves it. `ApiKeys` keeps the keys it verified in memory, per replica: a request costs a
dictionary lookup and a SHA-256, and the database is asked once per key every KEY_CACHE_SECONDS (or
for an id it does not know). Revoking a key is a token-kind revocation of its id (`revoke_key`),
which every replica's RevocationList applies within REVOCATION_REFRESH_SECONDS, so a cached key is
refused there before its entry is read again.

A miss reads the database from the caller's thread, which for /predict is the event loop
(app.api.deps.bearer_claims is synchronous): one primary-key read, once per key and period. Ids the
database does not have are remembered as long, so a made-up key costs one read per made-up id.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from app.core.revocation import Revocation
from app.core.security import InvalidToken, TokenClaims

KEY_PREFIX = "pk_"
KEY_ID_LENGTH = 12
CLIENT_PREFIX = "cl_"
# How long a rotated-out client secret still works: time to deploy the new one everywhere.
ROTATION_GRACE_SECONDS = 24 * 3600.0
# How long a replica trusts what it read about a key (its scopes, whether it was revoked) without
# asking the database again; a revocation covers this long (revoke_key), so no cached entry outlives it.
KEY_CACHE_SECONDS = 60.0
# Names, owners and scopes as the routes take them: no control characters (PostgreSQL refuses a NUL in
# text, and a log line must not be forged by a newline).
PRINTABLE = r"^[^\x00-\x1f\x7f]+$"
# A key without an expiry, as a token's exp: the year 9999.
NEVER = 253402300799
_CACHE_MAX = 4096  # keys remembered per replica; when full, the cache starts over


class InvalidKey(InvalidToken):
    """Not a key, an unknown id, a wrong secret, or a revoked key."""


class ExpiredKey(InvalidKey):
    """A key past its expires_at."""


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def same_hash(secret: str, stored: str) -> bool:
    return hmac.compare_digest(secret_hash(secret), stored)


def new_client_id() -> str:
    return CLIENT_PREFIX + secrets.token_urlsafe(12)  # 16 url-safe characters


CLIENT_SUBJECT = "client:"  # before the client_id, in the sub of a client's tokens


def client_subject(client_id: str) -> str:
    """The sub of a client's tokens, and the subject of the user-kind revocation that withdraws them."""
    return f"{CLIENT_SUBJECT}{client_id}"


def new_key() -> tuple[str, str]:
    """A new key's id and secret (`key_text` makes the key handed out once)."""
    return secrets.token_urlsafe(9), new_secret()  # the id: KEY_ID_LENGTH characters


def key_text(key_id: str, secret: str) -> str:
    return f"{KEY_PREFIX}{key_id}_{secret}"


def parse_key(key: str) -> tuple[str, str] | None:
    """(id, secret) of `pk_<id>_<secret>`; None for anything else. The id has a fixed length, so an
    underscore in it or in the secret is no ambiguity."""
    start = len(KEY_PREFIX)
    end = start + KEY_ID_LENGTH
    if not key.startswith(KEY_PREFIX) or len(key) <= end + 1 or key[end] != "_":
        return None
    return key[start:end], key[end + 1 :]


def revoke_key(key_id: str) -> Revocation:
    """A key, on every replica: long enough that no replica's cached entry outlives it (after that,
    the replica reads the key's revoked flag from the database)."""
    now = time.time()
    return Revocation("token", key_id, now, now + 2 * KEY_CACHE_SECONDS)


@dataclass(frozen=True)
class KeyRecord:
    """What the database holds about a key, as the check needs it."""

    id: str
    owner: str
    scopes: tuple[str, ...]
    secret_hash: str
    created_at: float
    expires_at: float | None
    revoked: bool


class KeyLookup(Protocol):
    def find(self, key_id: str) -> KeyRecord | None: ...
    def record_use(self, last_used: Mapping[str, float]) -> None: ...


@dataclass(frozen=True)
class VerifiedKey:
    record: KeyRecord
    claims: TokenClaims
    until: float  # this replica's clock: read the record again after


class ApiKeys:
    """This replica's check of API keys: verified keys in memory, the database on a miss."""

    def __init__(
        self,
        lookup: KeyLookup,
        *,
        cache_seconds: float = KEY_CACHE_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.lookup = lookup
        self.cache_seconds = cache_seconds
        self._clock = clock
        self._known: dict[str, VerifiedKey] = {}
        self._unknown: dict[str, float] = {}  # ids the database does not have -> until when believed
        # Last use per key id since the last flush(): a dictionary write per request, no I/O.
        self._used: dict[str, float] = {}

    def verify(self, key: str) -> VerifiedKey:
        """The key's record and claims; InvalidKey (ExpiredKey) when refused."""
        parsed = parse_key(key)
        if parsed is None:
            raise InvalidKey("not an API key (pk_<id>_<secret>)")
        key_id, secret = parsed
        now = self._clock()
        known = self._known.get(key_id)
        if known is None or known.until <= now:
            known = self._read(key_id, now)
        if not same_hash(secret, known.record.secret_hash):
            raise InvalidKey(f"wrong secret for API key {key_id}")
        if known.record.revoked:
            raise InvalidKey(f"API key {key_id} was revoked")
        if known.claims.exp <= now:
            raise ExpiredKey(f"API key {key_id} expired")
        self._used[key_id] = now
        return known

    def to_read(self, key: str) -> str | None:
        """The key's id when verify() would ask the database for it (not in this replica's cache, or
        stale), else None: the async routes read it first in a thread (read), off the event loop."""
        parsed = parse_key(key)
        if parsed is None:
            return None
        key_id, now = parsed[0], self._clock()
        known = self._known.get(key_id)
        if (known is not None and known.until > now) or self._unknown.get(key_id, 0.0) > now:
            return None
        return key_id

    def read(self, key_id: str) -> None:
        """Read the key's record into the cache (asks the database: call it from a thread)."""
        with contextlib.suppress(InvalidKey):  # an unknown id is cached as unknown
            self._read(key_id, self._clock())

    def forget(self, key_id: str) -> None:
        """Read this key from the database next time (this replica revoked it)."""
        self._known.pop(key_id, None)

    def flush(self) -> None:
        """Write the last uses seen since the previous flush (a Periodic calls this)."""
        used, self._used = self._used, {}
        if used:
            self.lookup.record_use(dict(used))

    def _read(self, key_id: str, now: float) -> VerifiedKey:
        if self._unknown.get(key_id, 0.0) > now:
            raise InvalidKey(f"no API key {key_id}")
        record = self.lookup.find(key_id)
        if record is None:
            if len(self._unknown) >= _CACHE_MAX:
                self._unknown.clear()
            self._unknown[key_id] = now + self.cache_seconds
            raise InvalidKey(f"no API key {key_id}")
        claims = TokenClaims(
            sub=f"key:{record.id}",
            scopes=record.scopes,
            iat=int(record.created_at),
            exp=int(record.expires_at) if record.expires_at is not None else NEVER,
            jti=record.id,
            method="api_key",
        )
        if len(self._known) >= _CACHE_MAX:
            self._known.clear()
        known = VerifiedKey(record, claims, now + self.cache_seconds)
        self._known[key_id] = known
        return known
