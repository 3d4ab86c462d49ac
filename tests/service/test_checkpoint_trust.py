"""A bad checkpoint is one line naming it and the remedy, never torch's advice to load it with
`weights_only=False` (issue 19)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from bnsweep import trainable
from bnsweep.cli import main
from bnsweep.workers.checkpoint import CheckpointError, load_checkpoint


class Hostile:
    """Runs code when unpickled: torch's weights_only loader refuses it."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (shutil.rmtree, ("/nonexistent-bnsweep-test",))


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
