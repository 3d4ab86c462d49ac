"""Alembic environment of the bnsweep results store.

The database never comes from `alembic.ini`. `Store.upgrade()` hands over an open connection in
`config.attributes["connection"]` (inside a transaction it owns, so it can hold a lock around
the migration); the plain `alembic` tool reads the URL from `config.attributes["url"]` or, when
run by hand, from the BNSWEEP_DB environment variable.
"""

from __future__ import annotations

import os
from typing import Any

import sqlalchemy as sa
from alembic import context

from bnsweep.store.models import VERSION_TABLE, Base
from bnsweep.workers.errors import BnsweepError

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    from bnsweep.store.errors import normalize_url

    url = config.attributes.get("url") or os.environ.get("BNSWEEP_DB")
    if not url:
        raise BnsweepError("no database given: set BNSWEEP_DB or use `bnsweep db upgrade --db URL`")
    return normalize_url(url)


def _configure(**kwargs: Any) -> None:
    context.configure(
        target_metadata=target_metadata,
        version_table=VERSION_TABLE,
        compare_type=True,
        **kwargs,
    )


def run_migrations_offline() -> None:
    _configure(url=_url(), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def _run_with(connection: sa.Connection) -> None:
    # SQLite cannot ALTER most things in place; batch mode rebuilds the table instead.
    _configure(connection=connection, render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_with(connection)
        return
    engine = sa.create_engine(_url(), poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            _run_with(conn)
            conn.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
