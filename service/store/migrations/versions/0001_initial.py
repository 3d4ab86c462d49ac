"""The initial results store: sweeps, trials, epochs and the sweep-trial link.

Revision ID: 0001
Revises:
Create Date: 2026-11-27

Written out by hand rather than from `models.py`, so that later edits to the models never change
what this revision creates; `tests/service/test_store.py` checks both agree at head.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_STATUSES = ("pending", "running", "completed", "failed", "diverged")


def _timestamp(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "sweeps",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("spec_text", sa.Text(), nullable=False),
        _timestamp("created_at"),
        _timestamp("updated_at"),
        sa.PrimaryKeyConstraint("id", name="pk_sweeps"),
        sa.UniqueConstraint("name", name="uq_sweeps_name"),
    )
    op.create_table(
        "trials",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("spec_hash", sa.String(64), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("dataset", sa.String(64), nullable=False),
        sa.Column("arch", sa.String(64), nullable=False),
        sa.Column("formulation", sa.String(64), nullable=False),
        sa.Column("bn_scale_init", sa.Double(), nullable=False),
        sa.Column("bn_lr_divisor", sa.Double(), nullable=False),
        sa.Column("input_norm", sa.String(64), nullable=False),
        sa.Column("lr", sa.Double(), nullable=False),
        sa.Column("epochs", sa.Integer(), nullable=False),
        sa.Column("batch_size", sa.Integer(), nullable=False),
        sa.Column("momentum", sa.Double(), nullable=False),
        sa.Column("weight_decay", sa.Double(), nullable=False),
        sa.Column("val_fraction", sa.Double(), nullable=False),
        sa.Column("precision", sa.String(64), nullable=False),
        sa.Column("memory_format", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), server_default="pending", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("epochs_run", sa.Integer(), nullable=True),
        sa.Column("best_epoch", sa.Integer(), nullable=True),
        sa.Column("best_val_acc", sa.Double(), nullable=True),
        sa.Column("test_acc", sa.Double(), nullable=True),
        sa.Column("final_test_acc", sa.Double(), nullable=True),
        sa.Column("diverged_epoch", sa.Integer(), nullable=True),
        sa.Column("seconds", sa.Double(), nullable=True),
        sa.Column("images_per_sec", sa.Double(), nullable=True),
        _timestamp("started_at", nullable=True),
        _timestamp("finished_at", nullable=True),
        sa.Column("host", sa.String(255), nullable=True),
        sa.Column("device", sa.String(255), nullable=True),
        sa.Column("package_version", sa.String(64), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        _timestamp("created_at"),
        _timestamp("updated_at"),
        sa.PrimaryKeyConstraint("id", name="pk_trials"),
        sa.UniqueConstraint("spec_hash", "seed", name="uq_trials_spec_hash_seed"),
        sa.CheckConstraint(
            "status IN (" + ", ".join(f"'{s}'" for s in _STATUSES) + ")",
            name="ck_trials_status",
        ),
    )
    op.create_index("ix_trials_status", "trials", ["status"])
    op.create_table(
        "epochs",
        sa.Column("trial_id", sa.Integer(), nullable=False),
        sa.Column("epoch", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("train_loss", sa.Double(), nullable=True),
        sa.Column("val_loss", sa.Double(), nullable=True),
        sa.Column("val_acc", sa.Double(), nullable=True),
        sa.Column("test_acc", sa.Double(), nullable=True),
        sa.Column("lr", sa.Double(), nullable=True),
        sa.Column("seconds", sa.Double(), nullable=True),
        sa.PrimaryKeyConstraint("trial_id", "epoch", name="pk_epochs"),
        sa.ForeignKeyConstraint(
            ["trial_id"], ["trials.id"], name="fk_epochs_trial_id_trials", ondelete="CASCADE"
        ),
    )
    op.create_table(
        "sweep_trials",
        sa.Column("sweep_id", sa.Integer(), nullable=False),
        sa.Column("trial_id", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("sweep_id", "trial_id", name="pk_sweep_trials"),
        sa.ForeignKeyConstraint(
            ["sweep_id"], ["sweeps.id"], name="fk_sweep_trials_sweep_id_sweeps", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["trial_id"], ["trials.id"], name="fk_sweep_trials_trial_id_trials", ondelete="CASCADE"
        ),
    )
    op.create_index("ix_sweep_trials_trial_id", "sweep_trials", ["trial_id"])


def downgrade() -> None:
    op.drop_index("ix_sweep_trials_trial_id", table_name="sweep_trials")
    op.drop_table("sweep_trials")
    op.drop_table("epochs")
    op.drop_index("ix_trials_status", table_name="trials")
    op.drop_table("trials")
    op.drop_table("sweeps")
