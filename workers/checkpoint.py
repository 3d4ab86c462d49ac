"""Trial checkpoints: tensors and plain values only, loaded with `weights_only=True`.

A checkpoint holds everything a resumed run needs to continue bit-identically: weights,
optimizer and scheduler state, the host's RNG states (including the generator that orders the
data), the best-so-far selection, and the history of epoch metrics. It holds no CUDA state, so
it resumes on a node with any number of GPUs, or none (see `capture_rng`). Nothing is unpickled
beyond what `torch.load(weights_only=True)` allows, so loading a file from elsewhere runs no
code.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bnsweep.workers.errors import BnsweepError

#: Format 1 files written before CUDA RNG states were dropped carry an "rng"/"cuda" list (one
#: state per GPU the writer saw); it is still format 1, and `restore_rng` ignores that entry.
FORMAT_VERSION = 1
FILENAME = "trial.pt"


class CheckpointError(BnsweepError):
    """A checkpoint is missing, unreadable, or belongs to another trial."""


def resolve(path: str | os.PathLike[str]) -> Path:
    """A checkpoint is given as the file itself or as the directory that holds `trial.pt`."""
    path = Path(path)
    return path / FILENAME if path.is_dir() else path


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Write `state` atomically (temporary file, then rename): a crash never leaves half a file."""
    path = Path(path)
    target = path if path.suffix == ".pt" else path / FILENAME
    target.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format_version": FORMAT_VERSION, **state}
    fd, tmp = tempfile.mkstemp(prefix=".trial-", suffix=".pt.tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(payload, handle)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


#: What every checkpoint `workers/trial.py` writes holds besides its format version.
REQUIRED_KEYS = (
    "spec_hash",
    "seed",
    "model",
    "optimizer",
    "scheduler",
    "data_generator",
    "rng",
    "progress",
)


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The state in a checkpoint bnsweep wrote: the one place a checkpoint is read with torch.

    Anything else is one CheckpointError line naming the file. torch's own message is never
    passed on: for a file holding other objects it advises `weights_only=False`, which would run
    whatever code the file carries."""
    target = resolve(path)
    if not target.is_file():
        raise CheckpointError(
            f"checkpoint not found: {target} (expected a file or a folder with {FILENAME})"
        )
    try:
        state = torch.load(target, map_location="cpu", weights_only=True)
    except Exception:  # whatever an untrusted file makes torch raise: one answer
        raise CheckpointError(
            f"checkpoint {target} is unreadable: not one bnsweep wrote (it is damaged, or holds "
            "objects other than tensors and plain values, which bnsweep never loads)"
        ) from None
    version = state.get("format_version") if isinstance(state, dict) else None
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {target} has format {version}; this bnsweep reads format {FORMAT_VERSION}"
        )
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise CheckpointError(
            f"checkpoint {target} is not one bnsweep wrote: it has no {', '.join(missing)}"
        )
    return state


# -- RNG state as plain values ----------------------------------------------------------------
def capture_rng() -> dict[str, Any]:
    """The host's global RNGs as tensors and lists, so `weights_only` loading accepts it.

    No CUDA RNG: training never draws from it (initialisation happens on the CPU, the data
    order comes from its own CPU generator), reading it would initialise CUDA in a trial that
    runs on the CPU, and one state per visible GPU cannot be restored where fewer are visible.
    """
    np_state = np.random.get_state()
    # The global RandomState is MT19937, whose legacy state is the tuple, never the dict.
    assert isinstance(np_state, tuple)
    return {
        "python": _to_lists(random.getstate()),
        "numpy": [
            np_state[0],
            torch.from_numpy(np_state[1].astype(np.int64)),
            *map(float, np_state[2:]),
        ],
        "torch": torch.get_rng_state(),
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Restore what `capture_rng` saved. An older checkpoint's "cuda" states are ignored: the
    run never drew from them, so they change nothing, and setting them could fail or touch GPUs."""
    random.setstate(_to_tuples(state["python"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state(
        (name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached))
    )
    torch.set_rng_state(state["torch"])


def _to_lists(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_to_lists(v) for v in value]
    return value


def _to_tuples(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_to_tuples(v) for v in value)
    return value
