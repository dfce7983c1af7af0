"""API keys, for callers that cannot exchange credentials for a token: each user (or client) manages
their own, an admin anyone's. A key is shown once, at creation; `Authorization: Bearer <key>` or
`X-API-Key: <key>` then opens every route its scopes open (app.api.deps)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, status
from pydantic import AwareDatetime, BaseModel, Field
from sqlalchemy.orm import Session

from app.api.deps import ClaimsDep, SessionDep, revoke, services
from app.api.errors import ErrorDetail
from app.core.credentials import PRINTABLE, revoke_key
from app.core.security import TokenClaims
from app.db import api_keys, crud, service_clients
from app.db.models import ApiKeyRow

router = APIRouter(prefix="/api-keys", tags=["api keys"])

DAY = 86400.0


def _moment(unix: float | None) -> datetime | None:
    return None if unix is None else datetime.fromtimestamp(unix, UTC)


class ApiKeyOut(BaseModel):
    id: str
    name: str
    owner: str
    scopes: list[str]
    created_at: AwareDatetime
    expires_at: AwareDatetime | None
    last_used_at: AwareDatetime | None
    revoked: bool

    @classmethod
    def of(cls, row: ApiKeyRow) -> ApiKeyOut:
        return cls(
            id=row.id,
            name=row.name,
            owner=row.owner,
            scopes=row.scope_list,
            created_at=datetime.fromtimestamp(row.created_at, UTC),
            expires_at=_moment(row.expires_at),
            last_used_at=_moment(row.last_used_at),
            revoked=row.revoked,
        )


class ApiKeyIn(BaseModel):
    name: str = Field(min_length=1, max_length=64, pattern=PRINTABLE)
    scopes: list[Annotated[str, Field(max_length=64, pattern=PRINTABLE)]] = Field(
        default=["predict"], min_length=1
    )
    expires_in_days: float | None = Field(default=None, gt=0, le=3650, description="None: never expires")
    owner: str | None = Field(
        default=None,
        max_length=128,
        pattern=PRINTABLE,
        description="Admins only: a username or client:<client_id>",
    )


class ApiKeyCreated(BaseModel):
    id: str
    key: str = Field(description="pk_<id>_<secret>: shown this once, kept only as a hash")
    name: str
    owner: str
    scopes: list[str]
    expires_at: AwareDatetime | None


_REFUSED: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorDetail, "description": "An unknown scope, or a disabled owner"},
    403: {
        "model": ErrorDetail,
        "description": "Scopes wider than the owner's, another's keys, or an API key",
    },
    404: {"model": ErrorDetail, "description": "No such key (or owner)"},
}


def _caller(claims: TokenClaims) -> str:
    """Whose keys the caller manages: a key cannot make or see keys (it would outlive what made it)."""
    if claims.method == "api_key":
        raise HTTPException(status.HTTP_403_FORBIDDEN, "API keys cannot manage API keys: use a token")
    return claims.sub


def _owner_scopes(session: Session, owner: str) -> list[str]:
    """The scopes an owner holds now (a key may not have more); 404 or 400 if it cannot hold keys."""
    if owner.startswith("client:"):
        client = service_clients.get_client(session, owner.removeprefix("client:"))
        found = None if client is None else (client.disabled, client.scope_list)
    else:
        user = crud.get_user(session, owner)
        found = None if user is None else (user.disabled, user.scope_list)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no user or client '{owner}'")
    if found[0]:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"'{owner}' is disabled")
    return found[1]


@router.post("", status_code=status.HTTP_201_CREATED, responses=_REFUSED)
def create_key(body: ApiKeyIn, claims: ClaimsDep, session: SessionDep) -> ApiKeyCreated:
    """A key for the caller (an admin: for `owner`), with scopes no wider than the owner's."""
    caller = _caller(claims)
    owner = body.owner or caller
    if owner != caller and "admin" not in claims.scopes:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "only an admin makes keys for others")
    held = list(claims.scopes) if owner == caller else _owner_scopes(session, owner)
    wider = sorted(set(body.scopes) - set(held))
    if wider:
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"scopes wider than the owner's: {' '.join(wider)}")
    expires_at = None if body.expires_in_days is None else time.time() + body.expires_in_days * DAY
    try:
        issued = api_keys.create_key(session, owner, body.name, body.scopes, expires_at)
    except crud.UserError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None
    row = issued.row
    return ApiKeyCreated(
        id=row.id,
        key=issued.key,
        name=row.name,
        owner=row.owner,
        scopes=row.scope_list,
        expires_at=_moment(row.expires_at),
    )


@router.get("", responses={403: _REFUSED[403]})
def list_keys(
    claims: ClaimsDep,
    session: SessionDep,
    owner: Annotated[str | None, Query(description="Admins: one owner's keys (default: everyone's)")] = None,
) -> list[ApiKeyOut]:
    """The caller's keys (an admin: everyone's, or `owner`'s), never their secrets."""
    caller = _caller(claims)
    if "admin" not in claims.scopes:
        if owner not in (None, caller):
            raise HTTPException(status.HTTP_403_FORBIDDEN, "only an admin sees others' keys")
        owner = caller
    return [ApiKeyOut.of(row) for row in api_keys.list_keys(session, owner)]


@router.delete("/{key_id}", status_code=status.HTTP_204_NO_CONTENT, responses=_REFUSED)
def delete_key(key_id: str, claims: ClaimsDep, session: SessionDep, request: Request) -> None:
    """Revoke a key (its owner, or an admin): refused on every replica within REVOCATION_REFRESH_SECONDS."""
    caller = _caller(claims)
    row = api_keys.get_key(session, key_id)
    if row is None or (row.owner != caller and "admin" not in claims.scopes):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no API key '{key_id}'")
    api_keys.revoke_key(session, key_id)
    _withdraw(request, [key_id])


def withdraw_keys(
    request: Request, session: Session, owner: str, allowed_scopes: Iterable[str] | None = None
) -> None:
    """Revoke the owner's keys (those with a scope outside `allowed_scopes`, if given) on every replica:
    their user or client was disabled, deleted or demoted."""
    _withdraw(request, api_keys.revoke_owned(session, owner, allowed_scopes))


def _withdraw(request: Request, key_ids: list[str]) -> None:
    for key_id in key_ids:
        services(request).api_keys.forget(key_id)
        revoke(
            request, revoke_key(key_id), "key revoked, but other replicas may accept it until it is re-read"
        )


API_KEY_SCHEME = "APIKeyHeader"


def document_api_keys(spec: dict[str, Any]) -> None:
    """Swagger UI's Authorize dialog takes an API key too: X-API-Key, beside OAuth2, on every operation
    a token opens (OpenAPI's security list is a choice of one; a key's scopes are checked as a token's)."""
    components = spec.setdefault("components", {}).setdefault("securitySchemes", {})
    components[API_KEY_SCHEME] = {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    for operations in spec.get("paths", {}).values():
        for operation in operations.values():
            security = operation.get("security") if isinstance(operation, dict) else None
            if security and any("OAuth2PasswordBearer" in s for s in security):
                security.append({API_KEY_SCHEME: []})
