from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Form, HTTPException, Request, status
from fastapi.responses import JSONResponse
from fastapi.security import OAuth2PasswordRequestForm
from pydantic import BaseModel

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
from app.core.revocation import revoke_family, revoke_token
from app.core.security import create_access_token, verify_password_or_dummy
from app.db import crud
from app.observability.audit import auth_failed
from app.observability.metrics import TOKENS_ISSUED

router = APIRouter(tags=["auth"])


class Token(BaseModel):
    access_token: str
    token_type: str = "bearer"  # noqa: S105 - the OAuth2 token type, not a secret
    expires_in: int
    scope: str
    # One-time use at POST /token/refresh, which answers the next one (RFC 6749 section 6).
    refresh_token: str
    refresh_expires_in: int


class OAuthError(BaseModel):
    """RFC 6749 section 5.2's error body, with the `detail` every other error of this API has."""

    error: Literal["invalid_request", "invalid_grant", "unsupported_grant_type"]
    detail: str


@router.post(
    "/token",
    dependencies=[Depends(limit_client)],
    responses={
        401: {"model": ErrorDetail, "description": "Wrong username or password, or a disabled user"},
        429: {
            "model": ErrorDetail,
            "description": "Too many failed logins for this username, or attempts from this address "
            "(RATE_LIMIT_TOKEN); see Retry-After",
        },
    },
)
def login(
    form: Annotated[OAuth2PasswordRequestForm, Depends()],
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    throttle: ThrottleDep,
) -> Token:
    """OAuth2 password flow. `scope` may narrow the token to some of the user's scopes."""
    request.state.user = form.username
    retry_after = throttle.retry_after(form.username)
    if retry_after is not None:
        auth_failed("locked", request, f"login refused for {retry_after} s more")
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"Too many failed logins for this username: try again in {retry_after} s",
            headers={"Retry-After": str(retry_after)},
        )
    user = crud.get_user(session, form.username)
    # Always one hash verification, whether the user exists or not: same answer, same time.
    valid = verify_password_or_dummy(form.password, user.hashed_password if user else None)
    if user is None or not valid or user.disabled:
        throttle.record_failure(form.username)
        auth_failed("bad_credentials", request, "wrong username or password, or a disabled user")
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "Incorrect username or password",
            headers={"WWW-Authenticate": "Bearer"},
        )
    throttle.reset(form.username)

    held = user.scope_list
    not_held = [s for s in form.scopes if s not in held]
    if not_held:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"invalid_scope: not granted {' '.join(not_held)}")
    granted = sorted(set(form.scopes)) if form.scopes else held
    return _tokens(request, settings, user.username, granted, family=None)


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
    revoke(request, revoke_token(claims), "not logged out")
    if claims.fam is not None:
        _withdraw_family(request, settings, claims.fam)


def _withdraw_family(request: Request, settings: Settings, family: str) -> None:
    refresh_tokens = services(request).refresh_tokens
    refresh_tokens.withdraw_family(family)  # no refresh from it any more, whatever the store says
    revoke(request, revoke_family(family, settings.longest_token_seconds), "the login's tokens not revoked")
