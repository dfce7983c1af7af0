"""User management over HTTP, for admins; the CLI (python -m app.cli users) does the same."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, HTTPException, status
from pydantic import AwareDatetime, BaseModel, Field

from app.api.deps import AdminDep, SessionDep
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
            created_at=_as_utc(user.created_at),
        )


def _as_utc(moment: datetime) -> datetime:
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


@router.post("", status_code=status.HTTP_201_CREATED)
def create_user(body: UserIn, _: AdminDep, session: SessionDep) -> UserOut:
    try:
        return UserOut.of(crud.create_user(session, body.username, body.password, body.scopes))
    except crud.UserError as exc:
        raise _bad(exc) from None


@router.post("/{username}/disable")
def disable_user(username: str, _: AdminDep, session: SessionDep) -> UserOut:
    try:
        return UserOut.of(crud.set_disabled(session, username, True))
    except crud.UserError as exc:
        raise _bad(exc) from None


@router.delete("/{username}", status_code=status.HTTP_204_NO_CONTENT)
def delete_user(username: str, admin: AdminDep, session: SessionDep) -> None:
    if username == admin.username:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "an admin cannot delete their own account")
    try:
        crud.delete_user(session, username)
    except crud.UserError as exc:
        raise _bad(exc) from None
