"""POST /token (the password and client-credentials grants), /token/refresh, /logout."""

from __future__ import annotations

import base64
import binascii
from datetime import timedelta
from typing import Annotated, Literal
from urllib.parse import unquote_plus

from fastapi import APIRouter, Depends, Form, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.orm import Session

from app.api.deps import (
    ANY_SCOPE_SECURITY,
    NO_SCOPES,
    SessionDep,
    SettingsDep,
    ThrottleDep,
    bearer_claims,
    limit_client,
    revoke,
    services,
)
from app.api.errors import ErrorDetail
from app.core.config import Settings
from app.core.credentials import client_subject
from app.core.lockout import Throttle
from app.core.revocation import revoke_family, revoke_token
from app.core.security import create_access_token, verify_password_or_dummy
from app.db import crud, service_clients
from app.observability.audit import auth_failed
from app.observability.metrics import AUTH, TOKENS_ISSUED

router = APIRouter(tags=["auth"])


class Token(BaseModel):
    access_token: str
    token_type: str = "bearer"  # noqa: S105 - the OAuth2 token type, not a secret
    expires_in: int
    scope: str
    # One-time use at POST /token/refresh, which answers the next one (RFC 6749 section 6). Absent
    # for a service client (client credentials): it asks for a new token with its secret instead.
    refresh_token: str | None = None
    refresh_expires_in: int | None = None


class OAuthError(BaseModel):
    """RFC 6749 section 5.2's error body, with the `detail` every other error of this API has."""

    error: Literal[
        "invalid_request", "invalid_client", "invalid_grant", "invalid_scope", "unsupported_grant_type"
    ]
    detail: str


# RFC 6749 section 5.2: a client that failed to authenticate is told which scheme to use.
_BASIC = {"WWW-Authenticate": 'Basic realm="token"'}


@router.post(
    "/token",
    response_model=Token,
    response_model_exclude_none=True,
    dependencies=[Depends(limit_client)],
    responses={
        400: {"model": OAuthError, "description": "An unsupported grant_type, or a scope not granted"},
        401: {
            "model": ErrorDetail,
            "description": "Wrong username or password, or a disabled user; for a client, "
            '`{"error": "invalid_client"}`',
        },
        429: {
            "model": ErrorDetail,
            "description": "Too many failed logins for this username or client, or attempts from this "
            "address (RATE_LIMIT_TOKEN); see Retry-After",
        },
    },
)
def login(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    throttle: ThrottleDep,
    grant_type: Annotated[
        str | None, Form(description="password (the default) or client_credentials")
    ] = None,
    username: Annotated[str | None, Form()] = None,
    password: Annotated[str | None, Form(json_schema_extra={"format": "password"})] = None,
    scope: Annotated[str, Form()] = "",
    client_id: Annotated[str | None, Form()] = None,
    client_secret: Annotated[str | None, Form(json_schema_extra={"format": "password"})] = None,
) -> Token | JSONResponse:
    """OAuth2 password flow, or a service client's client-credentials grant (RFC 6749 section 4.4,
    authenticated by HTTP Basic or client_id and client_secret in the form; no refresh token).
    `scope` may narrow the token to some of the user's or client's scopes."""
    scopes = scope.split()
    if grant_type == "client_credentials":
        return _client_credentials(request, session, settings, throttle, scopes, client_id, client_secret)
    if grant_type not in (None, "password"):
        return _oauth_error("unsupported_grant_type", "grant_type must be password or client_credentials")
    missing = [name for name, value in (("username", username), ("password", password)) if value is None]
    if missing or username is None or password is None:
        # What OAuth2PasswordRequestForm answered, when /token took the password grant alone.
        raise RequestValidationError(
            [
                {"type": "missing", "loc": ("body", name), "msg": "Field required", "input": None}
                for name in missing
            ]
        )
    return _password(request, session, settings, throttle, username, password, scopes)


def _password(
    request: Request,
    session: Session,
    settings: Settings,
    throttle: Throttle,
    username: str,
    password: str,
    scopes: list[str],
) -> Token:
    request.state.user = username
    retry_after = throttle.retry_after(username)
    if retry_after is not None:
        auth_failed("locked", request, f"login refused for {retry_after} s more", method="password")
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"Too many failed logins for this username: try again in {retry_after} s",
            headers={"Retry-After": str(retry_after)},
        )
    user = crud.get_user(session, username)
    # Always one hash verification, whether the user exists or not: same answer, same time.
    valid = verify_password_or_dummy(password, user.hashed_password if user else None)
    if user is None or not valid or user.disabled:
        throttle.record_failure(username)
        auth_failed(
            "bad_credentials", request, "wrong username or password, or a disabled user", method="password"
        )
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "Incorrect username or password",
            headers={"WWW-Authenticate": "Bearer"},
        )
    throttle.reset(username)
    AUTH.labels(method="password", result="ok").inc()

    held = user.scope_list
    not_held = [s for s in scopes if s not in held]
    if not_held:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"invalid_scope: not granted {' '.join(not_held)}")
    granted = sorted(set(scopes)) if scopes else held
    return _tokens(request, settings, user.username, granted, family=None)


def _client_credentials(
    request: Request,
    session: Session,
    settings: Settings,
    throttle: Throttle,
    scopes: list[str],
    client_id: str | None,
    client_secret: str | None,
) -> Token | JSONResponse:
    """A service client's access token: its scopes (or fewer), `client:<client_id>`, no refresh token."""
    basic = _basic_credentials(request)
    if basic is not None:  # RFC 6749 section 2.3.1: HTTP Basic first, the form's fields otherwise
        client_id, client_secret = basic
    if not client_id or client_secret is None:
        auth_failed("invalid_client", request, "no client credentials", method="client_credentials")
        return _invalid_client("client authentication required (HTTP Basic, or client_id and client_secret)")
    throttle_key = client_subject(client_id)
    request.state.user = throttle_key
    retry_after = throttle.retry_after(throttle_key)
    if retry_after is not None:
        auth_failed(
            "locked", request, f"client refused for {retry_after} s more", method="client_credentials"
        )
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"Too many failed attempts for this client: try again in {retry_after} s",
            headers={"Retry-After": str(retry_after)},
        )
    client = service_clients.authenticate(session, client_id, client_secret)
    if client is None:
        throttle.record_failure(throttle_key)
        auth_failed(
            "invalid_client",
            request,
            "unknown client, wrong secret, or a disabled client",
            method="client_credentials",
        )
        return _invalid_client("client authentication failed")
    throttle.reset(throttle_key)
    held = client.scope_list
    not_held = [s for s in scopes if s not in held]
    if not_held:
        return _oauth_error("invalid_scope", f"not granted {' '.join(not_held)}")
    granted = sorted(set(scopes)) if scopes else held
    expires = timedelta(minutes=settings.access_token_expire_minutes)
    token = create_access_token(
        throttle_key,
        granted,
        secret=settings.secret_key.get_secret_value(),
        expires=expires,
        method="client_credentials",
    )
    TOKENS_ISSUED.inc()
    AUTH.labels(method="client_credentials", result="ok").inc()
    return Token(access_token=token, expires_in=int(expires.total_seconds()), scope=" ".join(granted))


def _basic_credentials(request: Request) -> tuple[str, str] | None:
    """HTTP Basic's client id and secret, each form-urlencoded first (RFC 6749 section 2.3.1);
    None without Basic, ("", "") when unreadable."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return "", ""
    client_id, _, secret = decoded.partition(":")
    return unquote_plus(client_id), unquote_plus(secret)


def _invalid_client(detail: str) -> JSONResponse:
    return JSONResponse(
        {"error": "invalid_client", "detail": detail},
        status_code=status.HTTP_401_UNAUTHORIZED,
        headers=_BASIC,
    )


def _tokens(
    request: Request, settings: Settings, username: str, scopes: list[str], family: str | None
) -> Token:
    """An access token and the refresh token that follows it, in `family` (None: a new login)."""
    refresh_tokens = services(request).refresh_tokens
    refresh = refresh_tokens.issue(username, scopes, family)
    expires = timedelta(minutes=settings.access_token_expire_minutes)
    token = create_access_token(
        username,
        scopes,
        secret=settings.secret_key.get_secret_value(),
        expires=expires,
        family=refresh.family,
    )
    TOKENS_ISSUED.inc()
    return Token(
        access_token=token,
        expires_in=int(expires.total_seconds()),
        scope=" ".join(scopes),
        refresh_token=refresh.token,
        refresh_expires_in=int(refresh_tokens.lifetime),
    )


def _oauth_error(error: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status.HTTP_400_BAD_REQUEST)


@router.post(
    "/token/refresh",
    response_model=Token,
    response_model_exclude_none=True,
    dependencies=[Depends(limit_client)],
    responses={
        400: {"model": OAuthError, "description": "Unknown, expired, used or withdrawn refresh token"},
        429: {"model": ErrorDetail, "description": "Too many attempts from this address; see Retry-After"},
    },
)
def refresh(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    grant_type: Annotated[str, Form()],
    refresh_token: Annotated[str, Form()],
) -> Token | JSONResponse:
    """A refresh token for a new access token and the next refresh token (RFC 6749 section 6). Each is
    usable once: presenting one a second time withdraws every token of its login."""
    if grant_type != "refresh_token":
        return _oauth_error("unsupported_grant_type", "grant_type must be refresh_token")
    refresh_tokens = services(request).refresh_tokens
    used = refresh_tokens.use(refresh_token)
    request.state.user = used.username
    if used.outcome == "reused" and used.family is not None:
        # Two parties hold this login's tokens: neither may go on (OAuth 2.0 Security BCP 4.14).
        _withdraw_family(request, settings, used.family)
        auth_failed("refresh_reuse", request, "a used refresh token presented again: its family is revoked")
        return _oauth_error("invalid_grant", "refresh token already used: sign in again")
    if used.outcome != "ok" or used.family is None or used.username is None:
        auth_failed("refresh_invalid", request, f"refresh token {used.outcome}")
        return _oauth_error("invalid_grant", "refresh token unknown or expired: sign in again")
    user = crud.get_user(session, used.username)
    held = user.scope_list if user is not None and not user.disabled else []
    if not held or not set(used.scopes) <= set(held):
        _withdraw_family(request, settings, used.family)
        auth_failed("refresh_invalid", request, "refresh token of a removed, disabled or demoted user")
        return _oauth_error("invalid_grant", "refresh token withdrawn: sign in again")
    return _tokens(request, settings, used.username, list(used.scopes), family=used.family)


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT, openapi_extra=ANY_SCOPE_SECURITY)
def logout(request: Request, settings: SettingsDep) -> None:
    """Withdraws the bearer token and every refresh token of its login; the token gets 401 after."""
    claims = bearer_claims(request, NO_SCOPES)
    if claims.method == "api_key":  # it has no end of its own to revoke it until
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "an API key is revoked with DELETE /api-keys/{id}")
    revoke(request, revoke_token(claims), "not logged out")
    if claims.fam is not None:
        _withdraw_family(request, settings, claims.fam)


def _withdraw_family(request: Request, settings: Settings, family: str) -> None:
    refresh_tokens = services(request).refresh_tokens
    refresh_tokens.withdraw_family(family)  # no refresh from it any more, whatever the store says
    revoke(request, revoke_family(family, settings.longest_token_seconds), "the login's tokens not revoked")
