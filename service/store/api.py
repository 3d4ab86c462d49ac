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
import ctypes
import hashlib
import logging
import os
import random
import socket
import time
from collections.abc import Callable, Iterator
from datetime import timezone
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
from bnsweep.store.filelock import held_file_lock, is_held, read_holder
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
#: Server-side TCP keepalive of a launch lock's PostgreSQL session, in seconds: idle time before
#: the first probe, time between probes, unanswered probes before the server ends the session.
#: A vanished launch holds its sweep for at most idle + interval x count (50 s), not 2 hours.
LOCK_KEEPALIVE = (20, 10, 3)

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


class LaunchBusy(StoreError):
    """Another launch of the sweep holds its launch lock in this store (exit 2, as before)."""


# -- the launch lock's key and holder ----------------------------------------------------------


def _lock_key(sweep: str) -> int:
    """The launch lock's key: a number of the sweep name in PostgreSQL's (signed) bigint range,
    as every bnsweep since the lock's start computed it."""
    key = int.from_bytes(hashlib.sha256(f"bnsweep launch {sweep}".encode()).digest()[:8], "big")
    return key - (1 << 63) if key >= 1 << 63 else key


def _pg_lock_pid(conn: sa.Connection, key: int) -> int | None:
    """The server process (session) holding the advisory lock `key`, if any. pg_locks shows a
    bigint key as its high and low 32 bits (classid, objid) with objsubid 1."""
    query = sa.text(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 "
        "AND classid = CAST(CAST(:high AS bigint) AS oid) "
        "AND objid = CAST(CAST(:low AS bigint) AS oid) AND database = "
        "(SELECT oid FROM pg_database WHERE datname = current_database())"
    )
    pid = conn.execute(query, {"high": (key >> 32) & 0xFFFFFFFF, "low": key & 0xFFFFFFFF})
    found = pid.scalar()
    return None if found is None else int(found)


def _pg_lock_holder(conn: sa.Connection, key: int) -> str | None:
    """Who holds the advisory lock `key`, in words: the launch's name for itself (pid, host),
    the client address and since when. Another role's session shows less unless this role may
    read all statistics (pg_read_all_stats)."""
    pid = _pg_lock_pid(conn, key)
    if pid is None:
        return None
    row = conn.execute(
        sa.text(
            "SELECT application_name, host(client_addr), state_change FROM pg_stat_activity "
            "WHERE pid = :pid"
        ),
        {"pid": pid},
    ).first()
    name, address, since = row if row is not None else (None, None, None)
    parts = [name or "a session", f"PostgreSQL session {pid}"]
    if address:
        parts.append(f"from {address}")
    if since is not None:
        parts.append(f"since {since.astimezone(timezone.utc):%Y-%m-%d %H:%M:%S} UTC")
    return f"{parts[0]} ({', '.join(parts[1:])})"


class _WritableWatch:
    """The SQLite file, its `-wal` and `-shm` and their folder must stay writable while the store
    is open for writing. SQLite maps `-shm` into memory: made read-only or immutable
    (`chattr +i`) under an open store, the next transaction touches a mapping the kernel no
    longer backs and the process dies of SIGBUS, without a word. Checked before each
    transaction (a few `access()` calls), so the store stops with one line instead."""

    def __init__(self, database: Path) -> None:
        paths = [
            database,
            *(database.with_name(database.name + suffix) for suffix in ("-wal", "-shm")),
            database.parent,
        ]
        # Only what was writable (or not there yet) at opening: a store that worked before
        # without, say, a writable folder is not refused now.
        self.paths = [path for path in paths if not path.exists() or os.access(path, os.W_OK)]

    def unwritable(self) -> Path | None:
        """The first of the store's paths that is there but no longer writable, if any."""
        return next(
            (path for path in self.paths if not os.access(path, os.W_OK) and path.exists()), None
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
        self._writable: _WritableWatch | None = None  # set by `open` unless read-only
        self._abandoned = False  # the connections are left open for good (`_check_writable`)
        #: (backend pid, key) of the launch lock this store holds on PostgreSQL, if any.
        self._held_lock: tuple[int, int, str] | None = None  # backend pid, key, sweep
        self._lock_conn: sa.Connection | None = None
        #: (when, failed tries) of the outage under way: one warning at its start, one at its end.
        self._outage: tuple[float, int] | None = None

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
        if store._file is not None and not read_only:
            store._writable = _WritableWatch(store._file.path)
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
        if not self._abandoned:
            self._engine.dispose()

    def _check_writable(self, watch: _WritableWatch) -> None:
        path = watch.unwritable()
        if path is None:
            return
        if not self._abandoned:
            # SQLite writes into the -shm mapping even to close a connection: on a file made
            # immutable that is SIGBUS too. The connections stay open, never closed nor freed
            # (one reference more than anyone holds), until the process ends, which unmaps the
            # file without writing to it.
            self._abandoned = True
            ctypes.pythonapi.Py_IncRef(ctypes.py_object(self._engine))
        raise StoreFailure(
            f"{path} is no longer writable (its permissions or an immutable flag changed while "
            "bnsweep had the store open); nothing more is written, and what was written is "
            "kept: make it writable again (chmod u+w, chattr -i) and launch again"
        )

    @contextlib.contextmanager
    def launch_lock(self, sweep: str) -> Iterator[None]:
        """Hold the store's lock for launching `sweep`, or fail at once with one line naming the
        holder (host, pid, since when) and how to break a stale lock.

        Taken in the store rather than in a checkpoint folder, so two launches of one sweep from
        two folders (or machines) into one store cannot both train its missing cells.

        PostgreSQL: a session advisory lock on a connection held for the launch. The server
        drops it with the session, which it ends when it finds the client gone; by default it
        looks only after 2 hours of silence (its TCP keepalive), so a launch killed during a
        network outage, whose goodbye never arrived, held the sweep for hours. The lock's
        session sets its own server-side keepalives (`LOCK_KEEPALIVE`: the server probes an
        idle client and ends the session within a minute of it vanishing). Chosen over the
        alternatives: `idle_session_timeout` would end the healthy lock session, idle by
        design; a lease row with heartbeats needs a schema change, a heartbeat thread and
        trusted clocks, and still a rule for who may break it. The same settings cover a
        launch that is alive but cut off: the server ends its session, so after an outage the
        driver checks it still holds the lock before writing again (`_run`).

        SQLite: an exclusive `flock` on a file beside the database, dropped by the kernel with
        a killed driver, naming its holder inside, removed on release."""
        if self.dialect == "postgresql":
            with self._pg_launch_lock(sweep):
                yield
            return
        database = self._url.database
        if self.dialect != "sqlite" or is_sqlite_memory(self._url) or not database:
            yield  # one process owns an in-memory store
            return

        def busy(holder: str) -> StoreError:
            return LaunchBusy(
                f"sweep {sweep} is being launched already into this store ({self.url}) by "
                f"{holder} (lock file {self._lock_file(sweep)}, released when that process "
                "ends); wait for that launch to end or stop it"
            )

        with held_file_lock(self._lock_file(sweep), busy):
            yield

    def launch_lock_holder(self, sweep: str) -> str | None:
        """Who holds `sweep`'s launch lock in this store (None: nobody), as `launch_lock`'s
        refusal names it. Reads only: nothing is locked or created."""
        if self.dialect == "postgresql":
            return self._run(
                lambda conn: _pg_lock_holder(conn, _lock_key(sweep)), "reading the launch lock"
            )
        if self.dialect != "sqlite" or is_sqlite_memory(self._url) or not self._url.database:
            return None
        path = self._lock_file(sweep)
        return (read_holder(path) or "another process") if is_held(path) else None

    def break_launch_lock(self, sweep: str) -> str | None:
        """End the PostgreSQL session that holds `sweep`'s launch lock (`bnsweep db unlock`);
        return who held it, None when nobody did. A SQLite lock belongs to a live process, which
        only stopping it releases: StoreFailure names it."""
        if self.dialect != "postgresql":
            holder = self.launch_lock_holder(sweep)
            if holder is None:
                return None
            raise StoreFailure(
                f"sweep {sweep}'s launch lock in {self.url} is held by {holder}, a live process "
                "(the kernel drops the lock of a process that ends): stop that launch"
            )

        def terminate(conn: sa.Connection) -> str | None:
            holder = _pg_lock_holder(conn, _lock_key(sweep))
            pid = _pg_lock_pid(conn, _lock_key(sweep))
            if pid is None:
                return None
            if not conn.execute(sa.select(sa.func.pg_terminate_backend(pid))).scalar():
                raise StoreFailure(
                    f"cannot end PostgreSQL session {pid}, which holds sweep {sweep}'s launch "
                    "lock: connect as its role or a superuser"
                )
            return holder

        return self._run(terminate, "breaking the launch lock", retry=False)

    def _lock_file(self, sweep: str) -> Path:
        path = Path(str(self._url.database)).expanduser()
        return path.with_name(f"{path.name}.launch-{_lock_key(sweep) & 0xFFFFFFFFFFFF:012x}.lock")

    @contextlib.contextmanager
    def _pg_launch_lock(self, sweep: str) -> Iterator[None]:
        self._lock_conn = self._take_pg_lock(sweep)
        try:
            yield
        finally:
            conn, self._lock_conn, self._held_lock = self._lock_conn, None, None
            with contextlib.suppress(sa_exc.DBAPIError):
                conn.execute(sa.select(sa.func.pg_advisory_unlock(_lock_key(sweep))))
                conn.commit()
            conn.invalidate()  # its settings and name are the lock's: not for the pool
            conn.close()

    def _take_pg_lock(self, sweep: str) -> sa.Connection:
        """A connection of its own holding the sweep's advisory lock, with keepalives that let
        the server end it (and so free the lock) within a minute of this launch vanishing;
        LaunchBusy, naming the holder, when another session holds it."""
        key = _lock_key(sweep)
        idle, interval, count = LOCK_KEEPALIVE
        settings = {
            "tcp_keepalives_idle": idle,
            "tcp_keepalives_interval": interval,
            "tcp_keepalives_count": count,
            # Unacknowledged data (the unlock, sent into an outage) gives up as soon.
            "tcp_user_timeout": (idle + interval * count) * 1000,
            # What the refusal of a second launch shows (the server keeps 63 bytes).
            "application_name": f"bnsweep launch pid {os.getpid()} on {socket.gethostname()}",
        }
        conn = self._engine.connect()
        try:
            if (conn.dialect.server_version_info or (0,)) < (12,):
                del settings["tcp_user_timeout"]  # PostgreSQL 12 added it
            for name, value in settings.items():
                conn.execute(sa.select(sa.func.set_config(name, str(value), False)))
            if not conn.execute(sa.select(sa.func.pg_try_advisory_lock(key))).scalar():
                holder = _pg_lock_holder(conn, key) or "another session"
                conn.rollback()
                raise LaunchBusy(
                    f"sweep {sweep} is being launched already into this store ({self.url}) by "
                    f"{holder}; wait for that launch to end or stop it. A launch that died "
                    f"loses it within {idle + interval * count} s of its end; to end its session "
                    f"now: bnsweep db unlock --sweep {sweep} --db {self.url}"
                )
            backend = conn.execute(sa.select(sa.func.pg_backend_pid())).scalar_one()
            conn.commit()
        except BaseException:
            conn.invalidate()
            conn.close()
            raise
        self._held_lock = (int(backend), key, sweep)
        return conn

    def _check_lock_kept(self, conn: sa.Connection) -> None:
        """After an outage: does the lock's session still hold the launch lock? The server may
        have ended it meanwhile (its keepalives, or the connection reset by the outage). Then the
        lock is taken again on a new session: held by nobody, no other launch ran in between
        that could be training this launch's cells. Held by another launch, this one stops;
        writing on would train and record the same cells twice."""
        if self._held_lock is None:
            return
        backend, key, sweep = self._held_lock
        if _pg_lock_pid(conn, key) == backend:
            return
        old = self._lock_conn
        try:
            self._lock_conn = self._take_pg_lock(sweep)
        except LaunchBusy as busy:
            raise StoreFailure(
                f"{self.url}: this launch lost its lock on the sweep during the outage (the "
                f"server ended its session) and another launch holds it now ({busy}); this one "
                "stops here so that no cell is trained twice at once"
            ) from None
        log.warning(
            "the store's session holding sweep %s's launch lock ended in the outage; "
            "the lock is taken again",
            sweep,
        )
        if old is not None:
            with contextlib.suppress(sa_exc.DBAPIError):
                old.invalidate()
                old.close()

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
        if self._writable is not None:
            self._check_writable(self._writable)
        deadline = time.monotonic() + (self.retry_seconds if retry else 0.0)
        delay = 0.05
        failures = 0
        while True:
            try:
                with self._engine.connect() as conn:
                    if write:
                        conn.execution_options(bnsweep_write=True)
                    with conn.begin():
                        if self._outage is not None:
                            self._check_lock_kept(conn)
                        result = work(conn)
                self._recovered()
                return result
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
                    self._outage = None
                    if not retry:
                        raise StoreFailure(f"cannot reach {self.url} ({what}): {message}") from None
                    raise StoreFailure(
                        f"{self.url} unavailable for {self.retry_seconds:.0f} s "
                        f"({failures} tries) while {what}: {message}"
                    ) from None
                pause = min(delay * random.uniform(0.5, 1.5), left)
                self._failed(what, message, left)
                time.sleep(pause)
                delay = min(delay * 2, 2.0)

    def _failed(self, what: str, message: str, left: float) -> None:
        """One warning when an outage starts; the tries after it are counted, not printed (a
        minute's retries were 40 lines for one outage)."""
        if self._outage is None:
            self._outage = (time.monotonic(), 1)
            log.warning(
                "database %s unavailable while %s (%s); retrying for up to %.0f s",
                self.url,
                what,
                message,
                left,
            )
        else:
            self._outage = (self._outage[0], self._outage[1] + 1)
            log.debug("database %s still unavailable while %s (%s)", self.url, what, message)

    def _recovered(self) -> None:
        if self._outage is not None:
            since, failures = self._outage
            self._outage = None
            log.warning(
                "database %s reachable again after %d failed tries over %.0f s",
                self.url,
                failures,
                time.monotonic() - since,
            )
