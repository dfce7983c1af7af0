"""Password hashing and access tokens: the only module that knows which libraries do them.

No FastAPI here: the API maps InvalidToken to 401, the CLI uses the hashing directly. Tokens of an
external OpenID Connect issuer are app.core.oidc's.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import uuid4

from jose import ExpiredSignatureError, JWTError, jwt
from passlib.context import CryptContext
from pydantic import BaseModel, ConfigDict, ValidationError

ALGORITHM = "HS256"
SCOPES: dict[str, str] = {
    "predict": "Ask the model for predictions and read its metadata.",
    "admin": "Reload the model and manage users.",
    "feedback": "Send the ground truth of earlier predictions (POST /feedback).",
}
DEFAULT_SCOPES = ("predict",)
# How a caller authenticated (TokenClaims.method): a user's password, a service client's secret, an
# API key, or another issuer's token.
METHODS = ("password", "client_credentials", "api_key", "oidc")


@dataclass(frozen=True)
class PasswordCost:
    """argon2id's parameters for new hashes (PASSWORD_HASH_*). A hash carries its own, so a hash
    made at another cost still verifies; only new ones change."""

    time_cost: int = 3
    memory_kib: int = 64 * 1024
    parallelism: int = 4


# What production may not go below (app.core.config refuses it): OWASP's argon2id floor is lower,
# but these are what every existing hash was made with.
PRODUCTION_COST = PasswordCost()


def _context(cost: PasswordCost) -> CryptContext:
    # argon2 only: passlib's bcrypt handler breaks with bcrypt >= 4.1.
    return CryptContext(
        schemes=["argon2"],
        deprecated="auto",
        argon2__time_cost=cost.time_cost,
        argon2__memory_cost=cost.memory_kib,
        argon2__parallelism=cost.parallelism,
    )


# What an unknown username's password is checked against, so that check costs what a real one
# does. Its password is a random string nobody kept, and a match would not log anyone in anyway:
# a constant at the production cost, so start-up computes no hash there (one argon2 hash, ~0.13 s
# of the cold start). Another cost gets a dummy of its own, made once when it is chosen.
_PRODUCTION_DUMMY_HASH = (
    "$argon2id$v=19$m=65536,t=3,p=4$/V+LcW5tDQFAiLFW6h0jZA$6yOE8vMQIPzbAsbNB08JAS2EJnDG+mwdo0DPhOZjfTE"
)
_passwords = _context(PRODUCTION_COST)
_cost = PRODUCTION_COST
DUMMY_HASH = _PRODUCTION_DUMMY_HASH


def password_cost() -> PasswordCost:
    """The cost new hashes get in this process."""
    return _cost


def use_password_cost(cost: PasswordCost) -> None:
    """Hash new passwords at `cost` in this process (its settings' PASSWORD_HASH_*)."""
    global _passwords, _cost, DUMMY_HASH
    if cost == _cost:
        return
    context = _context(cost)
    dummy = _PRODUCTION_DUMMY_HASH if cost == PRODUCTION_COST else context.hash(secrets.token_urlsafe(16))
    _passwords, _cost, DUMMY_HASH = context, cost, dummy


class InvalidToken(Exception):
    """The token is malformed, tampered with, expired or signed with another key."""


class ExpiredToken(InvalidToken):
    """A well-signed token past its exp: told apart only for metrics, clients see the same 401."""


class TokenClaims(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    sub: str
    scopes: tuple[str, ...] = ()
    iat: int
    exp: int
    jti: str
    # The refresh family the token was issued in (app.core.revocation): logging out revokes it.
    fam: str | None = None
    # How the caller proved who they are (METHODS): the JWT's `mth` claim, absent for a password.
    method: str = "password"


def hash_password(password: str) -> str:
    return _passwords.hash(password)


def verify_password(password: str, hashed: str) -> bool:
    try:
        return _passwords.verify(password, hashed)
    except (ValueError, TypeError):
        # A corrupt or unknown hash in the database: a failed login, not a crash.
        return False


def verify_password_or_dummy(password: str, hashed: str | None) -> bool:
    """Verify against the user's hash, or a dummy one when there is no user.

    Both paths cost one argon2 verification, so the answer time does not tell a caller
    whether the username exists.
    """
    if hashed is None:
        verify_password(password, DUMMY_HASH)
        return False
    return verify_password(password, hashed)


def dummy_hash_is_current() -> bool:
    """Whether DUMMY_HASH has the parameters new hashes get (so both paths cost the same)."""
    return not _passwords.needs_update(DUMMY_HASH)


def create_access_token(
    subject: str,
    scopes: list[str] | tuple[str, ...],
    *,
    secret: str,
    expires: timedelta,
    now: datetime | None = None,
    family: str | None = None,
    method: str = "password",
) -> str:
    issued = now or datetime.now(UTC)
    claims = {
        "sub": subject,
        "scopes": list(scopes),
        "iat": issued,
        "exp": issued + expires,
        "jti": uuid4().hex,
    }
    if family is not None:
        claims["fam"] = family
    if method != "password":  # absent means a password: the password grant's tokens stay as they were
        claims["mth"] = method
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


# Tokens whose signature and claims were verified, by (secret, token): a client sends the same
# token with every request, and verifying it again (HMAC, base64, JSON, claims) was a tenth of a
# one-row /predict's server time (bench/). Only the expiry is checked again on a hit. Bounded: when
# full it starts over, which costs one verification per client.
_VERIFIED_MAX = 4096
_verified: dict[tuple[str, str], TokenClaims] = {}


def decode_access_token(token: str, *, secret: str) -> TokenClaims:
    known = _verified.get((secret, token))
    if known is not None:
        if known.exp > datetime.now(UTC).timestamp():
            return known
        _verified.pop((secret, token), None)
        raise ExpiredToken("Signature has expired.")
    claims = _verify(token, secret)
    if len(_verified) >= _VERIFIED_MAX:
        _verified.clear()
    _verified[(secret, token)] = claims
    return claims


def _verify(token: str, secret: str) -> TokenClaims:
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            options={"require_exp": True, "require_sub": True, "require_iat": True, "require_jti": True},
        )
        claims["method"] = claims.pop("mth", "password")
        return TokenClaims.model_validate(claims)
    except ExpiredSignatureError as exc:
        raise ExpiredToken(str(exc).splitlines()[0]) from None
    except (JWTError, ValidationError) as exc:
        raise InvalidToken(str(exc).splitlines()[0]) from None
