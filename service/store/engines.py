"""SQLAlchemy engines for SQLite and PostgreSQL, and which database errors are worth retrying.

An existing SQLite file is probed read-only before any engine opens it, so a file of another
program or of a newer bnsweep is refused before anything could change it.
"""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy import exc as sa_exc

from bnsweep.store.errors import StoreFailure
from bnsweep.store.models import VERSION_TABLE
from bnsweep.store.schema import foreign, known_revisions, newer
from bnsweep.workers.errors import missing_extra

#: SQLite waits this long for another writer's lock before reporting "database is locked".
SQLITE_BUSY_SECONDS = 30.0

#: The pool of both engines on a SQLite file, read-only and read-write, chosen here and not left
#: to SQLAlchemy: its default for the read-only engine (made with `creator=`) is a
#: SingletonThreadPool of 5, which closes the oldest thread's connection when a sixth thread
#: connects, even while that thread is using it. The dashboard (uvicorn runs sync routes in 40
#: threads) died of SIGSEGV under 16 requests at once. A QueuePool hands each connection to one
#: thread at a time, and `check_same_thread=False` lets it move between threads. No overflow
#: limit: SQLite has none and WAL readers do not wait for each other, while a limit would hold
#: the 16th request and fail it after 30 s. Connections are kept rather than opened for each
#: transaction (NullPool): a fingerprint read costs half as much, and an open connection holds
#: SQLite's shared-memory lock, so no new connection is the first one, which truncates and
#: rebuilds the `-shm` file (from the whole WAL) and makes `_ShmWatch` report a truncation.
_SQLITE_FILE_POOL: dict[str, Any] = {"poolclass": sa.pool.QueuePool, "max_overflow": -1}


def _sqlite_on_connect(dbapi_connection: Any, _record: object) -> None:
    # Let SQLAlchemy emit BEGIN itself (see _sqlite_on_begin): pysqlite's legacy mode would
    # leave SELECTs outside the transaction and cannot start a write transaction up front.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        # WAL: readers (`bnsweep query`) never block the writer (the sweep driver) and vice versa.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_SECONDS * 1000)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")  # durable at each checkpoint; safe with WAL
    finally:
        cursor.close()


def _sqlite_on_begin(conn: sa.Connection) -> None:
    # A write transaction takes the write lock when it starts. Started as a plain (deferred)
    # read, it could find at its first write that another writer committed in between, and
    # SQLite then fails at once instead of waiting out the busy timeout.
    write = conn.get_execution_options().get("bnsweep_write", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def _sqlite_read_only_on_connect(dbapi_connection: Any, _record: object) -> None:
    # No journal_mode change here: a read-only command leaves the file as it found it.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_SECONDS * 1000)}")
        cursor.execute("PRAGMA query_only=ON")
    finally:
        cursor.close()


def _sqlite_read_only_uri(path: Path) -> str:
    # mode=ro: SQLite opens the file O_RDONLY and never writes it, checkpoints a WAL into it
    # or changes its journal mode.
    return f"file:{urllib.parse.quote(str(path.resolve()))}?mode=ro"


def probe_sqlite(path: Path) -> None:
    """Refuse an existing file that is not SQLite, not bnsweep's, or of a newer bnsweep,
    reading it through a read-only connection (nothing about the file changes)."""
    import sqlite3

    try:
        conn = sqlite3.connect(_sqlite_read_only_uri(path), uri=True, timeout=SQLITE_BUSY_SECONDS)
        try:
            tables = {
                row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
            versions = (
                [row[0] for row in conn.execute(f'SELECT version_num FROM "{VERSION_TABLE}"')]
                if VERSION_TABLE in tables
                else []
            )
        finally:
            conn.close()
    except sqlite3.DatabaseError as err:
        text = str(err)
        if "not a database" in text or "malformed" in text:
            raise StoreFailure(
                f"{path}: not a SQLite database, or a damaged one ({text})"
            ) from None
        if "unable to open" in text and not os.access(path, os.R_OK):
            raise StoreFailure(f"{path}: permission denied (cannot read it)") from None
        raise StoreFailure(f"{path}: cannot read it ({text})") from None
    if tables and not versions:
        raise StoreFailure(foreign(str(path)))
    unknown = [v for v in versions if v not in known_revisions()]
    if unknown:
        raise StoreFailure(newer(str(path), unknown[0]))


def make_engine(url: sa.URL, *, read_only: bool = False) -> sa.Engine:
    if url.get_backend_name() == "sqlite" and read_only and not is_sqlite_memory(url):
        import sqlite3

        uri = _sqlite_read_only_uri(Path(str(url.database)).expanduser())
        engine = sa.create_engine(
            "sqlite://",
            creator=lambda: sqlite3.connect(
                uri, uri=True, timeout=SQLITE_BUSY_SECONDS, check_same_thread=False
            ),
            pool_pre_ping=True,
            **_SQLITE_FILE_POOL,
        )
        sa_event.listen(engine, "connect", _sqlite_read_only_on_connect)
        sa_event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    if url.get_backend_name() == "sqlite":
        # In memory, the database lives in its connection: SQLAlchemy's SingletonThreadPool.
        # For a file, SQLAlchemy passes check_same_thread=False itself.
        pool = {} if is_sqlite_memory(url) else _SQLITE_FILE_POOL
        engine = sa.create_engine(
            url, pool_pre_ping=True, connect_args={"timeout": SQLITE_BUSY_SECONDS}, **pool
        )
        sa_event.listen(engine, "connect", _sqlite_on_connect)
        sa_event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    connect_args: dict[str, Any] = {
        "connect_timeout": 10,
        "application_name": "bnsweep",
        # Client-side TCP keepalives and a user timeout: a query sent into a network outage
        # fails within a minute, so the store's retry loop counts it, instead of waiting for
        # the kernel's retransmissions (15 minutes) or, on an idle socket, forever.
        "keepalives": 1,
        "keepalives_idle": 20,
        "keepalives_interval": 10,
        "keepalives_count": 3,
        "tcp_user_timeout": 50_000,
    }
    if read_only:
        # The server refuses any write of a read-only command, whatever the code tries.
        connect_args["options"] = "-c default_transaction_read_only=on"
    try:
        return sa.create_engine(
            url,
            # A connection dropped by a server restart is found and replaced at checkout.
            pool_pre_ping=True,
            connect_args=connect_args,
        )
    except ImportError as err:  # SQLAlchemy imports the driver here, psycopg for PostgreSQL
        raise missing_extra("a PostgreSQL store", "postgres", err) from None


def is_sqlite_memory(url: sa.URL) -> bool:
    return url.database in (None, "", ":memory:") or url.query.get("mode") == "memory"


# PostgreSQL error classes worth waiting out: connection exceptions (08), operator intervention
# (57P01 admin shutdown, 57P02 crash shutdown, 57P03 cannot connect now), too many connections,
# and the concurrency aborts a retried transaction resolves (serialization failure, deadlock).
_TRANSIENT_SQLSTATE_PREFIXES = ("08", "57P", "53300", "40001", "40P01")


_PERMANENT_CONNECT_ERRORS = (
    "authentication failed",
    "does not exist",
    "no pg_hba.conf entry",
    "permission denied",
    "invalid",
)


def is_transient(err: sa_exc.DBAPIError) -> bool:
    """Whether retrying the whole transaction later may succeed."""
    if err.connection_invalidated:
        return True
    orig = err.orig
    sqlstate = getattr(orig, "sqlstate", None)
    if sqlstate:
        return sqlstate.startswith(_TRANSIENT_SQLSTATE_PREFIXES)
    if isinstance(err, sa_exc.InterfaceError):
        return True  # the driver's connection object is closed or broken
    if isinstance(err, sa_exc.OperationalError):
        message = str(orig).lower()
        if "sqlite" in type(orig).__module__:
            return "locked" in message or "busy" in message
        # psycopg reports failures to connect without an SQLSTATE: a refused or reset
        # connection is worth waiting out, a wrong password or database name is not.
        return not any(pattern in message for pattern in _PERMANENT_CONNECT_ERRORS)
    return False
