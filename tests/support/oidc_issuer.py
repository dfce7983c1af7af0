"""A real OpenID Connect issuer for the tests: panva's oidc-provider (tests/support/oidc/provider.mjs,
installed by `make oidc-tools`), on a free port of 127.0.0.1, issuing JWT access tokens to clients of
the client credentials grant. Its keys are made here; a rotation restarts it with others."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from tests.support.paths import ROOT
from tests.support.servers import free_port, stop

PROVIDER = ROOT / "tests" / "support" / "oidc" / "provider.mjs"
AUDIENCE = "api://predictor"
CLIENT_SECRET = "a-client-secret-of-the-test-issuer-0123456789"


def rsa_key(kid: str) -> dict[str, Any]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return RSAAlgorithm.to_jwk(private, as_dict=True) | {"kid": kid, "use": "sig"}


def ec_key(kid: str) -> dict[str, Any]:
    private = ec.generate_private_key(ec.SECP256R1())
    return ECAlgorithm.to_jwk(private, as_dict=True) | {"kid": kid, "use": "sig"}


@dataclass(frozen=True)
class Client:
    client_id: str
    alg: str = "RS256"
    scope: str = "predictor.read"
    ttl: int = 300  # seconds


CLIENTS = (
    Client("rs-reader", "RS256", "predictor.read"),
    Client("es-reader", "ES256", "predictor.read"),
    Client("rs-admin", "RS256", "predictor.read predictor.admin"),
    Client("short-lived", "RS256", "predictor.read", ttl=1),
)


@dataclass
class Issuer:
    """One issuer URL; the process behind it can be stopped and started again with other keys."""

    folder: Path
    port: int = field(default_factory=free_port)
    issuer: str = ""  # the `iss` it signs: its own URL, unless it impersonates another
    process: subprocess.Popen[str] | None = None
    keys: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.issuer = self.issuer or self.url

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, keys: list[dict[str, Any]]) -> Issuer:
        self.keys = keys
        config = self.folder / f"provider-{self.port}.json"
        config.write_text(
            json.dumps(
                {
                    "issuer": self.issuer,
                    "port": self.port,
                    "jwks": {"keys": keys},
                    "resources": [AUDIENCE],
                    "clients": [
                        {"client_id": c.client_id, "client_secret": CLIENT_SECRET} | c.__dict__
                        for c in CLIENTS
                    ],
                }
            )
        )
        self.process = subprocess.Popen(
            ["node", str(PROVIDER), str(config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert self.process.stdout is not None
        for line in self.process.stdout:  # its warnings first, then "listening"
            if line.startswith("listening"):
                return self
        raise RuntimeError(f"the OpenID Connect provider did not start (exit {self.process.wait()})")

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process, grace=5)
            if self.process.stdout is not None:
                self.process.stdout.close()
            self.process = None

    def rotate(self, keys: list[dict[str, Any]]) -> None:
        """The same issuer, at the same URL, signing with other keys."""
        self.stop()
        self.start(keys)

    def token(self, client_id: str = "rs-reader", *, resource: str | None = None) -> str:
        client = next(c for c in CLIENTS if c.client_id == client_id)
        form = {
            "grant_type": "client_credentials",
            "client_id": client.client_id,
            "client_secret": CLIENT_SECRET,
            "scope": client.scope,
        } | ({"resource": resource} if resource else {})
        answer = httpx.post(f"{self.url}/token", data=form, timeout=10)
        assert answer.status_code == 200, answer.text
        token: str = answer.json()["access_token"]
        return token

    def public_jwks(self) -> dict[str, Any]:
        return httpx.get(f"{self.url}/jwks", timeout=10).json()


@contextmanager
def running_issuer(folder: Path, keys: list[dict[str, Any]], *, issuer: str = "") -> Iterator[Issuer]:
    """An issuer started with these keys, stopped even when the test fails."""
    found = Issuer(folder, issuer=issuer)
    try:
        yield found.start(keys)
    finally:
        found.stop()
