"""Fetching the issuer's keys: lazily, again on an unknown kid at most once per interval, and an
issuer that does not answer said once, with the keys fetched before kept."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from app.adapters.oidc_issuer import IssuerKeys
from app.core.oidc import OidcConfig, OidcVerifier
from tests.support.servers import wait_until

ISSUER = "https://issuer.example"
DISCOVERY = {"issuer": ISSUER, "jwks_uri": f"{ISSUER}/jwks"}


class FakeIssuer:
    def __init__(self) -> None:
        self.kids = ["k1"]
        self.down = False
        self.fetches: list[str] = []

    def __call__(self, url: str) -> dict[str, Any]:
        self.fetches.append(url)
        if self.down:
            raise ConnectionRefusedError("connection refused")
        if url.endswith("openid-configuration"):
            return DISCOVERY
        return {"keys": [{"kid": kid, "kty": "RSA", "n": "x", "e": "AQAB"} for kid in self.kids]}


def _keys(issuer: FakeIssuer, now: list[float], **kwargs: Any) -> tuple[IssuerKeys, list[bool]]:
    gauge: list[bool] = []
    keys = IssuerKeys(
        OidcVerifier(OidcConfig(ISSUER, "api://predictor")),
        refresh_seconds=kwargs.get("refresh_seconds", 300),
        min_refetch_seconds=30,
        on_change=gauge.append,
        fetch=issuer,
        clock=lambda: now[0],
    )
    return keys, gauge


def test_a_flood_of_unknown_kids_fetches_once_per_interval():
    issuer, now = FakeIssuer(), [1000.0]
    keys, _ = _keys(issuer, now)
    keys.refresh()
    issuer.fetches.clear()
    keys.unknown_kid()  # within 30 s of that fetch: none
    assert not issuer.fetches

    now[0] += 30
    for _ in range(100):
        keys.unknown_kid()
    wait_until(lambda: len(issuer.fetches) == 2 and not keys._fetching.locked(), 5, "the refetch")
    now[0] += 29
    keys.unknown_kid()
    assert len(issuer.fetches) == 2
    now[0] += 2
    keys.unknown_kid()  # 31 s after the last: one more
    wait_until(lambda: len(issuer.fetches) == 4, 5, "the second refetch")


def test_the_issuer_down_keeps_the_keys_and_is_said_once(caplog: pytest.LogCaptureFixture):
    issuer, now = FakeIssuer(), [1000.0]
    keys, gauge = _keys(issuer, now)
    assert keys.refresh() and set(keys.verifier.keys.keys) == {"k1"}

    issuer.down = True
    with caplog.at_level(logging.INFO, logger="predictor"):
        now[0] += 300
        keys.refresh_if_due()  # due: fails
        for _ in range(3):
            now[0] += 31
            keys.refresh_if_due()  # retried while down, before refresh_seconds
        issuer.down, issuer.kids = False, ["k2"]
        now[0] += 31
        keys.refresh_if_due()

    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 2, said
    assert said[0].startswith(f"OpenID Connect issuer {ISSUER} unreachable: tokens signed by the keys")
    assert said[0].endswith("ConnectionRefusedError: connection refused")
    assert said[1] == f"OpenID Connect issuer {ISSUER} answers again"
    assert gauge == [True, False, True]
    assert set(keys.verifier.keys.keys) == {"k2"}


def test_the_keys_are_fetched_again_when_due_only():
    issuer, now = FakeIssuer(), [1000.0]
    keys, _ = _keys(issuer, now, refresh_seconds=300)
    keys.refresh_if_due()  # none yet: fetched
    keys.refresh_if_due()
    now[0] += 299
    keys.refresh_if_due()
    assert len(issuer.fetches) == 2
    now[0] += 1
    keys.refresh_if_due()
    assert len(issuer.fetches) == 4


def test_a_discovery_document_of_another_issuer_is_refused():
    issuer, now = FakeIssuer(), [1000.0]
    keys, gauge = _keys(issuer, now)
    keys.issuer = "https://elsewhere.example"
    assert not keys.refresh()
    assert gauge == [False] and "another issuer" in (keys.outage.error or "")
