"""The canary release beside the serving pointer: its plan and its last decision, as JSON.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("serving_pointer") as batch:
        batch.add_column(sa.Column("canary", sa.Text(), nullable=True))
        batch.add_column(sa.Column("canary_decision", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("serving_pointer") as batch:
        batch.drop_column("canary_decision")
        batch.drop_column("canary")
