from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.security import OAuth2PasswordRequestForm
from pydantic import BaseModel

from app.api.deps import SessionDep, SettingsDep, ThrottleDep
from app.api.errors import ErrorDetail
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


@router.post(
    "/token",
    responses={
        401: {"model": ErrorDetail, "description": "Wrong username or password, or a disabled user"},
        429: {
            "model": ErrorDetail,
            "description": "Too many failed logins for this username; see Retry-After",
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
    expires = timedelta(minutes=settings.access_token_expire_minutes)
    token = create_access_token(
        user.username, granted, secret=settings.secret_key.get_secret_value(), expires=expires
    )
    TOKENS_ISSUED.inc()
    return Token(access_token=token, expires_in=int(expires.total_seconds()), scope=" ".join(granted))
