"""Per-layer BN diagnostics: one row per (trial, epoch, BN layer).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27

Written out by hand, like 0001: later edits of `models.py` never change what this creates.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_VALUES = (
    "gamma_mean",
    "gamma_std",
    "beta_mean",
    "beta_std",
    "gamma_drift",
    "beta_drift",
    "outlier_fraction",
    "gradient_factor",
)


def upgrade() -> None:
    op.create_table(
        "diagnostics",
        sa.Column("trial_id", sa.Integer(), nullable=False),
        sa.Column("epoch", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("layer", sa.String(255), nullable=False),
        sa.Column("depth", sa.Integer(), nullable=False),
        sa.Column("module", sa.String(64), nullable=False),
        sa.Column("channels", sa.Integer(), nullable=False),
        *(sa.Column(name, sa.Double(), nullable=True) for name in _VALUES),
        sa.PrimaryKeyConstraint("trial_id", "epoch", "layer", name="pk_diagnostics"),
        sa.ForeignKeyConstraint(
            ["trial_id"], ["trials.id"], name="fk_diagnostics_trial_id_trials", ondelete="CASCADE"
        ),
    )


def downgrade() -> None:
    op.drop_table("diagnostics")
