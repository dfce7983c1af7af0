"""The external issuer's tokens, without the network: which tokens go to it, scopes and roles mapped
from wherever the issuer puts them, the keys and algorithms it may use (tests/api/test_oidc.py runs
against a real issuer)."""

from __future__ import annotations

import base64
import json

import pytest
from jose import jwt as jose_jwt

from app.core.oidc import KeySet, ScopeMap, _scope_values, issuer_token
from app.core.security import ALGORITHM, create_access_token


def _token(header: str) -> str:
    return f"{header}.e30.c2ln"


def test_our_tokens_stay_ours_and_anything_else_goes_to_the_issuer():
    from datetime import timedelta

    ours = create_access_token("alice", ["predict"], secret="s", expires=timedelta(minutes=1))
    assert not issuer_token(ours)
    assert not issuer_token(jose_jwt.encode({"sub": "x"}, "s", algorithm=ALGORITHM))  # no typ: still HS256
    assert not issuer_token("not a jwt")
    assert issuer_token(jose_jwt.encode({"sub": "x"}, "s", algorithm=ALGORITHM, headers={"kid": "k"}))
    assert issuer_token(_token("eyJhbGciOiJub25lIn0"))  # {"alg":"none"}
    assert issuer_token(_token("eyJhbGciOiJSUzI1NiIsImtpZCI6ImsifQ"))  # {"alg":"RS256","kid":"k"}


@pytest.mark.parametrize(
    ("payload", "path", "values"),
    [
        ({"scope": "predictor.read openid"}, "scope", ["predictor.read", "openid"]),  # Auth0, Keycloak
        ({"permissions": ["predictor.read"]}, "permissions", ["predictor.read"]),  # Auth0 RBAC
        ({"roles": ["Predictor.Admin"], "scp": "x"}, "roles", ["Predictor.Admin"]),  # Entra ID app roles
        ({"realm_access": {"roles": ["predict", 3]}}, "realm_access.roles", ["predict"]),  # Keycloak
        ({"realm_access": "odd"}, "realm_access.roles", []),
        ({}, "scope", []),
    ],
)
def test_scopes_are_read_from_a_string_a_list_or_a_nested_claim(payload, path, values):
    assert _scope_values(payload, path) == values


def test_the_scope_map_maps_drops_the_rest_and_keeps_names_without_one():
    mapping = ScopeMap.parse("predictor.read:predict, predictor-admins:admin,predictor-admins:predict")
    assert mapping.apply(["openid", "predictor-admins", "predictor.read"]) == ("admin", "predict")
    assert ScopeMap.parse("api://predictor/read:predict").pairs == {"api://predictor/read": ("predict",)}
    assert ScopeMap().apply(["predict", "openid", "predict"]) == ("predict", "openid")
    with pytest.raises(ValueError, match="theirs:ours"):
        ScopeMap.parse("predictor.read")


def test_only_signing_keys_of_allowed_types_and_listed_algorithms_are_kept():
    discovery = {"id_token_signing_alg_values_supported": ["HS256", "RS256", "ES256", "none"]}
    jwks = {
        "keys": [
            {"kid": "rsa", "kty": "RSA", "n": "x", "e": "AQAB"},
            {"kid": "ec", "kty": "EC", "use": "sig", "alg": "ES256"},
            {"kid": "ps", "kty": "RSA", "alg": "PS256"},  # not listed by this issuer
            {"kid": "enc", "kty": "RSA", "use": "enc"},
            {"kid": "hmac", "kty": "oct", "k": "c2VjcmV0"},
            {"kty": "RSA"},  # no kid
        ]
    }
    keys = KeySet.from_documents(discovery, jwks)
    assert set(keys.keys) == {"rsa", "ec"}
    assert keys.algorithms == {"RS256", "ES256"}
    assert KeySet.from_documents({}, jwks).algorithms == {"RS256", "PS256", "ES256"}


def test_a_key_is_used_only_with_the_algorithm_it_is_for():
    from cryptography.hazmat.primitives.asymmetric import ec
    from jwt.algorithms import ECAlgorithm

    from app.core.oidc import OidcConfig, OidcRefused, OidcVerifier

    p384 = ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP384R1()).public_key(), as_dict=True)
    verifier = OidcVerifier(OidcConfig("https://issuer.example", "api://predictor"))
    verifier.use_keys(KeySet({"p384": p384 | {"kid": "p384"}, "rsa": {"kid": "rsa", "kty": "RSA"}}))
    for kid, alg in (("p384", "ES256"), ("rsa", "ES256"), ("p384", "RS256")):
        header = base64.urlsafe_b64encode(json.dumps({"alg": alg, "kid": kid}).encode()).decode().rstrip("=")
        with pytest.raises(OidcRefused) as refused:
            verifier.verify(f"{header}.e30.c2ln")
        assert refused.value.reason == "oidc_alg"
