"""Results tied to the code that made them: the training recipe and the run's provenance.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

Written out by hand, like 0001 and 0002: later edits of `models.py` never change what this
creates. Rows that exist when it runs were trained before recipe versions existed: recipe 1
(`bnsweep.workers.spec.RECIPE`). The provenance columns stay NULL for them; nobody recorded it.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ADD COLUMN on both backends (no table copy on SQLite, so no cascade can fire):
    # a NOT NULL column with a server default fills every existing row with it.
    op.add_column("trials", sa.Column("recipe", sa.Integer(), server_default="1", nullable=False))
    op.add_column("trials", sa.Column("git_commit", sa.String(64), nullable=True))
    op.add_column("trials", sa.Column("threads", sa.Integer(), nullable=True))
    op.add_column("trials", sa.Column("runtime", sa.Text(), nullable=True))


def downgrade() -> None:
    for name in ("runtime", "threads", "git_commit", "recipe"):
        op.drop_column("trials", name)
