"""The external OpenID Connect issuer's keys (OIDC_ISSUER): its discovery document, then the JWKS at
its `jwks_uri`, handed to the verifier (app.core.oidc) whole.

Fetched off the request path only: by a background loop (at start, again every
OIDC_JWKS_REFRESH_SECONDS, and every OIDC_JWKS_MIN_REFETCH_SECONDS while the issuer does not answer),
and by a one-off thread when a token names a key this replica has not seen, at most once per
OIDC_JWKS_MIN_REFETCH_SECONDS: a flood of made-up kids costs the issuer one fetch per interval. Start-up
does not wait for the issuer; while it is down the keys already fetched keep verifying.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from app.core.oidc import KeySet, OidcVerifier
from app.core.outage import Outage
from app.core.periodic import Periodic

_TIMEOUT_SECONDS = 5.0
_MAX_BYTES = 1024 * 1024  # a discovery document or a JWKS is a few KiB


def get_json(url: str) -> dict[str, Any]:
    if not url.startswith(("https://", "http://")):
        raise ValueError(f"{url!r} is not an http(s) URL")
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310 - checked above
    with urllib.request.urlopen(request, timeout=_TIMEOUT_SECONDS) as response:  # noqa: S310
        found = json.loads(response.read(_MAX_BYTES))
    if not isinstance(found, dict):
        raise ValueError(f"{url}: not a JSON object")
    return found


class IssuerKeys:
    def __init__(
        self,
        verifier: OidcVerifier,
        *,
        refresh_seconds: float,
        min_refetch_seconds: float,
        on_change: Callable[[bool], None] = lambda up: None,
        fetch: Callable[[str], dict[str, Any]] = get_json,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.verifier = verifier
        self.issuer = verifier.config.issuer.rstrip("/")
        self.refresh_seconds = refresh_seconds
        self.min_refetch_seconds = min_refetch_seconds
        self._fetch = fetch
        self._clock = clock
        self.outage = Outage(
            f"OpenID Connect issuer {self.issuer} unreachable: tokens signed by the keys this replica "
            "has still verify, tokens signed by a new key are refused",
            f"OpenID Connect issuer {self.issuer} answers again",
            on_change,
        )
        self._fetching = threading.Lock()  # one fetch at a time, whoever asks
        self._tried_at = -float("inf")  # when the last fetch started
        self._fetched_at = -float("inf")  # when the last one succeeded

    def refresh(self) -> bool:
        """Fetch the discovery document and the keys now (unless a fetch is running); True when
        the issuer answered."""
        if not self._fetching.acquire(blocking=False):
            return False
        try:
            self._tried_at = self._clock()
            try:
                discovery = self._fetch(f"{self.issuer}/.well-known/openid-configuration")
                # The issuer's own name must be the one configured (OpenID Connect Discovery 1.0, 4.3).
                if str(discovery.get("issuer", "")).rstrip("/") != self.issuer:
                    raise ValueError(
                        f"its discovery document names another issuer: {discovery.get('issuer')!r}"
                    )
                jwks_uri = discovery.get("jwks_uri")
                if not isinstance(jwks_uri, str):
                    raise ValueError("its discovery document has no jwks_uri")
                keys = KeySet.from_documents(discovery, self._fetch(jwks_uri))
            except (OSError, ValueError) as exc:  # URLError and timeouts are OSErrors, bad JSON ValueErrors
                self.outage.failed(exc)
                return False
            self.verifier.use_keys(keys)
            self._fetched_at = self._clock()
            self.outage.answered()
            return True
        finally:
            self._fetching.release()

    def refresh_if_due(self) -> None:
        """The background loop's task: the keys when none were fetched yet, when the issuer did not
        answer last time, or when they are older than refresh_seconds."""
        now = self._clock()
        if self.outage.failing or now - self._fetched_at >= self.refresh_seconds:
            self.refresh()

    def unknown_kid(self) -> None:
        """A token named a key not in the set: fetch again in the background, unless a fetch started
        less than min_refetch_seconds ago."""
        if self._clock() - self._tried_at < self.min_refetch_seconds or self._fetching.locked():
            return
        self._tried_at = self._clock()  # the next unknown kid, a microsecond later, does not start another
        threading.Thread(target=self.refresh, name="oidc-keys-refetch", daemon=True).start()

    def watch(self) -> Periodic:
        """The background loop, started: at once, then every min_refetch_seconds (at least 1 s) it
        decides whether the keys are due."""
        interval = max(1.0, min(self.min_refetch_seconds, self.refresh_seconds))
        return Periodic("oidc-keys", interval, self.refresh_if_due, at_start=True).start()
