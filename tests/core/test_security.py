from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from jose import jwt

from app.core import security
from app.core.security import (
    InvalidToken,
    create_access_token,
    decode_access_token,
    hash_password,
    verify_password,
    verify_password_or_dummy,
)

SECRET = "unit-test-secret"


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_passwords_hash_with_argon2_and_verify() -> None:
    hashed = hash_password("correct horse")
    assert hashed.startswith("$argon2")
    assert verify_password("correct horse", hashed)
    assert not verify_password("wrong horse", hashed)
    assert not verify_password("anything", "not-a-hash")


def test_unknown_user_is_checked_against_a_dummy_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = security.verify_password
    monkeypatch.setattr(security, "verify_password", lambda p, h: calls.append(h) or real(p, h))
    assert verify_password_or_dummy("whatever", None) is False
    assert len(calls) == 1 and calls[0].startswith("$argon2")


def test_the_dummy_hash_costs_what_a_real_one_does() -> None:
    # Same scheme and parameters as a fresh hash: an unknown username takes as long as a known one.
    assert security.dummy_hash_is_current()
    assert security.DUMMY_HASH.split("$")[:4] == security.hash_password("x").split("$")[:4]


def test_a_chosen_cost_hashes_new_passwords_and_the_dummy_alike() -> None:
    before = security.password_cost()
    production_hash = security.hash_password("kept") if before == security.PRODUCTION_COST else None
    try:
        security.use_password_cost(security.PasswordCost(1, 8, 1))
        assert "$m=8,t=1,p=1$" in hash_password("x")
        # The unknown-user path still costs what a real check does, at the new cost.
        assert "$m=8,t=1,p=1$" in security.DUMMY_HASH and security.dummy_hash_is_current()
        # A hash carries its own cost: those made before still verify.
        if production_hash:
            assert verify_password("kept", production_hash)
        security.use_password_cost(security.PRODUCTION_COST)
        assert security.DUMMY_HASH.startswith("$argon2id$v=19$m=65536,t=3,p=4$")
    finally:
        security.use_password_cost(before)


def test_token_round_trip_carries_the_claims() -> None:
    token = create_access_token("alice", ["predict"], secret=SECRET, expires=timedelta(minutes=5))
    claims = decode_access_token(token, secret=SECRET)
    assert claims.sub == "alice"
    assert claims.scopes == ("predict",)
    assert claims.exp - claims.iat == 300
    assert len(claims.jti) == 32
    assert jwt.get_unverified_header(token)["alg"] == "HS256"


def test_expired_token_is_refused() -> None:
    issued = datetime.now(UTC) - timedelta(hours=1)
    token = create_access_token("alice", [], secret=SECRET, expires=timedelta(minutes=5), now=issued)
    with pytest.raises(InvalidToken):
        decode_access_token(token, secret=SECRET)


def test_token_signed_with_another_key_is_refused() -> None:
    token = create_access_token("alice", [], secret="another-key", expires=timedelta(minutes=5))
    with pytest.raises(InvalidToken):
        decode_access_token(token, secret=SECRET)


def test_tampered_payload_is_refused() -> None:
    token = create_access_token("alice", ["predict"], secret=SECRET, expires=timedelta(minutes=5))
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    forged = ".".join([header, _b64(claims | {"scopes": ["predict", "admin"]}), signature])
    with pytest.raises(InvalidToken):
        decode_access_token(forged, secret=SECRET)


def test_alg_none_is_refused() -> None:
    now = int(datetime.now(UTC).timestamp())
    claims = {"sub": "alice", "scopes": ["admin"], "iat": now, "exp": now + 300, "jti": "x"}
    unsigned = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."
    with pytest.raises(InvalidToken):
        decode_access_token(unsigned, secret=SECRET)


@pytest.mark.parametrize("missing", ["exp", "sub", "iat", "jti"])
def test_required_claims(missing: str) -> None:
    now = int(datetime.now(UTC).timestamp())
    claims = {"sub": "alice", "scopes": [], "iat": now, "exp": now + 300, "jti": "x"}
    del claims[missing]
    token = jwt.encode(claims, SECRET, algorithm="HS256")
    with pytest.raises(InvalidToken):
        decode_access_token(token, secret=SECRET)


def test_security_module_does_not_depend_on_fastapi() -> None:
    source = Path(security.__file__).read_text()
    assert not any(f"{kw} {lib}" in source for kw in ("import", "from") for lib in ("fastapi", "starlette"))


def test_a_verified_token_is_remembered_until_it_expires() -> None:
    from app.core.security import ExpiredToken

    issued = datetime.now(UTC) - timedelta(seconds=58)
    token = create_access_token(
        "alice", ["predict"], secret=SECRET, expires=timedelta(seconds=60), now=issued
    )
    first = decode_access_token(token, secret=SECRET)
    assert decode_access_token(token, secret=SECRET) is first  # verified once, then remembered
    with pytest.raises(InvalidToken):  # remembered under its key only
        decode_access_token(token, secret="another-key")
    security._verified[(SECRET, token)] = first.model_copy(update={"exp": int(issued.timestamp())})
    with pytest.raises(ExpiredToken):  # the expiry is checked on every use
        decode_access_token(token, secret=SECRET)
    assert (SECRET, token) not in security._verified
