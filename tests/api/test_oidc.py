"""Access tokens of an external OpenID Connect issuer (OIDC_ISSUER), against a real one: panva's
oidc-provider (tests/support/oidc_issuer.py), with RS256 and ES256 keys, rotated and stopped while the
service runs. The attacks are made from what that issuer published or signed, never from keys of the
test's own: each gets a 401 and a counted reason."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from fastapi.testclient import TestClient
from jwt.algorithms import RSAAlgorithm
from prometheus_client import REGISTRY

from app.core.config import Settings
from app.core.revocation import revoke_user
from app.main import create_app
from tests.support.logs import captured_log
from tests.support.models import IRIS_ROW
from tests.support.oidc_issuer import AUDIENCE, Issuer, ec_key, rsa_key, running_issuer
from tests.support.servers import wait_until
from tests.support.tokens import ADMIN, bearer, get_token

pytestmark = [pytest.mark.oidc, pytest.mark.slow]
BODY = {"instances": [IRIS_ROW]}


@pytest.fixture
def database_url(tmp_path: Path, _sqlite_template: Path) -> str:
    """SQLite alone: the issuer's tokens never reach the database."""
    (tmp_path / "users.db").write_bytes(_sqlite_template.read_bytes())
    return f"sqlite:///{tmp_path}/users.db"


@pytest.fixture
def issuer(tmp_path: Path) -> Iterator[Issuer]:
    with running_issuer(tmp_path, [rsa_key("rsa-1"), ec_key("ec-1")]) as found:
        yield found


@pytest.fixture
def oidc_app(issuer: Issuer, settings_factory: Callable[..., Settings]) -> Iterator[TestClient]:
    settings = settings_factory(
        oidc_issuer=issuer.url,
        oidc_audience=AUDIENCE,
        oidc_scope_map="predictor.read:predict,predictor.admin:admin",
        oidc_leeway_seconds=0,
        oidc_jwks_min_refetch_seconds=0,
    )
    with TestClient(create_app(settings)) as client:
        wait_until(lambda: bool(_verifier(client).keys.keys), 10, "the issuer's keys")
        yield client


def _verifier(client: TestClient):  # type: ignore[no-untyped-def]
    return client.app.state.services.oidc  # type: ignore[attr-defined]


def refusals(reason: str) -> float:
    return REGISTRY.get_sample_value("predictor_auth_failures_total", {"reason": reason}) or 0.0


def issuer_up(issuer: Issuer) -> float | None:
    return REGISTRY.get_sample_value("predictor_oidc_issuer_up", {"issuer": issuer.url})


def by_method(result: str) -> float:
    return REGISTRY.get_sample_value("predictor_auth_total", {"method": "oidc", "result": result}) or 0.0


def refused(client: TestClient, token: str, reason: str) -> None:
    before = refusals(reason)
    answer = client.post("/predict", json=BODY, headers=bearer(token))
    assert answer.status_code == 401, answer.text
    assert answer.headers["www-authenticate"] == "Bearer"
    assert refusals(reason) == before + 1


def segments(token: str) -> tuple[dict, str]:
    header, payload, _ = token.split(".")
    return json.loads(base64.urlsafe_b64decode(header + "==")), payload


def encode(part: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=").decode()


@pytest.mark.parametrize("client_id", ["rs-reader", "es-reader"])
def test_an_issuer_token_predicts_with_its_mapped_scopes(oidc_app: TestClient, issuer: Issuer, client_id):
    token = issuer.token(client_id)
    assert segments(token)[0]["alg"] == ("RS256" if client_id == "rs-reader" else "ES256")
    accepted = by_method("ok")

    answer = oidc_app.post("/predict", json=BODY, headers=bearer(token))

    assert answer.status_code == 200, answer.text
    assert by_method("ok") == accepted + 1
    claims = _verifier(oidc_app).verify(token)
    assert (claims.sub, claims.scopes, claims.method) == (f"oidc:{client_id}", ("predict",), "oidc")
    # predictor.read maps to predict alone: an admin route wants more.
    assert oidc_app.post("/model/reload", headers=bearer(token)).status_code == 403


def test_our_own_tokens_still_work_beside_the_issuers(oidc_app: TestClient):
    ours = get_token(oidc_app, *ADMIN)
    assert oidc_app.post("/predict", json=BODY, headers=bearer(ours)).status_code == 200


def test_revoking_the_issuers_subject_refuses_its_tokens(oidc_app: TestClient, issuer: Issuer):
    token = issuer.token("es-reader")
    assert oidc_app.post("/predict", json=BODY, headers=bearer(token)).status_code == 200

    oidc_app.app.state.services.revocations.revoke(revoke_user("oidc:es-reader", 3600))  # type: ignore[attr-defined]

    refused(oidc_app, token, "revoked")
    assert oidc_app.post("/predict", json=BODY, headers=bearer(issuer.token("rs-reader"))).status_code == 200


def test_an_issuer_admin_calls_admin_routes_and_logs_out(oidc_app: TestClient, issuer: Issuer):
    token = issuer.token("rs-admin")
    assert _verifier(oidc_app).verify(token).scopes == ("predict", "admin")

    reloaded = oidc_app.post("/model/reload", headers=bearer(token))
    assert reloaded.status_code == 200, reloaded.text

    assert oidc_app.post("/logout", headers=bearer(token)).status_code == 204
    refused(oidc_app, token, "revoked")


def test_a_token_signed_with_a_new_key_is_accepted_once_the_keys_are_fetched_again(
    oidc_app: TestClient, issuer: Issuer
):
    old = issuer.token("rs-reader")
    assert oidc_app.post("/predict", json=BODY, headers=bearer(old)).status_code == 200
    issuer.rotate([rsa_key("rsa-2"), ec_key("ec-1")])
    new = issuer.token("rs-reader")
    assert segments(new)[0]["kid"] == "rsa-2"

    # The request that names the new key is refused while the keys are fetched, in the background.
    refused(oidc_app, new, "oidc_unknown_kid")
    wait_until(lambda: "rsa-2" in _verifier(oidc_app).keys.keys, 10, "the rotated keys")

    assert oidc_app.post("/predict", json=BODY, headers=bearer(new)).status_code == 200
    # The key the rotation removed verifies nothing any more, even a token verified before.
    refused(oidc_app, old, "oidc_unknown_kid")


def test_alg_none_is_refused(oidc_app: TestClient, issuer: Issuer):
    header, payload = segments(issuer.token())
    refused(oidc_app, f"{encode(header | {'alg': 'none'})}.{payload}.", "oidc_alg")


def test_hs256_signed_with_the_issuers_public_key_is_refused(oidc_app: TestClient, issuer: Issuer):
    header, payload = segments(issuer.token())
    published = next(k for k in issuer.public_jwks()["keys"] if k["kid"] == header["kid"])
    pem = RSAAlgorithm.from_jwk(published).public_bytes(  # type: ignore[union-attr]
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for secret in (pem, json.dumps(published).encode()):
        signing_input = f"{encode(header | {'alg': 'HS256'})}.{payload}"
        mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        forged = f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
        refused(oidc_app, forged, "oidc_alg")


def test_a_token_of_another_issuer_with_the_same_kid_is_refused(
    oidc_app: TestClient, issuer: Issuer, tmp_path: Path
):
    # Another server that claims to be our issuer, signing with a key of its own under the same kid.
    with running_issuer(tmp_path, [rsa_key("rsa-1")], issuer=issuer.url) as impostor:
        forged = impostor.token()
    assert segments(forged)[0]["kid"] == "rsa-1"
    refused(oidc_app, forged, "oidc_signature")


def test_a_token_for_another_audience_is_refused(oidc_app: TestClient, issuer: Issuer):
    refused(oidc_app, issuer.token(resource="https://another-api.example"), "oidc_audience")


def test_an_expired_token_is_refused(oidc_app: TestClient, issuer: Issuer):
    # 1 s lifetimes; the app allows no leeway here. One token verified (and cached) while valid, one not.
    seen, unseen = issuer.token("short-lived"), issuer.token("short-lived")
    assert oidc_app.post("/predict", json=BODY, headers=bearer(seen)).status_code == 200
    time.sleep(2.1)
    refused(oidc_app, seen, "oidc_expired")
    refused(oidc_app, unseen, "oidc_expired")


def test_the_issuer_down_keeps_known_keys_refuses_new_ones_and_says_so_once(
    oidc_app: TestClient, issuer: Issuer, tmp_path: Path
):
    signed_before = issuer.token("es-reader")  # never shown to the service before the issuer goes
    with running_issuer(tmp_path, [rsa_key("rsa-new")], issuer=issuer.url) as other:
        unknown = other.token()
    assert issuer_up(issuer) == 1

    with captured_log() as log:
        issuer.stop()
        assert oidc_app.post("/predict", json=BODY, headers=bearer(signed_before)).status_code == 200
        refused(oidc_app, unknown, "oidc_unknown_kid")
        wait_until(lambda: issuer_up(issuer) == 0, 10, "the gauge at 0")
        time.sleep(0.1)
        refused(oidc_app, unknown, "oidc_unknown_kid")
        time.sleep(0.5)  # a second fetch, failed as well

    said = [line for line in log.getvalue().splitlines() if "unreachable" in line]
    assert len(said) == 1, said
    assert issuer.url in said[0]
