"""The prediction log in the SQL database: rows written in batches, ground truth matched by id,
live quality aggregated in SQL (a confusion table or error sums per model version), old rows swept.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import case, delete, func, insert, select, update
from sqlalchemy.orm import Session

from app.core.quality import Confusion, Errors, confusions
from app.db.hour_bucket import hour_of
from app.db.models import PredictionLogRow

# Each id's status in POST /feedback's answer.
FeedbackStatus = Literal["recorded", "relabelled", "unknown"]
_LOG = PredictionLogRow

# The columns of the writer's tuples (app.serving.prediction_log), in order.
LOG_COLUMNS = (
    "prediction_id", "created_at", "model_version", "username", "features", "answer",
    "predicted_label", "predicted_value", "confidence", "shadow_version", "shadow_label", "shadow_value",
)  # fmt: skip
# A shadow's answer to a row written before it came: (version, label, value, prediction_id).
SHADOW_COLUMNS = ("shadow_version", "shadow_label", "shadow_value")


def _mark(paramstyle: str) -> str:
    if paramstyle not in ("qmark", "format", "pyformat"):
        raise ValueError(f"unsupported DB-API paramstyle {paramstyle!r}")
    return "?" if paramstyle == "qmark" else "%s"


def _insert_sql(paramstyle: str) -> str:
    marks = ", ".join(_mark(paramstyle) for _ in LOG_COLUMNS)
    return f"INSERT INTO {_LOG.__tablename__} ({', '.join(LOG_COLUMNS)}) VALUES ({marks})"  # noqa: S608


def _shadow_sql(paramstyle: str) -> str:
    mark = _mark(paramstyle)
    columns = ", ".join(f"{c} = {mark}" for c in SHADOW_COLUMNS)
    return f"UPDATE {_LOG.__tablename__} SET {columns} WHERE prediction_id = {mark}"  # noqa: S608


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


class PredictionLogStore:
    def __init__(self, sessions: Callable[[], AbstractContextManager[Session]]) -> None:
        self._sessions = sessions

    def insert(self, rows: Sequence[dict[str, Any]], shadow_rows: Sequence[dict[str, Any]] = ()) -> None:
        """One transaction: rows (PredictionLogRow's columns), then shadow answers to logged rows
        (`prediction_id`, `version`, `predicted_label`, `predicted_value`)."""
        with self._sessions() as session:
            if rows:
                session.execute(insert(_LOG), list(rows))
            for shadow in shadow_rows:
                session.execute(
                    update(_LOG)
                    .where(_LOG.prediction_id == shadow["prediction_id"])
                    .values(
                        shadow_version=shadow["version"],
                        shadow_label=shadow.get("predicted_label"),
                        shadow_value=shadow.get("predicted_value"),
                    )
                )
            session.commit()

    def insert_rows(self, rows: Sequence[Sequence[Any]], shadow_answers: Sequence[Sequence[Any]]) -> None:
        """The writer's batch, in one transaction: rows as tuples in LOG_COLUMNS' order, then the
        shadow's answers to rows written in an earlier batch, as (version, label, value, prediction_id).

        Straight to the driver's executemany: building SQLAlchemy's parameters cost more per row than
        the insert itself (python -m bench.prediction_log)."""
        with self._sessions() as session:
            connection = session.connection()
            style = connection.dialect.paramstyle
            if rows:
                connection.exec_driver_sql(_insert_sql(style), [tuple(row) for row in rows])
            if shadow_answers:
                connection.exec_driver_sql(_shadow_sql(style), [tuple(a) for a in shadow_answers])
            session.commit()

    def sweep(self, before: float) -> int:
        """Delete what was logged before `before` (Unix time); returns the log rows deleted."""
        with self._sessions() as session:
            deleted = session.execute(delete(_LOG).where(_LOG.created_at < before))
            session.commit()
            return int(getattr(deleted, "rowcount", 0) or 0)

    def label(self, truths: Sequence[Truth], at: float) -> list[FeedbackStatus]:
        """Record each id's ground truth, in order (the last one sent for an id wins); each item's status."""
        ids = list(dict.fromkeys(t.prediction_id for t in truths))
        with self._sessions() as session:
            labelled = {
                prediction_id: labelled_at is not None
                for prediction_id, labelled_at in session.execute(
                    select(_LOG.prediction_id, _LOG.labelled_at).where(_LOG.prediction_id.in_(ids))
                )
            }
            statuses: list[FeedbackStatus] = []
            last = {t.prediction_id: t for t in truths}  # one UPDATE per id, with its last truth
            for truth in truths:
                known = labelled.get(truth.prediction_id)
                if known is None:
                    statuses.append("unknown")
                    continue
                statuses.append("relabelled" if known else "recorded")
                labelled[truth.prediction_id] = True
            for prediction_id, truth in last.items():
                if prediction_id in labelled:
                    session.execute(
                        update(_LOG)
                        .where(_LOG.prediction_id == prediction_id)
                        .values(true_label=truth.label, true_value=truth.value, labelled_at=at)
                    )
            session.commit()
        return statuses

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

    def recent(self, limit: int) -> list[PredictionLogRow]:
        """The newest logged rows, for the UI's Monitoring page."""
        with self._sessions() as session:
            return list(session.scalars(select(_LOG).order_by(_LOG.created_at.desc()).limit(limit)))

    def features_since(self, since: float, limit: int) -> list[str]:
        """The input rows (JSON objects) logged since `since`, newest first: recent inputs for drift."""
        query = select(_LOG.features).where(_LOG.created_at >= since).order_by(_LOG.created_at.desc())
        with self._sessions() as session:
            return list(session.scalars(query.limit(limit)))

    def count(self) -> int:
        with self._sessions() as session:
            return int(session.scalar(select(func.count()).select_from(_LOG)) or 0)

    def hourly(self, since: float) -> list[HourlyCounts]:
        """Per hour and served version since `since`: the predictions, their mean confidence, and the
        labelled ones' confusion table and error sums, aggregated in SQL."""
        hour = hour_of(_LOG.created_at)
        error = _LOG.predicted_value - _LOG.true_value  # NULL unless labelled: SUM leaves it out
        totals = (
            select(
                hour,
                _LOG.model_version,
                func.count(),
                func.avg(_LOG.confidence),
                func.count(error),
                func.sum(func.abs(error)),
                func.sum(error * error),
            )
            .where(_LOG.created_at >= since)
            .group_by(hour, _LOG.model_version)
        )
        labelled = (
            select(hour, _LOG.model_version, _LOG.predicted_label, _LOG.true_label, func.count())
            .where(_LOG.created_at >= since, _LOG.true_label.is_not(None), _LOG.predicted_label.is_not(None))
            .group_by(hour, _LOG.model_version, _LOG.predicted_label, _LOG.true_label)
        )
        with self._sessions() as session:
            tables: dict[tuple[int, str], Confusion] = {}
            for bucket, version, predicted, true, n in session.execute(labelled):
                tables.setdefault((int(bucket), version), Confusion()).add(predicted, true, int(n))
            return [
                HourlyCounts(
                    int(bucket),
                    version,
                    int(n),
                    None if confidence is None else float(confidence),
                    tables.get((int(bucket), version), Confusion()),
                    Errors(int(n_errors), float(absolute or 0), float(squared or 0)),
                )
                for bucket, version, n, confidence, n_errors, absolute, squared in session.execute(totals)
            ]

    def shadow_agreement(self, since: float, rtol: float) -> list[ShadowCounts]:
        """Per shadow version: the rows logged since `since` it answered too, and how often its answer
        was the champion's: the same label, or (regression) a value within `rtol` of the champion's."""
        difference = func.abs(_LOG.shadow_value - _LOG.predicted_value)
        same = case(
            (_LOG.shadow_label == _LOG.predicted_label, 1),
            # numpy.isclose's rule, as the shadow counts agreement live (atol keeps 0 == 0).
            (difference <= 1e-9 + rtol * func.abs(_LOG.predicted_value), 1),
            else_=0,
        )
        query = (
            select(
                _LOG.shadow_version,
                func.count(),
                func.sum(same),
                func.avg(difference),
                func.max(_LOG.created_at),
            )
            .where(_LOG.created_at >= since, _LOG.shadow_version.is_not(None))
            .group_by(_LOG.shadow_version)
        )
        with self._sessions() as session:
            return [
                ShadowCounts(
                    version,
                    int(n),
                    int(agreed or 0),
                    None if mean_difference is None else float(mean_difference),
                    float(last_at),
                )
                for version, n, agreed, mean_difference, last_at in session.execute(query)
            ]
