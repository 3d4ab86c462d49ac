"""Relaunching after an outage or a killed launch (issue 19): the launch lock goes with a launch
that vanished and names its holder while it lives, no lock file or `running` row stays behind,
and one outage is one warning."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import yaml

from bnsweep import cli, reaper
from bnsweep.store import api
from bnsweep.store.api import Store
from bnsweep.store.errors import NoStoreYet, StoreError, StoreFailure
from bnsweep.store.events import TrialStarted
from bnsweep.sweep import expand, load_sweep_spec
from tests.service.tcp_proxy import TcpProxy
from tests.service.test_driver import write_spec
from tests.service.test_store import run_cell

#: The lock needs no schema: the server's test database is left as it was.
_NO_SCHEMA = {"create": False, "check_schema": False}


def _wait_until(condition: object, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"{what} within {seconds} s"
        time.sleep(0.2)


@pytest.mark.postgres
def test_a_launch_cut_off_by_an_outage_loses_its_postgresql_lock_within_the_keepalive(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Seconds, not the product's 50: the server probes the vanished client after 1 s idle.
    monkeypatch.setattr(api, "LOCK_KEEPALIVE", (1, 1, 2))
    name = f"outage-{uuid.uuid4().hex[:8]}"  # the server is shared: a name of this run only
    proxy = TcpProxy.to_database(postgres_url)
    proxy.start()
    gone = Store.open(proxy.url(postgres_url), **_NO_SCHEMA)
    try:
        with Store.open(postgres_url, **_NO_SCHEMA) as other:
            lock = gone.launch_lock(name)
            lock.__enter__()
            with pytest.raises(StoreError) as refused, other.launch_lock(name):
                pass
            line = str(refused.value)
            assert "\n" not in line
            assert f"by bnsweep launch pid {os.getpid()} on " in line
            assert "since " in line and f"bnsweep db unlock --sweep {name} --db " in line
            assert other.launch_lock_holder(name) is not None

            # The driver's machine forgets the connection without a word (a killed driver
            # whose goodbye was lost in the outage): the server alone must find out.
            proxy.vanish()
            _wait_until(lambda: other.launch_lock_holder(name) is None, 15, "the lock was released")
            with other.launch_lock(name):
                pass
    finally:
        gone._engine.pool.dispose()


@pytest.mark.postgres
def test_a_launch_that_lost_its_lock_takes_it_again_unless_another_launch_holds_it(
    postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`db unlock` ends the holder's session. After an outage the holder notices: it takes the
    lock again when nobody holds it (an outage that reset its session must not end a sweep),
    and stops when another launch took the sweep meanwhile."""
    name = f"unlocked-{uuid.uuid4().hex[:8]}"
    proxy = TcpProxy.to_database(postgres_url)
    proxy.start()
    holder = Store.open(proxy.url(postgres_url), **_NO_SCHEMA, retry_seconds=20)
    with holder, holder.launch_lock(name):
        assert cli.main(["db", "unlock", "--sweep", name, "--db", postgres_url]) == 0
        out = capsys.readouterr().out
        assert "ended bnsweep launch pid" in out and "PostgreSQL session" in out
        with Store.open(postgres_url, **_NO_SCHEMA) as other:
            assert other.launch_lock_holder(name) is None
        proxy.stop()
        threading.Timer(1.0, proxy.start).start()
        holder.schema_revision()  # after the outage: the lock is free, so it is taken again
        with Store.open(postgres_url, **_NO_SCHEMA) as other:
            assert other.launch_lock_holder(name) is not None
        assert cli.main(["db", "unlock", "--sweep", name, "--db", postgres_url]) == 0
        capsys.readouterr()
        with Store.open(postgres_url, **_NO_SCHEMA) as other, other.launch_lock(name):
            proxy.stop()
            threading.Timer(1.0, proxy.start).start()
            with pytest.raises(StoreFailure, match="another launch holds it now"):
                holder.schema_revision()
    assert cli.main(["db", "unlock", "--sweep", name, "--db", postgres_url]) == 0
    assert "nobody holds" in capsys.readouterr().out
    proxy.stop()


def test_the_sqlite_lock_names_its_holder_and_leaves_no_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    with Store.open(url) as first, Store.open(url) as second:
        with first.launch_lock("named"):
            (lock_file,) = tmp_path.glob("store.db.launch-*.lock")
            with pytest.raises(StoreError) as refused, second.launch_lock("named"):
                pass
            line = str(refused.value)
            assert f"by host {socket.gethostname()} pid {os.getpid()} since " in line
            assert str(lock_file) in line and "\n" not in line
            assert second.launch_lock_holder("named") is not None
            assert cli.main(["db", "unlock", "--sweep", "named", "--db", url]) == 1
            assert "a live process" in capsys.readouterr().err
        assert not lock_file.exists()  # removed on release
        assert second.launch_lock_holder("named") is None
        with second.launch_lock("named"):
            pass
    assert list(tmp_path.glob("*.lock")) == []


def test_running_rows_a_killed_launch_left_are_reset_by_the_next_launch_even_dropped_cells(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The store as a SIGKILLed launch leaves it: cells `running` that nothing trains. The next
    launch holds the lock, so every running row of the sweep is stale, those of cells the
    edited spec no longer has too; `bnsweep status` says so before that launch."""
    spec = write_spec(tmp_path, "killed", seeds=2)
    url = f"sqlite:///{tmp_path / 'killed.db'}"
    cells = expand(load_sweep_spec(spec))
    kept = [c for c in cells if c.seed == 1]
    with Store.open(url) as store:
        store.register_sweep("killed", spec.read_text(), cells)
        for cell in kept:
            run_cell(store, cell)
        store.apply([TrialStarted(c.spec_hash, c.seed) for c in cells if c.seed == 2])
    assert cli.main(["status", "--db", url]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "killed: 2 cells marked running, but no launch of the sweep is live" in out

    edited = yaml.safe_load(spec.read_text())
    edited["seeds"] = 1  # the running cells are no longer in the spec
    spec.write_text(yaml.safe_dump(edited))
    assert cli.main(["launch", str(spec), "--db", url, "--no-tables"]) == 0  # nothing to train
    with Store.open(url, read_only=True) as store:
        status = store.sweep_status("killed")
    assert (status.running, status.pending, status.completed) == (0, 2, 2)
    assert "reset 2 cells a stopped launch had left running" in capsys.readouterr().out


@pytest.mark.postgres
def test_one_outage_is_one_warning_then_a_count_at_recovery(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = TcpProxy.to_database(postgres_url)
    proxy.start()
    with Store.open(proxy.url(postgres_url), **_NO_SCHEMA, retry_seconds=30) as store:
        proxy.stop()
        threading.Timer(3.0, proxy.start).start()
        with caplog.at_level("DEBUG", logger="bnsweep.store.api"):
            store.schema_revision()  # retried through the outage
            store.schema_revision()
    proxy.stop()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 2, warnings
    assert "unavailable while reading the schema version" in warnings[0]
    assert re.search(r"reachable again after \d+ failed tries over \d+ s", warnings[1])
    assert sum("still unavailable" in r.getMessage() for r in caplog.records) >= 2


@pytest.mark.slow  # one real launch: 15 s on an idle machine, a minute under load
def test_a_sigkilled_launch_leaves_no_process_of_its_ray_behind(tmp_path: Path) -> None:
    """Ray's agents outlived a SIGKILLed driver by minutes; the reaper ends them with it."""
    spec = write_spec(tmp_path, "sigkill", base=False, seeds=1, defaults={"epochs": 200})
    url = f"sqlite:///{tmp_path / 'sigkill.db'}"
    env = {k: v for k, v in os.environ.items() if k not in ("BNSWEEP_DB", "RAY_ADDRESS")}
    bnsweep = str(Path(sys.executable).with_name("bnsweep"))
    driver = subprocess.Popen(
        [bnsweep, "launch", str(spec), "--db", url, "--no-tables", "--num-cpus", "1"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:

        def training() -> bool:
            assert driver.poll() is None, driver.communicate()
            try:
                store = Store.open(url, read_only=True)
            except NoStoreYet:
                return False  # the schema is not written yet
            with store:
                return store.sweeps() != [] and store.sweep_status("sigkill").running > 0

        _wait_until(training, 240, "a trial started")
        table = reaper.processes()
        ours = {pid: table[pid][1] for pid in reaper.descendants(table, [driver.pid])}
        assert len(ours) > 5  # Ray's servers, agents, the trial's worker and the reaper
        driver.kill()
        driver.wait()
        # A local Ray asks for token authentication explicitly: Ray's warning that it is on
        # by default no longer comes before everything the launch prints.
        assert "Token authentication" not in driver.stderr.read().decode()  # type: ignore[union-attr]
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)

    def none_left() -> bool:
        table = reaper.processes()
        return not [pid for pid, start in ours.items() if table.get(pid, (0, -1))[1] == start]

    _wait_until(none_left, 20, "every process of the killed launch's Ray ended")


#: A driver's store whose files become immutable between two writes (run in a child process:
#: before the fix it died of SIGBUS, which would take pytest with it).
_IMMUTABLE = """
import subprocess, sys
from bnsweep.store.api import Store
from bnsweep.store.errors import StoreFailure
from bnsweep.store.events import TrialStarted

url, spec_hash, seed, *paths = sys.argv[1:]
store = Store.open(url)
store.apply([TrialStarted(spec_hash, int(seed))])
subprocess.run(["chattr", "+i", *paths], check=True)
try:
    store.apply([TrialStarted(spec_hash, int(seed))])
except StoreFailure as err:
    print(err)
store.close()
"""


def test_store_files_made_immutable_mid_sweep_stop_it_in_one_line(tmp_path: Path) -> None:
    probe = tmp_path / "probe"
    probe.touch()
    if subprocess.run(["chattr", "+i", str(probe)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is refused here (it needs root, on ext4, xfs or btrfs)")
    subprocess.run(["chattr", "-i", str(probe)], check=True)
    folder = tmp_path / "store"
    folder.mkdir()
    db = folder / "store.db"
    cells = expand(load_sweep_spec(write_spec(tmp_path, "frozen", seeds=1)))
    with Store.open(f"sqlite:///{db}") as store:
        store.register_sweep("frozen", "", cells)
    paths = [str(db), f"{db}-wal", f"{db}-shm", str(folder)]
    try:
        done = subprocess.run(
            [sys.executable, "-c", _IMMUTABLE, f"sqlite:///{db}", cells[0].spec_hash, "1", *paths],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        subprocess.run(["chattr", "-i", *paths], capture_output=True)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])  # -7 was SIGBUS
    (line,) = done.stdout.splitlines()
    assert "is no longer writable" in line and "chattr -i" in line
    with Store.open(f"sqlite:///{db}", read_only=True) as store:
        assert store.sweep_status("frozen").running == 1  # the write before it is kept
