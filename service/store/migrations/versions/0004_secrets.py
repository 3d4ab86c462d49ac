"""Secrets the store keeps: the key that signs what trials write into checkpoint storage.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07

Checkpoint storage (a shared folder, a bucket) is often writable by more people than the
database; a records segment or checkpoint is used only when its signature, made with a key
derived from this table's `checkpoint-key`, verifies (service/checkpoints.py). Written out by
hand, like 0001 to 0003. The key itself is made on first use, not here.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "secrets",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("value", sa.String(128), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_secrets"),
    )


def downgrade() -> None:
    op.drop_table("secrets")
