"""Time the dashboard's reads of a SQLite store, one thread and 32 at once, per connection pool.

The dashboard serves each request from a thread and reads through a read-only `Store`. Its
engine pools connections, one thread at a time (`QueuePool`, no overflow limit: issue 19; the
`SingletonThreadPool` before closed a connection another thread still used, and the server died
of SIGSEGV). This bench compares that pool with a new connection per read (`NullPool`): the cost
of one read (the store's fingerprint, what every request does first) and the errors under 32
threads, with the store idle or held open by a writer, as during a launch.

    python bench/sqlite_reads.py [--reads 2000] [--writer]
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import event as sa_event

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bnsweep.store import engines  # noqa: E402
from bnsweep.store.api import Store  # noqa: E402
from bnsweep.store.reads import store_fingerprint  # noqa: E402
from tests.web.stores import make_store  # noqa: E402


def _null_pool_store(url: str, path: Path) -> Store:
    """The dashboard's read-only store, but a new connection for every read."""
    uri = engines._sqlite_read_only_uri(path)
    engine = sa.create_engine(
        "sqlite://",
        creator=lambda: sqlite3.connect(
            uri, uri=True, timeout=engines.SQLITE_BUSY_SECONDS, check_same_thread=False
        ),
        poolclass=sa.pool.NullPool,
    )
    sa_event.listen(engine, "connect", engines._sqlite_read_only_on_connect)
    sa_event.listen(engine, "begin", engines._sqlite_on_begin)
    return Store(engine, sa.make_url(url), 5.0)


def measure(store: Store, reads: int) -> tuple[float, float, int]:
    """(µs per read in one thread, µs per read from 32 threads, reads that raised)."""
    store_fingerprint(store)
    start = time.perf_counter()
    for _ in range(reads):
        store_fingerprint(store)
    one = (time.perf_counter() - start) / reads * 1e6
    errors = 0

    def read(_: int) -> None:
        nonlocal errors
        try:
            store_fingerprint(store)
        except Exception:  # counted: what a request would have answered with a 500
            errors += 1

    start = time.perf_counter()
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(read, range(reads)))
    many = (time.perf_counter() - start) / reads * 1e6
    return one, many, errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=2000)
    parser.add_argument("--writer", action="store_true", help="hold the store open for writing")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "demo.db"
        url = make_store(path, "running")
        writer = Store.open(url) if args.writer else None
        if writer is not None:
            store_fingerprint(writer)
        stores = {
            "QueuePool (the dashboard's)": Store.open(url, read_only=True),
            "NullPool (a connection per read)": _null_pool_store(url, path),
        }
        print(f"| pool | one thread, µs/read | 32 threads, µs/read | errors in {args.reads} |")
        print("| --- | ---: | ---: | ---: |")
        for name, store in stores.items():
            one, many, errors = measure(store, args.reads)
            print(f"| {name} | {one:,.0f} | {many:,.0f} | {errors} |")
            store.close()
        if writer is not None:
            writer.close()


if __name__ == "__main__":
    main()
