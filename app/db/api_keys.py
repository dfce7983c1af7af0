"""API keys in the SQL database: created, listed, revoked here; checked by app.core.credentials.ApiKeys,
which reads them through `ApiKeyStore` (one query per key and cache period) and writes their last use
through it, batched, off the request path."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from app.core.credentials import KeyRecord, key_text, new_key, secret_hash
from app.db.crud import UserError, normalise_scopes
from app.db.models import ApiKeyRow


@dataclass(frozen=True)
class Issued:
    """A key's row and the key itself, shown once."""

    row: ApiKeyRow
    key: str


def create_key(
    session: Session, owner: str, name: str, scopes: Iterable[str], expires_at: float | None
) -> Issued:
    name = name.strip()
    if not name or len(name) > 64:
        raise UserError("key name must be 1 to 64 characters")
    key_id, secret = new_key()
    row = ApiKeyRow(
        id=key_id,
        name=name,
        owner=owner,
        scopes=normalise_scopes(scopes),
        secret_hash=secret_hash(secret),
        created_at=time.time(),
        expires_at=expires_at,
        revoked=False,
    )
    session.add(row)
    session.commit()
    return Issued(row, key_text(key_id, secret))


def list_keys(session: Session, owner: str | None = None) -> list[ApiKeyRow]:
    query = select(ApiKeyRow).order_by(ApiKeyRow.created_at)
    if owner is not None:
        query = query.where(ApiKeyRow.owner == owner)
    return list(session.scalars(query))


def get_key(session: Session, key_id: str) -> ApiKeyRow | None:
    return session.get(ApiKeyRow, key_id)


def revoke_key(session: Session, key_id: str) -> ApiKeyRow:
    row = get_key(session, key_id)
    if row is None:
        raise UserError(f"no API key '{key_id}'")
    row.revoked = True
    session.commit()
    return row


def revoke_owned(session: Session, owner: str, allowed_scopes: Iterable[str] | None = None) -> list[str]:
    """Revoke the owner's live keys (None: all; else those with a scope outside `allowed_scopes`);
    the ids revoked, for the revocation list."""
    query = select(ApiKeyRow).where(ApiKeyRow.owner == owner, ApiKeyRow.revoked.is_(False))
    allowed = None if allowed_scopes is None else set(allowed_scopes)
    revoked = []
    for row in session.scalars(query):
        if allowed is None or not set(row.scope_list) <= allowed:
            row.revoked = True
            revoked.append(row.id)
    session.commit()
    return revoked


class ApiKeyStore:
    """app.core.credentials.KeyLookup over the database."""

    def __init__(self, sessions: Callable[[], AbstractContextManager[Session]]) -> None:
        self._sessions = sessions

    def find(self, key_id: str) -> KeyRecord | None:
        with self._sessions() as session:
            row = session.get(ApiKeyRow, key_id)
            if row is None:
                return None
            return KeyRecord(
                id=row.id,
                owner=row.owner,
                scopes=tuple(row.scope_list),
                secret_hash=row.secret_hash,
                created_at=row.created_at,
                expires_at=row.expires_at,
                revoked=row.revoked,
            )

    def record_use(self, last_used: Mapping[str, float]) -> None:
        """One UPDATE per key used since the last call; never moves a later use back."""
        with self._sessions() as session:
            for key_id, when in last_used.items():
                session.execute(
                    update(ApiKeyRow)
                    .where(ApiKeyRow.id == key_id)
                    .where(or_(ApiKeyRow.last_used_at.is_(None), ApiKeyRow.last_used_at < when))
                    .values(last_used_at=when)
                )
            session.commit()
