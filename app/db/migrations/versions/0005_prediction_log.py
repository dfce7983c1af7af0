"""The prediction log with its ground truth and a shadow challenger's answers, the feedback scope.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "prediction_log",
        sa.Column("prediction_id", sa.String(40), primary_key=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("username", sa.String(64), nullable=False),
        sa.Column("features", sa.Text(), nullable=False),
        sa.Column("answer", sa.Text(), nullable=False),
        sa.Column("predicted_label", sa.String(255), nullable=True),
        sa.Column("predicted_value", sa.Float(), nullable=True),
        sa.Column("confidence", sa.Float(), nullable=True),
        sa.Column("true_label", sa.String(255), nullable=True),
        sa.Column("true_value", sa.Float(), nullable=True),
        sa.Column("labelled_at", sa.Float(), nullable=True),
        sa.Column("shadow_version", sa.String(64), nullable=True),
        sa.Column("shadow_label", sa.String(255), nullable=True),
        sa.Column("shadow_value", sa.Float(), nullable=True),
    )
    op.create_index("ix_prediction_log_created_at", "prediction_log", ["created_at"])
    op.create_index("ix_prediction_log_model_version", "prediction_log", ["model_version"])
    op.create_index("ix_prediction_log_labelled_at", "prediction_log", ["labelled_at"])
    with op.batch_alter_table("serving_pointer") as table:
        table.add_column(sa.Column("shadow_version", sa.String(64), nullable=True))
    # Admins send ground truth too: the scope is new, the admins are not.
    users = sa.table("users", sa.column("scopes", sa.String))
    op.execute(
        users.update()
        .where(
            sa.or_(
                users.c.scopes.like("admin %"),
                users.c.scopes.like("% admin"),
                users.c.scopes == "admin",
                users.c.scopes.like("% admin %"),
            )
        )
        .where(~users.c.scopes.like("%feedback%"))
        .values(scopes=users.c.scopes + " feedback")
    )


def downgrade() -> None:
    with op.batch_alter_table("serving_pointer") as table:
        table.drop_column("shadow_version")
    op.drop_table("prediction_log")
