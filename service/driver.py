"""The Ray Tune driver: run the cells a sweep is missing, and write every result to the store.

The flow of one launch (docs/architecture.md):

1. `plan()` expands the sweep and asks the store which cells are completed;
2. what cannot run is refused before anything is written: a trial no node can fit, a local
   checkpoint folder on several nodes;
3. the missing cells run as one new Tune experiment over an explicit list of cells. Each cell
   continues from the latest checkpoint in its own folder (`service/checkpoints.py`), whichever
   launch, retry or node wrote it; no Tune experiment is ever restored, so a relaunch runs only
   the cells of the spec in front of it and reads nothing Tune pickled;
4. `StoreCallback` turns Tune's results, and the records trials put on the launch's
   `EventSink`, into store events, batched, in the driver process: the driver is the only
   writer, which keeps SQLite safe and puts retries in one place. A trial that resumes sends
   again the epochs its checkpoint covers, so events a dead driver still held are not lost.

Per epoch, the driver handles one small result (7 numbers) and the BN diagnostics, whatever the
number of trials or epochs so far: bench/driver_scale.py measures it.

docs/sweeps.md says the same for users.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import os
import re
import socket
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from rich.console import Console
from rich.live import Live
from rich.text import Text

from service.checkpoints import CellRecords, CellStorage, write_cell_file
from service.plan import Cell, cell_label, cell_of, plan
from service.ray_address import host_port
from service.store.api import Store
from service.store.errors import StoreError, StoreFailure
from service.store.events import (
    DiagnosticsRecorded,
    EpochRecorded,
    TrialFailed,
    TrialFinished,
    TrialStarted,
)
from service.sweep import SweepSpec
from workers.diagnostics import BNDiagnostics
from workers.errors import BnsweepError, RuntimeFailure, SpecError
from workers.spec import TrialSpec
from workers.trial import EpochMetrics, TrialResult, run_trial

log = logging.getLogger(__name__)

LOCK_FILE = ".bnsweep-launch.lock"
#: Written by each launch into <storage>/<sweep>/ with a fresh token; every trial reads it back
#: before training, so a node that does not share the checkpoint folder is found at once.
STORAGE_MARKER = ".bnsweep-storage"
#: Defaults the driver gives Ray Tune; a value already in the environment wins.
TUNE_ENV_DEFAULTS = {
    # The store is the record of every epoch; Tune's per-trial JSON, CSV and TensorBoard files
    # would repeat it, written from the driver loop at every result, and each experiment
    # snapshot would upload them all again.
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


# -- the trainable (runs on the workers) ----------------------------------------------------
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
    if resumed is not None:
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
                write_cell_file(folder, key, metrics.epoch)
            since, first = CellRecords([], []), metrics.epoch + 1
        tune.report({"kind": "epoch", **asdict(metrics)})

    with _checkpoint_of(cells, key, resumed) as checkpoint:
        result = run_trial(spec, on_epoch=on_epoch, checkpoint=checkpoint, inspect=inspector)
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


# -- the driver-side callback ---------------------------------------------------------------
@dataclass
class LaunchSummary:
    """What one launch did, for the CLI and the tests."""

    ran: int = 0  # cells that started training (each counted once, whatever its retries)
    starts: int = 0  # trial starts, retries and resumptions included
    completed: int = 0
    diverged: int = 0
    failed: int = 0
    resumed: dict[Cell, int] = field(default_factory=dict)  # cell → epoch it resumed after
    attempted: set[Cell] = field(default_factory=set)
    ended: set[Cell] = field(default_factory=set)  # cells with an outcome: a result or a failure
    results: set[Cell] = field(default_factory=set)  # cells that ended completed or diverged
    requeued: int = 0  # rows a killed or interrupted launch had left `running`
    interrupted: bool = False  # the launch stopped (Ctrl-C) before every cell had an outcome

    @property
    def unsuccessful(self) -> int:
        """Cells that ended without a usable result in this launch: failed or diverged."""
        return self.failed + self.diverged


class StoreCallback(tune.Callback):
    """Tune results → store events, buffered and written in batches from the driver loop.

    Tune calls callbacks synchronously in its event loop, so writes are batched: a flush at most
    every `flush_seconds`, and always when a trial ends. Every event is an idempotent upsert,
    so the epochs Ray replays after a retry overwrite themselves. The bulky records (BN
    diagnostics, the epochs a resumed cell sends again) arrive on `events`, drained as often.
    """

    def __init__(
        self,
        store: Store,
        summary: LaunchSummary,
        progress: Progress,
        flush_seconds: float = 2.0,
        events: Callable[[], Sequence[Any]] | None = None,
    ) -> None:
        self.store, self.summary, self.progress = store, summary, progress
        self.flush_seconds = flush_seconds
        self.events = events  # takes what trials queued: (cell, kind, records) items
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
        if kind == "started":
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
                    threads=result.get("threads"),
                    runtime=result.get("runtime"),
                )
            )
            self.progress.started(key, resumed_from)
        elif kind == "epoch":
            metrics = EpochMetrics(**{f.name: result[f.name] for f in fields(EpochMetrics)})
            self._pending.append(EpochRecorded(*key, metrics=metrics))
            self.progress.epoch(key, metrics.epoch)
        elif kind == "final":
            outcome = TrialResult(
                **{f.name: result[f.name] for f in fields(TrialResult) if f.name != "history"}
            )
            self.drain()  # the trial's last diagnostics were queued before this result
            self._pending.append(TrialFinished.from_result(*key, outcome, finished_at=now))
            if outcome.status == "diverged":
                self.summary.diverged += 1
            else:
                self.summary.completed += 1
            self.summary.ended.add(key)
            self.summary.results.add(key)
            self.progress.finished(key, outcome.status)
            self.flush()
        self.maybe_flush()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        spec = TrialSpec.from_dict(trial.config["cell"])
        error = _trial_error(trial)
        log.warning(
            "%s seed %d failed: %s (traceback in %s)",
            cell_label(spec),
            spec.seed,
            error,
            getattr(trial, "error_file", None) or "the Ray logs",
        )
        self.drain()
        self._pending.append(TrialFailed(*cell_of(spec), error=error, finished_at=_now()))
        self.summary.failed += 1
        self.summary.ended.add(cell_of(spec))
        self.progress.finished(cell_of(spec), "failed")
        self.flush()

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        spec = TrialSpec.from_dict(trial.config["cell"])
        log.warning(
            "%s seed %d failed (%s); retrying from its last checkpoint (failure %d)",
            cell_label(spec),
            spec.seed,
            _trial_error(trial),
            trial.num_failures,
        )

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self.maybe_flush()
        self.progress.refresh()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.drain()
        self.flush()

    def maybe_flush(self) -> None:
        if time.monotonic() - self._last_flush >= self.flush_seconds:
            self.drain()
            if self._pending:
                self.flush()

    def drain(self) -> None:
        """Take what the trials queued on `events` (one round trip) as store events."""
        if self.events is None:
            return
        for key, kind, items in self.events():
            cell = (str(key[0]), int(key[1]))
            self._pending += RECORD_EVENTS[kind](cell, items)

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


@ray.remote(num_cpus=0)
class EventSink:
    """Where trials put the records Tune need not carry; the driver takes them all at once."""

    def __init__(self) -> None:
        self.items: list[Any] = []

    def put(self, item: Any) -> None:
        self.items.append(item)

    def drain(self) -> list[Any]:
        items, self.items = self.items, []
        return items


def _epoch_events(key: Cell, items: Sequence[Mapping[str, Any]]) -> list[EpochRecorded]:
    return [EpochRecorded(*key, metrics=EpochMetrics(**item)) for item in items]


def _diagnostics_events(key: Cell, items: Sequence[Mapping[str, Any]]) -> list[Any]:
    return [
        DiagnosticsRecorded(*key, epoch=item["epoch"], layers=tuple(item["layers"]))
        for item in items
    ]


#: What each kind of queued record becomes in the store.
RECORD_EVENTS = {"epochs": _epoch_events, "diagnostics": _diagnostics_events}


def _trial_error(trial: Any) -> str:
    """What went wrong in a trial, as one line ("DataError: ..."): the last line of the
    traceback text Tune wrote to the trial's error.txt on the driver (`local_path`, written just
    now; `Trial.get_error()` reads the storage copy, which may not be synced yet).

    Only the text is read. Tune also pickles the exception (error.pkl), and unpickling a file
    from a folder other people can write to would run whatever code they put in it."""
    text_file = getattr(trial, "error_file", None)
    if text_file and Path(text_file).is_file():
        text = Path(text_file).read_text(errors="replace")
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        if lines:
            # A traceback's last line says what happened; the exception's module path is noise.
            return _one_line(_QUALIFIED_ERROR.sub(r"\1", lines[-1]))
    return "the trial failed without an error message"


#: "workers.errors.DataError: ..." → "DataError: ..."
_QUALIFIED_ERROR = re.compile(r"^(?:[A-Za-z_][\w]*\.)+([A-Za-z_]\w*(?:Error|Exception|Exit)\b)")


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

    Phases: plan against the store; refuse what cannot run (resources no node has, storage
    other nodes cannot see, a compile that fails on a worker) before anything is written;
    register the sweep; run the missing cells as one Tune experiment, each continuing from its
    latest checkpoint. Only the cells of `sweep` as it is now run: nothing of an earlier
    launch's experiment is restored.
    """
    launch_plan = plan(sweep, store)
    summary = LaunchSummary()
    if not launch_plan.missing:
        store.register_sweep(sweep.name, spec_text, launch_plan.cells)
        return summary
    _tune_environment()
    nodes = connect(address, num_cpus=num_cpus)
    check_resources_fit(sweep.resources, ray.nodes(), autoscaler=autoscaler_present())
    root = storage_root(sweep, base_dir)
    check_storage_is_shared(sweep, root, nodes)
    check_compile_works(sweep, launch_plan.missing)
    with store.launch_lock(sweep.name), _one_launch_at_a_time(root, sweep.name):
        store.register_sweep(sweep.name, spec_text, launch_plan.cells)
        marker = place_storage_marker(root, sweep.name)
        missing = plan(sweep, store).missing  # another launch may have finished some meanwhile
        summary.requeued = store.requeue_stale(missing)  # we hold the lock: nobody trains them
        progress = Progress(
            len(launch_plan.cells),
            len(launch_plan.cells) - len(missing),
            epochs={cell_of(c): c.epochs for c in missing},
            stream=progress_stream,
        )
        # On the driver's own node: a sink on a worker node would go, with the records in it,
        # when that node does (the cluster test removes one mid-sweep).
        here = ray.get_runtime_context().get_node_id()
        events = EventSink.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False)
        ).remote()
        callback = StoreCallback(
            store, summary, progress, events=lambda: ray.get(events.drain.remote())
        )
        try:
            if missing:
                _fit(_new_tuner(sweep, missing, root, callback, marker, events), callback)
        finally:
            if callback.failure is None:
                callback.drain()
                callback.flush()
            progress.close()
            ray.kill(events)
        summary.interrupted = any(cell_of(c) not in summary.ended for c in missing)
    _check_stored(store, summary)
    return summary


def _check_stored(store: Store, summary: LaunchSummary) -> None:
    """What the launch is about to report must be in the store: read it back."""
    stored = store.completed_cells(summary.results)
    if stored != summary.results:
        lost = len(summary.results - stored)
        raise StoreFailure(
            f"{lost} of the {len(summary.results)} cells this launch finished are not in the "
            f"store {store.url} when read back; their results were lost (was the "
            "database replaced or restored while the launch ran?): launch again to train them"
        )


@contextlib.contextmanager
def _one_launch_at_a_time(root: str, sweep_name: str) -> Iterator[None]:
    """Hold a lock on <storage>/<sweep>/ for the launch: two launches of one sweep would train
    the same missing cells twice, into the same cell folders. The kernel drops the lock of a
    killed driver. (Object storage has no locks: not checked.)"""
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


def _new_tuner(
    sweep: SweepSpec,
    cells: Sequence[TrialSpec],
    root: str,
    callback: StoreCallback,
    marker: StorageMarker | None,
    events: Any,
) -> tune.Tuner:
    """One experiment over exactly these cells. Tune neither checkpoints (each cell's folder
    holds its checkpoints) nor logs results (the store does): with no trial checkpoints, Tune
    never forces an experiment snapshot, and its periodic one stays a few kB per trial."""
    trainable = tune.with_parameters(
        train_cell,
        cells=CellStorage(_join(root, sweep.name)),
        checkpoint_every=sweep.checkpoint_every,
        diagnostics=sweep.diagnostics.model_dump(),
        storage=marker,
        events=events,
    )
    resources = {"cpu": sweep.resources.cpus, "gpu": sweep.resources.gpus}
    return tune.Tuner(
        tune.with_resources(trainable, resources),
        # One grid axis whose values are the cells: Tune runs exactly these, nothing crossed.
        param_space={"cell": tune.grid_search([_cell_config(c) for c in cells])},
        tune_config=tune.TuneConfig(
            max_concurrent_trials=sweep.max_concurrent,
            reuse_actors=True,
            trial_dirname_creator=_trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=datetime.now(timezone.utc).strftime("launch-%Y%m%dT%H%M%S%f"),
            storage_path=_join(root, sweep.name),
            callbacks=[callback],
            failure_config=tune.FailureConfig(max_failures=sweep.retries),
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


#: Tune's end-of-experiment analysis reads every trial's result.json back and warns, trial by
#: trial, that none is there: Tune's loggers are off on purpose (the store holds every result).
_EXPERIMENT_ANALYSIS_LOGGER = "ray.tune.analysis.experiment_analysis"


def _fit(tuner: tune.Tuner, callback: StoreCallback) -> None:
    logging.getLogger(_EXPERIMENT_ANALYSIS_LOGGER).setLevel(logging.ERROR)
    try:
        tuner.fit()
    except (ray.exceptions.RayError, tune.TuneError) as err:
        if callback.failure is not None:
            raise callback.failure from err
        lines = [line for line in str(err).splitlines() if line.strip()]
        raise BnsweepError(
            f"the Ray Tune run stopped: {lines[-1].strip() if lines else type(err).__name__}"
        ) from err
    if callback.failure is not None:
        raise callback.failure


# -- compile --------------------------------------------------------------------------------
#: How long the compile self-test may take on a worker (a first compile on a CPU: ~1 minute).
COMPILE_CHECK_SECONDS = 600.0


def _compile_probe(device: str, mode: str) -> tuple[str, str | None]:
    """On a worker: (its host, what stops torch.compile there or None)."""
    from workers.compile import compile_problem

    return socket.gethostname(), compile_problem(device, mode)


def check_compile_works(sweep: SweepSpec, cells: Sequence[TrialSpec]) -> None:
    """Before a launch with `compile: true`: compile and run a tiny function on a worker with a
    trial's resources, once per compile mode, and refuse in one line if it cannot. Otherwise
    every compiled trial would fail the same way (no C compiler in a CUDA runtime image, no
    Triton) and burn its retries."""
    modes = sorted({c.compile_mode for c in cells if c.compile})
    if not modes:
        return
    device = "cuda" if sweep.resources.gpus > 0 else "cpu"
    probe = ray.remote(_compile_probe).options(
        num_cpus=sweep.resources.cpus, num_gpus=sweep.resources.gpus, max_retries=0
    )
    for mode in modes:
        try:
            host, problem = ray.get(probe.remote(device, mode), timeout=COMPILE_CHECK_SECONDS)
        except ray.exceptions.GetTimeoutError:
            raise BnsweepError(
                f"compile: the check that torch.compile works on a worker took over "
                f"{COMPILE_CHECK_SECONDS:g} s; launch again, or set compile: false"
            ) from None
        if problem is not None:
            raise SpecError(f"compile: true, but compiling fails on worker {host}: {problem}")


# -- resources ------------------------------------------------------------------------------
def check_resources_fit(
    resources: Any, nodes: Sequence[Mapping[str, Any]], *, autoscaler: bool
) -> None:
    """Refuse a launch no node can run a single trial of: Ray would keep it pending forever.

    With an autoscaler a bigger node may still come, so that is a warning, once."""
    alive = [n.get("Resources", {}) for n in nodes if n.get("Alive")]
    need = {"CPU": float(resources.cpus), "GPU": float(resources.gpus)}
    if any(all(node.get(k, 0.0) >= v for k, v in need.items() if v > 0) for node in alive):
        return
    largest = max(alive, key=lambda n: (n.get("GPU", 0.0), n.get("CPU", 0.0)), default={})
    message = (
        f"resources: each trial asks for {need['CPU']:g} CPUs and {need['GPU']:g} GPUs, but no "
        f"node of this Ray cluster has that much ({len(alive)} node(s); the largest has "
        f"{largest.get('CPU', 0.0):g} CPUs and {largest.get('GPU', 0.0):g} GPUs). Lower "
        "`resources` in the spec (a GPU fraction packs several trials on one GPU), or launch "
        "on a cluster with such a node"
    )
    if autoscaler:
        log.warning("%s; waiting for the autoscaler to add one", message)
        return
    raise SpecError(message)


#: "1" declares that an autoscaler can add nodes the cluster does not have yet, "0" that none
#: can; unset, the autoscaler's own cluster config decides (`autoscaler_present`).
AUTOSCALER_ENV = "BNSWEEP_AUTOSCALER"


def autoscaler_present() -> bool:
    """Whether the cluster can grow: `AUTOSCALER_ENV`, else whether an autoscaler (KubeRay, the
    cluster launcher, autoscaler v2) has published a cluster config with a node group that may
    start nodes. A local Ray or a plain `ray start` cluster has none.

    Ray exposes that config only through `ray._private.state`; tests/service/test_driver.py
    checks the call still exists, so a Ray upgrade that moves it fails there, loudly."""
    declared = os.environ.get(AUTOSCALER_ENV, "").strip().lower()
    if declared:
        return declared in ("1", "true", "yes")
    from ray._private.state import state

    config = state.get_cluster_config()
    return config is not None and any(g.max_count != 0 for g in config.node_group_configs)
