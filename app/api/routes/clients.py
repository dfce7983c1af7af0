"""Service clients over HTTP, for admins; the CLI (python -m app.cli clients) does the same.

A client signs in with the client-credentials grant at POST /token (app.api.routes.auth). Its secret
is shown once, at creation and at each rotation; after a rotation the previous one still works for
ROTATION_GRACE_SECONDS (24 h), time to deploy the new one.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Request, status
from pydantic import AwareDatetime, BaseModel, Field

from app.api.deps import AdminDep, SessionDep, SettingsDep, revoke
from app.api.errors import ErrorDetail
from app.api.routes.api_keys import withdraw_keys
from app.api.routes.users import as_utc
from app.core.config import Settings
from app.core.credentials import PRINTABLE, client_subject
from app.core.revocation import revoke_user
from app.db import crud, service_clients
from app.db.models import ServiceClientRow

router = APIRouter(prefix="/clients", tags=["clients"])


class ClientOut(BaseModel):
    client_id: str
    name: str
    scopes: list[str]
    disabled: bool
    created_at: AwareDatetime

    @classmethod
    def of(cls, client: ServiceClientRow) -> ClientOut:
        return cls(
            client_id=client.client_id,
            name=client.name,
            scopes=client.scope_list,
            disabled=client.disabled,
            created_at=as_utc(client.created_at),
        )


class ClientIn(BaseModel):
    name: str = Field(min_length=1, max_length=64, pattern=PRINTABLE)
    scopes: list[Annotated[str, Field(max_length=64, pattern=PRINTABLE)]] = Field(
        default=["predict"], min_length=1
    )


class ClientSecret(BaseModel):
    client_id: str
    client_secret: str = Field(description="Shown this once, kept only as a hash")
    name: str
    scopes: list[str]


_REFUSED: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorDetail, "description": "An unknown scope or a bad name"},
    404: {"model": ErrorDetail, "description": "No such client"},
    503: {"model": ErrorDetail, "description": "Done, but the client's tokens could not be revoked: retry"},
}


def _bad(exc: crud.UserError) -> HTTPException:
    code = status.HTTP_404_NOT_FOUND if str(exc).startswith("no client") else status.HTTP_400_BAD_REQUEST
    return HTTPException(code, str(exc))


def _secret(issued: service_clients.Issued) -> ClientSecret:
    client = issued.client
    return ClientSecret(
        client_id=client.client_id, client_secret=issued.secret, name=client.name, scopes=client.scope_list
    )


@router.post("", status_code=status.HTTP_201_CREATED, responses={400: _REFUSED[400]})
def create_client(body: ClientIn, _: AdminDep, session: SessionDep) -> ClientSecret:
    try:
        return _secret(service_clients.create_client(session, body.name, body.scopes))
    except crud.UserError as exc:
        raise _bad(exc) from None


@router.get("")
def list_clients(_: AdminDep, session: SessionDep) -> list[ClientOut]:
    """Every client, without secrets."""
    return [ClientOut.of(c) for c in service_clients.list_clients(session)]


@router.post("/{client_id}/rotate", responses={404: _REFUSED[404]})
def rotate_secret(client_id: str, _: AdminDep, session: SessionDep) -> ClientSecret:
    """A new secret; the previous one keeps working for 24 hours (ROTATION_GRACE_SECONDS)."""
    try:
        return _secret(service_clients.rotate_secret(session, client_id))
    except crud.UserError as exc:
        raise _bad(exc) from None


@router.post("/{client_id}/disable", responses=_REFUSED)
def disable_client(
    client_id: str, _: AdminDep, session: SessionDep, request: Request, settings: SettingsDep
) -> ClientOut:
    """No new token, and the client's tokens and API keys fail on every replica."""
    try:
        client = ClientOut.of(service_clients.set_disabled(session, client_id, True))
    except crud.UserError as exc:
        raise _bad(exc) from None
    _withdraw(request, session, settings, client_id)
    return client


@router.delete("/{client_id}", status_code=status.HTTP_204_NO_CONTENT, responses=_REFUSED)
def delete_client(
    client_id: str, _: AdminDep, session: SessionDep, request: Request, settings: SettingsDep
) -> None:
    try:
        service_clients.delete_client(session, client_id)
    except crud.UserError as exc:
        raise _bad(exc) from None
    _withdraw(request, session, settings, client_id)


def _withdraw(request: Request, session: SessionDep, settings: Settings, client_id: str) -> None:
    subject = client_subject(client_id)
    withdraw_keys(request, session, subject)
    revoke(
        request,
        revoke_user(subject, settings.longest_token_seconds),
        "done, but the client's tokens could not be revoked: retry",
    )
