"""`Store`, the results store's way in: open a database by URL, write events, read DataFrames.

Nothing the store hands out is an ORM row: writes take frozen event values
(`bnsweep.store.events`), reads return frozen values (`bnsweep.store.values`) or pandas
DataFrames with fixed columns and dtypes (`bnsweep.store.columns`). This module holds opening,
the schema checks, the launch lock and the transaction/retry loop; the writes are in
`bnsweep.store.writes`, the reads in `bnsweep.store.reads`, and `Store` combines the two.

Rules worth knowing before reading the code (docs/store.md says the same for users):

- A cell is `(spec_hash, seed)`; every write is an idempotent upsert keyed by it (and by
  `(trial, epoch)` for epochs, `(trial, epoch, layer)` for BN diagnostics), so replaying a
  batch after a lost commit acknowledgement, or a Ray retry that replays epochs, never
  duplicates anything.
- Status transitions: pending → running → completed | diverged | failed; failed → running
  (a retry). completed and diverged are final: later events for such a trial are ignored, except
  that a missing epoch row may still be filled in. A start no newer than the recorded start is a
  replay and is ignored; a failure older than the recorded start belongs to an earlier attempt.
- Transient database failures (connection lost, server restarting, SQLite busy) are retried with
  backoff for `retry_seconds` (default 60 s) around each whole transaction.
- A URL's password never appears in a message, a log line or a repr: see `redact_url`.
- Every trial row carries the training recipe (`bnsweep.workers.spec.RECIPE`) its cell was
  registered
  under; the recipe is part of `spec_hash`, so a cell of an older recipe is never reused.
  `older_recipes` counts such trials; the analysis reads only the current recipe's.
- Nothing is deleted except by `forget`, which a user asks for (`bnsweep db forget`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from bnsweep.store.engines import is_sqlite_memory, is_transient, make_engine, probe_sqlite
from bnsweep.store.errors import (
    NoStoreYet,
    StoreError,
    StoreFailure,
    db_message,
    parse_url,
    redact_url,
    resolve_url,
)
from bnsweep.store.reads import StoreReads
from bnsweep.store.schema import (
    alembic_config,
    current_revision,
    foreign,
    head_revision,
    known_revisions,
    newer,
    script_location,
)
from bnsweep.store.writes import StoreWrites

log = logging.getLogger(__name__)

#: How long one transaction keeps retrying a database that went away, by default.
DEFAULT_RETRY_SECONDS = 60.0
#: Key of the PostgreSQL advisory lock that serialises concurrent schema upgrades.
_MIGRATION_LOCK_KEY = 0x626E_7377_6565_70  # "bnsweep"

T = TypeVar("T")


# -- watching the SQLite file ------------------------------------------------------------------


class _ShmWatch:
    """The SQLite `-shm` file as last seen: SQLite maps it into memory, and touching a mapped
    page that someone truncated away kills the process with SIGBUS, a C-level crash no Python
    code can catch. Checked before each transaction, a shrunk `-shm` (same file, fewer bytes)
    stops the store with one line instead. Not airtight: a truncation between the check and
    SQLite's next access, or a full disk under the mapping, still crashes."""

    def __init__(self, database: Path) -> None:
        self.path = database.with_name(database.name + "-shm")
        self.seen: tuple[int, int] | None = None

    def check(self) -> None:
        try:
            stat = self.path.stat()
        except OSError:
            self.seen = None  # no -shm (not WAL, or every connection closed): nothing mapped
            return
        if self.seen is not None and stat.st_ino == self.seen[0] and stat.st_size < self.seen[1]:
            # Grown back (zeros) so that closing our connections touches mapped bytes again;
            # SQLite rebuilds a zeroed index from the -wal file, as after a crash.
            with contextlib.suppress(OSError):
                os.truncate(self.path, self.seen[1])
            raise StoreFailure(
                f"{self.path} was truncated while bnsweep had it open (another program, or a "
                "cleanup of the folder); SQLite would crash on it: stop that, then run again"
            )
        self.seen = (stat.st_ino, stat.st_size)


class _FileWatch:
    """The SQLite file behind the store's path, as first seen: if it is deleted or replaced
    while the store is open, SQLite keeps writing to the old, unlinked file, and every result
    from then on would vanish without a word. Checked before each transaction."""

    def __init__(self, database: Path) -> None:
        self.path = database
        self.seen: tuple[int, int] | None = None

    def check(self) -> None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            if self.seen is None:
                return  # not created yet: the first transaction creates it
            identity = None
        else:
            identity = (stat.st_dev, stat.st_ino)
        if self.seen is None:
            self.seen = identity
            return
        if identity != self.seen:
            what = "deleted" if identity is None else "replaced by another file"
            raise StoreFailure(
                f"{self.path} was {what} while bnsweep had it open; nothing more is written, so "
                "that no result goes to a file nobody can read: put the store back (or choose "
                "another --db) and launch again"
            )


# -- the store ---------------------------------------------------------------------------------


class Store(StoreWrites, StoreReads):
    """The results database. Open with `Store.open(url)`; close with `close()` or `with`."""

    def __init__(self, engine: sa.Engine, url: sa.URL, retry_seconds: float) -> None:
        self._engine = engine
        self._url = url
        self.retry_seconds = float(retry_seconds)
        sqlite_file = url.get_backend_name() == "sqlite" and not is_sqlite_memory(url)
        self._shm = _ShmWatch(Path(str(url.database)).expanduser()) if sqlite_file else None
        self._file = _FileWatch(Path(str(url.database)).expanduser()) if sqlite_file else None
        if self._file is not None:
            self._file.check()

    # -- opening -------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        url: str | None = None,
        *,
        create: bool = True,
        check_schema: bool = True,
        read_only: bool = False,
        retry_seconds: float = DEFAULT_RETRY_SECONDS,
    ) -> Store:
        """Open the store at `url` (else BNSWEEP_DB, else `sqlite:///bnsweep.db`).

        Schema rule: a database without any bnsweep tables (a new SQLite file, an empty
        PostgreSQL database) gets the current schema when `create` is true, and is an error
        otherwise. A database whose schema is older than this bnsweep is never migrated
        implicitly (a running sweep of the older version may share it): StoreError says to run
        `bnsweep db upgrade`. A newer or unknown revision is an error too. `check_schema=False`
        skips all of this; it is for `Store.upgrade()` callers such as `bnsweep db upgrade`.

        An existing SQLite file is first read through a read-only connection: a file of another
        program (tables, but no bnsweep version table), a file that is not SQLite and a newer
        schema are refused before anything could change it (WAL mode is only switched on for
        bnsweep's own files). `read_only` (status, query, tables, plots, a dry run) implies
        `create=False` and keeps every connection read-only, so the file's bytes stay the same.

        Opening connects once, without retries, so a wrong URL fails at once.
        """
        parsed = parse_url(resolve_url(url))
        shown = redact_url(parsed)
        create = create and not read_only
        if parsed.get_backend_name() == "sqlite" and not is_sqlite_memory(parsed):
            path = Path(str(parsed.database)).expanduser()
            if path.is_dir():
                raise StoreFailure(f"{path}: is a folder, expected a SQLite file (--db {shown})")
            if not path.exists():
                if not create:
                    raise NoStoreYet(
                        f"no results database at {path}: launch a sweep or run "
                        f"`bnsweep db upgrade --db {shown}` first"
                    )
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                except OSError as err:
                    raise StoreFailure(
                        f"cannot create the folder of {path}: {err.strerror or err}"
                    ) from None
            else:
                probe_sqlite(path)
        store = cls(make_engine(parsed, read_only=read_only), parsed, retry_seconds)
        try:
            if check_schema:
                store._check_schema(create=create)
            else:
                store._run(
                    lambda conn: conn.execute(sa.text("SELECT 1")), "connecting", retry=False
                )
        except BaseException:
            store.close()
            raise
        return store

    def _check_schema(self, *, create: bool) -> None:
        def inspect(conn: sa.Connection) -> tuple[str | None, bool]:
            revision = current_revision(conn)
            has_tables = revision is None and bool(sa.inspect(conn).get_table_names())
            return revision, has_tables

        current, has_tables = self._run(inspect, "reading the schema version", retry=False)
        head = head_revision()
        if current == head:
            return
        shown = self.url
        if current is None:
            if has_tables:
                raise StoreFailure(foreign(shown))
            if not create:
                raise NoStoreYet(
                    f"no bnsweep results in {shown}: launch a sweep or run "
                    f"`bnsweep db upgrade --db {shown}` first"
                )
            log.info("creating the results schema (revision %s) in %s", head, shown)
            self.upgrade()
            return
        if current not in known_revisions():
            raise StoreFailure(newer(shown, current))
        raise StoreFailure(
            f"{shown} is at schema revision {current}, this bnsweep needs {head}: "
            f"run `bnsweep db upgrade --db {shown}`"
        )

    def upgrade(self) -> tuple[str | None, str]:
        """Run `alembic upgrade head` on this database; returns (revision before, after).

        Concurrent upgrades of one PostgreSQL database serialise on an advisory lock, and the
        migration runs in this transaction, so a failure leaves the schema as it was.
        """
        from alembic import command

        def migrate(conn: sa.Connection) -> tuple[str | None, str]:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_MIGRATION_LOCK_KEY)))
            before = current_revision(conn)
            if before is not None and before not in known_revisions():
                raise StoreFailure(newer(self.url, before))
            if before is None and sa.inspect(conn).get_table_names():
                raise StoreFailure(foreign(self.url))
            config = alembic_config(script_location())
            config.attributes["connection"] = conn
            command.upgrade(config, "head")
            after = current_revision(conn)
            assert after is not None
            return before, after

        before, after = self._run(migrate, "upgrading the schema", write=True)
        if before != after:
            log.info("upgraded %s from schema revision %s to %s", self.url, before, after)
        return before, after

    def schema_revision(self) -> str | None:
        """The database's schema revision (None for a database without the bnsweep schema)."""
        return self._run(current_revision, "reading the schema version")

    @property
    def url(self) -> str:
        """The database URL, password redacted."""
        return redact_url(self._url)

    @property
    def dialect(self) -> str:
        """`sqlite` or `postgresql`."""
        return self._engine.dialect.name

    def close(self) -> None:
        self._engine.dispose()

    @contextlib.contextmanager
    def launch_lock(self, sweep: str) -> Iterator[None]:
        """Hold the store's lock for launching `sweep`, or fail at once with one line.

        Taken in the store rather than in a checkpoint folder, so two launches of one sweep from
        two folders (or machines) into one store cannot both train its missing cells. PostgreSQL:
        a session advisory lock on a connection held for the launch (the server drops it with
        a killed driver's connection). SQLite: an exclusive `flock` on a file beside the
        database, dropped by the kernel with a killed driver."""
        key = int.from_bytes(hashlib.sha256(f"bnsweep launch {sweep}".encode()).digest()[:8], "big")
        key -= 1 << 63 if key >= 1 << 63 else 0  # PostgreSQL's bigint is signed
        busy = (
            f"sweep {sweep} is being launched already into this store ({self.url}); wait for "
            "that launch to end or stop it"
        )
        if self.dialect == "postgresql":
            with self._engine.connect() as conn:
                if not conn.execute(
                    sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": key}
                ).scalar():
                    conn.rollback()
                    raise StoreError(busy)
                conn.commit()
                try:
                    yield
                finally:
                    with contextlib.suppress(sa_exc.DBAPIError):
                        conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                        conn.commit()
            return
        database = self._url.database
        if self.dialect != "sqlite" or is_sqlite_memory(self._url) or not database:
            yield  # one process owns an in-memory store
            return
        import fcntl

        path = Path(str(database)).expanduser()
        lock = path.with_name(f"{path.name}.launch-{key & 0xFFFFFFFFFFFF:012x}.lock")
        with open(lock, "a+", encoding="utf-8") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StoreError(busy) from None
            yield

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    # -- the retry loop ------------------------------------------------------------------------

    def _run(
        self,
        work: Callable[[sa.Connection], T],
        what: str,
        *,
        write: bool = False,
        retry: bool = True,
    ) -> T:
        """Run `work` in one transaction; on a transient failure, run it again from the start.

        Safe because every write of the store is idempotent: when a connection dies after
        COMMIT was sent, the transaction may or may not have landed, and running it again
        gives the same rows either way.
        """
        if self._file is not None:
            self._file.check()
        if self._shm is not None:
            self._shm.check()
        deadline = time.monotonic() + (self.retry_seconds if retry else 0.0)
        delay = 0.05
        failures = 0
        while True:
            try:
                with self._engine.connect() as conn:
                    if write:
                        conn.execution_options(bnsweep_write=True)
                    with conn.begin():
                        return work(conn)
            except sa_exc.DBAPIError as err:
                message = db_message(err, self._url)
                if not is_transient(err):
                    if "not a database" in message or "malformed" in message:
                        raise StoreFailure(
                            f"{self.url}: not a SQLite database, or a damaged one ({message})"
                        ) from None
                    if isinstance(err, (sa_exc.OperationalError, sa_exc.InterfaceError)):
                        raise StoreFailure(f"{self.url}: {what} failed: {message}") from None
                    raise  # integrity or programming errors are bugs: keep the traceback
                failures += 1
                left = deadline - time.monotonic()
                if left <= 0:
                    if not retry:
                        raise StoreFailure(f"cannot reach {self.url} ({what}): {message}") from None
                    raise StoreFailure(
                        f"{self.url} unavailable for {self.retry_seconds:.0f} s "
                        f"({failures} tries) while {what}: {message}"
                    ) from None
                pause = min(delay * random.uniform(0.5, 1.5), left)
                log.warning(
                    "database %s unavailable while %s (%s); retrying in %.2f s, %.0f s left",
                    self.url,
                    what,
                    message,
                    pause,
                    left,
                )
                time.sleep(pause)
                delay = min(delay * 2, 2.0)
