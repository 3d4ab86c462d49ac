"""Each cell's checkpoint folder (`service/checkpoints.py`), on a local path and through a URI.

`file://` URIs take the object-storage code path (pyarrow's filesystem API) on a local folder,
so the same tests cover both.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bnsweep.checkpoints import CellRecords, CellStorage, write_cell_file

CELL = ("0123456789abcdef", 3)
OTHER = (CELL[0], CELL[1] + 1)
KEYS = {CELL: b"k" * 32, OTHER: b"o" * 32}


@pytest.fixture(params=["path", "uri"])
def cells(request: pytest.FixtureRequest, tmp_path: Path) -> CellStorage:
    root = tmp_path / "runs" / "sweep"
    root.mkdir(parents=True)
    return CellStorage(str(root) if request.param == "path" else f"file://{root}", keys=KEYS)


def _save(cells: CellStorage, epoch: int, cell: tuple[str, int] = CELL) -> None:
    with cells.new_checkpoint(cell, epoch) as folder:
        (folder / "trial.pt").write_bytes(f"weights after {epoch}".encode())
        write_cell_file(folder, cell, epoch, KEYS[cell])


def _local(cells: CellStorage) -> Path:
    return Path(cells.folder(CELL).removeprefix("file://"))


def test_only_the_latest_complete_checkpoint_is_kept(cells: CellStorage) -> None:
    assert cells.latest(CELL) is None
    for epoch in (10, 20, 30):
        _save(cells, epoch)
    assert cells.latest(CELL) == 30
    assert sorted(p.name for p in _local(cells).iterdir()) == ["checkpoint-000030"]
    with cells.open_checkpoint(CELL, 30) as folder:
        assert (folder / "trial.pt").read_bytes() == b"weights after 30"


def test_a_checkpoint_cut_short_or_of_another_cell_is_not_used(cells: CellStorage) -> None:
    _save(cells, 10)
    # An upload cut short: the cell file, written last, is missing.
    partial = _local(cells) / "checkpoint-000020"
    partial.mkdir()
    (partial / "trial.pt").write_bytes(b"half")
    assert cells.latest(CELL) == 10
    # A folder whose cell file names another cell (copied in by hand, or planted).
    (partial / "bnsweep-cell.json").write_text(
        json.dumps({"spec_hash": "ffffffffffffffff", "seed": 3, "epoch": 20})
    )
    assert cells.latest(CELL) == 10


def test_a_failed_save_leaves_the_previous_checkpoint(cells: CellStorage) -> None:
    _save(cells, 10)
    with pytest.raises(OSError), cells.new_checkpoint(CELL, 20) as folder:
        (folder / "trial.pt").write_bytes(b"partial")
        raise OSError("disk full")
    assert cells.latest(CELL) == 10
    assert sorted(p.name for p in _local(cells).iterdir() if not p.name.startswith(".")) == [
        "checkpoint-000010"
    ]


def test_records_segments_add_up_to_the_checkpoint(cells: CellStorage) -> None:
    def segment(first: int, last: int) -> CellRecords:
        epochs = [{"epoch": e, "val_acc": e / 100} for e in range(first, last + 1)]
        return CellRecords(epochs, [{"epoch": e, "layers": []} for e in range(first, last + 1)])

    cells.write_records(CELL, 1, 10, segment(1, 10))
    cells.write_records(CELL, 11, 20, segment(11, 20))
    cells.write_records(CELL, 21, 25, segment(21, 25))  # beyond the checkpoint: not yet used
    got = cells.records(CELL, up_to=20)
    assert [e["epoch"] for e in got.epochs] == list(range(1, 21))
    assert [d["epoch"] for d in got.diagnostics] == list(range(1, 21))
    # A retry with another cadence overlaps an earlier segment: each epoch comes once.
    cells.write_records(CELL, 16, 20, CellRecords([{"epoch": 16, "val_acc": 0.5}], []))
    got = cells.records(CELL, up_to=20)
    assert [e["epoch"] for e in got.epochs] == list(range(1, 21))
    assert got.epochs[15]["val_acc"] == 0.5


def test_cells_have_folders_of_their_own(cells: CellStorage) -> None:
    _save(cells, 10)
    _save(cells, 30, cell=OTHER)
    assert (cells.latest(CELL), cells.latest(OTHER)) == (10, 30)
