"""Revocations kept in Redis (app.core.revocation.RevocationStore), when REDIS_URL is set.

One Redis stream: each revocation is an entry, each replica reads the entries after the last id it
saw (XRANGE), and the entries older than any token they could cover are trimmed (XTRIM MINID):
the stream ids are millisecond times, so the oldest entry worth keeping has a known id.
"""

from __future__ import annotations

import time
from typing import Any, cast

from app.core.revocation import Kind, Revocation

STREAM = "predictor:revocations"
# Short: a request never waits on Redis (the list is read from a thread), a refresh or a logout
# should fail quickly rather than hang when Redis is gone.
TIMEOUT_SECONDS = 2.0


def redis_client(url: str) -> Any:
    import redis  # only when REDIS_URL is set

    return redis.Redis.from_url(
        url, socket_timeout=TIMEOUT_SECONDS, socket_connect_timeout=TIMEOUT_SECONDS, decode_responses=True
    )


class RedisRevocations:
    def __init__(self, client: Any, keep_seconds: float) -> None:
        self._redis = client
        self._keep = keep_seconds  # the longest any token lives: older entries cover none

    def add(self, revocation: Revocation) -> None:
        oldest = int((time.time() - self._keep) * 1000)
        fields = {
            "kind": revocation.kind,
            "subject": revocation.subject,
            "revoked_at": repr(revocation.revoked_at),
            "expires_at": repr(revocation.expires_at),
        }
        self._redis.xadd(STREAM, fields, minid=max(oldest, 0), approximate=False)

    def read_since(self, cursor: str | None) -> tuple[list[Revocation], str | None]:
        start = f"({cursor}" if cursor else "-"
        entries = self._redis.xrange(STREAM, min=start, max="+")
        now = time.time()
        found = []
        for _, fields in entries:
            revocation = Revocation(
                cast(Kind, fields["kind"]),
                fields["subject"],
                float(fields["revoked_at"]),
                float(fields["expires_at"]),
            )
            if revocation.expires_at > now:
                found.append(revocation)
        if entries:
            return found, entries[-1][0]
        if cursor is None:
            # Nothing there yet: from the stream's start next time.
            return [], "0-0"
        return [], cursor
