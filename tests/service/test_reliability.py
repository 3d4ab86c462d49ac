"""The sweep service under trouble, with real Ray and real databases (issue 3, "Reliability"):

1. a worker node lost mid-sweep; 2. the driver killed with SIGKILL and relaunched; 3. launch →
query on PostgreSQL; 4. the database unreachable for a few seconds mid-sweep; 6. a database
password never shown. (5, malformed specs and CLI calls, is tests/service/test_cli.py.)

Every test runs on one simulated cluster (`ray.cluster_utils.Cluster`: a head with no CPUs and
two 1-CPU worker nodes, all on this machine, so a local checkpoint folder is in fact shared).
Its temp dir (RAY_TMPDIR) is private to this module, so a `ray.init()` elsewhere on the machine
never finds it, and token authentication is on.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pytest
import ray
import sqlalchemy as sa
from ray.cluster_utils import Cluster

from bnsweep import preflight
from bnsweep.cli import main
from bnsweep.driver import launch
from bnsweep.plan import cell_of
from bnsweep.store.api import Store
from bnsweep.store.errors import StoreError, normalize_url
from bnsweep.sweep import expand, load_sweep_spec
from bnsweep.workers.errors import SpecError
from tests.service.tcp_proxy import TcpProxy
from tests.service.test_driver import results, run_launch, write_spec

pytestmark = pytest.mark.timeout(900)

PASSWORD = "Sup3r-s3cret-pw"


# -- the cluster ----------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _ensure_auth_token() -> None:
    """Token authentication needs a token; generate the default one if this machine has none."""
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return
    if not (Path.home() / ".ray" / "auth_token").exists():
        subprocess.run(
            [str(Path(sys.executable).with_name("ray")), "get-auth-token", "--generate"],
            check=True,
            stdout=subprocess.DEVNULL,
        )


@pytest.fixture(scope="module")
def ray_env() -> Iterator[dict[str, str]]:
    """This module's Ray settings, also for the `bnsweep` processes it starts. A short temp dir:
    Ray's socket paths under it must stay below the 107 characters of a Unix socket name."""
    folder = tempfile.mkdtemp(prefix="bnrel", dir="/tmp")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_TMPDIR", folder)
        env.setenv("RAY_AUTH_MODE", "token")
        env.delenv("RAY_ADDRESS", raising=False)
        env.delenv(preflight.SHARED_STORAGE_ENV, raising=False)
        _ensure_auth_token()
        # Ray reads RAY_AUTH_MODE into a cached config at import; refresh it as ray.init does
        # for a local cluster, or this process would talk to the cluster without its token.
        ray._raylet.Config.initialize("")
        yield {"RAY_TMPDIR": folder, "RAY_AUTH_MODE": "token"}
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(ray_env: dict[str, str]) -> Iterator[Cluster]:
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False}
    )
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level=logging.WARNING)
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


def _cpus_free(expected: float, timeout: float = 60.0) -> None:
    """Wait until the cluster's free CPUs are back to `expected` (no trial actor holds one)."""
    deadline = time.monotonic() + timeout
    while ray.available_resources().get("CPU", 0.0) < expected:
        assert time.monotonic() < deadline, f"CPUs still held: {ray.available_resources()}"
        time.sleep(0.5)


def _watch(check: Callable[[], bool], act: Callable[[], None], timeout: float) -> threading.Thread:
    """In a thread: poll `check` every 0.5 s, run `act` once it holds (or give up)."""

    def loop() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):  # the store may not exist or be busy yet
                if check():
                    act()
                    return
            time.sleep(0.5)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def _progressed(
    url: str, sweep: str, *, running: int, completed: int = 0, epochs: bool = False
) -> bool:
    """At least `running` running trials (each with a stored epoch, so a checkpoint, when
    `epochs`), and at least `completed` completed ones."""
    with Store.open(url, create=False, retry_seconds=0) as store:
        trials, stored = store.trials(sweep=sweep), store.epochs(sweep=sweep)
    busy = trials[trials["status"] == "running"]
    if epochs:
        busy = busy[busy["trial_id"].isin(set(stored["trial_id"]))]
    return len(busy) >= running and (trials["status"] == "completed").sum() >= completed


def assert_each_cell_once(trials: pd.DataFrame, epochs: pd.DataFrame, spec: Path) -> None:
    """Every cell of the spec completed, as exactly one trial with one row per epoch."""
    cells = {cell_of(c): c.epochs for c in expand(load_sweep_spec(spec))}
    assert len(trials) == len(cells)
    assert set(zip(trials["spec_hash"], trials["seed"], strict=True)) == set(cells)
    assert set(trials["status"]) == {"completed"}
    rows = epochs.groupby(["spec_hash", "seed"])["epoch"].apply(list).to_dict()
    assert rows == {cell: list(range(1, n + 1)) for cell, n in cells.items()}


# -- shared storage on several nodes --------------------------------------------------------------
def test_a_local_checkpoint_folder_is_refused_on_several_nodes(
    cluster: Cluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = write_spec(tmp_path, "unshared")
    url = f"sqlite:///{tmp_path / 'unshared.db'}"
    with pytest.raises(SpecError, match="3 nodes; checkpoints need shared storage"):
        run_launch(spec, url)
    assert main(["launch", str(spec), "--db", url, "--no-tables"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bnsweep: error: storage: ")
    assert "NFS" in err[0] and "s3://" in err[0]
    with Store.open(url) as store:
        assert store.sweeps() == []  # refused before anything was written


# -- 1. a worker node lost mid-sweep -------------------------------------------------------------
def test_a_sweep_survives_the_loss_of_a_worker_node(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The folder is on this machine, which every simulated node shares: declared, as a compose
    # volume would be, through the environment.
    monkeypatch.setenv(preflight.SHARED_STORAGE_ENV, "1")
    # 20 epochs: the two trials must both be running, each with an epoch in the store (written
    # every 2 s), when the watcher looks; on a quiet machine an epoch takes a fraction of a second.
    n_epochs = 20
    spec = write_spec(
        tmp_path,
        "nodeloss",
        defaults={"epochs": n_epochs},
        base=False,
        seeds=2,
        retries=2,
        checkpoint_every=1,  # every stored epoch has a checkpoint: the retry resumes after one
    )
    url = f"sqlite:///{tmp_path / 'nodeloss.db'}"
    victim = sorted(cluster.worker_nodes, key=lambda n: n.node_id)[-1]
    removed = threading.Event()

    def remove() -> None:
        cluster.remove_node(victim)
        removed.set()

    # Both 1-CPU workers run one trial each; once both have a checkpoint, one node goes.
    watcher = _watch(lambda: _progressed(url, "nodeloss", running=2, epochs=True), remove, 300)
    summary, _ = run_launch(spec, url)
    watcher.join(timeout=5)
    assert removed.is_set(), "the node was never removed: both trials never ran at once"
    cluster.add_node(num_cpus=1)  # back to two workers for the tests below

    trials, epochs = results(url, "nodeloss")
    assert_each_cell_once(trials, epochs, spec)
    assert (summary.completed, summary.failed) == (2, 0)
    # The trial on the lost node started again on the other one, from its last checkpoint.
    assert summary.resumed and min(summary.resumed.values()) >= 1
    (cell,) = summary.resumed
    resumed = trials.set_index(["spec_hash", "seed"]).loc[cell]
    assert resumed["attempts"] == 2 and resumed["epochs_run"] == n_epochs
    assert summary.starts == 3


# -- 2. the driver killed with SIGKILL, then relaunched -------------------------------------------
def _bnsweep(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(Path(sys.executable).with_name("bnsweep")), *args],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, killed as a whole
    )


@pytest.mark.slow  # two launches of 3 cells around a SIGKILL: over a minute on 2 cores
def test_a_killed_driver_relaunched_runs_only_the_missing_cells(
    cluster: Cluster, ray_env: dict[str, str], tmp_path: Path
) -> None:
    # One cell at a time, 30 epochs each: the kill must find one cell completed while the next
    # still runs, and on a quiet machine two cells side by side end within a flush of each other.
    spec = write_spec(
        tmp_path,
        "killed",
        defaults={"epochs": 30},
        base=False,
        seeds=3,
        shared_storage=True,
        checkpoint_every=1,  # every stored epoch has its checkpoint: resumed from the last one
        max_concurrent=1,
    )
    url = f"sqlite:///{tmp_path / 'killed.db'}"
    args = ("launch", str(spec), "--db", url, "--address", cluster.address, "--no-tables")
    process = _bnsweep(*args, env=ray_env)
    try:
        deadline = time.monotonic() + 300
        while not _quietly(lambda: _progressed(url, "killed", running=1, completed=1)):
            assert process.poll() is None, f"the launch ended early: {process.communicate()}"
            assert time.monotonic() < deadline, "no cell completed while another ran"
            time.sleep(0.5)
    finally:
        with contextlib.suppress(ProcessLookupError):  # it may have ended on its own
            os.killpg(process.pid, signal.SIGKILL)
        _, stderr = process.communicate()
    _cpus_free(2.0)  # the killed driver's trials went with it
    # What the CLI showed until then: its progress lines, none of Tune's per-epoch chatter.
    assert "cells 3: 0 done, 0 running, 3 pending" in stderr
    noise = ("snapshotting has been triggered", "Checkpoint successfully created", "View detailed")
    assert not [n for n in noise if n in stderr], stderr
    before, before_epochs = results(url, "killed")
    done_before = before[before["status"] == "completed"].set_index(["spec_hash", "seed"])
    in_flight = before[before["status"] == "running"].set_index(["spec_hash", "seed"])
    assert len(done_before) >= 1 and len(in_flight) >= 1

    summary, _ = run_launch(spec, url)
    assert set(summary.resumed) == set(in_flight.index)  # each from its cell's checkpoint
    trials, epochs = results(url, "killed")
    assert_each_cell_once(trials, epochs, spec)
    by_cell = trials.set_index(["spec_hash", "seed"])
    for cell in done_before.index:  # finished before the kill: not run again
        assert cell not in summary.attempted
        assert by_cell.loc[cell, "attempts"] == 1
        assert by_cell.loc[cell, "started_at"] == done_before.loc[cell, "started_at"]
    assert summary.ran == len(trials) - len(done_before)
    stored_before = before_epochs.groupby(["spec_hash", "seed"])["epoch"].max()
    for cell in in_flight.index:  # running at the kill: started again, from their checkpoints
        assert by_cell.loc[cell, "attempts"] == 2
        assert summary.resumed.get(cell, 0) >= stored_before.get(cell, 0)
    # Epochs stored before the kill are the same rows, kept.
    merged = before_epochs.merge(epochs, on=["spec_hash", "seed", "epoch"], suffixes=("", "_now"))
    assert len(merged) == len(before_epochs)
    assert (merged["trial_id"] == merged["trial_id_now"]).all()


def _quietly(check: Callable[[], bool]) -> bool:
    with contextlib.suppress(Exception):
        return check()
    return False


# -- PostgreSQL -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pg_url(postgres_url: str) -> Iterator[str]:
    """A fresh database on the test server (the server itself is never touched); dropped after."""
    name = f"bnsweep_rel_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(normalize_url(postgres_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        url = sa.make_url(normalize_url(postgres_url)).set(database=name)
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def _with_password(url: str) -> str:
    """The same server with a password in the URL (trust auth ignores it; a leak would show)."""
    parsed = sa.make_url(url)
    if parsed.password:
        pytest.skip("BNSWEEP_TEST_POSTGRES_URL already carries a password")
    return parsed.set(password=PASSWORD).render_as_string(hide_password=False)


@contextlib.contextmanager
def _all_logs() -> Iterator[io.StringIO]:
    """Every log record of this process, formatted, at INFO and above."""
    sink = io.StringIO()
    handler = logging.StreamHandler(sink)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield sink
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


@pytest.mark.postgres
def test_launch_then_query_on_postgresql_never_shows_the_password(
    cluster: Cluster, pg_url: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    url = _with_password(pg_url)
    # The password also sits in the spec's own `database` field; --db wins over it.
    spec = write_spec(tmp_path, "pg", base=False, shared_storage=True, database=url)
    with _all_logs() as logs:
        assert main(["launch", str(spec), "--db", url]) == 0
        launched = capfd.readouterr()
        assert main(["status", "--db", url, "--sweep", "pg"]) == 0
        status = capfd.readouterr()
        assert main(["query", "--db", url, "--sweep", "pg", "--format", "json"]) == 0
        queried = capfd.readouterr()
        assert main(["query", "--db", url, "--sweep", "pg", "--epochs", "--format", "csv"]) == 0
        epochs_csv = capfd.readouterr()
    assert "sweep pg: ran 2 cells this launch (2 completed, 0 diverged, 0 failed)" in launched.out
    assert "pg: all 2 cells done" in status.out
    rows = json.loads(queried.out)
    assert [r["status"] for r in rows] == ["completed", "completed"]
    assert all(r["epochs_run"] == 2 and 0 <= r["test_acc"] <= 1 for r in rows)
    assert len(epochs_csv.out.strip().splitlines()) == 1 + 2 * 2
    shown = [launched.out, launched.err, status.out, status.err, queried.out, epochs_csv.out]
    for text in [*shown, logs.getvalue()]:
        assert PASSWORD not in text
    # Nor in what the sweep left on disk (Tune's pickles and results), nor in the stored spec.
    for path in (tmp_path / "runs").rglob("*"):
        if path.is_file():
            assert PASSWORD.encode() not in path.read_bytes(), path
    with Store.open(url, create=False) as store:
        assert PASSWORD not in store.get_sweep("pg").spec_text
        assert PASSWORD not in repr(store)


@pytest.mark.postgres
def test_an_unreachable_database_is_one_line_without_its_password(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{_free_port()}/bnsweep"
    spec = write_spec(tmp_path, "nowhere")
    calls = [
        ["launch", str(spec), "--db", url],
        ["launch", str(spec), "--db", url, "--dry-run"],
        ["status", "--db", url],
        ["query", "--db", url],
        ["db", "upgrade", "--db", url],
    ]
    with _all_logs() as logs:
        for argv in calls:
            assert main(argv) == 1, argv  # the database is down: a runtime failure
            out, err = capfd.readouterr()
            assert out == "" and len(err.strip().splitlines()) == 1, (argv, err)
            assert err.startswith("bnsweep: error: ") and "***" in err, err
            assert PASSWORD not in err
        monkeypatch.setenv("BNSWEEP_DB", url)  # from the environment, too
        assert main(["status"]) == 1
        assert PASSWORD not in "".join(capfd.readouterr())
    assert PASSWORD not in logs.getvalue()


# -- 4. the database unreachable for a few seconds ----------------------------------------------
@pytest.mark.postgres
def test_a_database_outage_during_a_sweep_loses_nothing(
    cluster: Cluster, pg_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = TcpProxy.to_database(pg_url)
    proxy.start()
    through = proxy.url(pg_url)
    # 10 epochs: long enough that the watcher sees a trial running, on a fast machine too.
    spec = write_spec(tmp_path, "outage", defaults={"epochs": 10}, base=False, shared_storage=True)
    outage: dict[str, float] = {}

    def cut_for_five_seconds() -> None:
        proxy.stop()
        outage["from"] = time.monotonic()
        time.sleep(5)
        proxy.start()
        outage["to"] = time.monotonic()

    # Read the real server directly: the proxy is what goes away.
    watcher = _watch(lambda: _progressed(pg_url, "outage", running=1), cut_for_five_seconds, 300)
    try:
        with caplog.at_level(logging.WARNING, logger="bnsweep.store.api"):
            summary, _ = run_launch(spec, through)
        watcher.join(timeout=10)
    finally:
        with contextlib.suppress(AssertionError, OSError):
            proxy.stop()
    assert outage.get("to"), "the database never went away: no epoch was stored in time"
    assert "unavailable" in caplog.text  # writes failed during the outage and were retried
    assert (summary.completed, summary.failed) == (2, 0)
    trials, epochs = results(pg_url, "outage")
    assert_each_cell_once(trials, epochs, spec)
    assert list(trials["attempts"]) == [1, 1]


@pytest.mark.postgres
@pytest.mark.slow  # a launch stopped by the store, then a relaunch: about a minute on 2 cores
def test_a_database_gone_for_good_stops_the_launch_and_a_relaunch_finishes(
    cluster: Cluster, pg_url: str, tmp_path: Path
) -> None:
    proxy = TcpProxy.to_database(pg_url)
    proxy.start()
    through = proxy.url(pg_url)
    # Another α than the other PostgreSQL sweeps: cells are shared between sweeps by their key.
    spec = write_spec(
        tmp_path,
        "gone",
        defaults={"epochs": 10, "lr": 0.05},
        base=False,
        shared_storage=True,
        checkpoint_every=1,
    )
    sweep = load_sweep_spec(spec)
    watcher = _watch(lambda: _progressed(pg_url, "gone", running=1), proxy.stop, 300)
    with Store.open(through, retry_seconds=3) as store, pytest.raises(StoreError) as err:
        launch(sweep, store, spec.read_text(), progress_stream=io.StringIO())
    watcher.join(timeout=10)
    message = str(err.value)
    assert "unavailable for 3 s" in message and "recording results" in message
    assert "\n" not in message
    _cpus_free(2.0)  # the stopped launch's trials were stopped with it

    proxy.start()
    try:
        summary, _ = run_launch(spec, through)
    finally:
        proxy.stop()
    assert summary.resumed  # the cells in flight when the store went continue from checkpoints
    trials, epochs = results(pg_url, "gone")
    assert_each_cell_once(trials, epochs, spec)
