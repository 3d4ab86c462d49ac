"""Launches stopped and relaunched as a user would: Ctrl-C mid-sweep, an edit of the spec, the
SQLite file deleted under a running store, and the exit codes a script sees.

The launches are real `bnsweep launch` processes, each with a local Ray of its own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from bnsweep.store.api import Store
from bnsweep.store.errors import StoreError, StoreFailure
from bnsweep.store.events import EpochRecorded, TrialStarted
from bnsweep.sweep import expand, load_sweep_spec
from bnsweep.workers.results import EpochMetrics
from tests.service.test_driver import results, write_spec

pytestmark = pytest.mark.timeout(600)


def _argv(spec: Path, url: str) -> list[str]:
    bnsweep = str(Path(sys.executable).with_name("bnsweep"))
    return [bnsweep, "launch", str(spec), "--db", url, "--no-tables", "--num-cpus", "2"]


#: The launch's environment: its own local Ray and the store given on the command line.
_ENV = {k: v for k, v in os.environ.items() if k not in ("BNSWEEP_DB", "RAY_ADDRESS")}


def _launch(spec: Path, url: str) -> subprocess.Popen[str]:
    """A launch in its own process group, as a terminal runs it (Ctrl-C reaches the group)."""
    return subprocess.Popen(
        _argv(spec, url), env=_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip


def _launch_to_the_end(spec: Path, url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_argv(spec, url), env=_ENV, capture_output=True, text=True, timeout=500)


def _checkpoints(spec: Path) -> dict[str, int]:
    """Cell folder → the epoch of its latest checkpoint."""
    sweep = load_sweep_spec(spec)
    found = {}
    for path in Path(sweep.storage).glob(f"{sweep.name}/cells/*/checkpoint-*"):
        found[path.parent.name] = int(path.name.removeprefix("checkpoint-"))
    return found


@pytest.mark.slow  # a launch interrupted mid-sweep, then two relaunches: about a minute
def test_ctrl_c_says_so_exits_130_and_an_edited_relaunch_trains_only_its_cells(
    tmp_path: Path,
) -> None:
    # Two arms x 2 seeds, 30 epochs with a checkpoint after each; one trial at a time.
    spec = write_spec(
        tmp_path, "stopped", defaults={"epochs": 30}, checkpoint_every=1, max_concurrent=1
    )
    url = f"sqlite:///{tmp_path / 'stopped.db'}"
    process = _launch(spec, url)
    try:
        deadline = time.monotonic() + 300
        while not any(epoch >= 2 for epoch in _checkpoints(spec).values()):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.2)
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C at a terminal signals the whole group
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130, (out, err)
    assert "interrupted after" in out and "ran " not in out
    trials, _ = results(url, "stopped")
    assert (trials["status"] == "completed").sum() < 4
    assert not (trials["status"] == "running").any()  # nothing trains them any more
    assert not list(tmp_path.glob("*.lock")) and not list(tmp_path.glob("runs/*/*.lock"))
    in_flight = set(_checkpoints(spec))
    assert in_flight

    # The edit drops BASE: the relaunch trains the γ = 0.5 cells only, from their checkpoints.
    edited = yaml.safe_load(spec.read_text())
    edited["base"] = False
    spec.write_text(yaml.safe_dump(edited))
    again = _launch_to_the_end(spec, url)
    assert again.returncode == 0, again.stderr
    trials, epochs = results(url, "stopped")
    wanted = {(c.spec_hash, c.seed) for c in expand(load_sweep_spec(spec))}
    done = trials[trials["status"] == "completed"]
    assert wanted <= set(zip(done["spec_hash"], done["seed"], strict=True))
    base = trials[trials["bn_scale_init"] == 1.0]
    assert not (base["status"] == "running").any()  # stale rows went back to pending
    # Each cell's epochs are there once, 1..30.
    kept = epochs[epochs["spec_hash"].isin({h for h, _ in wanted})]
    assert kept.groupby(["spec_hash", "seed"])["epoch"].apply(sorted).tolist() == [
        list(range(1, 31))
    ] * len(wanted)


def test_a_launch_with_failed_cells_exits_1_and_says_how_many(tmp_path: Path) -> None:
    spec = write_spec(
        tmp_path,
        "failing",
        grids=[{"dataset": ["cifar10"], "data_root": [str(tmp_path / "no-such-folder")]}],
        base=False,
        seeds=1,
        retries=0,
    )
    url = f"sqlite:///{tmp_path / 'failing.db'}"
    done = _launch_to_the_end(spec, url)
    assert done.returncode == 1, done.stderr
    assert "1 cells did not complete (1 failed, 0 diverged)" in done.stdout


def test_a_sqlite_file_deleted_or_replaced_under_the_store_stops_it(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    (cell,) = expand(load_sweep_spec(write_spec(tmp_path, "gone", base=False, seeds=1)))
    key = (cell.spec_hash, cell.seed)
    metrics = EpochMetrics(1, 1.0, 1.0, 0.5, 0.5, 0.1, 1.0)
    for how in ("deleted", "replaced by another file"):
        with Store.open(f"sqlite:///{path}") as store:
            store.register_sweep("gone", "", [cell])
            store.apply([TrialStarted(*key)])
            path.unlink()
            for suffix in ("-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
            if how != "deleted":
                path.write_bytes(b"")
            with pytest.raises(StoreFailure, match=f"was {how} while bnsweep had it open") as err:
                store.apply([EpochRecorded(*key, metrics=metrics)])
            assert "\n" not in str(err.value)
        path.unlink(missing_ok=True)


def test_stale_running_rows_go_back_to_pending(tmp_path: Path) -> None:
    cells = expand(load_sweep_spec(write_spec(tmp_path, "stale", seeds=2)))
    with Store.open(f"sqlite:///{tmp_path / 'stale.db'}") as store:
        store.register_sweep("stale", "", cells)
        store.register_sweep("other", "", cells[:1])
        store.apply([TrialStarted(c.spec_hash, c.seed) for c in cells[:3]])
        assert store.requeue_running("other") == 1  # only that sweep's cells
        assert store.requeue_running("stale") == 2
        status = store.trials(sweep="stale")["status"]
    assert sorted(status.tolist()) == ["pending"] * 4


def _lock_refuses_a_second_holder(url: str) -> None:
    # The lock needs no schema: the server's test database is left as it was.
    opened = {"create": False, "check_schema": False} if url.startswith("postgresql") else {}
    with Store.open(url, **opened) as first, Store.open(url, **opened) as second:
        with first.launch_lock("shared"):
            busy = pytest.raises(StoreError, match="sweep shared is being launched already")
            with busy as err, second.launch_lock("shared"):
                pass
            assert "\n" not in str(err.value)
            with second.launch_lock("another"):  # other sweeps are not held up
                pass
        with second.launch_lock("shared"):  # released with the first launch
            pass


def test_one_launch_per_sweep_and_store_on_sqlite(tmp_path: Path) -> None:
    _lock_refuses_a_second_holder(f"sqlite:///{tmp_path / 'store.db'}")


@pytest.mark.postgres
def test_one_launch_per_sweep_and_store_on_postgresql(postgres_url: str) -> None:
    _lock_refuses_a_second_holder(postgres_url)


def test_the_same_sweep_launched_from_a_second_folder_is_refused(tmp_path: Path) -> None:
    """Two folders (two storage paths, two folder locks), one store: the store's lock holds."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = write_spec(tmp_path / "a", "twice-over")
    second = write_spec(tmp_path / "b", "twice-over")
    assert load_sweep_spec(first).storage != load_sweep_spec(second).storage
    with Store.open(url) as store, store.launch_lock("twice-over"):
        done = _launch_to_the_end(second, url)
    assert done.returncode == 2, done.stderr
    (line,) = [ln for ln in done.stderr.splitlines() if ln.startswith("bnsweep")]
    assert "sweep twice-over is being launched already into this store" in line
    with Store.open(url) as store:
        assert store.sweeps() == []  # refused before anything was written
