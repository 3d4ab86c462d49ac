"""Results tied to the plugin code that made them: each trial's plugins, their versions and
recipes.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-08

Written out by hand, like 0001 to 0004. `trials.plugins` is the JSON of every plugin a trial's
spec names (docs/extending.md): {kind: {name, distribution, version, recipe}}, NULL for a trial
of built-ins only, which every row that exists when this runs is (plugins did not exist).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A nullable ADD COLUMN: no table copy on SQLite, existing rows get NULL.
    op.add_column("trials", sa.Column("plugins", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("trials", "plugins")
