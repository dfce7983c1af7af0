"""Where MLflow's `champion` alias stands, beside the serving pointer: moved off the request.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("serving_pointer") as batch:
        batch.add_column(sa.Column("alias_version", sa.String(64), nullable=True))
        batch.add_column(sa.Column("alias_outcome", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("serving_pointer") as batch:
        batch.drop_column("alias_outcome")
        batch.drop_column("alias_version")
