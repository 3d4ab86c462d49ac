"""Schema revisions: the Alembic scripts shipped in the package, their head, and a database's.

Messages for a database this bnsweep must not touch (another program's, a newer bnsweep's) live
here too, since opening and upgrading both refuse those.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bnsweep.store.models import VERSION_TABLE


def script_location() -> Path:
    """The Alembic scripts shipped inside the package (package data, see pyproject.toml)."""
    return Path(__file__).resolve().parent / "migrations"


def alembic_config(location: Path) -> Any:
    from alembic.config import Config

    config = Config()
    # configparser interpolates '%'; a path containing one must be escaped.
    config.set_main_option("script_location", str(location).replace("%", "%%"))
    config.set_main_option("path_separator", "os")
    return config


@functools.lru_cache(maxsize=4)
def _script_directory(location: Path) -> Any:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config(location))


def head_revision() -> str:
    """The schema revision this version of bnsweep reads and writes."""
    head = _script_directory(script_location()).get_current_head()
    assert head is not None, "the shipped migrations have no head"
    return head


def known_revisions() -> set[str]:
    return {script.revision for script in _script_directory(script_location()).walk_revisions()}


def current_revision(conn: sa.Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
    heads = context.get_current_heads()
    return heads[0] if heads else None


def foreign(where: str) -> str:
    return (
        f"{where} holds tables but no bnsweep schema version: another program's database, "
        "which bnsweep leaves alone; give --db a bnsweep store or a new file"
    )


def newer(where: str, revision: str) -> str:
    return (
        f"{where} is at schema revision {revision}, unknown to this bnsweep (which needs "
        f"{head_revision()}): it was written by a newer bnsweep; upgrade bnsweep"
    )
