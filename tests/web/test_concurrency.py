"""A real `bnsweep dashboard` under concurrent requests, on SQLite and PostgreSQL, while a writer
changes the same store.

`bnsweep dashboard` runs in a process of its own (a crash is an exit code, not the end of the
test run) on a free loopback port. Every route kind of the app is asked for in one burst of 64
requests sent at once: uvicorn runs sync routes in a pool of 40 threads, so the store is read
from many threads together. The writer is a thread applying the events a launch's callback applies
(a cell's start and epochs, one cell after another) through `Store.apply`: a launch's writes,
without Ray or training. Each write changes the store's fingerprint, so the pages are built from
the store during the burst rather than served from the cache.
"""

from __future__ import annotations

import http.client
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

pytest.importorskip("fastapi", reason="the dashboard extra (FastAPI) is not installed")

from bnsweep.store.api import Store
from bnsweep.store.engines import make_engine
from bnsweep.store.events import EpochRecorded, TrialStarted
from bnsweep.web.app import create_app
from bnsweep.workers.spec import TrialSpec
from tests.service.test_store import epoch, fresh_database, make_spec, run_cell
from tests.web.stores import register
from tests.web.test_browser import environment, free_port

pytestmark = pytest.mark.timeout(120)

#: Requests sent at once. With SQLAlchemy's default pool for the read-only SQLite engine, 32
#: crashed the dashboard in 10 of 13 runs on two cores (fewest under load), 48 in 4 of 5, 64 in
#: 14 of 14.
CONCURRENT = 64
#: Cells done before the requests start; the writer runs the others, one after another.
DONE = 3


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A store whose sweep `demo` has its first seeds done and the rest left to the writer."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'demo.db'}"
        fill(url)
        yield url
    else:
        with fresh_database(request.getfixturevalue("postgres_url")) as url:
            fill(url)
            yield url


def specs() -> list[TrialSpec]:
    """One arm at one learning rate: a table, a cell, a figure of accuracy against γ."""
    return [
        make_spec(bn_scale_init=0.1, bn_lr_divisor=100.0, lr=0.1, seed=seed)
        for seed in range(1, 100)
    ]


def fill(url: str) -> None:
    # Completed without epochs, and the writer's trials stay running: the curves pages then
    # draw no curves. Each page is built anew whenever the store changed, matplotlib takes
    # ~0.3 s a figure, and every figure route draws all of a sweep's figures.
    with Store.open(url) as store:
        register(store, "demo", specs(), len(specs()))
        for spec in specs()[:DONE]:
            run_cell(store, spec, epochs=0)


def write_until(url: str, stop: threading.Event, writes: list[float]) -> None:
    """Start the pending cells one after another and record their epochs, as a launch's
    callback does, one transaction per event, until `stop`; note each write's time."""
    with Store.open(url) as store:
        for spec in specs()[DONE:]:
            key = (spec.spec_hash, spec.seed)
            events = [
                TrialStarted(*key, host="node-1", device="cpu"),
                *(EpochRecorded(*key, metrics=epoch(n)) for n in range(1, 4)),
            ]
            for event in events:
                if stop.is_set():
                    return
                store.apply([event])
                writes.append(time.monotonic())
                time.sleep(0.05)  # 20 writes a second: more than a launch of many trials


@dataclass(frozen=True)
class Dashboard:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            # faulthandler's report of a crash: the thread that crashed first, then the others.
            text = self.log.read_text(errors="replace").partition("\nExtension modules:")[0]
            pytest.fail(f"the dashboard died (exit {self.process.returncode}):\n{text[:3000]}")


@pytest.fixture
def dashboard(store_url: str, tmp_path: Path) -> Iterator[Dashboard]:
    """`bnsweep dashboard` on the store, once it answers."""
    port = free_port()
    log = tmp_path / "dashboard.log"
    command = [sys.executable, "-X", "faulthandler", "-m", "bnsweep.cli", "dashboard"]
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*command, "--db", store_url, "--port", str(port)],
            cwd=tmp_path,
            env=environment(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Dashboard(process, port, log)
    try:
        deadline = time.monotonic() + 60
        while get(port, "/api/sweeps")[0] != 200:
            server.check_alive()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield server
    finally:
        process.terminate()
        process.wait(timeout=20)


def get(port: int, path: str) -> tuple[int | str, bytes]:
    """(status, body) of one GET on a connection of its own; the error's name if it failed."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException) as err:  # the server closed the connection
        return type(err).__name__, b""
    finally:
        conn.close()


def route_paths(trial_id: int) -> list[str]:
    """One path of every route kind, then the cheapest reads of the store again, up to
    CONCURRENT paths."""
    kinds = [
        "/",
        "/static/bnsweep.css",
        "/sweeps/demo",
        "/sweeps/demo/tables.csv",
        "/sweeps/demo/trials.csv",
        "/sweeps/demo/trials.parquet",
        "/sweeps/demo/cells/0-0-0",
        "/sweeps/demo/curves",
        "/sweeps/demo/curves_seeds",
        "/sweeps/demo/figures/accuracy_vs_gamma.svg",
        "/sweeps/demo/trials?sort=seed&desc=1",
        f"/sweeps/demo/trials/{trial_id}",
        "/api/sweeps",
        "/api/sweeps/demo/status",
        "/api/sweeps/demo/trials",
        "/api/sweeps/demo/tables",
    ]
    cheap = ["/api/sweeps/demo/trials", "/sweeps/demo/trials.csv", "/api/sweeps"]
    return kinds + [cheap[i % len(cheap)] for i in range(CONCURRENT - len(kinds))]


def untested_routes(url: str, paths: list[str]) -> list[str]:
    """The app's GET routes that none of `paths` reaches."""
    routes = [r for r in create_app(url).routes if "GET" in getattr(r, "methods", ())]
    return [
        r.path
        for r in routes
        if not any(r.path_regex.match(p.partition("?")[0]) for p in paths)  # type: ignore[attr-defined]
    ]


def burst(port: int, paths: list[str]) -> list[tuple[str, int | str]]:
    """(path, status) of each of `paths`, all requested at once, each on its own connection."""
    barrier = threading.Barrier(len(paths))

    def ask(path: str) -> tuple[str, int | str]:
        barrier.wait()
        return path, get(port, path)[0]

    with ThreadPoolExecutor(len(paths)) as pool:
        return list(pool.map(ask, paths))


def test_every_route_answers_concurrent_requests_during_writes(
    dashboard: Dashboard, store_url: str
) -> None:
    with Store.open(store_url, read_only=True) as store:
        trials = store.trials(sweep="demo", status="completed")
    paths = route_paths(int(trials["trial_id"].iloc[0]))
    # Every GET route of the app is among them: a new route joins this test or fails it.
    assert not untested_routes(store_url, paths)
    stop, writes, errors = threading.Event(), [], []

    def write() -> None:
        try:
            write_until(store_url, stop, writes)
        except Exception as err:  # reported below, in the test's own thread
            errors.append(err)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        start = time.monotonic()
        answers = burst(dashboard.port, paths)
        end = time.monotonic()
    finally:
        stop.set()
        writer.join(timeout=60)
    dashboard.check_alive()
    failed = [(path, status) for path, status in answers if status != 200]
    assert not failed, failed
    assert not errors, errors
    assert any(start <= t <= end for t in writes), "the writer wrote nothing during the requests"


@pytest.mark.parametrize("read_only", [True, False], ids=["read-only", "read-write"])
@pytest.mark.parametrize("relative", [True, False], ids=["relative", "absolute"])
def test_sqlite_engines_hand_each_connection_to_one_thread_at_a_time(
    read_only: bool, relative: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    url = "sqlite:///demo.db" if relative else f"sqlite:///{tmp_path / 'demo.db'}"
    engine = make_engine(sa.make_url(url), read_only=read_only)
    try:
        assert isinstance(engine.pool, sa.pool.QueuePool), type(engine.pool).__name__
    finally:
        engine.dispose()
