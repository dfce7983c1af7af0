"""The serving pointer kept in the SQL database: one row, read by every replica every WATCH_SECONDS.

It implements app.core.serving_pointer.PointerStore.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TypeVar

from pydantic import BaseModel
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.core.canary import CanaryDecision, CanaryPlan
from app.core.messages import AliasOutcome
from app.core.serving_pointer import ServingPointer
from app.db.models import ServingPointerRow

_ROW_ID = 1
_Stored = TypeVar("_Stored", bound=BaseModel)


class DatabasePointer:
    def __init__(self, sessions: Callable[[], AbstractContextManager[Session]]) -> None:
        self._sessions = sessions

    def get(self) -> ServingPointer | None:
        with self._sessions() as session:
            row = session.scalar(select(ServingPointerRow).where(ServingPointerRow.id == _ROW_ID))
            if row is None:
                return None
            return ServingPointer(
                version=row.version,
                since=row.since,
                reason=row.reason[:255],
                model_dir_version=row.model_dir_version,
                shadow_version=row.shadow_version,
                alias_version=row.alias_version,
                alias=_outcome(row.alias_outcome),
                canary=_read(CanaryPlan, row.canary),
                canary_decision=_read(CanaryDecision, row.canary_decision),
            )

    def set_canary(
        self, plan: CanaryPlan | None, decision: CanaryDecision | None, expected: CanaryPlan | None
    ) -> bool:
        # Compare and set on the stored JSON: two replicas deciding at once (a rollback and a step,
        # say), one wins and the other sees False.
        current = ServingPointerRow.canary
        condition = current.is_(None) if expected is None else current == expected.model_dump_json()
        values: dict[str, str | None] = {"canary": plan.model_dump_json() if plan is not None else None}
        if decision is not None:
            values["canary_decision"] = decision.model_dump_json()
        with self._sessions() as session:
            changed = session.execute(
                update(ServingPointerRow).where(ServingPointerRow.id == _ROW_ID, condition).values(**values)
            )
            session.commit()
            return bool(getattr(changed, "rowcount", 0))

    def record_canary_decision(self, decision: CanaryDecision) -> None:
        with self._sessions() as session:
            session.execute(
                update(ServingPointerRow)
                .where(ServingPointerRow.id == _ROW_ID)
                .values(canary_decision=decision.model_dump_json())
            )
            session.commit()

    def set_shadow(self, version: str | None) -> bool:
        with self._sessions() as session:
            changed = session.execute(
                update(ServingPointerRow)
                .where(ServingPointerRow.id == _ROW_ID)
                .values(shadow_version=version)
            )
            session.commit()
            return bool(getattr(changed, "rowcount", 0))

    def set_alias(self, version: str, outcome: AliasOutcome) -> bool:
        with self._sessions() as session:
            changed = session.execute(
                update(ServingPointerRow)
                .where(ServingPointerRow.id == _ROW_ID, ServingPointerRow.version == version)
                .values(alias_version=version, alias_outcome=outcome.model_dump_json(exclude_none=True))
            )
            session.commit()
            return bool(getattr(changed, "rowcount", 0))

    def set(self, pointer: ServingPointer) -> None:
        # Not shadow_version: a change of champion leaves the shadow running (set_shadow moves it).
        values = {
            "version": pointer.version,
            "since": pointer.since,
            "reason": pointer.reason[:255],
            "model_dir_version": pointer.model_dir_version,
        }
        with self._sessions() as session:
            changed = session.execute(
                update(ServingPointerRow).where(ServingPointerRow.id == _ROW_ID).values(**values)
            )
            if getattr(changed, "rowcount", 0) == 0:
                session.add(ServingPointerRow(id=_ROW_ID, **values))
            try:
                session.commit()
            except IntegrityError:
                # Another replica wrote the first pointer meanwhile: the later decision wins.
                session.rollback()
                session.execute(
                    update(ServingPointerRow).where(ServingPointerRow.id == _ROW_ID).values(**values)
                )
                session.commit()


def _read(kind: type[_Stored], stored: str | None) -> _Stored | None:
    if stored is None:
        return None
    try:
        return kind.model_validate_json(stored)
    except ValueError:  # written by a later release that this one cannot read
        return None


def _outcome(stored: str | None) -> AliasOutcome | None:
    if stored is None:
        return None
    try:
        return AliasOutcome.model_validate_json(stored)
    except ValueError:  # written by a later release that this one cannot read
        return None
