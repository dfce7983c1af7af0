"""Service clients (OAuth2 client credentials), shared by the API's /clients routes and the CLI."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.credentials import (
    ROTATION_GRACE_SECONDS,
    new_client_id,
    new_secret,
    same_hash,
    secret_hash,
)
from app.db.crud import UserError, normalise_scopes
from app.db.models import ServiceClientRow

# What an unknown client id's secret is compared with, so that answer costs what a real one does.
_DUMMY_HASH = secret_hash("no client has this secret")


@dataclass(frozen=True)
class Issued:
    """A client and its secret, shown once."""

    client: ServiceClientRow
    secret: str


def create_client(session: Session, name: str, scopes: Iterable[str]) -> Issued:
    name = name.strip()
    if not name or len(name) > 64:
        raise UserError("client name must be 1 to 64 characters")
    secret = new_secret()
    client = ServiceClientRow(
        client_id=new_client_id(),
        name=name,
        scopes=normalise_scopes(scopes),
        secret_hash=secret_hash(secret),
        disabled=False,
    )
    session.add(client)
    session.commit()
    return Issued(client, secret)


def list_clients(session: Session) -> list[ServiceClientRow]:
    return list(session.scalars(select(ServiceClientRow).order_by(ServiceClientRow.name)))


def get_client(session: Session, client_id: str) -> ServiceClientRow | None:
    return session.get(ServiceClientRow, client_id)


def _require(session: Session, client_id: str) -> ServiceClientRow:
    client = get_client(session, client_id)
    if client is None:
        raise UserError(f"no client '{client_id}'")
    return client


def rotate_secret(session: Session, client_id: str, *, now: float | None = None) -> Issued:
    """A new secret; the current one keeps working for ROTATION_GRACE_SECONDS (one previous at most)."""
    client = _require(session, client_id)
    secret = new_secret()
    client.previous_secret_hash = client.secret_hash
    client.previous_expires_at = (now or time.time()) + ROTATION_GRACE_SECONDS
    client.secret_hash = secret_hash(secret)
    session.commit()
    return Issued(client, secret)


def set_disabled(session: Session, client_id: str, disabled: bool = True) -> ServiceClientRow:
    client = _require(session, client_id)
    client.disabled = disabled
    session.commit()
    return client


def delete_client(session: Session, client_id: str) -> None:
    session.delete(_require(session, client_id))
    session.commit()


def authenticate(session: Session, client_id: str, secret: str) -> ServiceClientRow | None:
    """The enabled client whose current (or still valid previous) secret this is, else None.
    Always at least one comparison, whether the client exists or not."""
    client = get_client(session, client_id) if len(client_id) <= 32 else None
    if client is None:
        same_hash(secret, _DUMMY_HASH)
        return None
    valid = same_hash(secret, client.secret_hash)
    if not valid and client.previous_secret_hash and (client.previous_expires_at or 0.0) > time.time():
        valid = same_hash(secret, client.previous_secret_hash)
    return client if valid and not client.disabled else None
