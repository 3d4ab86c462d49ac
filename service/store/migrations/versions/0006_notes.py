"""Notes on a sweep, a cell or a trial (`bnsweep note`), shown on the dashboard's pages.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-08

Written out by hand, like 0001 to 0005. A new table only: existing rows are untouched, and the
downgrade drops the table with every note in it.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "notes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sweep_id", sa.Integer(), nullable=True),
        sa.Column("spec_hash", sa.String(64), nullable=True),
        sa.Column("trial_id", sa.Integer(), nullable=True),
        sa.Column("author", sa.String(200), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_notes"),
        # A trial's notes go with it (`bnsweep db forget`), as its epochs do.
        sa.ForeignKeyConstraint(
            ["sweep_id"], ["sweeps.id"], name="fk_notes_sweep_id_sweeps", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["trial_id"], ["trials.id"], name="fk_notes_trial_id_trials", ondelete="CASCADE"
        ),
        sa.CheckConstraint(
            "sweep_id IS NOT NULL OR spec_hash IS NOT NULL OR trial_id IS NOT NULL",
            name="ck_notes_target",
        ),
    )
    for column in ("sweep_id", "spec_hash", "trial_id"):
        op.create_index(f"ix_notes_{column}", "notes", [column])


def downgrade() -> None:
    for column in ("trial_id", "spec_hash", "sweep_id"):
        op.drop_index(f"ix_notes_{column}", table_name="notes")
    op.drop_table("notes")
