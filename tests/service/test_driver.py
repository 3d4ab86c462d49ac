"""The Ray Tune driver on a real local Ray and a real SQLite store: what a launch trains, what it
records, what a relaunch skips, and how errors, divergences, resources and caps come out.

One local Ray (2 CPUs) serves the whole module; every sweep is tiny (resnet8 on digits).
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import io
import itertools
import json
import logging
import os
import pickle
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import ray
import yaml

from bnsweep import callback, driver, preflight, trainable
from bnsweep.callback import LaunchSummary, StoreCallback
from bnsweep.checkpoints import CellRecords, CellStorage, write_cell_file
from bnsweep.cli import main
from bnsweep.driver import launch
from bnsweep.plan import cell_of
from bnsweep.preflight import check_storage_is_shared
from bnsweep.progress import Progress
from bnsweep.store.api import Store
from bnsweep.store.events import EpochRecorded, TrialStarted
from bnsweep.sweep import expand, load_sweep_spec, parse_sweep_spec
from bnsweep.workers.diagnostics import BNDiagnostics
from bnsweep.workers.errors import SpecError
from bnsweep.workers.trial import run_trial

pytestmark = pytest.mark.timeout(600)


# -- helpers (also used by test_reliability.py) ---------------------------------------------
def write_spec(folder: Path, name: str, **overrides: Any) -> Path:
    """A tiny sweep: resnet8 on digits, γ=0.5 (c=100) and BASE, 2 seeds, 2 epochs; an override
    of None removes that key."""
    spec: dict[str, Any] = {
        "name": name,
        "defaults": {
            "dataset": "digits",
            "arch": "resnet8",
            "epochs": 2,
            "batch_size": 64,
            "device": "cpu",
        },
        "grids": [{"bn_scale_init": [0.5], "bn_lr_divisor": [100]}],
        "base": True,
        "seeds": 2,
        "resources": {"cpus": 1},
        "max_concurrent": 2,
        "retries": 1,
        "storage": str(folder / "runs"),
    }
    spec["defaults"].update(overrides.pop("defaults", {}))
    for key, value in overrides.items():  # None removes a key
        if value is None:
            spec.pop(key, None)
        else:
            spec[key] = value
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


def run_launch(spec_path: Path, url: str, **kwargs: Any) -> tuple[LaunchSummary, str]:
    """`launch()` as the CLI calls it; returns the summary and what the progress display wrote."""
    stream = io.StringIO()
    sweep = load_sweep_spec(spec_path)
    with Store.open(url) as store:
        summary = launch(
            sweep, store, spec_path.read_text(encoding="utf-8"), progress_stream=stream, **kwargs
        )
    return summary, stream.getvalue()


def results(url: str, sweep: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    with Store.open(url, create=False) as store:
        return store.trials(sweep=sweep), store.epochs(sweep=sweep)


def assert_never_overlapping(trials: pd.DataFrame) -> None:
    """No trial started before the previous one (in start order) finished."""
    spans = trials.sort_values("started_at")[["started_at", "finished_at"]].to_numpy()
    for (_, finished), (started, _) in itertools.pairwise(spans):
        assert started >= finished, f"a trial started at {started}, before {finished}"


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield
    ray.shutdown()


# -- a launch, then a relaunch ------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(local_ray: None, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One tiny sweep launched once and then again; the tests below read what it left."""
    folder = tmp_path_factory.mktemp("tiny")
    spec = write_spec(folder, "tiny")
    url = f"sqlite:///{folder / 'tiny.db'}"
    first, progress = run_launch(spec, url)
    trials, epochs = results(url, "tiny")
    digest = file_digest(folder / "tiny.db")
    again, _ = run_launch(spec, url)
    return {
        "spec": spec,
        "url": url,
        "db": folder / "tiny.db",
        "first": first,
        "progress": progress,
        "trials": trials,
        "epochs": epochs,
        "digest": digest,
        "again": again,
    }


def test_a_launch_trains_every_cell_exactly_once(tiny: dict[str, Any]) -> None:
    first, trials = tiny["first"], tiny["trials"]
    assert (first.ran, first.completed, first.failed, first.diverged) == (4, 4, 0, 0)
    assert first.starts == 4 and not first.resumed
    assert len(trials) == 4
    assert set(trials["status"]) == {"completed"}
    assert list(trials["attempts"]) == [1, 1, 1, 1]
    cells = {cell_of(c) for c in expand(load_sweep_spec(tiny["spec"]))}
    assert set(zip(trials["spec_hash"], trials["seed"], strict=True)) == cells


def test_every_epoch_and_the_run_details_are_stored(tiny: dict[str, Any]) -> None:
    trials, epochs = tiny["trials"], tiny["epochs"]
    assert epochs.groupby("trial_id")["epoch"].apply(sorted).tolist() == [[1, 2]] * 4
    assert trials["epochs_run"].tolist() == [2] * 4
    assert trials["host"].str.len().min() > 0
    assert set(trials["device"]) == {"cpu"}
    assert trials["package_version"].notna().all()
    assert (trials["seconds"] > 0).all()
    assert trials["test_acc"].between(0, 1).all() and trials["best_val_acc"].between(0, 1).all()
    assert trials["best_epoch"].isin([1, 2]).all()
    assert (trials["finished_at"] > trials["started_at"]).all()
    assert epochs["val_acc"].between(0, 1).all() and (epochs["epoch_seconds"] > 0).all()


def test_a_relaunch_runs_nothing_and_writes_nothing(tiny: dict[str, Any]) -> None:
    again = tiny["again"]
    assert (again.ran, again.starts, again.completed, again.failed) == (0, 0, 0, 0)
    trials, epochs = results(tiny["url"], "tiny")
    pd.testing.assert_frame_equal(trials, tiny["trials"])
    assert len(epochs) == len(tiny["epochs"])


def test_progress_shows_cells_by_state_and_an_eta(tiny: dict[str, Any]) -> None:
    lines = tiny["progress"].strip().splitlines()
    assert lines[0].startswith("cells 4: 0 done, 0 running, 4 pending | ")
    assert lines[-1].startswith("cells 4: 4 done, 0 running, 0 pending | ")
    assert all("ETA" in line and "elapsed" in line for line in lines)
    assert "ETA 0:00:00" in lines[-1]


def test_each_cell_keeps_its_latest_checkpoint_in_a_folder_of_its_own(tiny: dict[str, Any]) -> None:
    runs = tiny["spec"].parent / "runs" / "tiny"
    cells = {cell_of(c) for c in expand(load_sweep_spec(tiny["spec"]))}
    folders = sorted((runs / "cells").iterdir())
    assert {p.name for p in folders} == {f"{h}-seed{s}" for h, s in cells}
    for folder in folders:
        # 2 epochs, a checkpoint every 10 and after the last: one checkpoint, one segment.
        assert sorted(p.name for p in folder.iterdir()) == [
            "checkpoint-000002",
            "records-000001-000002.json",
        ]
        assert sorted(p.name for p in (folder / "checkpoint-000002").iterdir()) == [
            "bnsweep-cell.json",
            "trial.pt",
        ]
    # Tune itself checkpoints nothing and logs no results: the store has them.
    (experiment,) = [p for p in runs.iterdir() if p.name.startswith("launch-")]
    assert not list(experiment.rglob("checkpoint_*")) and not list(experiment.rglob("result.json"))


def test_dry_run_prints_totals_and_writes_nothing(
    tiny: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = str(tiny["spec"])
    before = file_digest(tiny["db"])
    assert main(["launch", spec, "--db", tiny["url"], "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "sweep tiny: 4 cells (2 trial specs x 2 seeds), 4 completed, 0 to run" in out
    assert file_digest(tiny["db"]) == before

    fresh = tmp_path / "sub" / "fresh.db"
    assert main(["launch", spec, "--db", f"sqlite:///{fresh}", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "4 cells (2 trial specs x 2 seeds), 0 completed, 4 to run" in out
    assert "BASE" in out and "γ=0.5 c=100" in out
    assert "none yet" in out
    assert not fresh.exists() and not fresh.parent.exists()


# -- errors, divergences, caps and resources ----------------------------------------------------
@pytest.fixture(scope="module")
def troubled(local_ray: None, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A cell whose data is missing, one that diverges, one that trains; one trial at a time."""
    folder = tmp_path_factory.mktemp("troubled")
    spec = write_spec(
        folder,
        "troubled",
        grids=[
            {"dataset": ["cifar10"], "data_root": [str(folder / "no-such-folder")]},
            {"lr": [1e38]},
            {"lr": [0.05]},
        ],
        base=False,
        seeds=[1],
        retries=0,
        max_concurrent=1,
    )
    url = f"sqlite:///{folder / 'troubled.db'}"
    first, progress = run_launch(spec, url)
    trials, epochs = results(url, "troubled")
    again, _ = run_launch(spec, url)
    after, _ = results(url, "troubled")
    return {"first": first, "progress": progress, "trials": trials, "epochs": epochs,
            "again": again, "after": after}  # fmt: skip


def test_an_error_is_recorded_and_the_other_cells_still_run(troubled: dict[str, Any]) -> None:
    first, trials = troubled["first"], troubled["trials"]
    assert (first.completed, first.diverged, first.failed) == (1, 1, 1)
    failed = trials[trials["status"] == "failed"].iloc[0]
    assert failed["dataset"] == "cifar10"
    assert "no-such-folder" in failed["error"] and "does not exist" in failed["error"]
    assert "\n" not in failed["error"]
    assert set(trials["status"]) == {"failed", "diverged", "completed"}
    assert "1 failed, 1 diverged" in troubled["progress"].strip().splitlines()[-1]


def test_a_divergence_is_recorded_with_its_epoch(troubled: dict[str, Any]) -> None:
    trials, epochs = troubled["trials"], troubled["epochs"]
    diverged = trials[trials["status"] == "diverged"].iloc[0]
    assert diverged["lr"] == 1e38
    assert diverged["diverged_epoch"] == 1
    assert "training loss became" in diverged["error"]
    rows = epochs[epochs["trial_id"] == diverged["trial_id"]]
    # The diverged network is evaluated, as the official loop does: a chance-level score.
    assert rows["epoch"].tolist() == [1] and rows["val_acc"].notna().all()
    assert diverged["best_epoch"] == 1 and 0.0 < diverged["test_acc"] < 0.5


def test_the_concurrency_cap_runs_one_trial_at_a_time(troubled: dict[str, Any]) -> None:
    assert_never_overlapping(troubled["trials"])


def test_a_relaunch_retries_failed_cells_but_not_diverged_ones(troubled: dict[str, Any]) -> None:
    again, after = troubled["again"], troubled["after"]
    assert (again.ran, again.failed, again.diverged, again.completed) == (1, 1, 0, 0)
    by_status = after.set_index("status")
    assert by_status.loc["failed", "attempts"] == 2
    assert by_status.loc["diverged", "attempts"] == 1
    assert by_status.loc["completed", "attempts"] == 1


# -- resuming from a cell's checkpoint folder ---------------------------------------------------
class _Stop(Exception):
    """Ends a fabricated trial after its second epoch, as a killed driver would."""


class _Planted:
    """A pickle that, once loaded, leaves a file behind: proof that it was unpickled."""

    def __init__(self, proof: Path) -> None:
        self.proof = proof

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.write_text, (self.proof, "unpickled"))


def _abandon_after_two_epochs(sweep_spec: Any, root: Path, url: str) -> tuple[tuple, dict, dict]:
    """A 3-epoch cell trained for 2 epochs by a 'killed launch', checkpointing every epoch into
    its cell folder; in the store its start and epoch 1 only (epoch 2 and every BN diagnostic were
    in the driver's buffer when it died). Returns the cell, val_acc by epoch, and the
    diagnostics' γ means by (epoch, layer)."""
    cell = expand(sweep_spec)[0]
    key = cell_of(cell)
    with Store.open(url) as store:  # the trial's row first: its files are signed with its key
        store.register_sweep(sweep_spec.name, "abandoned", expand(sweep_spec))
        keys = store.cell_keys([key])
    cells = CellStorage(str(root / sweep_spec.name), keys=keys)
    recorded, diagnostics = [], []
    inspector = BNDiagnostics.for_spec(cell)

    def on_epoch(metrics: Any, save: Any) -> None:
        recorded.append(metrics)
        items = trainable._diagnostics_report(inspector)
        diagnostics.extend(items)
        epoch = metrics.epoch
        cells.write_records(key, epoch, epoch, CellRecords([dataclasses.asdict(metrics)], items))
        with cells.new_checkpoint(key, epoch) as folder:
            save(folder)
            write_cell_file(folder, key, epoch, keys[key])
        if epoch == 2:
            raise _Stop

    with pytest.raises(_Stop):
        run_trial(cell, on_epoch=on_epoch, inspect=inspector)
    with Store.open(url) as store:
        store.apply([TrialStarted(*key, host="old", device="cpu")])
        store.apply([EpochRecorded(*key, metrics=recorded[0])])
    gammas = {
        (item["epoch"], layer["layer"]): layer["gamma_mean"]
        for item in diagnostics
        for layer in item["layers"]
    }
    return key, {m.epoch: m.val_acc for m in recorded}, gammas


def test_cells_resume_from_their_checkpoint_and_nothing_tune_pickled_is_read(
    local_ray: None, tmp_path: Path
) -> None:
    # Two CPUs per trial on a 2-CPU Ray: trials must run one at a time, with no cap set.
    spec_path = write_spec(
        tmp_path,
        "abandoned",
        defaults={"epochs": 3},
        seeds=1,
        resources={"cpus": 2},
        max_concurrent=None,
    )
    sweep = load_sweep_spec(spec_path)
    url = f"sqlite:///{tmp_path / 'abandoned.db'}"
    cell, earlier, earlier_gammas = _abandon_after_two_epochs(sweep, tmp_path / "runs", url)
    # Whoever can write to the storage planted Tune state that runs code when unpickled.
    proof = tmp_path / "code-ran"
    planted = tmp_path / "runs" / "abandoned" / "launch-19700101T000000000000"
    (planted / "trial").mkdir(parents=True)
    for name in ("tuner.pkl", "trainable.pkl", "trial/error.pkl"):
        (planted / name).write_bytes(pickle.dumps(_Planted(proof)))
    # And a records segment that would set epoch 2's accuracy (issue 19): not signed, refused.
    folder = tmp_path / "runs" / "abandoned" / "cells" / f"{cell[0]}-seed{cell[1]}"
    forged = {"epochs": [{"epoch": 2, "val_acc": 0.999, "test_acc": 0.999}], "diagnostics": []}
    (folder / "records-000002-000003.json").write_text(json.dumps({**forged, "mac": "0" * 64}))

    summary, _ = run_launch(spec_path, url)
    assert not proof.exists()
    assert summary.resumed == {cell: 2}
    assert (summary.ran, summary.completed) == (2, 2)

    trials, epochs = results(url, "abandoned")
    assert set(trials["status"]) == {"completed"}
    resumed = trials.set_index(["spec_hash", "seed"]).loc[cell]
    assert resumed["attempts"] == 2 and resumed["epochs_run"] == 3
    rows = epochs.set_index(["spec_hash", "seed"]).loc[[cell]]
    assert rows["epoch"].tolist() == [1, 2, 3]
    # Epochs 1-2 are the abandoned run's (2 stored now, from the records); 3 continued it.
    assert rows["val_acc"].tolist()[:2] == [earlier[1], earlier[2]]
    # The BN diagnostics of epochs 0-2, lost with the driver's buffer, came back from the
    # cell's records; epoch 3 continued them.
    with Store.open(url) as store:
        diag = store.diagnostics("abandoned").set_index(["spec_hash", "seed"]).loc[[cell]]
    assert sorted(set(diag["epoch"])) == [0, 1, 2, 3]
    stored = {(e, layer): g for e, layer, g in diag[["epoch", "layer", "gamma_mean"]].to_numpy()}
    assert {k: v for k, v in stored.items() if k[0] <= 2} == pytest.approx(earlier_gammas)
    assert_never_overlapping(trials)
    # The cells' signing keys never reach the storage they protect (Tune's pickles included).
    with Store.open(url) as store:
        keys = [
            k for key in store.cell_keys(expand(sweep)).values() for k in (key, key.hex().encode())
        ]
    for path in (tmp_path / "runs").rglob("*"):
        assert not path.is_file() or not any(k in path.read_bytes() for k in keys), path
    # Only the latest checkpoint is kept.
    assert sorted(p.name for p in folder.glob("checkpoint-*")) == ["checkpoint-000003"]


def test_an_error_is_read_from_the_trials_text_never_its_pickle(tmp_path: Path) -> None:
    proof = tmp_path / "code-ran"
    (tmp_path / "error.pkl").write_bytes(pickle.dumps(_Planted(proof)))
    (tmp_path / "error.txt").write_text(
        "Traceback (most recent call last):\n  File ...\n"
        "ray.exceptions.RayTaskError(DataError): ...\n"
        "bnsweep.workers.errors.DataError: cifar10: /data/cifar10 does not exist\n"
    )
    trial = type(
        "Trial", (), {"pickled_error_file": str(tmp_path / "error.pkl"),
                      "error_file": str(tmp_path / "error.txt")},
    )()  # fmt: skip
    assert callback._trial_error(trial) == "DataError: cifar10: /data/cifar10 does not exist"
    assert not proof.exists()


def test_a_second_launch_of_a_running_sweep_is_refused(
    local_ray: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = write_spec(tmp_path, "twice")
    url = f"sqlite:///{tmp_path / 'twice.db'}"
    lock = tmp_path / "runs" / "twice" / driver.LOCK_FILE
    lock.parent.mkdir(parents=True)
    with open(lock, "a+") as held:  # the first launch, still running
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("gpu-head pid 4242\n")
        held.flush()
        assert main(["launch", str(spec), "--db", url, "--no-tables"]) == 2
    # Only bnsweep's lines: the module's Ray may still print an earlier test's worker logs.
    (err,) = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("bnsweep")]
    assert err.startswith("bnsweep: error: sweep twice is being launched already (gpu-head pid")
    assert not [p for p in lock.parent.iterdir() if p.is_dir()]  # no experiment was started


# -- pieces without Ray -----------------------------------------------------------------------
def _sweep(**fields: Any) -> Any:
    base = {"name": "s", "grids": [{"lr": [0.1]}], "defaults": {"dataset": "digits"}}
    return parse_sweep_spec(yaml.safe_dump({**base, **fields}))


def test_a_local_checkpoint_folder_is_refused_on_several_nodes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(preflight.SHARED_STORAGE_ENV, raising=False)
    root = str(tmp_path / "runs")
    with pytest.raises(SpecError, match="shared storage") as err:
        check_storage_is_shared(_sweep(), root, nodes=3)
    assert "\n" not in str(err.value) and "shared_storage: true" in str(err.value)
    check_storage_is_shared(_sweep(), root, nodes=1)
    check_storage_is_shared(_sweep(), "s3://bucket/runs", nodes=3)
    check_storage_is_shared(_sweep(shared_storage=True), root, nodes=3)
    monkeypatch.setenv(preflight.SHARED_STORAGE_ENV, "1")
    check_storage_is_shared(_sweep(), root, nodes=3)
    # The spec's word wins over the environment's.
    with pytest.raises(SpecError, match="shared storage"):
        check_storage_is_shared(_sweep(shared_storage=False), root, nodes=3)


# An autofs direct map lists its trigger first and the NFS it mounted after it, at one point.
AUTOFS_THEN_NFS = """\
/dev/vda1 / ext4 rw,relatime 0 0
/etc/auto.direct /scratch/shared autofs rw,relatime,fd=7,direct 0 0
server:/export /scratch/shared nfs4 rw,relatime,vers=4.2 0 0
/etc/auto.home /home autofs rw,relatime,indirect 0 0
weka0 /mnt/weka wekafs rw,relatime 0 0
panfs://realm/vol /mnt/pan panfs rw 0 0
tmpfs /scratch/shared/tmp tmpfs rw 0 0
/dev/vdb /mnt/my\\040data ext4 rw 0 0
"""


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/scratch/shared/bnsweep/runs", "nfs4"),  # the last mount at a point is the one seen
        ("/scratch/shared", "nfs4"),
        ("/scratch/sharedother", "ext4"),  # a prefix of the name is not the folder
        ("/scratch/shared/tmp/x", "tmpfs"),  # the innermost mount wins
        ("/mnt/weka/runs", "wekafs"),
        ("/mnt/pan/runs", "panfs"),
        ("/mnt/my data/runs", "ext4"),  # octal escapes in mount points are decoded
        ("/home/me", "autofs"),  # an indirect map not yet triggered says so
    ],
)
def test_the_mount_table_names_the_filesystem_a_path_is_on(path: str, kind: str) -> None:
    assert preflight._mount_type(Path(path), AUTOFS_THEN_NFS) == kind


@pytest.mark.parametrize("kind", ["nfs4", "wekafs", "panfs", "lustre", "gpfs"])
def test_storage_on_a_shared_filesystem_needs_no_declaration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    monkeypatch.delenv(preflight.SHARED_STORAGE_ENV, raising=False)
    table = f"/dev/vda1 / ext4 rw 0 0\n/etc/auto.direct {tmp_path} autofs rw 0 0\n"
    table += f"server:/x {tmp_path} {kind} rw 0 0\n"
    monkeypatch.setattr(preflight, "_read_mounts", lambda: table)
    check_storage_is_shared(_sweep(), str(tmp_path / "runs"), nodes=3)
    monkeypatch.setattr(preflight, "_read_mounts", lambda: table.replace(kind, "ext4"))
    with pytest.raises(SpecError, match="shared storage"):
        check_storage_is_shared(_sweep(), str(tmp_path / "runs"), nodes=3)


def test_every_trial_checks_it_sees_the_launchs_storage_marker(tmp_path: Path) -> None:
    root = str(tmp_path / "runs")
    marker = preflight.place_storage_marker(root, "shared")
    assert marker is not None and Path(marker.path).parent == Path(root) / "shared"
    preflight.check_storage_visible(marker)  # this node wrote it
    preflight.check_storage_visible(None)  # object storage: nothing to check
    assert preflight.place_storage_marker("s3://bucket/runs", "shared") is None

    # A later launch's marker replaced it: a node that still sees this one has a stale copy.
    newer = preflight.place_storage_marker(root, "shared")
    assert newer is not None and newer.token != marker.token
    with pytest.raises(SpecError, match="sees another launch's") as err:
        preflight.check_storage_visible(marker)
    assert "\n" not in str(err.value) and "is not shared with it" in str(err.value)
    elsewhere = preflight.StorageMarker(
        str(tmp_path / "node-local" / preflight.STORAGE_MARKER), "t"
    )
    with pytest.raises(SpecError, match="does not see"):
        preflight.check_storage_visible(elsewhere)

    # The trainable checks first, before it reports or trains anything (no Tune session here).
    cell = expand(_sweep())[0]
    with pytest.raises(SpecError, match="does not see"):
        trainable.train_cell({"cell": cell.to_dict()}, storage=elsewhere)


def test_a_node_that_cannot_see_the_storage_fails_its_trials_with_the_reason(
    local_ray: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As if the trials ran on a node without the folder: the launch hands them a marker that
    # is not there. Each trial fails before training, and the store says why.
    elsewhere = preflight.StorageMarker(
        str(tmp_path / "node-local" / preflight.STORAGE_MARKER), "t"
    )
    monkeypatch.setattr(driver, "place_storage_marker", lambda root, name: elsewhere)
    spec = write_spec(tmp_path, "unseen", base=False, seeds=1, retries=0)
    url = f"sqlite:///{tmp_path / 'unseen.db'}"
    summary, _ = run_launch(spec, url)
    assert (summary.completed, summary.failed) == (0, 1)
    trials, epochs = results(url, "unseen")
    (error,) = trials["error"]
    assert error.startswith("SpecError: storage: node ") and "is not shared with it" in error
    assert epochs.empty


def test_progress_counts_and_eta_from_epochs() -> None:
    stream = io.StringIO()
    a, b, c = ("a", 1), ("b", 1), ("c", 1)
    progress = Progress(5, 2, epochs={a: 4, b: 4, c: 4}, every=0.0, stream=stream)
    assert progress.eta(10.0) is None
    progress.started(a)
    progress.started(b, resumed_from=2)
    for epoch in (1, 2):
        progress.epoch(a, epoch)
    progress.epoch(b, 3)
    assert progress.counts() == {
        "done": 2, "running": 2, "pending": 1, "failed": 0, "diverged": 0,
    }  # fmt: skip
    # 3 epochs trained in 30 s; left: a 2, b 1, c 4 → 7 epochs → 70 s.
    assert progress.eta(30.0) == pytest.approx(70.0)
    progress.finished(a, "completed")
    progress.finished(b, "failed")
    progress.finished(("old", 1), "skipped")  # a restored run's completed cell: already done
    assert progress.counts() == {
        "done": 3, "running": 0, "pending": 1, "failed": 1, "diverged": 0,
    }  # fmt: skip
    progress.refresh()
    progress.close()
    lines = stream.getvalue().splitlines()
    assert lines[-1].startswith("cells 5: 3 done, 0 running, 1 pending, 1 failed | ")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_on_a_terminal_is_one_live_line() -> None:
    stream = _Terminal()
    progress = Progress(3, 1, epochs={("a", 1): 2, ("b", 1): 2}, stream=stream)
    progress.started(("a", 1))
    progress.epoch(("a", 1), 1)
    progress.refresh()
    progress.finished(("a", 1), "completed")
    progress.close()
    text = stream.getvalue()
    assert "\x1b[" in text  # drawn in place with terminal control codes
    final = " ".join(re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text).split())  # a narrow one wraps
    assert final.endswith("cells 3: 2 done, 0 running, 1 pending | 0:00:00 elapsed, ETA 0:00:00")


def test_the_callback_pickles_without_the_store(tmp_path: Path) -> None:
    with Store.open(f"sqlite:///{tmp_path / 'p.db'}") as store:
        progress = Progress(1, 0, stream=io.StringIO())
        callback = StoreCallback(store, LaunchSummary(), progress)
        assert pickle.loads(pickle.dumps(callback)).__dict__ == {}


def test_tune_output_settings_are_defaults_the_user_can_override(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key in driver.TUNE_ENV_DEFAULTS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("RAY_AIR_NEW_OUTPUT", "1")
    driver._tune_environment()
    assert os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] == "1"
    assert os.environ["RAY_AIR_NEW_OUTPUT"] == "1"


@pytest.mark.parametrize("total", [4, 150, 960, 12_345, 2_000_000])
def test_the_progress_line_fits_80_columns(total: int) -> None:
    progress = Progress(total, total // 3, stream=io.StringIO())
    cells = [(f"h{i}", 1) for i in range(min(total - total // 3, 40))]
    for i, cell in enumerate(cells):
        progress.started(cell)
        if i % 3 == 0:
            progress.finished(cell, "failed")
        elif i % 3 == 1:
            progress.finished(cell, "diverged")
    line = progress.line()
    assert len(line) <= 80, line
    counts = progress.counts()
    assert f"{counts['done']}" in line and "ETA" in line
    if counts["failed"]:
        assert f"{counts['failed']} fail" in line and f"{counts['diverged']} div" in line
