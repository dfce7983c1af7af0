"""The prediction log as one record per model call (prediction_batches); prediction_log keeps the
labelled rows only.

Upgrade: every row of prediction_log becomes a one-row record (nothing is lost: the labelled ones
stay in prediction_log too, with their truth), then the unlabelled rows leave prediction_log.
Downgrade: every stored row of every record not in prediction_log goes back there, one row each.

Both directions decode and encode with app.core.prediction_records, the record's storage format.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-10
"""

from __future__ import annotations

from typing import Any

import msgspec
import sqlalchemy as sa
from alembic import op

from app.core.prediction_records import RECORD_COLUMNS, SHADOW_COLUMNS, StoredRecord, record_of_row

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

CHUNK = 5000  # rows converted per statement: a large log moves in bounded memory

_LOG_COLUMNS = (
    "prediction_id", "created_at", "model_version", "username", "features", "answer",
    "predicted_label", "predicted_value", "confidence", "true_label", "true_value", "labelled_at",
    "shadow_version", "shadow_label", "shadow_value",
)  # fmt: skip


def _log_table() -> sa.TableClause:
    return sa.table("prediction_log", *(sa.column(c) for c in _LOG_COLUMNS))


def _batches_table() -> sa.TableClause:
    return sa.table("prediction_batches", *(sa.column(c) for c in RECORD_COLUMNS + SHADOW_COLUMNS))


def upgrade() -> None:
    op.create_table(
        "prediction_batches",
        sa.Column("request_key", sa.String(40), primary_key=True),
        sa.Column("first_row", sa.Integer(), primary_key=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("username", sa.String(64), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("logged", sa.Integer(), nullable=False),
        sa.Column("positions", sa.LargeBinary(), nullable=True),
        sa.Column("features", sa.Text(), nullable=False),
        sa.Column("inputs_format", sa.String(8), nullable=False),
        sa.Column("inputs", sa.LargeBinary(), nullable=False),
        sa.Column("classes", sa.Text(), nullable=True),
        sa.Column("label_index", sa.LargeBinary(), nullable=True),
        sa.Column("probabilities", sa.LargeBinary(), nullable=True),
        sa.Column("answer_values", sa.LargeBinary(), nullable=True),
        sa.Column("confidence_sum", sa.Float(), nullable=True),
        sa.Column("shadow_version", sa.String(64), nullable=True),
        sa.Column("shadow_classes", sa.Text(), nullable=True),
        sa.Column("shadow_label_index", sa.LargeBinary(), nullable=True),
        sa.Column("shadow_values", sa.LargeBinary(), nullable=True),
        sa.Column("shadow_compared", sa.Integer(), nullable=True),
        sa.Column("shadow_agreed", sa.Integer(), nullable=True),
        sa.Column("shadow_difference_sum", sa.Float(), nullable=True),
    )
    op.create_index("ix_prediction_batches_created_at", "prediction_batches", ["created_at"])
    connection = op.get_bind()
    log, batches = _log_table(), _batches_table()
    names = RECORD_COLUMNS + SHADOW_COLUMNS
    seen: set[tuple[str, int]] = set()  # a made-up id could map to another's (key, row): kept once
    last = ""
    while True:
        rows = (
            connection.execute(
                sa.select(log).where(log.c.prediction_id > last).order_by(log.c.prediction_id).limit(CHUNK)
            )
            .mappings()
            .all()
        )
        if not rows:
            break
        last = rows[-1]["prediction_id"]
        records: list[dict[str, Any]] = []
        for row in rows:
            record = dict(zip(names, record_of_row(dict(row)), strict=True))
            if (record["request_key"], record["first_row"]) not in seen:
                seen.add((record["request_key"], record["first_row"]))
                records.append(record)
        connection.execute(sa.insert(batches), records)
    connection.execute(sa.delete(log).where(log.c.labelled_at.is_(None)))


def downgrade() -> None:
    connection = op.get_bind()
    log, batches = _log_table(), _batches_table()
    kept = set(connection.scalars(sa.select(log.c.prediction_id)))
    offset = 0
    while True:
        found = (
            connection.execute(
                sa.select(batches)
                .order_by(batches.c.request_key, batches.c.first_row)
                .limit(CHUNK)
                .offset(offset)
            )
            .mappings()
            .all()
        )
        if not found:
            break
        offset += len(found)
        rows = [
            {
                "prediction_id": p.prediction_id,
                "created_at": p.created_at,
                "model_version": p.model_version,
                "username": p.username,
                "features": _json(p.features),
                "answer": _json(p.answer),
                "predicted_label": p.predicted_label,
                "predicted_value": p.predicted_value,
                "confidence": p.confidence,
                "shadow_version": p.shadow_version,
                "shadow_label": p.shadow_label,
                "shadow_value": p.shadow_value,
            }
            for record in found
            for p in StoredRecord(**record).decode()
            if p.prediction_id not in kept
        ]
        if rows:
            connection.execute(sa.insert(log), rows)
    op.drop_index("ix_prediction_batches_created_at", "prediction_batches")
    op.drop_table("prediction_batches")


def _json(value: Any) -> str:
    return msgspec.json.encode(value).decode()
