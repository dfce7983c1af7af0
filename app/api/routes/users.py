"""User management over HTTP, for admins; the CLI (python -m app.cli users) does the same."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, HTTPException, Request, status
from pydantic import AwareDatetime, BaseModel, Field
from sqlalchemy.orm import Session

from app.api.deps import AdminDep, SessionDep, SettingsDep, revoke, services
from app.api.errors import ErrorDetail
from app.api.routes.api_keys import withdraw_keys
from app.core.config import Settings
from app.core.revocation import revoke_user
from app.db import crud
from app.db.models import User

router = APIRouter(prefix="/users", tags=["users"])


class UserOut(BaseModel):
    username: str
    scopes: list[str]
    disabled: bool
    created_at: AwareDatetime

    @classmethod
    def of(cls, user: User) -> UserOut:
        return cls(
            username=user.username,
            scopes=user.scope_list,
            disabled=user.disabled,
            created_at=as_utc(user.created_at),
        )


def as_utc(moment: datetime) -> datetime:
    # The app writes UTC (app.db.models); SQLite keeps no time zone, so it reads back naive.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


class UserIn(BaseModel):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=crud.MIN_PASSWORD_LENGTH)
    scopes: list[str] = ["predict"]


def _bad(exc: crud.UserError) -> HTTPException:
    code = status.HTTP_404_NOT_FOUND if str(exc).startswith("no user") else status.HTTP_400_BAD_REQUEST
    return HTTPException(code, str(exc))


@router.get("")
def list_users(_: AdminDep, session: SessionDep) -> list[UserOut]:
    return [UserOut.of(u) for u in crud.list_users(session)]


_REFUSED: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorDetail, "description": "A duplicate username, an unknown scope or a short password"},
    404: {"model": ErrorDetail, "description": "No such user"},
    503: {"model": ErrorDetail, "description": "Done, but the user's tokens could not be revoked: retry"},
}


@router.post("", status_code=status.HTTP_201_CREATED, responses={400: _REFUSED[400]})
def create_user(body: UserIn, _: AdminDep, session: SessionDep) -> UserOut:
    try:
        return UserOut.of(crud.create_user(session, body.username, body.password, body.scopes))
    except crud.UserError as exc:
        raise _bad(exc) from None


class ScopesIn(BaseModel):
    scopes: list[str] = Field(min_length=1)


def _withdraw_tokens(
    request: Request,
    settings: Settings,
    username: str,
    session: Session,
    kept_scopes: list[str] | None = None,
) -> None:
    """Every token the user holds fails from now on (within REVOCATION_REFRESH_SECONDS on the other
    replicas), and none of their refresh tokens works; so do their API keys (only those with a scope
    outside `kept_scopes`, when given: a demotion)."""
    withdraw_keys(request, session, username, kept_scopes)
    refresh_tokens = services(request).refresh_tokens
    refresh_tokens.withdraw_user(username)
    # The change itself is made; the client must know the tokens may live on until they expire.
    revoke(
        request,
        revoke_user(username, settings.longest_token_seconds),
        "done, but the user's tokens could not be revoked: retry",
    )


@router.post("/{username}/disable", responses=_REFUSED)
def disable_user(
    username: str, _: AdminDep, session: SessionDep, request: Request, settings: SettingsDep
) -> UserOut:
    """Disable a user: no new token, and the ones they hold fail."""
    try:
        user = UserOut.of(crud.set_disabled(session, username, True))
    except crud.UserError as exc:
        raise _bad(exc) from None
    _withdraw_tokens(request, settings, username, session)
    return user


@router.put("/{username}/scopes", responses=_REFUSED)
def set_scopes(
    username: str, body: ScopesIn, _: AdminDep, session: SessionDep, request: Request, settings: SettingsDep
) -> UserOut:
    """Replace a user's scopes; the tokens they hold fail (they sign in again for the new scopes)."""
    try:
        user = UserOut.of(crud.set_scopes(session, username, body.scopes))
    except crud.UserError as exc:
        raise _bad(exc) from None
    _withdraw_tokens(request, settings, username, session, user.scopes)
    return user


@router.delete("/{username}", status_code=status.HTTP_204_NO_CONTENT, responses=_REFUSED)
def delete_user(
    username: str, admin: AdminDep, session: SessionDep, request: Request, settings: SettingsDep
) -> None:
    if username == admin.username:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "an admin cannot delete their own account")
    try:
        crud.delete_user(session, username)
    except crud.UserError as exc:
        raise _bad(exc) from None
    _withdraw_tokens(request, settings, username, session)
