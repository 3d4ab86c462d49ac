"""The Ray Tune trainable: `train_cell`, which trains one cell on a worker, and what only it uses.

Ray pickles `train_cell` by module path, so every worker imports this module and what it
imports: the checkpoint folders, the storage marker's check and the worker's training code,
never the driver's callback, progress display or results store.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, fields
from typing import Any

import ray
from ray import tune

from bnsweep.checkpoints import CellRecords, CellStorage, write_cell_file
from bnsweep.plan import Cell, cell_of
from bnsweep.preflight import StorageMarker, check_storage_visible
from bnsweep.workers.checkpoint import CheckpointError
from bnsweep.workers.diagnostics import BNDiagnostics
from bnsweep.workers.errors import SpecError
from bnsweep.workers.results import EpochMetrics, TrialResult
from bnsweep.workers.spec import TrialSpec
from bnsweep.workers.trial import run_trial

#: Loggers that speak at INFO inside every trial ("Checkpoint successfully created at ..." at
#: each epoch); their warnings and errors still come through.
WORKER_QUIET_LOGGERS = ("ray.train", "ray.tune")


def train_cell(
    config: dict[str, Any],
    cells: CellStorage | None = None,
    checkpoint_every: int = 1,
    diagnostics: Mapping[str, Any] | None = None,
    storage: StorageMarker | None = None,
    events: Any = None,
) -> None:
    """One cell as a Ray Tune function trainable: train it, reporting every epoch.

    The cell continues from the latest complete checkpoint in its folder of `cells`, whoever
    wrote it (an earlier attempt, a killed launch). A checkpoint is written every
    `checkpoint_every` epochs and after the last one, so a failure loses at most that many.
    `tune.report` carries only the small per-epoch metrics; the BN diagnostics and the records a
    resumed cell sends again travel on `events` (a Ray queue the driver drains), so Tune's state
    and snapshots never grow with them. `diagnostics` is the sweep's `diagnostics:` section as a
    dict; `storage` is the launch's marker in a local checkpoint folder, checked first."""
    _quiet_worker_logs()
    check_storage_visible(storage)
    spec = TrialSpec.from_dict(config["cell"])
    spec = spec.replace(device=assigned_device(spec, ray.get_gpu_ids()))
    key = cell_of(spec)
    resumed = cells.latest(key) if cells is not None else None
    if cells is not None and resumed is not None:
        # Epochs and diagnostics up to the checkpoint, sent again: a driver that died may have
        # held their rows unwritten, and this is their last chance (the store upserts).
        earlier = cells.records(key, resumed)
        _send(events, key, "epochs", earlier.epochs)
        _send(events, key, "diagnostics", earlier.diagnostics)
    tune.report(
        {
            "kind": "started",
            "host": socket.gethostname(),
            "device": _device_name(spec),
            "resumed_from_epoch": resumed or 0,
            "threads": _torch_threads(),
            "runtime": runtime_options(spec, checkpoint_every),
        }
    )
    inspector = _inspector(spec, diagnostics)
    since = CellRecords([], [])  # what the next checkpoint's records segment holds
    first = (resumed or 0) + 1

    def on_epoch(metrics: EpochMetrics, save: Any) -> None:
        nonlocal since, first
        recorded = _diagnostics_report(inspector)
        _send(events, key, "diagnostics", recorded)
        since.epochs.append(asdict(metrics))
        since.diagnostics.extend(recorded)
        if cells is not None and (
            metrics.epoch % checkpoint_every == 0 or metrics.epoch >= spec.epochs
        ):
            # The segment first: a checkpoint is only used once complete, and then its records
            # are already there.
            cells.write_records(key, first, metrics.epoch, since)
            with cells.new_checkpoint(key, metrics.epoch) as folder:
                save(folder)
                write_cell_file(folder, key, metrics.epoch, cells.keys[key])
            since, first = CellRecords([], []), metrics.epoch + 1
        tune.report({"kind": "epoch", **asdict(metrics)})

    with _checkpoint_of(cells, key, resumed) as checkpoint:
        try:
            result = run_trial(spec, on_epoch=on_epoch, checkpoint=checkpoint, inspect=inspector)
        except CheckpointError as err:
            if cells is None or checkpoint is None:
                raise
            # Signed by the trial and unchanged, yet unreadable (or of another format): it would
            # fail the same way at every relaunch, so the message says how to start over.
            raise CheckpointError(f"{err}; {cells.remedy(key)}") from None
    tune.report(
        {
            "kind": "final",
            **{f.name: getattr(result, f.name) for f in fields(TrialResult) if f.name != "history"},
        }
    )


@contextlib.contextmanager
def _checkpoint_of(cells: CellStorage | None, key: Cell, epoch: int | None) -> Iterator[Any]:
    if cells is None or epoch is None:
        yield None
        return
    with cells.open_checkpoint(key, epoch) as folder:
        yield folder


def assigned_device(spec: TrialSpec, gpu_ids: Sequence[Any]) -> str:
    """The device a trial trains on: the GPU Ray assigned it, else the CPU.

    Ray leaves CUDA_VISIBLE_DEVICES unset for a task that asked for no GPU, so such a task sees
    every GPU of its node; `device: auto` would then train on (and initialise) cuda:0 beside
    the trials Ray did give it to. With a GPU assigned, Ray makes only that one visible: cuda:0."""
    if not gpu_ids:
        if spec.device == "cuda":
            raise SpecError(
                "device: cuda, but the sweep's resources.gpus is 0, so Ray gives the trial no "
                "GPU; set resources.gpus (a fraction packs several trials on one GPU) or "
                "device: cpu"
            )
        return "cpu"
    if spec.device == "cpu":
        return "cpu"  # asked for explicitly; the GPU Ray reserved stays idle
    return "cuda"


def runtime_options(spec: TrialSpec, checkpoint_every: int) -> dict[str, Any]:
    """How the trial ran, beyond what its result depends on, for the store's `runtime` column:
    the spec's runtime fields (compile, cuDNN autotuning, evaluation batch) and the cadence."""
    fields_of = getattr(spec, "runtime_fields", None)
    options = dict(fields_of()) if fields_of is not None else {"compile": spec.compile}
    options.pop("device", None)  # its own column
    return {**options, "checkpoint_every": checkpoint_every}


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _send(events: Any, key: Cell, kind: str, items: Sequence[Any]) -> None:
    """Put records on the driver's queue (a blocking round trip: they are there before the
    epoch's report is)."""
    if events is not None and items:
        ray.get(events.put.remote((key, kind, list(items))))


def _inspector(spec: TrialSpec, settings: Mapping[str, Any] | None) -> BNDiagnostics | None:
    settings = dict(settings or {})
    every = int(settings.get("every", 1))
    if every == 0:
        return None
    return BNDiagnostics.for_spec(spec, every=every, probe_size=settings.get("probe_size"))


def _diagnostics_report(inspector: BNDiagnostics | None) -> list[dict[str, Any]]:
    """The BN diagnostics recorded since the last call: `[{"epoch": e, "layers": [dicts]}]`."""
    records = inspector.take() if inspector is not None else {}
    return [
        {"epoch": epoch, "layers": [layer.to_dict() for layer in layers]}
        for epoch, layers in sorted(records.items())
    ]


def _quiet_worker_logs() -> None:
    for name in WORKER_QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def _device_name(spec: TrialSpec) -> str:
    """What the store records as the trial's device. A CPU trial never touches torch.cuda; a GPU
    Ray assigned that torch cannot see is named as such (the trial then fails on it, loudly)."""
    if spec.device == "cpu":
        return "cpu"
    import torch

    if not torch.cuda.is_available():
        return f"GPU {','.join(map(str, ray.get_gpu_ids()))} (not visible to torch)"
    return torch.cuda.get_device_name(0)
