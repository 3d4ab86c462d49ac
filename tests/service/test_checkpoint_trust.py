"""Checkpoint storage is not trusted (issue 19): a records segment or checkpoint is used only when
it verifies as written by this cell's trial with a key the store holds; a bad checkpoint is one
line naming it and the remedy, never torch's advice to load it with `weights_only=False`."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from bnsweep import trainable
from bnsweep.checkpoints import CellRecords, CellStorage, write_cell_file
from bnsweep.cli import main
from bnsweep.plan import cell_of
from bnsweep.store.api import Store
from bnsweep.workers.checkpoint import CheckpointError, load_checkpoint
from bnsweep.workers.spec import TrialSpec

CELL = ("0123456789abcdef", 3)
OTHER = ("fedcba9876543210", 3)
KEYS = {CELL: b"k" * 32, OTHER: b"o" * 32}


class Hostile:
    """Runs code when unpickled: torch's weights_only loader refuses it."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (shutil.rmtree, ("/nonexistent-bnsweep-test",))


def _segment(first: int, last: int, acc: float = 0.5) -> CellRecords:
    epochs = [{"epoch": e, "val_acc": acc, "test_acc": acc} for e in range(first, last + 1)]
    return CellRecords(epochs, [])


def _save(cells: CellStorage, cell: tuple[str, int], epoch: int, data: bytes = b"weights") -> Path:
    with cells.new_checkpoint(cell, epoch) as folder:
        (folder / "trial.pt").write_bytes(data)
        write_cell_file(folder, cell, epoch, cells.keys[cell])
    return Path(cells.folder(cell)) / f"checkpoint-{epoch:06d}"


@pytest.fixture
def cells(tmp_path: Path) -> CellStorage:
    return CellStorage(str(tmp_path / "runs" / "sweep"), keys=KEYS)


def test_forged_records_segments_are_refused_each_named_and_genuine_ones_used(
    cells: CellStorage, caplog: pytest.LogCaptureFixture
) -> None:
    cells.write_records(CELL, 1, 2, _segment(1, 2))
    cells.write_records(OTHER, 3, 4, _segment(3, 4, acc=0.7))
    folder = Path(cells.folder(CELL))
    forged = {
        # Written by hand: no signature, or a made-up one.
        "records-000002-000002.json": {**_segment(2, 2, 0.999).__dict__},
        "records-000003-000003.json": {**_segment(3, 3, 0.999).__dict__, "mac": "0" * 64},
        "records-000003-000005.json": {**_segment(3, 5, 0.999).__dict__, "mac": "é"},
        # A genuine segment of another cell, copied in.
        "records-000003-000004.json": json.loads(
            (Path(cells.folder(OTHER)) / "records-000003-000004.json").read_text()
        ),
    }
    for name, content in forged.items():
        (folder / name).write_text(json.dumps(content))
    # A genuine segment renamed to claim other epochs, and JSON nested past what json reads.
    shutil.copy(folder / "records-000001-000002.json", folder / "records-000004-000005.json")
    (folder / "records-000005-000005.json").write_text("[" * 100_000 + "]" * 100_000)
    with caplog.at_level(logging.WARNING, logger="bnsweep.checkpoints"):
        got = cells.records(CELL, up_to=10)
    assert [(e["epoch"], e["val_acc"]) for e in got.epochs] == [(1, 0.5), (2, 0.5)]
    refused = [r.getMessage() for r in caplog.records]
    assert len(refused) == 6
    for name in [*forged, "records-000004-000005.json", "records-000005-000005.json"]:
        assert any(str(folder / name) in line and "refusing" in line for line in refused), name
    assert all("\n" not in line for line in refused)


def test_an_unsigned_or_foreign_checkpoint_is_ignored_and_named(
    cells: CellStorage, caplog: pytest.LogCaptureFixture
) -> None:
    _save(cells, CELL, 10)
    # A later checkpoint planted by hand, and one of another store (another key).
    planted = Path(cells.folder(CELL)) / "checkpoint-000020"
    planted.mkdir()
    (planted / "trial.pt").write_bytes(b"forged")
    (planted / "bnsweep-cell.json").write_text(
        json.dumps({"spec_hash": CELL[0], "seed": CELL[1], "epoch": 20, "files": {}})
    )
    elsewhere = CellStorage(cells.root + "-elsewhere", keys={CELL: b"x" * 32})
    shutil.copytree(_save(elsewhere, CELL, 30), Path(cells.folder(CELL)) / "checkpoint-000030")
    with caplog.at_level(logging.WARNING, logger="bnsweep.checkpoints"):
        assert cells.latest(CELL) == 10
    lines = [r.getMessage() for r in caplog.records]
    assert any("checkpoint-000020" in line and "not signed" in line for line in lines)
    assert any("checkpoint-000030" in line and "not signed" in line for line in lines)


def test_a_signed_checkpoint_whose_file_changed_names_it_and_the_remedy(
    cells: CellStorage,
) -> None:
    folder = _save(cells, CELL, 10)
    with cells.open_checkpoint(CELL, 10) as opened:
        assert (opened / "trial.pt").read_bytes() == b"weights"
    (folder / "trial.pt").write_bytes(b"a foreign trial.pt")
    with pytest.raises(CheckpointError) as err, cells.open_checkpoint(CELL, 10):
        pass
    message = str(err.value)
    assert str(folder) in message and "trial.pt does not match" in message
    assert f"delete the cell folder {cells.folder(CELL)}" in message
    assert f"bnsweep db forget --where spec_hash={CELL[0]} --where seed={CELL[1]}" in message
    assert "\n" not in message and "weights_only" not in message


def test_the_store_keys_each_trial_and_a_forgotten_trial_gets_a_new_key(tmp_path: Path) -> None:
    from tests.service.test_store import make_spec

    specs = [make_spec(seed=1), make_spec(seed=2)]
    with Store.open(f"sqlite:///{tmp_path / 'r.db'}") as store:
        store.register_sweep("s", "name: s", specs)
        keys = store.cell_keys(specs)
        assert keys == store.cell_keys(specs) and len(set(keys.values())) == 2
        store.forget(sweep="s", where={"seed": [1]})
        store.register_sweep("s", "name: s", specs)
        again = store.cell_keys(specs)
    first, second = cell_of(specs[0]), cell_of(specs[1])
    assert again[first] != keys[first] and again[second] == keys[second]
    # So what the forgotten trial wrote no longer verifies: the cell trains from its start.
    old = CellStorage(str(tmp_path / "runs"), keys=keys)
    _save(old, first, 5)
    old.write_records(first, 1, 5, _segment(1, 5))
    new = CellStorage(str(tmp_path / "runs"), keys=again)
    assert new.latest(first) is None and new.records(first, 5).epochs == []
    assert "keys=" not in repr(new) and str(again[first]) not in repr(new)


@pytest.mark.parametrize("content", ["hostile pickle", "foreign torch file"])
def test_a_sweep_cell_with_an_unreadable_checkpoint_fails_in_one_line_with_the_remedy(
    content: str, cells: CellStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """train_cell in process: a checkpoint the trial signed (so its digest matches) that torch
    cannot load, as a disk fault or an older format leaves it."""
    spec = TrialSpec(dataset="digits", arch="resnet8", epochs=2, device="cpu", seed=1)
    key = cell_of(spec)
    storage = CellStorage(cells.root, keys={key: b"k" * 32})
    with storage.new_checkpoint(key, 1) as folder:
        payload = {"format_version": 1, "evil": Hostile()}
        if content == "foreign torch file":
            payload = {"state_dict": {"w": torch.zeros(2)}}
        torch.save(payload, folder / "trial.pt")
        write_cell_file(folder, key, 1, storage.keys[key])
    monkeypatch.setattr(trainable.ray, "get_gpu_ids", lambda: [])
    monkeypatch.setattr(trainable.tune, "report", lambda *_a, **_k: None)
    with pytest.raises(CheckpointError) as err:
        trainable.train_cell({"cell": spec.to_dict()}, cells=storage, checkpoint_every=1)
    message = str(err.value)
    assert "\n" not in message and "weights_only" not in message
    assert str(Path(storage.folder(key)) / "checkpoint-000001" / "trial.pt") in message
    assert f"delete the cell folder {storage.folder(key)}" in message
    assert "bnsweep db forget --where spec_hash=" in message


def test_train_resume_of_a_hostile_checkpoint_is_one_line_without_torchs_advice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.save({"format_version": 1, "evil": Hostile()}, tmp_path / "trial.pt")
    argv = ["train", "--dataset", "digits", "--epochs", "1", "--resume", str(tmp_path)]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1, err
    assert str(tmp_path / "trial.pt") in err and "--checkpoint-dir" in err
    assert "weights_only" not in err and "trust" not in err
    with pytest.raises(CheckpointError, match="not one bnsweep wrote") as raised:
        load_checkpoint(tmp_path)
    assert "weights_only" not in str(raised.value)


def test_every_torch_load_goes_through_load_checkpoint() -> None:
    """One function reads checkpoints with torch, so its checks and message hold everywhere."""
    root = Path(trainable.__file__).resolve().parents[1]
    found = [
        path.relative_to(root)
        for folder in ("service", "workers", "analysis", "bench")
        for path in (root / folder).rglob("*.py")
        if "torch.load(" in path.read_text(encoding="utf-8")
    ]
    assert [str(p) for p in found] == ["workers/checkpoint.py"]
