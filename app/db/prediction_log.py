"""The prediction log in the SQL database.

Two tables (app.db.models): prediction_batches holds one record per model call, written in batches
by the log's writer thread (app/serving/prediction_log.py) in the encoding of
app.core.prediction_records; prediction_log holds the labelled predictions, one row each: POST
/feedback decodes the row from its record and inserts it with its truth, so live quality (a
confusion table or error sums per version), the shadow's quality and retraining on feedback
aggregate plain columns in SQL. Counts over every prediction (per hour, the shadow's agreement) add
up the records' own counts. Old records and rows are swept together.
"""

from __future__ import annotations

import functools
import itertools
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Literal

import msgspec
from sqlalchemy import and_, case, delete, func, insert, or_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.core.prediction_records import (
    RECORD_COLUMNS,
    SHADOW_COLUMNS,
    LoggedPrediction,
    StoredRecord,
    record_of_row,
    split_id,
)
from app.core.quality import Confusion, Errors, confusions
from app.db.hour_bucket import hour_of
from app.db.models import PredictionBatchRow, PredictionLogRow

# Each id's status in POST /feedback's answer.
FeedbackStatus = Literal["recorded", "relabelled", "unknown"]
_LOG = PredictionLogRow
_BATCH = PredictionBatchRow
_STORED = [getattr(_BATCH, name) for name in RECORD_COLUMNS + SHADOW_COLUMNS]
# A shadow's answer that comes after its row was labelled (feedback within the shadow's lag) is
# copied to the labelled row too: rows labelled this recently are looked at.
LATE_SHADOW_SECONDS = 600.0

_json = msgspec.json.Encoder().encode


def _mark(paramstyle: str) -> str:
    if paramstyle not in ("qmark", "format", "pyformat"):
        raise ValueError(f"unsupported DB-API paramstyle {paramstyle!r}")
    return "?" if paramstyle == "qmark" else "%s"


# Records per INSERT statement. One statement per record, as executemany runs them, hands the GIL
# back and forth with the request thread at every row (the driver releases it around each step),
# which cost the writer ~50 µs a record under load against ~6 µs alone; a few hundred per statement
# keep within SQLite's 32,766 parameters and PostgreSQL's 65,535.
RECORDS_PER_INSERT = 500


@functools.lru_cache(maxsize=16)
def _insert_sql(paramstyle: str, columns: tuple[str, ...], records: int = 1) -> str:
    marks = "(" + ", ".join(_mark(paramstyle) for _ in columns) + ")"
    values = ", ".join([marks] * records)
    return f"INSERT INTO {_BATCH.__tablename__} ({', '.join(columns)}) VALUES {values}"  # noqa: S608


def _insert_records(connection: Connection, columns: tuple[str, ...], records: list[Sequence[Any]]) -> None:
    """`records` (each in `columns`' order) in as few statements as the parameter limits allow."""
    style = connection.dialect.paramstyle
    for start in range(0, len(records), RECORDS_PER_INSERT):
        chunk = records[start : start + RECORDS_PER_INSERT]
        parameters = tuple(itertools.chain.from_iterable(chunk))
        connection.exec_driver_sql(_insert_sql(style, columns, len(chunk)), parameters)


def _shadow_sql(paramstyle: str) -> str:
    mark = _mark(paramstyle)
    columns = ", ".join(f"{c} = {mark}" for c in SHADOW_COLUMNS)
    where = f"request_key = {mark} AND first_row = {mark}"
    return f"UPDATE {_BATCH.__tablename__} SET {columns} WHERE {where}"  # noqa: S608


@dataclass(frozen=True)
class Truth:
    """The ground truth of one prediction: a label (classification) or a value (regression)."""

    prediction_id: str
    label: str | None = None
    value: float | None = None


@dataclass(frozen=True)
class LabelledRow:
    """A labelled logged row, as retraining reads it."""

    features: str  # JSON object
    label: str | None
    value: float | None


@dataclass(frozen=True)
class RecentPrediction:
    """A logged prediction and its ground truth, if sent: a row of the Monitoring page."""

    logged: LoggedPrediction
    true_label: str | None
    true_value: float | None
    labelled_at: float | None


@dataclass(frozen=True)
class HourlyCounts:
    """One hour's logged predictions of one served version, for the Monitoring page."""

    hour: int  # floor(Unix time / 3600)
    version: str
    predictions: int
    mean_confidence: float | None  # of every prediction, labelled or not; None for a regression
    confusion: Confusion  # the labelled ones (classification)
    errors: Errors  # the labelled ones (regression)


@dataclass(frozen=True)
class ShadowCounts:
    """How often a shadow version answered logged rows as the champion did."""

    version: str
    compared: int  # logged rows it answered too
    agreed: int  # of those, the champion's answer: the same label, or a value within `rtol` of it
    mean_absolute_difference: float | None  # between the two values (regression)
    last_at: float  # Unix time of the newest logged row it answered


def _stored(row: Sequence[Any]) -> StoredRecord:
    return StoredRecord(*row)


def _labelled_row(found: LoggedPrediction, truth: Truth, at: float) -> dict[str, Any]:
    """The per-row log's row of a decoded prediction, with its truth."""
    return {
        "prediction_id": found.prediction_id,
        "created_at": found.created_at,
        "model_version": found.model_version,
        "username": found.username,
        "features": _json(found.features).decode(),
        "answer": _json(found.answer).decode(),
        "predicted_label": found.predicted_label,
        "predicted_value": found.predicted_value,
        "confidence": found.confidence,
        "true_label": truth.label,
        "true_value": truth.value,
        "labelled_at": at,
        "shadow_version": found.shadow_version,
        "shadow_label": found.shadow_label,
        "shadow_value": found.shadow_value,
    }


class PredictionLogStore:
    def __init__(self, sessions: Callable[[], AbstractContextManager[Session]]) -> None:
        self._sessions = sessions

    def insert(self, rows: Sequence[dict[str, Any]], shadow_rows: Sequence[dict[str, Any]] = ()) -> None:
        """Per-row predictions (PredictionLogRow's columns, as dicts) stored as one-row records, and
        shadow answers to them (`prediction_id`, `version`, `predicted_label`, `predicted_value`): how
        tests and tools write a log by hand. One transaction."""
        by_id = {row["prediction_id"]: dict(row) for row in rows}
        for shadow in shadow_rows:
            by_id[shadow["prediction_id"]].update(
                shadow_version=shadow["version"],
                shadow_label=shadow.get("predicted_label"),
                shadow_value=shadow.get("predicted_value"),
            )
        names = RECORD_COLUMNS + SHADOW_COLUMNS
        records = [dict(zip(names, record_of_row(row), strict=True)) for row in by_id.values()]
        with self._sessions() as session:
            if records:
                session.execute(insert(_BATCH), records)
            session.commit()

    def insert_rows(self, records: Sequence[Sequence[Any]], shadow_answers: Sequence[Sequence[Any]]) -> None:
        """The writer's batch, in one transaction: records in RECORD_COLUMNS' order, followed by
        SHADOW_COLUMNS when a shadow's answers came with them, then shadow answers to records written
        in an earlier batch, as SHADOW_COLUMNS + (request key, first row).

        Straight to the driver, a few hundred records per INSERT (RECORDS_PER_INSERT): building
        SQLAlchemy's parameters cost more per record than the insert itself (bench.prediction_log)."""
        with self._sessions() as session:
            connection = session.connection()
            style = connection.dialect.paramstyle
            if records:
                # Most records have no shadow answer: their seven NULLs are left to the database.
                for columns in (RECORD_COLUMNS, RECORD_COLUMNS + SHADOW_COLUMNS):
                    rows = [r for r in records if len(r) == len(columns)]
                    if rows:
                        _insert_records(connection, columns, rows)
            if shadow_answers:
                connection.exec_driver_sql(_shadow_sql(style), [tuple(a) for a in shadow_answers])
                self._late_shadow_to_labelled(session, {(a[-2], a[-1]) for a in shadow_answers})
            session.commit()

    def _late_shadow_to_labelled(self, session: Session, records: set[tuple[str, int]]) -> None:
        """Copy a shadow's answers, just written to their records, to those records' rows labelled
        before they came: the few rows labelled lately without one are looked at, by an index."""
        waiting = session.scalars(
            select(_LOG.prediction_id).where(
                _LOG.labelled_at >= time.time() - LATE_SHADOW_SECONDS, _LOG.shadow_version.is_(None)
            )
        ).all()
        keys = {key for key, _ in records}
        wanted = [
            (pid, split) for pid in waiting if (split := split_id(pid)) is not None and split[0] in keys
        ]
        if not wanted:
            return
        found = self._records(session, [split for _, split in wanted])
        for pid, (key, position) in wanted:
            record = _holding(found.get(key, ()), position)
            if record is None or (record.request_key, record.first_row) not in records:
                continue
            index = record.stored_index(position - record.first_row)
            if index is None:
                continue
            (row,) = record.decode(only=index)
            session.execute(
                update(_LOG)
                .where(_LOG.prediction_id == pid)
                .values(
                    shadow_version=row.shadow_version,
                    shadow_label=row.shadow_label,
                    shadow_value=row.shadow_value,
                )
            )

    def _records(self, session: Session, wanted: Iterable[tuple[str, int]]) -> dict[str, list[StoredRecord]]:
        """By request key, the records holding these (request key, row position)s: only those whose
        rows overlap each key's positions are read (a large CSV's other chunks stay on disk)."""
        spans: dict[str, tuple[int, int]] = {}
        for key, position in wanted:
            low, high = spans.get(key, (position, position))
            spans[key] = (min(low, position), max(high, position))
        overlapping = [
            and_(_BATCH.request_key == key, _BATCH.first_row <= high, _BATCH.first_row + _BATCH.rows > low)
            for key, (low, high) in spans.items()
        ]
        found: dict[str, list[StoredRecord]] = {}
        for chunk in range(0, len(overlapping), 100):  # bounded statements for a 1,000-item feedback
            for row in session.execute(select(*_STORED).where(or_(*overlapping[chunk : chunk + 100]))):
                record = _stored(row)
                found.setdefault(record.request_key, []).append(record)
        return found

    def sweep(self, before: float) -> int:
        """Delete what was logged before `before` (Unix time), records and labelled rows; returns how
        many of each were deleted, together."""
        with self._sessions() as session:
            records = session.execute(delete(_BATCH).where(_BATCH.created_at < before))
            rows = session.execute(delete(_LOG).where(_LOG.created_at < before))
            session.commit()
            return int(getattr(records, "rowcount", 0) or 0) + int(getattr(rows, "rowcount", 0) or 0)

    def label(self, truths: Sequence[Truth], at: float) -> list[FeedbackStatus]:
        """Record each id's ground truth, in order (the last one sent for an id wins); each item's status.

        An id labelled for the first time is decoded from its record into a row of its own."""
        try:
            return self._label(truths, at)
        except IntegrityError:  # another feedback inserted the same new row meanwhile: it is known now
            return self._label(truths, at)

    def _label(self, truths: Sequence[Truth], at: float) -> list[FeedbackStatus]:
        ids = list(dict.fromkeys(t.prediction_id for t in truths))
        last = {t.prediction_id: t for t in truths}  # one write per id, with its last truth
        with self._sessions() as session:
            labelled = {
                prediction_id: labelled_at is not None
                for prediction_id, labelled_at in session.execute(
                    select(_LOG.prediction_id, _LOG.labelled_at).where(_LOG.prediction_id.in_(ids))
                )
            }
            new = self._decoded(session, [i for i in ids if i not in labelled])
            statuses: list[FeedbackStatus] = []
            seen: dict[str, bool] = dict(labelled)
            for truth in truths:
                known = seen.get(truth.prediction_id)
                if known is None and truth.prediction_id not in new:
                    statuses.append("unknown")
                    continue
                statuses.append("relabelled" if known else "recorded")
                seen[truth.prediction_id] = True
            rows = [_labelled_row(found, last[pid], at) for pid, found in new.items()]
            if rows:
                session.execute(insert(_LOG), rows)
            for prediction_id in labelled:
                truth = last[prediction_id]
                session.execute(
                    update(_LOG)
                    .where(_LOG.prediction_id == prediction_id)
                    .values(true_label=truth.label, true_value=truth.value, labelled_at=at)
                )
            session.commit()
        return statuses

    def _decoded(self, session: Session, ids: Sequence[str]) -> dict[str, LoggedPrediction]:
        """The logged predictions of these ids, decoded from their records (an id not logged: absent)."""
        wanted = {pid: split_id(pid) for pid in ids}
        if not wanted:
            return {}
        found = self._records(session, wanted.values())
        decoded: dict[str, LoggedPrediction] = {}
        for pid, (key, position) in wanted.items():
            record = _holding(found.get(key, ()), position)
            index = None if record is None else record.stored_index(position - record.first_row)
            if record is not None and index is not None:
                (decoded[pid],) = record.decode(only=index)
        return decoded

    def confusions(self, since: float) -> dict[str, Confusion]:
        """Per served version: its labelled predictions made since `since`, by (predicted, true)."""
        query = (
            select(_LOG.model_version, _LOG.predicted_label, _LOG.true_label, func.count())
            .where(_LOG.created_at >= since, _LOG.true_label.is_not(None))
            .group_by(_LOG.model_version, _LOG.predicted_label, _LOG.true_label)
        )
        with self._sessions() as session:
            return confusions((v, p, t, int(n)) for v, p, t, n in session.execute(query))

    def errors(self, since: float) -> dict[str, Errors]:
        """Per served version: the error sums of its labelled regression predictions since `since`."""
        error = _LOG.predicted_value - _LOG.true_value
        query = (
            select(_LOG.model_version, func.count(), func.sum(func.abs(error)), func.sum(error * error))
            .where(_LOG.created_at >= since, _LOG.true_value.is_not(None), _LOG.predicted_value.is_not(None))
            .group_by(_LOG.model_version)
        )
        with self._sessions() as session:
            return {
                version: Errors(int(n), float(absolute or 0), float(squared or 0))
                for version, n, absolute, squared in session.execute(query)
            }

    def shadow_confusions(self, since: float) -> dict[str, Confusion]:
        """Per shadow version: its answers to labelled logged rows since `since`."""
        query = (
            select(_LOG.shadow_version, _LOG.shadow_label, _LOG.true_label, func.count())
            .where(_LOG.created_at >= since, _LOG.shadow_version.is_not(None), _LOG.true_label.is_not(None))
            .group_by(_LOG.shadow_version, _LOG.shadow_label, _LOG.true_label)
        )
        with self._sessions() as session:
            return confusions((v, p, t, int(n)) for v, p, t, n in session.execute(query))

    def shadow_errors(self, since: float) -> dict[str, Errors]:
        error = _LOG.shadow_value - _LOG.true_value
        query = (
            select(_LOG.shadow_version, func.count(), func.sum(func.abs(error)), func.sum(error * error))
            .where(
                _LOG.created_at >= since,
                _LOG.shadow_version.is_not(None),
                _LOG.true_value.is_not(None),
                _LOG.shadow_value.is_not(None),
            )
            .group_by(_LOG.shadow_version)
        )
        with self._sessions() as session:
            return {
                version: Errors(int(n), float(absolute or 0), float(squared or 0))
                for version, n, absolute, squared in session.execute(query)
            }

    def head_to_head(
        self, champion: str, shadow: str, since: float
    ) -> tuple[Confusion | Errors, Confusion | Errors] | None:
        """The champion's and the shadow's counts on the same labelled predictions (those the champion
        answered and the shadow scored too) since `since`; None when there are none."""
        query = select(
            _LOG.predicted_label,
            _LOG.shadow_label,
            _LOG.true_label,
            _LOG.predicted_value,
            _LOG.shadow_value,
            _LOG.true_value,
        ).where(
            _LOG.created_at >= since,
            _LOG.model_version == champion,
            _LOG.shadow_version == shadow,
            _LOG.labelled_at.is_not(None),
        )
        with self._sessions() as session:
            rows = session.execute(query).all()
        if not rows:
            return None
        if rows[0][2] is not None:
            ours, theirs = Confusion(), Confusion()
            for label, shadow_label, true, *_ in rows:
                if true is not None and label is not None and shadow_label is not None:
                    ours.add(label, true)
                    theirs.add(shadow_label, true)
            return ours, theirs
        ours_e, theirs_e = Errors(), Errors()
        for *_, value, shadow_value, true_value in rows:
            if value is not None and shadow_value is not None and true_value is not None:
                ours_e.add(value, true_value)
                theirs_e.add(shadow_value, true_value)
        return ours_e, theirs_e

    def labelled(self, limit: int) -> list[LabelledRow]:
        """The newest labelled rows, at most `limit`: what retraining with feedback adds."""
        query = (
            select(_LOG.features, _LOG.true_label, _LOG.true_value)
            .where(_LOG.labelled_at.is_not(None))
            .order_by(_LOG.created_at.desc())
            .limit(limit)
        )
        with self._sessions() as session:
            return [LabelledRow(*row) for row in session.execute(query)]

    def recent(self, limit: int) -> list[RecentPrediction]:
        """The newest logged predictions with their truth, at most `limit`, for the Monitoring page."""
        with self._sessions() as session:
            found: list[LoggedPrediction] = []
            for record in self._newest(session, None, limit):
                found += record.decode(limit=limit - len(found))
            truths = {
                pid: (label, value, labelled_at)
                for pid, label, value, labelled_at in session.execute(
                    select(_LOG.prediction_id, _LOG.true_label, _LOG.true_value, _LOG.labelled_at).where(
                        _LOG.prediction_id.in_([p.prediction_id for p in found])
                    )
                )
            }
        return [RecentPrediction(p, *truths.get(p.prediction_id, (None, None, None))) for p in found]

    def features_since(self, since: float, limit: int) -> list[dict[str, Any]]:
        """The input rows logged since `since` (a missing value is None), newest first, at most `limit`:
        recent inputs for drift."""
        inputs: list[dict[str, Any]] = []
        with self._sessions() as session:
            for record in self._newest(session, since, limit):
                inputs += record.input_rows(limit=limit - len(inputs))
        return inputs

    def _newest(self, session: Session, since: float | None, rows: int) -> list[StoredRecord]:
        """The newest records (since `since`) holding `rows` logged rows: their sizes are read first,
        so that only the records needed are read whole."""
        sizes = select(_BATCH.request_key, _BATCH.first_row, _BATCH.logged).order_by(_BATCH.created_at.desc())
        if since is not None:
            sizes = sizes.where(_BATCH.created_at >= since)
        needed: list[tuple[str, int]] = []
        total = 0
        for key, first, logged in session.execute(sizes.limit(rows)):  # a row a record at least
            needed.append((key, first))
            total += logged
            if total >= rows:
                break
        order = {record: i for i, record in enumerate(needed)}
        found: list[StoredRecord] = []
        for chunk in range(0, len(needed), 500):
            picked = [
                and_(_BATCH.request_key == k, _BATCH.first_row == f) for k, f in needed[chunk : chunk + 500]
            ]
            found += [_stored(row) for row in session.execute(select(*_STORED).where(or_(*picked)))]
        return sorted(found, key=lambda r: order[r.request_key, r.first_row])

    def count(self) -> int:
        """The logged predictions."""
        with self._sessions() as session:
            return int(session.scalar(select(func.sum(_BATCH.logged))) or 0)

    def hourly(self, since: float) -> list[HourlyCounts]:
        """Per hour and served version since `since`: the predictions and their mean confidence (from
        the records), and the labelled ones' confusion table and error sums, aggregated in SQL."""
        hour = hour_of(_BATCH.created_at)
        totals = (
            select(
                hour,
                _BATCH.model_version,
                func.sum(_BATCH.logged),
                func.sum(_BATCH.confidence_sum),
                func.sum(case((_BATCH.confidence_sum.is_not(None), _BATCH.logged), else_=0)),
            )
            .where(_BATCH.created_at >= since)
            .group_by(hour, _BATCH.model_version)
        )
        row_hour = hour_of(_LOG.created_at)
        error = _LOG.predicted_value - _LOG.true_value
        errors = (
            select(
                row_hour, _LOG.model_version, func.count(), func.sum(func.abs(error)), func.sum(error * error)
            )
            .where(_LOG.created_at >= since, _LOG.true_value.is_not(None), _LOG.predicted_value.is_not(None))
            .group_by(row_hour, _LOG.model_version)
        )
        labelled = (
            select(row_hour, _LOG.model_version, _LOG.predicted_label, _LOG.true_label, func.count())
            .where(_LOG.created_at >= since, _LOG.true_label.is_not(None), _LOG.predicted_label.is_not(None))
            .group_by(row_hour, _LOG.model_version, _LOG.predicted_label, _LOG.true_label)
        )
        with self._sessions() as session:
            tables: dict[tuple[int, str], Confusion] = {}
            for bucket, version, predicted, true, n in session.execute(labelled):
                tables.setdefault((int(bucket), version), Confusion()).add(predicted, true, int(n))
            sums = {
                (int(bucket), version): Errors(int(n), float(absolute or 0), float(squared or 0))
                for bucket, version, n, absolute, squared in session.execute(errors)
            }
            return [
                HourlyCounts(
                    int(bucket),
                    version,
                    int(n or 0),
                    float(confidence) / int(confident) if confidence is not None and confident else None,
                    tables.get((int(bucket), version), Confusion()),
                    sums.get((int(bucket), version), Errors()),
                )
                for bucket, version, n, confidence, confident in session.execute(totals)
            ]

    def shadow_agreement(self, since: float, rtol: float) -> list[ShadowCounts]:
        """Per shadow version: the rows logged since `since` it answered too, and how often its answer
        was the champion's (the same label, or a value within `rtol` of it: the shadow judged each
        row as it scored it, with AGREEMENT_RTOL, and the records keep the counts)."""
        del rtol  # judged when the shadow scored (app/serving/shadow.py), kept for the callers
        query = (
            select(
                _BATCH.shadow_version,
                func.sum(_BATCH.shadow_compared),
                func.sum(_BATCH.shadow_agreed),
                func.sum(_BATCH.shadow_difference_sum),
                func.sum(case((_BATCH.shadow_difference_sum.is_not(None), _BATCH.shadow_compared), else_=0)),
                func.max(_BATCH.created_at),
            )
            .where(_BATCH.created_at >= since, _BATCH.shadow_version.is_not(None))
            .group_by(_BATCH.shadow_version)
        )
        with self._sessions() as session:
            return [
                ShadowCounts(
                    version,
                    int(n or 0),
                    int(agreed or 0),
                    float(difference) / int(differed) if difference is not None and differed else None,
                    float(last_at),
                )
                for version, n, agreed, difference, differed, last_at in session.execute(query)
                if n
            ]


def _holding(records: Iterable[StoredRecord], position: int) -> StoredRecord | None:
    """The record of a request's that answered row `position`."""
    for record in records:
        if record.first_row <= position < record.first_row + record.rows:
            return record
    return None
