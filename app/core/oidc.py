"""Access tokens of an external OpenID Connect issuer (OIDC_ISSUER): Keycloak, Auth0, Entra ID, ...

Pure CPU: the keys are fetched by app.adapters.oidc_issuer and handed here as a KeySet; verifying a
token against them never touches the network. A token naming a key this replica has not seen asks
for a fetch (`on_unknown_kid`, which runs it in the background) and is refused meanwhile: the request
path never waits for the issuer (docs/identity.md).

PyJWT verifies, with the algorithm bound to each key: only the asymmetric algorithms of ALLOWED_ALGORITHMS
that the issuer lists, never `none`, never HMAC (a token "signed" with the issuer's public key as an
HMAC secret fails on its algorithm before any key is used).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import jwt

from app.core.security import InvalidToken, TokenClaims

# The algorithms an issuer may sign with, whatever it lists: RSA (PKCS#1 v1.5 and PSS) and P-256.
ALLOWED_ALGORITHMS = frozenset({"RS256", "PS256", "ES256"})
_KEY_TYPES = {"RS256": "RSA", "PS256": "RSA", "ES256": "EC"}
# What an issuer token's subject becomes: local usernames and issuer subjects never meet (a user
# "alice" here and an issuer's "alice" are two people, revoked apart).
SUBJECT_PREFIX = "oidc:"
# The header python-jose writes on every token of ours ({"alg":"HS256","typ":"JWT"}): a token that
# starts with it is ours without decoding anything.
_OUR_HEADER = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=").decode()
_VERIFIED_MAX = 4096

# Why an issuer token was refused: the `reason` of predictor_auth_failures_total.
REASONS = (
    "oidc_alg",
    "oidc_signature",
    "oidc_issuer",
    "oidc_audience",
    "oidc_expired",
    "oidc_unknown_kid",
    "oidc_invalid",
)


class OidcRefused(InvalidToken):
    """An issuer token refused, with the reason counted (one of REASONS); the caller sees a plain 401."""

    def __init__(self, reason: str, why: str) -> None:
        super().__init__(why)
        self.reason = reason


@dataclass(frozen=True)
class KeySet:
    """The issuer's signing keys (JWKs by kid) and the algorithms it may use: replaced whole."""

    keys: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    algorithms: frozenset[str] = ALLOWED_ALGORITHMS

    @classmethod
    def from_documents(cls, discovery: Mapping[str, Any], jwks: Mapping[str, Any]) -> KeySet:
        """From the discovery document and the JWKS it points to: only signing keys of an allowed type."""
        listed = discovery.get("id_token_signing_alg_values_supported")
        algorithms = ALLOWED_ALGORITHMS & set(listed) if isinstance(listed, list) else ALLOWED_ALGORITHMS
        keys: dict[str, Mapping[str, Any]] = {}
        for key in jwks.get("keys", []):
            if not isinstance(key, dict) or not isinstance(key.get("kid"), str):
                continue
            if key.get("use", "sig") != "sig" or key.get("kty") not in ("RSA", "EC"):
                continue  # encryption keys, symmetric keys: never for verifying
            if "alg" in key and key["alg"] not in algorithms:
                continue
            keys[key["kid"]] = key
        return cls(keys, frozenset(algorithms))


@dataclass(frozen=True)
class ScopeMap:
    """OIDC_SCOPE_MAP: the issuer's scope or role names to ours. Empty: names taken as they are."""

    pairs: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> ScopeMap:
        """`theirs:ours,theirs:ours`; a name of theirs may hold colons (`api://x/read:predict`)."""
        pairs: dict[str, tuple[str, ...]] = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            theirs, colon, ours = item.rpartition(":")
            if not colon or not theirs.strip() or not ours.strip():
                raise ValueError(f"{item!r} is not a mapping: write theirs:ours, e.g. predictor.read:predict")
            pairs[theirs.strip()] = (*pairs.get(theirs.strip(), ()), ours.strip())
        return cls(pairs)

    def apply(self, values: list[str]) -> tuple[str, ...]:
        if not self.pairs:
            return tuple(dict.fromkeys(values))
        # Names that map to nothing are dropped: an issuer's "openid" grants nothing here.
        return tuple(dict.fromkeys(ours for value in values for ours in self.pairs.get(value, ())))


@dataclass(frozen=True)
class OidcConfig:
    issuer: str
    audience: str
    scopes_claim: str = "scope"  # a dotted path for nested claims: realm_access.roles
    scope_map: ScopeMap = field(default_factory=ScopeMap)
    leeway_seconds: float = 60.0


def issuer_token(token: str) -> bool:
    """Whether a bearer token is not one of ours, decided from its header alone: ours are HS256
    without a kid. Anything else (another algorithm, a kid, `none`) is for the issuer's verifier."""
    head = token.partition(".")[0]
    if head == _OUR_HEADER:
        return False
    try:
        header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    except (ValueError, binascii.Error):
        return False  # not a JWT at all: ours to refuse, as before
    return not isinstance(header, dict) or header.get("alg") != "HS256" or "kid" in header


class OidcVerifier:
    """Verifies issuer tokens against the keys it was last given; caches the verified ones by token."""

    def __init__(self, config: OidcConfig, on_unknown_kid: Callable[[], None] = lambda: None) -> None:
        self.config = config
        self.on_unknown_kid = on_unknown_kid  # set by whoever fetches the keys
        self._keys = KeySet({}, frozenset())
        self._jwks: dict[tuple[str, str], jwt.PyJWK] = {}  # (kid, alg): PyJWT's key, bound to that alg
        self._verified: dict[str, TokenClaims] = {}
        self._lock = threading.Lock()  # the fetching thread replaces what request threads read

    @property
    def keys(self) -> KeySet:
        return self._keys

    def use_keys(self, keys: KeySet) -> None:
        """The issuer's keys as fetched now. A key gone from its set stops verifying at once, cached
        tokens included."""
        with self._lock:
            if not set(self._keys.keys) <= set(keys.keys) or keys.algorithms != self._keys.algorithms:
                self._verified = {}
            self._keys, self._jwks = keys, {}

    def verify(self, token: str) -> TokenClaims:
        known = self._verified.get(token)
        if known is not None:
            if known.exp > datetime.now(UTC).timestamp():
                return known
            self._verified.pop(token, None)
            raise OidcRefused("oidc_expired", "Signature has expired.")
        claims = self._verify(token)
        if len(self._verified) >= _VERIFIED_MAX:
            self._verified = {}
        self._verified[token] = claims
        return claims

    def _verify(self, token: str) -> TokenClaims:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise OidcRefused("oidc_invalid", str(exc)) from None
        alg = header.get("alg")
        keys = self._keys
        if alg not in keys.algorithms:
            raise OidcRefused("oidc_alg", f"algorithm {alg!r} is not one the issuer may use")
        key = self._key(keys, header.get("kid"), alg)
        config = self.config
        try:
            payload = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=config.audience,
                issuer=config.issuer,
                leeway=config.leeway_seconds,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
        except jwt.InvalidAlgorithmError as exc:
            raise OidcRefused("oidc_alg", str(exc)) from None
        except jwt.InvalidSignatureError as exc:
            raise OidcRefused("oidc_signature", str(exc)) from None
        except jwt.InvalidIssuerError as exc:
            raise OidcRefused("oidc_issuer", str(exc)) from None
        except jwt.InvalidAudienceError as exc:
            raise OidcRefused("oidc_audience", str(exc)) from None
        except jwt.ExpiredSignatureError as exc:
            raise OidcRefused("oidc_expired", str(exc)) from None
        except jwt.PyJWTError as exc:
            raise OidcRefused("oidc_invalid", str(exc)) from None
        return self._claims(token, payload)

    def _key(self, keys: KeySet, kid: object, alg: str) -> jwt.PyJWK:
        if not isinstance(kid, str):
            # No kid: the issuer's one key of that type, if it has only one.
            usable = [k for k, jwk in keys.keys.items() if jwk.get("kty") == _KEY_TYPES[alg]]
            if len(usable) != 1:
                raise OidcRefused("oidc_unknown_kid", "a token without kid, and no single key to use")
            kid = usable[0]
        jwk = keys.keys.get(kid)
        if jwk is None:
            self.on_unknown_kid()
            raise OidcRefused("oidc_unknown_kid", f"no key {kid!r} in the issuer's key set (asked for it)")
        if (
            jwk.get("alg", alg) != alg
            or jwk.get("kty") != _KEY_TYPES[alg]
            or (alg == "ES256" and jwk.get("crv") != "P-256")
        ):
            raise OidcRefused("oidc_alg", f"key {kid!r} is not for {alg}")
        found = self._jwks.get((kid, alg))
        if found is None:
            try:
                found = jwt.PyJWK(dict(jwk), algorithm=alg)
            except jwt.PyJWTError as exc:
                raise OidcRefused("oidc_invalid", f"key {kid!r}: {exc}") from None
            self._jwks[(kid, alg)] = found
        return found

    def _claims(self, token: str, payload: dict[str, Any]) -> TokenClaims:
        try:
            return TokenClaims(
                sub=SUBJECT_PREFIX + str(payload["sub"]),
                scopes=self.config.scope_map.apply(_scope_values(payload, self.config.scopes_claim)),
                iat=int(payload["iat"]),
                exp=int(payload["exp"]),
                # Without a jti, the token's hash: revoking "this token" still names one token.
                jti=str(payload.get("jti") or hashlib.sha256(token.encode()).hexdigest()),
                method="oidc",
            )
        except (TypeError, ValueError) as exc:
            raise OidcRefused("oidc_invalid", f"claims: {exc}") from None


def _scope_values(payload: Mapping[str, Any], path: str) -> list[str]:
    """The claim at a dotted path (`realm_access.roles`): a space-separated string or a list."""
    value: Any = payload
    for part in path.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []
