"""Limits per client: `/token` per client address, whatever the username; the prediction routes
(`/predict`, `/predict/csv`, V2 infer) per user.

Counted by the `limits` library (a sliding window counter: two counters per key and window, no list
of hits), in Redis when REDIS_URL is set, so every replica counts the same, in this process's memory
otherwise, through its asyncio API: a check never blocks the event loop. Over the limit is a 429 with
Retry-After, counted in `predictor_rate_limited_total{route,reason}`. When Redis does not answer, the
check lets the request through (RATE_LIMIT_FAIL_OPEN, the default) or answers 503, logged once per
outage and visible in `predictor_rate_limit_store_up`. During an outage one check a second asks Redis
again; the others do not wait out its timeout (a Redis that hangs would add a second to each request).

The client address is the socket's, unless FORWARDED_ALLOW_IPS names the proxy in front (uvicorn then
reads X-Forwarded-For from it: app/serve.py).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

from fastapi import HTTPException, Request, status
from limits import RateLimitItem, parse
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.storage import storage_from_string

from app.core.config import Settings
from app.core.outage import Outage
from app.observability.metrics import RATE_LIMIT_STORE_UP, RATE_LIMITED

log = logging.getLogger("predictor")

# While the store is down, how often a check asks it again (the others answer at once).
PROBE_SECONDS = 1.0
# A failure this soon after the store came back is the same outage (a pooled connection the outage
# broke, failing once): not logged again.
SETTLE_SECONDS = 10.0


def parse_limit(text: str) -> RateLimitItem | None:
    """ "200/second", "20 per minute", ...; None for "" (no limit). ValueError if unreadable."""
    if not text.strip():
        return None
    return parse(text)


@dataclass
class RateLimits:
    limiter: SlidingWindowCounterRateLimiter
    token: RateLimitItem | None  # per client address, at /token and /token/refresh
    predict: RateLimitItem | None  # per user, at the prediction routes
    fail_open: bool
    health: Outage = field(init=False, repr=False)
    _next_probe: float = field(default=0.0, repr=False)  # time.monotonic() of the next look, when failing

    def __post_init__(self) -> None:
        what = "letting requests through" if self.fail_open else "refusing requests (503)"
        self.health = Outage(
            f"rate limit store unreachable, {what}",
            "rate limit store answers again",
            lambda up: RATE_LIMIT_STORE_UP.set(1 if up else 0),
            settle_seconds=SETTLE_SECONDS,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> RateLimits:
        if settings.redis_url:
            storage = storage_from_string(
                "async+" + settings.redis_url,
                implementation="redispy",
                socket_timeout=1,
                socket_connect_timeout=1,
            )
        else:
            storage = storage_from_string("async+memory://")
        return cls(
            SlidingWindowCounterRateLimiter(storage),
            parse_limit(settings.rate_limit_token),
            parse_limit(settings.rate_limit_predict),
            settings.rate_limit_fail_open,
        )

    async def check_client(self, request: Request) -> None:
        """/token: the attempts of this client address, across usernames."""
        if self.token is not None:
            address = request.client.host if request.client else "unknown"
            await self._check(request, self.token, "client", address)

    async def check_user(self, request: Request) -> None:
        """A prediction route, after the token was verified (request.state.user is its subject)."""
        if self.predict is not None:
            await self._check(request, self.predict, "user", str(request.state.user))

    async def _check(self, request: Request, item: RateLimitItem, reason: str, key: str) -> None:
        if self.health.failing:
            now = time.monotonic()
            if now < self._next_probe:
                return self._unchecked()
            self._next_probe = now + PROBE_SECONDS  # this check is the probe: the others skip
        try:
            if await self.limiter.hit(item, reason, key):
                self._answered()
                return
            stats = await self.limiter.get_window_stats(item, reason, key)
        except Exception as exc:  # the store (Redis) did not answer
            self._store_failed(exc)
            return self._unchecked()
        self._answered()
        retry_after = max(1, math.ceil(stats.reset_time - time.time()))
        route = getattr(request.scope.get("route"), "path", None) or request.url.path[:100]
        RATE_LIMITED.labels(route=route, reason=reason).inc()
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"Too many requests: at most {item}; try again in {retry_after} s",
            headers={"Retry-After": str(retry_after)},
        )

    def _unchecked(self) -> None:
        """A request the store could not count: through, or 503, as RATE_LIMIT_FAIL_OPEN says."""
        if not self.fail_open:
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE, "rate limits cannot be checked: try again later"
            )

    def _answered(self) -> None:
        self.health.answered()

    def _store_failed(self, exc: Exception) -> None:
        self.health.failed(exc)
        self._next_probe = time.monotonic() + PROBE_SECONDS
