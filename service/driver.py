"""The Ray Tune driver: run the cells a sweep is missing, and write every result to the store.

The flow of one launch (docs/architecture.md):

1. `plan()` expands the sweep and asks the store which cells are completed;
2. an interrupted experiment of this sweep is restored with `Tuner.restore` when its folder is
   there (trials resume from their last epoch checkpoint; cells completed meanwhile are skipped);
3. whatever is still missing runs as a new Tune experiment over an explicit list of cells, each
   cell an abandoned experiment left a checkpoint for continuing from it;
4. `StoreCallback` turns Tune's results into store events, batched, in the driver process: the
   driver is the only writer, which keeps SQLite safe and puts retries in one place. A trial
   that resumes sends again the epochs its checkpoint covers, so events a dead driver still
   held are not lost.

docs/sweeps.md says the same for users.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import pickle
import socket
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import ray
from ray import cloudpickle, tune
from ray.tune.logger import JsonLoggerCallback
from rich.console import Console
from rich.live import Live
from rich.text import Text

from service.ray_address import host_port
from service.store.api import (
    DiagnosticsRecorded,
    EpochRecorded,
    Store,
    StoreError,
    TrialFailed,
    TrialFinished,
    TrialStarted,
)
from service.sweep import SweepSpec, expand
from workers.diagnostics import BNDiagnostics
from workers.errors import BnsweepError, RuntimeFailure, SpecError
from workers.spec import TrialSpec
from workers.trial import EpochMetrics, TrialResult, run_trial

log = logging.getLogger(__name__)

Cell = tuple[str, int]  # (spec_hash, seed): the store's key for one run
DONE_MARKER = ".bnsweep-finished"
LOCK_FILE = ".bnsweep-launch.lock"
#: Written by each launch into <storage>/<sweep>/ with a fresh token; every trial reads it back
#: before training, so a node that does not share the checkpoint folder is found at once.
STORAGE_MARKER = ".bnsweep-storage"
#: Written beside every epoch checkpoint: which cell and epoch it holds, readable without torch,
#: so a relaunch can find in-flight cells' checkpoints in an experiment Tune cannot restore.
CELL_FILE = "bnsweep-cell.json"
#: Defaults the driver gives Ray Tune; a value already in the environment wins.
TUNE_ENV_DEFAULTS = {
    # With num_to_keep=1 every epoch checkpoint forces an experiment snapshot, on purpose (a
    # restore must never point at a deleted checkpoint); Tune warns about that at every epoch.
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    # The store is the record of every epoch; Tune's per-trial CSV and TensorBoard files would
    # repeat it, written from the driver loop at every result. `_new_tuner` keeps the JSON one:
    # Tune reads result.json back when an experiment ends.
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    # The new output engine prints an experiment banner and paths whatever `verbose` says; the
    # legacy one at verbose=0 prints nothing, and `Progress` is the display.
    "RAY_AIR_NEW_OUTPUT": "0",
    # A failed trial's whole traceback, at every retry, for every cell; `StoreCallback` logs one
    # line per failure instead, naming the error.txt that keeps the traceback.
    "TUNE_PRINT_ALL_TRIAL_ERRORS": "0",
}
#: Loggers that speak at INFO inside every trial ("Checkpoint successfully created at ..." at
#: each epoch); their warnings and errors still come through.
WORKER_QUIET_LOGGERS = ("ray.train", "ray.tune")
#: Set on a cluster whose checkpoint folder is shared by every node (a compose volume, a mount
#: that /proc/mounts does not report as a network filesystem); the spec's field wins.
SHARED_STORAGE_ENV = "BNSWEEP_SHARED_STORAGE"
#: Filesystems on which a folder is visible from every node, so checkpoints can live there.
SHARED_FILESYSTEMS = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "lustre",
        "gpfs",
        "beegfs",
        "cephfs",
        "ceph",
        "glusterfs",
        "fuse.glusterfs",
        "fuse.sshfs",
        "fuse.s3fs",
        "fuse.gcsfuse",
        "fuse.juicefs",
        "9p",
        "virtiofs",
    }
)


def cell_of(spec: TrialSpec) -> Cell:
    return (spec.spec_hash, spec.seed)


# -- planning -------------------------------------------------------------------------------
@dataclass(frozen=True)
class LaunchPlan:
    sweep: SweepSpec
    cells: tuple[TrialSpec, ...]
    completed: frozenset[Cell]

    @property
    def missing(self) -> tuple[TrialSpec, ...]:
        return tuple(c for c in self.cells if cell_of(c) not in self.completed)

    def describe(self) -> str:
        """What `--dry-run` prints: how many cells exist, how many are done, and what would run."""
        missing = self.missing
        by_arm = Counter(_arm_label(c) for c in missing)
        lines = [
            f"sweep {self.sweep.name}: {len(self.cells)} cells "
            f"({len(self.cells) // max(len(self.sweep.seed_list), 1)} trial specs x "
            f"{len(self.sweep.seed_list)} seeds), {len(self.cells) - len(missing)} completed, "
            f"{len(missing)} to run",
        ]
        lines += [f"  {n:4d}  {label}" for label, n in sorted(by_arm.items())]
        return "\n".join(lines)


def plan(sweep: SweepSpec, store: Store) -> LaunchPlan:
    """Read-only: the sweep's cells and which of them the store already has completed."""
    cells = tuple(expand(sweep))
    return LaunchPlan(sweep, cells, frozenset(store.completed_cells(cells)))


def _arm_label(spec: TrialSpec) -> str:
    arm = (
        "BASE"
        if spec.is_base
        else f"{spec.formulation} γ={spec.bn_scale_init:g} c={spec.bn_lr_divisor:g}"
    )
    return f"{spec.dataset}/{spec.arch} α={spec.lr:g} {spec.input_norm}: {arm}"


# -- the trainable (runs on the workers) ----------------------------------------------------
def train_cell(
    config: dict[str, Any],
    skip: frozenset[Cell] = frozenset(),
    resume_from: Mapping[Cell, str] | None = None,
    diagnostics: Mapping[str, Any] | None = None,
    storage: StorageMarker | None = None,
) -> None:
    """One cell as a Ray Tune function trainable: report every epoch with a checkpoint.

    `diagnostics` is the sweep's `diagnostics:` section as a dict (every epoch when absent);
    each epoch report carries the BN diagnostics recorded since the previous one. `storage`
    is the launch's marker in a local checkpoint folder, checked before anything runs."""
    _quiet_worker_logs()
    check_storage_visible(storage)
    spec = TrialSpec.from_dict(config["cell"])
    if cell_of(spec) in skip:  # completed while this experiment was interrupted
        tune.report({"kind": "skipped"})
        return
    resume_dir = _resume_dir((resume_from or {}).get(cell_of(spec)))
    # Epochs and BN diagnostics up to the checkpoint, sent again: their rows may have been in the
    # driver's buffer when it died, and training goes on after them, so this is their last
    # chance to be stored (the store upserts, so rows it already has stay as they are).
    history, recorded = _checkpoint_records(resume_dir)
    tune.report(
        {
            "kind": "started",
            "host": socket.gethostname(),
            "device": _device_name(spec),
            "resumed_from_epoch": history[-1]["epoch"] if history else 0,
            "history": history,
            "diagnostics": recorded,
        }
    )

    inspector = _inspector(spec, diagnostics)

    def on_epoch(metrics: EpochMetrics, save: Any) -> None:
        with tempfile.TemporaryDirectory(prefix="bnsweep-ckpt-") as folder:
            save(folder)
            history.append(asdict(metrics))
            report = _diagnostics_report(inspector)
            recorded.extend(report.get("diagnostics", ()))
            _write_cell_file(folder, spec, history, recorded)
            tune.report(
                {"kind": "epoch", **asdict(metrics), **report},
                checkpoint=tune.Checkpoint.from_directory(folder),
            )

    result = run_trial(spec, on_epoch=on_epoch, checkpoint=resume_dir, inspect=inspector)
    tune.report(
        {
            "kind": "final",
            **{f.name: getattr(result, f.name) for f in fields(TrialResult) if f.name != "history"},
        }
    )


def _inspector(spec: TrialSpec, settings: Mapping[str, Any] | None) -> BNDiagnostics | None:
    settings = dict(settings or {})
    every = int(settings.get("every", 1))
    if every == 0:
        return None
    return BNDiagnostics.for_spec(spec, every=every, probe_size=settings.get("probe_size"))


def _diagnostics_report(inspector: BNDiagnostics | None) -> dict[str, Any]:
    """`{"diagnostics": [{"epoch": e, "layers": [plain dicts]}, ...]}`, or nothing to add."""
    records = inspector.take() if inspector is not None else {}
    if not records:
        return {}
    return {
        "diagnostics": [
            {"epoch": epoch, "layers": [layer.to_dict() for layer in layers]}
            for epoch, layers in sorted(records.items())
        ]
    }


def _quiet_worker_logs() -> None:
    for name in WORKER_QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def _resume_dir(found: str | None) -> str | None:
    """Where this trial continues from: Tune's checkpoint of an earlier attempt (a retry, a
    restored experiment), else `found`, one a relaunch found in an abandoned experiment."""
    restored = tune.get_checkpoint()
    if restored is None:
        return found
    import pyarrow.fs

    if isinstance(restored.filesystem, pyarrow.fs.LocalFileSystem):
        return restored.path  # read in place: `to_directory` would leave a copy behind
    return restored.to_directory()


def _write_cell_file(
    folder: str | Path,
    spec: TrialSpec,
    history: list[dict[str, Any]],
    diagnostics: list[dict[str, Any]] | None = None,
) -> None:
    """The cell, its last epoch, every epoch's metrics so far and the BN diagnostics recorded so
    far (`_diagnostics_report`'s items), beside the checkpoint. The diagnostics of a 180-epoch
    ResNet-18 are about 1 MB of JSON, next to a checkpoint of about 90 MB."""
    cell = {
        "spec_hash": spec.spec_hash,
        "seed": spec.seed,
        "epoch": history[-1]["epoch"] if history else 0,
        "history": history,
        "diagnostics": diagnostics or [],
    }
    (Path(folder) / CELL_FILE).write_text(json.dumps(cell))


def _cell_file(folder: str | Path) -> dict[str, Any] | None:
    """The `CELL_FILE` of a checkpoint folder written by `train_cell`; None for anything else."""
    try:
        cell = json.loads((Path(folder) / CELL_FILE).read_text())
    except (OSError, ValueError):
        return None
    return cell if isinstance(cell, dict) else None


def _read_cell_file(folder: str | Path) -> tuple[Cell, int] | None:
    """(cell, epoch) of a checkpoint folder written by `train_cell`; None for anything else."""
    cell = _cell_file(folder)
    if cell is None:
        return None
    try:
        return (str(cell["spec_hash"]), int(cell["seed"])), int(cell["epoch"])
    except (KeyError, TypeError, ValueError):
        return None


def _checkpoint_records(folder: str | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """What a checkpoint holds of the trial so far, oldest first: every epoch's metrics
    (EpochMetrics as dicts) and the BN diagnostics recorded (`_diagnostics_report`'s items)."""
    if folder is None:
        return [], []
    cell = _cell_file(folder)
    if cell is None or "history" not in cell:
        from workers.checkpoint import load_checkpoint  # a checkpoint without our cell file

        return list(load_checkpoint(folder)["progress"]["history"]), []
    return list(cell["history"]), list(cell.get("diagnostics") or ())


def _device_name(spec: TrialSpec) -> str:
    import torch

    from workers.trial import resolve_device

    device = resolve_device(spec.device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


# -- the driver-side callback ---------------------------------------------------------------
@dataclass
class LaunchSummary:
    """What one launch did, for the CLI and the tests."""

    ran: int = 0  # cells that started training (each counted once, whatever its retries)
    starts: int = 0  # trial starts, retries and resumptions included
    completed: int = 0
    diverged: int = 0
    failed: int = 0
    skipped: int = 0
    resumed: dict[Cell, int] = field(default_factory=dict)  # cell → epoch it resumed after
    attempted: set[Cell] = field(default_factory=set)
    restored_experiment: str | None = None


class StoreCallback(tune.Callback):
    """Tune results → store events, buffered and written in batches from the driver loop.

    Tune calls callbacks synchronously in its event loop, so writes are batched: a flush at most
    every `flush_seconds`, and always when a trial ends. Every event is an idempotent upsert,
    so the epochs Ray replays after a retry overwrite themselves.
    """

    def __init__(
        self, store: Store, summary: LaunchSummary, progress: Progress, flush_seconds: float = 2.0
    ) -> None:
        self.store, self.summary, self.progress = store, summary, progress
        self.flush_seconds = flush_seconds
        self._pending: list[Any] = []
        self._last_flush = time.monotonic()
        self._package_version = _package_version()
        self.failure: StoreError | None = None  # the store gave up: the launch stops with this

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its RunConfig (callbacks included) into the experiment folder; the store's
        # engine cannot travel, and a restored experiment gets a fresh callback (`_attach`).
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        spec = TrialSpec.from_dict(trial.config["cell"])
        key, kind, now = cell_of(spec), result.get("kind"), _now()
        if kind == "skipped":
            self.summary.skipped += 1
            self.progress.finished(key, "skipped")
        elif kind == "started":
            self.summary.ran += key not in self.summary.attempted
            self.summary.starts += 1
            self.summary.attempted.add(key)
            resumed_from = int(result.get("resumed_from_epoch") or 0)
            if resumed_from:
                self.summary.resumed[key] = resumed_from
            self._pending.append(
                TrialStarted(
                    *key,
                    host=result.get("host"),
                    device=result.get("device"),
                    package_version=self._package_version,
                    started_at=now,
                )
            )
            # What a resumed trial's checkpoint covers (upserts: stored ones stay as are).
            self._pending += [EpochRecorded(*key, metrics=m) for m in result.get("history") or ()]
            self._pending += _diagnostics_events(key, result)
            self.progress.started(key, resumed_from)
        elif kind == "epoch":
            metrics = EpochMetrics(**{f.name: result[f.name] for f in fields(EpochMetrics)})
            self._pending.append(EpochRecorded(*key, metrics=metrics))
            self._pending += _diagnostics_events(key, result)
            self.progress.epoch(key, metrics.epoch)
        elif kind == "final":
            outcome = TrialResult(
                **{f.name: result[f.name] for f in fields(TrialResult) if f.name != "history"}
            )
            self._pending.append(TrialFinished.from_result(*key, outcome, finished_at=now))
            if outcome.status == "diverged":
                self.summary.diverged += 1
            else:
                self.summary.completed += 1
            self.progress.finished(key, outcome.status)
            self.flush()
        self.maybe_flush()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        spec = TrialSpec.from_dict(trial.config["cell"])
        error = _trial_error(trial)
        log.warning(
            "%s seed %d failed: %s (traceback in %s)",
            _arm_label(spec),
            spec.seed,
            error,
            getattr(trial, "error_file", None) or "the Ray logs",
        )
        self._pending.append(TrialFailed(*cell_of(spec), error=error, finished_at=_now()))
        self.summary.failed += 1
        self.progress.finished(cell_of(spec), "failed")
        self.flush()

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        spec = TrialSpec.from_dict(trial.config["cell"])
        log.warning(
            "%s seed %d failed (%s); retrying from its last checkpoint (failure %d)",
            _arm_label(spec),
            spec.seed,
            _trial_error(trial),
            trial.num_failures,
        )

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self.maybe_flush()
        self.progress.refresh()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.flush()

    def maybe_flush(self) -> None:
        if self._pending and time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        if self._pending and self.failure is None:
            try:
                self.store.apply(self._pending)  # retried inside the store; idempotent
            except StoreError as err:
                # Raised inside Tune's loop, it reaches `launch` as a TuneError wrapping a
                # traceback; kept here, it is what the user is told.
                self.failure = err
                raise
            self._pending = []
        self._last_flush = time.monotonic()


def _diagnostics_events(key: Cell, result: Mapping[str, Any]) -> list[DiagnosticsRecorded]:
    return [
        DiagnosticsRecorded(*key, epoch=item["epoch"], layers=tuple(item["layers"]))
        for item in result.get("diagnostics") or ()
    ]


def _trial_error(trial: Any) -> str:
    """What went wrong in a trial, as one line: the trial's own exception ("DataError: ...") when
    Tune pickled it, else the last line of the traceback text it wrote.

    Both files are read from the trial's folder on the driver (`local_path`), where Tune has
    just written them; `Trial.get_error()` reads the storage copy, which may not be synced yet.
    """
    pickled = getattr(trial, "pickled_error_file", None)
    if pickled and Path(pickled).is_file():
        try:
            with open(pickled, "rb") as f:
                error = cloudpickle.load(f)
        except (OSError, pickle.UnpicklingError, AttributeError, ImportError, EOFError):
            error = None
        if isinstance(error, ray.exceptions.RayTaskError) and error.cause is not None:
            cause = error.cause
            return _one_line(f"{type(cause).__name__}: {cause}")
        if error is not None:
            return _one_line(f"{type(error).__name__}: {str(error).strip().splitlines()[0]}")
    text_file = getattr(trial, "error_file", None)
    if text_file and Path(text_file).is_file():
        text = Path(text_file).read_text(errors="replace")
        lines = [ln for ln in text.splitlines() if ln.strip()]
        if lines:
            return _one_line(lines[-1])  # a traceback's last line says what happened
    return "the trial failed without an error message"


def _one_line(text: str, limit: int = 2000) -> str:
    return " ".join(text.split())[:limit]


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("bnsweep")
    except PackageNotFoundError:
        return "unknown"


def _now() -> datetime:
    return datetime.now(timezone.utc)


# -- progress -------------------------------------------------------------------------------
class Progress:
    """Cells done / running / pending / failed and an ETA, on a stream (stderr by default).

    A terminal gets one live line; anything else (a log file, `ray job logs`) gets a plain line
    when something changed, at most every `every` seconds, and a last one at the end. The ETA
    is the epochs still to train divided by the epochs trained per second so far in this
    launch, so it is there after the first epoch and does not wait for a whole cell.
    """

    def __init__(
        self,
        total: int,
        already_done: int,
        epochs: Mapping[Cell, int] | None = None,
        every: float = 10.0,
        stream: Any = None,
    ) -> None:
        self.total, self.already_done = total, already_done
        self.stream = stream or sys.stderr
        self.every = every
        self.planned: dict[Cell, int] = dict(epochs or {})  # cell → epochs it runs to
        self.reached: dict[Cell, int] = {}  # cell → last epoch seen (resumed ones start later)
        self.trained = 0  # epochs trained in this launch: the rate behind the ETA
        self.running: set[Cell] = set()
        self.outcomes: Counter[str] = Counter()
        self.started_at = time.monotonic()
        self._last = -math.inf
        self._changed = True
        self._live = None
        if getattr(self.stream, "isatty", lambda: False)():
            self._live = Live(
                console=Console(file=self.stream), refresh_per_second=2, transient=False
            )
            self._live.start()

    def started(self, key: Cell, resumed_from: int = 0) -> None:
        self.running.add(key)
        self.reached[key] = max(self.reached.get(key, 0), resumed_from)
        self._changed = True

    def epoch(self, key: Cell, epoch: int) -> None:
        if epoch > self.reached.get(key, 0):
            self.trained += 1
        self.reached[key] = max(self.reached.get(key, 0), epoch)
        self._changed = True

    def finished(self, key: Cell, status: str) -> None:
        self.running.discard(key)
        self.outcomes[status] += 1
        self.reached[key] = self.planned.get(key, 0)  # nothing left to train for this cell
        self._changed = True

    def counts(self) -> dict[str, int]:
        # A skipped cell (a restored experiment's, completed meanwhile) is in `already_done`.
        done = self.already_done + self.outcomes["completed"]
        failed, diverged = self.outcomes["failed"], self.outcomes["diverged"]
        running = len(self.running)
        pending = max(self.total - done - failed - diverged - running, 0)
        return {
            "done": done,
            "running": running,
            "pending": pending,
            "failed": failed,
            "diverged": diverged,
        }

    def eta(self, elapsed: float) -> float | None:
        """Seconds left at the rate so far; None before the first epoch."""
        if self.trained == 0:
            return None
        left = sum(max(n - self.reached.get(key, 0), 0) for key, n in self.planned.items())
        return left * elapsed / self.trained

    #: The progress line fits a terminal of this many columns (and a Slurm log line).
    WIDTH = 80

    def line(self) -> str:
        """The cells by state and the ETA in at most WIDTH characters: the first form that
        fits, from the full one down to abbreviations; failed and diverged only when any."""
        c = self.counts()
        elapsed = time.monotonic() - self.started_at
        eta = self.eta(elapsed)
        left = "--" if eta is None else _clock(eta)
        bad = "".join(f", {c[k]} {k}" for k in ("failed", "diverged") if c[k])
        states = (
            f"cells {self.total}: {c['done']} done, {c['running']} running, {c['pending']} pending"
        )
        short_bad = "".join(f" {c[k]} {k[:4]}" for k in ("failed", "diverged") if c[k])
        forms = (
            f"{states}{bad} | {_clock(elapsed)} elapsed, ETA {left}",
            f"{states}{bad} | ETA {left}",
            f"{c['done']}/{self.total} done {c['running']} run {c['pending']} wait{short_bad}"
            f" | ETA {left}",
        )
        return next((f for f in forms if len(f) <= self.WIDTH), forms[-1][: self.WIDTH])

    def refresh(self, force: bool = False) -> None:
        if self._live is not None:
            self._live.update(Text(self.line()))  # Text: plain, no markup or number colouring
            return
        now = time.monotonic()
        if force or (self._changed and now - self._last >= self.every):
            self._last, self._changed = now, False
            self.stream.write(self.line() + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self._live is not None:
            self._live.update(Text(self.line()))
            self._live.stop()
        else:
            self.refresh(force=True)


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


# -- storage --------------------------------------------------------------------------------
def storage_root(sweep: SweepSpec, base_dir: Path | None = None) -> str:
    """An absolute path or a URI (s3://, gs://, …); a relative path is taken from `base_dir`."""
    if "://" in sweep.storage:
        return sweep.storage
    path = Path(sweep.storage).expanduser()
    if not path.is_absolute():
        path = (base_dir or Path.cwd()) / path
    return str(path.resolve())


@dataclass(frozen=True)
class StorageMarker:
    """A launch's token in its local checkpoint folder (`STORAGE_MARKER`)."""

    path: str
    token: str


def _local_sweep_folder(root: str, sweep_name: str) -> Path | None:
    """<root>/<sweep>/, created; None for object storage (no local folder, no locks, no marker:
    every node reaches it by URI)."""
    if "://" in root:
        return None
    folder = Path(root) / sweep_name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def place_storage_marker(root: str, sweep_name: str) -> StorageMarker | None:
    """Write a fresh token to <root>/<sweep>/STORAGE_MARKER; None for object storage."""
    folder = _local_sweep_folder(root, sweep_name)
    if folder is None:
        return None
    marker = StorageMarker(str(folder / STORAGE_MARKER), uuid.uuid4().hex)
    tmp = folder / f"{STORAGE_MARKER}.{marker.token}"
    tmp.write_text(marker.token + "\n", encoding="utf-8")
    tmp.replace(marker.path)  # atomic: a trial never reads half a token
    return marker


def check_storage_visible(marker: StorageMarker | None) -> None:
    """On the trial's node: the launch's marker must be there, with this launch's token. The
    check at launch counts the nodes alive then; this one also covers nodes that join later
    (an autoscaler's) and a folder declared shared that is not."""
    if marker is None:
        return
    try:
        found = Path(marker.path).read_text(encoding="utf-8").strip()
    except OSError:
        found = None
    if found != marker.token:
        what = "does not see" if found is None else "sees another launch's"
        raise SpecError(
            f"storage: node {socket.gethostname()} {what} {marker.path}, which this launch just "
            f"wrote: {Path(marker.path).parent.parent} is not shared with it. Checkpoints need "
            "storage visible from every node: a shared filesystem (NFS, Lustre, …) mounted at "
            "the same path, or object storage (s3://…, gs://…)."
        )


def check_storage_is_shared(sweep: SweepSpec, root: str, nodes: int) -> None:
    """Refuse a node-local checkpoint folder on a multi-node cluster: the first checkpoint written
    on another node would be unreachable for a retry elsewhere."""
    declared = sweep.shared_storage
    if declared is None and os.environ.get(SHARED_STORAGE_ENV):
        declared = os.environ[SHARED_STORAGE_ENV].strip().lower() in ("1", "true", "yes")
    if nodes <= 1 or "://" in root or declared:
        return
    if declared is None and _filesystem_type(root) in SHARED_FILESYSTEMS:
        return
    raise SpecError(
        f"storage: {root} is a local path but the Ray cluster has {nodes} nodes; checkpoints need "
        "shared storage visible from every node: a shared filesystem (NFS, Lustre, …) or object "
        "storage (s3://…, gs://…). If this folder is shared, set `shared_storage: true` "
        f"in the spec or {SHARED_STORAGE_ENV}=1."
    )


def _filesystem_type(path: str) -> str | None:
    """The type of the mount that holds `path`, from /proc/mounts (Linux)."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return None
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    probe = probe.resolve()
    best, kind = "", None
    for line in mounts:
        parts = line.split()
        if (
            len(parts) >= 3
            and (str(probe) + "/").startswith(parts[1].rstrip("/") + "/")
            and len(parts[1]) > len(best)
        ):
            best, kind = parts[1], parts[2]
    return kind


def _unfinished_experiments(root: str, sweep_name: str) -> list[Path]:
    """Experiment folders of this sweep that no launch finished (a crash, a kill, a lost node
    under the driver), newest first. Local paths only: on object storage an interrupted
    experiment is recovered through the store's view alone."""
    if "://" in root:
        return []
    folder = Path(root) / sweep_name
    if not folder.is_dir():
        return []
    unfinished = [p for p in folder.iterdir() if p.is_dir() and not (p / DONE_MARKER).exists()]
    return sorted(unfinished, key=lambda p: p.name, reverse=True)


def _found_checkpoints(folders: Sequence[Path]) -> dict[Cell, tuple[int, str]]:
    """The latest epoch checkpoint of every cell in these experiment folders: cell → (epoch,
    folder). Tune keeps each trial's checkpoints as <trial>/checkpoint_NNNNNN/."""
    found: dict[Cell, tuple[int, str]] = {}
    for folder in folders:
        for cell_file in folder.glob(f"*/checkpoint_*/{CELL_FILE}"):
            read = _read_cell_file(cell_file.parent)
            if read is not None and read[1] > found.get(read[0], (0, ""))[0]:
                found[read[0]] = (read[1], str(cell_file.parent))
    return found


def _mark_finished(path: str | Path, note: str) -> None:
    """A later launch neither restores nor scans a folder with this marker."""
    if "://" not in str(path) and Path(path).is_dir():
        (Path(path) / DONE_MARKER).write_text(f"{_now().isoformat()} {note}\n")


# -- the launch -----------------------------------------------------------------------------
def connect(address: str | None, num_cpus: int | None = None, num_gpus: int | None = None) -> int:
    """Attach to a cluster (`--address`, RAY_ADDRESS, or the job we were submitted as) or start a
    local Ray. Token authentication stays whatever the cluster has: on by default.

    A local Ray listens on 127.0.0.1 only and its token file is private to this user; a
    cluster address must be HOST:PORT and answer a TCP connect within seconds, or Ray would
    retry for minutes."""
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": True}
        target = address or os.environ.get("RAY_ADDRESS")
        if target and target.startswith("ray://"):
            # Under Ray Client, Tune runs on the cluster and takes our callbacks there, without
            # the store: results would never be written.
            raise BnsweepError(
                f"--address {target}: a Ray Client address cannot run a sweep (Tune would run "
                "on the cluster, away from the results store); submit the launch as a Ray job "
                "(`ray job submit -- bnsweep launch SPEC`, docs/cluster.md) or run it on a "
                "cluster node with the GCS address (HOST:6379)"
            )
        if target and target != "auto":
            _check_reachable(target, *host_port(target))
        if target:
            kwargs["address"] = target
            local: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
        else:
            # A Ray of our own ("local"), never one a `ray start` on this machine left recorded
            # in /tmp/ray; no dashboard: it starts slowly and nobody looks at it.
            kwargs.update(
                address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False
            )
            _private_token_file()
            local = _loopback_only()
        try:
            with local:
                ray.init(**kwargs)
        except (ConnectionError, RuntimeError, ray.exceptions.RayError) as err:
            raise BnsweepError(_connect_error(target, err)) from err
        if not target:
            _private_token_file()  # whatever Ray wrote meanwhile
    return sum(1 for node in ray.nodes() if node.get("Alive"))


#: How long a cluster address may take to accept a TCP connection before the launch gives up.
CONNECT_CHECK_SECONDS = 5.0


class ClusterUnreachable(RuntimeFailure):
    """Nothing answers at the Ray address given: a runtime failure (exit 1), not a typo."""


def _check_reachable(target: str, host: str, port: int) -> None:
    try:
        with socket.create_connection((host, port), timeout=CONNECT_CHECK_SECONDS):
            pass
    except OSError as err:
        reason = "timed out" if isinstance(err, TimeoutError) else (err.strerror or str(err))
        raise ClusterUnreachable(
            f"--address {target}: no Ray head answers there ({reason} within "
            f"{CONNECT_CHECK_SECONDS:.0f} s); is the cluster up (`ray status` on the head)?"
        ) from None


@contextlib.contextmanager
def _loopback_only() -> Iterator[None]:
    """Start a local Ray whose every server listens on 127.0.0.1, not on all interfaces.

    Ray 2.60 turns `_node_ip_address="127.0.0.1"` into the machine's external address
    (`services.resolve_ip_for_localhost`), and binds its servers to the node address. Only
    with "clusters" off (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, its setting for laptops) is
    the node address the loopback one; the variable reaches the processes ray.init starts,
    and the constant is what this process has already read from it.
    """
    from ray._private import ray_constants

    name = ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR
    saved_env, saved_flag = os.environ.get(name), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[name] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved_env


def _token_path() -> Path | None:
    """The token file a local Ray reads or writes: RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token;
    None when the token comes from RAY_AUTH_TOKEN itself."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return None
    return Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")


def _private_token_file() -> None:
    """The auth token readable by this user only (0600 in a 0700 folder).

    Ray 2.60 writes a new ~/.ray/auth_token with plain `open(path, "w")`: 0644 under the
    usual umask, so every user of the machine could read the key to this Ray. Writing the
    token first, privately, leaves Ray nothing to create; an existing one is made private."""
    path = _token_path()
    if path is None:
        return
    if path.exists():
        if path.stat().st_mode & 0o077:
            log.warning("%s was readable by other users; made it private (0600)", path)
            path.chmod(0o600)
        return
    if os.environ.get("RAY_AUTH_MODE", "token").lower() != "token":
        return  # authentication turned off on purpose: Ray reads no token
    from ray._private.authentication.authentication_token_generator import (
        generate_new_authentication_token,
    )

    created = not path.parent.exists()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if created:
        path.parent.chmod(0o700)  # mkdir's mode is filtered by the umask
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(generate_new_authentication_token())


def _connect_error(target: str | None, err: BaseException) -> str:
    where = f"the Ray cluster at {target}" if target else "a local Ray"
    chain = [err]
    while chain[-1].__cause__ is not None and len(chain) < 5:
        chain.append(chain[-1].__cause__)
    if any(
        isinstance(e, ray.exceptions.AuthenticationError) or "InvalidAuthToken" in str(e)
        for e in chain
    ):
        return (
            f"cannot connect to {where}: its authentication token is missing or different here; "
            "set RAY_AUTH_MODE=token and give this machine the cluster's token "
            "(~/.ray/auth_token, RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN; docs/cluster.md)"
        )
    first = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
    return f"cannot connect to {where}: {first}"


def launch(
    sweep: SweepSpec,
    store: Store,
    spec_text: str,
    *,
    address: str | None = None,
    base_dir: Path | None = None,
    num_cpus: int | None = None,
    progress_stream: Any = None,
) -> LaunchSummary:
    """Run every missing cell of `sweep`; return what happened. Safe to call again at any time.

    Phases: plan against the store; restore the newest experiment a killed launch left behind;
    then run whatever the store still lacks as a new experiment, each in-flight cell continuing
    from the latest checkpoint the abandoned folders hold.
    """
    launch_plan = plan(sweep, store)
    store.register_sweep(sweep.name, spec_text, launch_plan.cells)
    summary = LaunchSummary()
    if not launch_plan.missing:
        return summary
    _tune_environment()
    nodes = connect(address, num_cpus=num_cpus)
    root = storage_root(sweep, base_dir)
    check_storage_is_shared(sweep, root, nodes)
    with _one_launch_at_a_time(root, sweep.name):
        marker = place_storage_marker(root, sweep.name)
        progress = Progress(
            len(launch_plan.cells),
            len(launch_plan.completed),
            epochs={cell_of(c): c.epochs for c in launch_plan.missing},
            stream=progress_stream,
        )
        callback = StoreCallback(store, summary, progress)
        try:
            unfinished = _unfinished_experiments(root, sweep.name)
            if unfinished:
                _restore_experiment(
                    unfinished[0], sweep, store, launch_plan, callback, summary, marker
                )
            _run_missing(sweep, store, root, unfinished, callback, summary, marker)
        finally:
            if callback.failure is None:
                callback.flush()
            progress.close()
    return summary


@contextlib.contextmanager
def _one_launch_at_a_time(root: str, sweep_name: str) -> Iterator[None]:
    """Hold a lock on <storage>/<sweep>/ for the launch: a second launch of the sweep would take
    the running experiment's folder for an interrupted one and restore it a second time. The
    kernel drops the lock of a killed driver. (Object storage has no locks: not checked.)"""
    folder = _local_sweep_folder(root, sweep_name)
    if folder is None:
        yield
        return
    with open(folder / LOCK_FILE, "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise BnsweepError(
                f"sweep {sweep_name} is being launched already ({holder}, lock {handle.name}); "
                "wait for that launch to end or stop it"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{socket.gethostname()} pid {os.getpid()}\n")
        handle.flush()
        yield


def _tune_environment() -> None:
    for key, value in TUNE_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)


def _restore_experiment(
    path: Path,
    sweep: SweepSpec,
    store: Store,
    launch_plan: LaunchPlan,
    callback: StoreCallback,
    summary: LaunchSummary,
    marker: StorageMarker | None = None,
) -> None:
    """Resume an interrupted experiment with `Tuner.restore`: its running and errored trials
    continue from their last checkpoints; cells the store has completed meanwhile are skipped.

    A folder Tune cannot restore (killed before its first snapshot, a snapshot cut short) is
    left to `_run_missing`, which still resumes its cells from the checkpoints it holds.
    """
    if not tune.Tuner.can_restore(str(path)):
        log.info("experiment %s has no restorable state; resuming from the store's view", path)
        return
    skip = frozenset(store.completed_cells(launch_plan.cells))
    # Restoring reads back results Tune had not yet copied to `storage` when the driver died and
    # warns, per trial, that it could not; the store holds them and nothing here needs them.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    try:
        tuner = tune.Tuner.restore(
            str(path),
            trainable=_trainable(sweep, skip, marker=marker),
            resume_unfinished=True,
            resume_errored=True,
        )
        _attach(tuner, callback)
        summary.restored_experiment = str(path)
        _fit(tuner, str(path), callback)
    except BnsweepError:
        raise  # the store or the spec: a fresh experiment would fail the same way
    except Exception as err:
        # Anything from Tune's pickled state of a killed run; resuming from checkpoints is safe.
        callback.flush()
        summary.restored_experiment = None
        log.warning(
            "could not restore the interrupted experiment %s (%s: %s); resuming its cells from "
            "their checkpoints instead",
            path,
            type(err).__name__,
            str(err).splitlines()[0] if str(err) else "",
        )


def _run_missing(
    sweep: SweepSpec,
    store: Store,
    root: str,
    unfinished: Sequence[Path],
    callback: StoreCallback,
    summary: LaunchSummary,
    marker: StorageMarker | None = None,
) -> None:
    """Whatever the store still lacks, as a new experiment. Cells a restored run tried and
    failed past its retries wait for the next launch rather than run twice in one."""
    missing = [c for c in plan(sweep, store).missing if cell_of(c) not in summary.attempted]
    abandoned = [p for p in unfinished if not (p / DONE_MARKER).exists()]
    if missing:
        found = _found_checkpoints(abandoned)
        resume_from = {cell_of(c): found[cell_of(c)][1] for c in missing if cell_of(c) in found}
        name = datetime.now(timezone.utc).strftime("launch-%Y%m%dT%H%M%S%f")
        tuner = _new_tuner(sweep, missing, root, name, callback, resume_from, marker)
        _fit(tuner, _join(_join(root, sweep.name), name), callback)
    # Only now: had this launch been killed too, the next one would still find these checkpoints.
    for path in abandoned:
        _mark_finished(path, "superseded by a later launch")


def _trainable(
    sweep: SweepSpec,
    skip: frozenset[Cell],
    resume_from: Mapping[Cell, str] | None = None,
    marker: StorageMarker | None = None,
) -> Any:
    resources = {"cpu": sweep.resources.cpus, "gpu": sweep.resources.gpus}
    trainable = tune.with_parameters(
        train_cell,
        skip=skip,
        resume_from=dict(resume_from or {}),
        diagnostics=sweep.diagnostics.model_dump(),
        storage=marker,
    )
    return tune.with_resources(trainable, resources)


def _new_tuner(
    sweep: SweepSpec,
    cells: Sequence[TrialSpec],
    root: str,
    name: str,
    callback: StoreCallback,
    resume_from: Mapping[Cell, str] | None = None,
    marker: StorageMarker | None = None,
) -> tune.Tuner:
    return tune.Tuner(
        _trainable(sweep, frozenset(), resume_from, marker),
        # One grid axis whose values are the cells: Tune runs exactly these, nothing crossed.
        param_space={"cell": tune.grid_search([_cell_config(c) for c in cells])},
        tune_config=tune.TuneConfig(
            max_concurrent_trials=sweep.max_concurrent,
            reuse_actors=True,
            trial_dirname_creator=_trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=_join(root, sweep.name),
            callbacks=[callback, JsonLoggerCallback()],
            failure_config=tune.FailureConfig(max_failures=sweep.retries),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            verbose=0,
        ),
    )


def _cell_config(spec: TrialSpec) -> dict[str, Any]:
    """The cell as Ray's config: every field but data_root/device travels as data."""
    return spec.to_dict()


def _trial_dirname(trial: Any) -> str:
    """<spec_hash>-seed<seed>-<trial id>: short, and says which cell a folder holds."""
    spec = TrialSpec.from_dict(trial.config["cell"])
    return f"{spec.spec_hash}-seed{spec.seed}-{trial.trial_id}"


def _join(root: str, name: str) -> str:
    return f"{root.rstrip('/')}/{name}" if "://" in root else str(Path(root) / name)


def _attach(tuner: tune.Tuner, callback: StoreCallback) -> None:
    """A restored Tuner carries the unpickled shell of the old store callback; put the live one
    in, beside the JSON logger it was pickled with."""
    run_config = tuner._local_tuner.get_run_config()
    run_config.callbacks = [callback] + [
        c for c in run_config.callbacks or [] if not isinstance(c, StoreCallback)
    ]


def _fit(tuner: tune.Tuner, path: str, callback: StoreCallback) -> None:
    """Run the experiment; mark its folder finished only when it ran to the end, so that a
    launch stopped by anything (the store gone for good, Tune failing) is restored next time."""
    try:
        tuner.fit()
    except (ray.exceptions.RayError, tune.TuneError) as err:
        if callback.failure is not None:
            raise callback.failure from err
        lines = [line for line in str(err).splitlines() if line.strip()]
        raise BnsweepError(
            f"the Ray Tune run stopped: {lines[-1].strip() if lines else type(err).__name__}"
        ) from err
    _mark_finished(path, "finished")
