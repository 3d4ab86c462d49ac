"""Time to first byte of the dashboard's sweep page for a store of ~100,000 trials, cold and
cached, on SQLite and PostgreSQL (the issue's aim: under 1 s cached).

The store holds one sweep of the fabricated results of `bench/tables_bench.py` (registered as
real `TrialSpec` cells, then given their results by one bulk UPDATE: the dashboard reads only
the trials). The dashboard runs in uvicorn in this process; the client is `http.client`, and
TTFB is the time until the response's status line and headers arrived.

- cold: the first request of a freshly started dashboard (reads the store, builds the tables);
- cached: the same page again, store unchanged (one fingerprint read, then memory);
- changed: the page after one trial's status changed (everything recomputed once).

    python bench/dashboard_bench.py [--trials 100000] [--repeat 5] [--postgres URL]
"""

from __future__ import annotations

import argparse
import http.client
import importlib.util
import socket
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bnsweep.store.api import Store  # noqa: E402
from bnsweep.store.errors import normalize_url  # noqa: E402
from bnsweep.store.events import TrialStarted  # noqa: E402
from bnsweep.workers.spec import TrialSpec  # noqa: E402

SWEEP = "bench"


def _tables_bench():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(
        "tables_bench", ROOT / "bench" / "tables_bench.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fill(url: str, n: int) -> int:
    """Register ~n fabricated cells as one sweep and give them their results; returns the count."""
    frame = _tables_bench().fabricate(n)
    fields = [c for c in frame.columns if c not in ("spec_hash", "status", "test_acc")]
    specs = [
        TrialSpec(**{k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()})
        for row in frame[fields].to_dict("records")
    ]
    with Store.open(url) as store:
        store.register_sweep(SWEEP, "name: bench\nreport: {layout: gamma}\n", specs)
    rows = [
        {"h": s.spec_hash, "s": s.seed, "st": st, "acc": None if acc != acc else float(acc)}
        for s, st, acc in zip(specs, frame["status"], frame["test_acc"], strict=True)
    ]
    rows.pop()  # one cell stays pending: `measure` starts it to change the store
    engine = sa.create_engine(normalize_url(url))
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE trials SET status = :st, test_acc = :acc, best_val_acc = :acc, "
                "epochs_run = 1, seconds = 60.0, started_at = CURRENT_TIMESTAMP, "
                "finished_at = CURRENT_TIMESTAMP WHERE spec_hash = :h AND seed = :s"
            ),
            rows,
        )
    engine.dispose()
    return len(specs)


@contextmanager
def serve(url: str) -> Iterator[int]:
    import uvicorn

    from bnsweep.web.app import create_app

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    server = uvicorn.Server(
        uvicorn.Config(create_app(url), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join()


def ttfb(port: int, path: str) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    start = time.perf_counter()
    conn.request("GET", path)
    response = conn.getresponse()  # returns once the status line and headers are in
    elapsed = time.perf_counter() - start
    body = response.read()
    conn.close()
    assert response.status == 200, (response.status, body[:300])
    return elapsed


def measure(url: str, repeat: int) -> dict[str, float]:
    path = f"/sweeps/{SWEEP}"
    with serve(url) as port:
        cold = ttfb(port, path)
        cached = statistics.median(ttfb(port, path) for _ in range(repeat))
        with Store.open(url, create=False) as store:
            trial = store.trials(sweep=SWEEP, status="pending").iloc[0]
            store.apply([TrialStarted(str(trial["spec_hash"]), int(trial["seed"]))])
        changed = ttfb(port, path)
        index_cold = ttfb(port, "/")
        index_cached = statistics.median(ttfb(port, "/") for _ in range(repeat))
    return {
        "cold": cold,
        "cached": cached,
        "changed": changed,
        "index (after the sweep page)": index_cold,
        "index cached": index_cached,
    }


@contextmanager
def postgres_database(server_url: str) -> Iterator[str]:
    name = f"bnsweep_dashboard_bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(normalize_url(server_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield (
            sa.make_url(normalize_url(server_url))
            .set(database=name)
            .render_as_string(hide_password=False)
        )
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def report(backend: str, count: int, seconds: float, timings: dict[str, float]) -> None:
    print(f"{backend}: {count:,} trials (filled in {seconds:.0f} s)")
    for name, value in timings.items():
        print(f"  {name:>30}: {value:.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--postgres", help="a PostgreSQL server URL (a database is made on it)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{Path(folder) / 'bench.db'}"
        t0 = time.perf_counter()
        count = fill(url, args.trials)
        report("SQLite", count, time.perf_counter() - t0, measure(url, args.repeat))
    if args.postgres:
        with postgres_database(args.postgres) as url:
            t0 = time.perf_counter()
            count = fill(url, args.trials)
            report("PostgreSQL", count, time.perf_counter() - t0, measure(url, args.repeat))


if __name__ == "__main__":
    main()
