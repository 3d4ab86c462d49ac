"""The Ray Tune driver: run the cells a sweep is missing, and write every result to the store.

The flow of one launch (docs/architecture.md):

1. `plan()` expands the sweep and asks the store which cells are completed;
2. an interrupted experiment of this sweep is restored with `Tuner.restore` when its folder is
   there (trials resume from their last epoch checkpoint; cells completed meanwhile are skipped);
3. whatever is still missing runs as a new Tune experiment over an explicit list of cells;
4. `StoreCallback` turns Tune's results into store events, batched, in the driver process: the
   driver is the only writer, which keeps SQLite safe and puts retries in one place.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import ray
from ray import tune

from service.store.api import EpochRecorded, Store, TrialFailed, TrialFinished, TrialStarted
from service.sweep import SweepSpec, expand
from workers.errors import BnsweepError, SpecError
from workers.spec import TrialSpec
from workers.trial import EpochMetrics, TrialResult, run_trial

log = logging.getLogger(__name__)

Cell = tuple[str, int]  # (spec_hash, seed): the store's key for one run
DONE_MARKER = ".bnsweep-finished"
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
def train_cell(config: dict[str, Any], skip: frozenset[Cell] = frozenset()) -> None:
    """One cell as a Ray Tune function trainable: report every epoch with a checkpoint."""
    spec = TrialSpec.from_dict(config["cell"])
    if cell_of(spec) in skip:  # completed while this experiment was interrupted
        tune.report({"kind": "skipped"})
        return
    restored = tune.get_checkpoint()
    resume_dir = restored.to_directory() if restored is not None else None
    resumed_from = _checkpoint_epoch(resume_dir)
    tune.report(
        {
            "kind": "started",
            "host": socket.gethostname(),
            "device": _device_name(spec),
            "resumed_from_epoch": resumed_from,
        }
    )

    def on_epoch(metrics: EpochMetrics, save: Any) -> None:
        with tempfile.TemporaryDirectory(prefix="bnsweep-ckpt-") as folder:
            save(folder)
            tune.report(
                {"kind": "epoch", **asdict(metrics)},
                checkpoint=tune.Checkpoint.from_directory(folder),
            )

    result = run_trial(spec, on_epoch=on_epoch, checkpoint=resume_dir)
    tune.report(
        {
            "kind": "final",
            **{f.name: getattr(result, f.name) for f in fields(TrialResult) if f.name != "history"},
        }
    )


def _checkpoint_epoch(folder: str | None) -> int:
    if folder is None:
        return 0
    from workers.checkpoint import load_checkpoint

    return int(load_checkpoint(folder)["progress"]["epoch"])


def _device_name(spec: TrialSpec) -> str:
    import torch

    from workers.trial import resolve_device

    device = resolve_device(spec.device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


# -- the driver-side callback ---------------------------------------------------------------
@dataclass
class LaunchSummary:
    """What one launch did, for the CLI and the tests."""

    ran: int = 0
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
            self.summary.ran += 1
            self.summary.attempted.add(key)
            if result.get("resumed_from_epoch"):
                self.summary.resumed[key] = int(result["resumed_from_epoch"])
            self._pending.append(
                TrialStarted(
                    *key,
                    host=result.get("host"),
                    device=result.get("device"),
                    package_version=self._package_version,
                    started_at=now,
                )
            )
            self.progress.started(key)
        elif kind == "epoch":
            metrics = EpochMetrics(**{f.name: result[f.name] for f in fields(EpochMetrics)})
            self._pending.append(EpochRecorded(*key, metrics=metrics))
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
        self._pending.append(
            TrialFailed(*cell_of(spec), error=_trial_error(trial), finished_at=_now())
        )
        self.summary.failed += 1
        self.progress.finished(cell_of(spec), "failed")
        self.flush()

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self.maybe_flush()
        self.progress.refresh()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.flush()

    def maybe_flush(self) -> None:
        if self._pending and time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            self.store.apply(self._pending)  # retried inside the store; idempotent
            self._pending = []
        self._last_flush = time.monotonic()


def _trial_error(trial: Any) -> str:
    error = trial.get_error() if hasattr(trial, "get_error") else None
    text = str(error) if error is not None else "trial failed without an error message"
    # The last line of a traceback says what happened; keep the whole text short for the table.
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else text)[:2000]


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
    """Cells done / running / pending / failed and an ETA, on stderr.

    A terminal gets a live line; a log file gets a line every `every` seconds.
    """

    def __init__(
        self, total: int, already_done: int, every: float = 10.0, stream: Any = None
    ) -> None:
        self.total, self.already_done = total, already_done
        self.stream = stream or sys.stderr
        self.every = every
        self.running: set[Cell] = set()
        self.outcomes: Counter[str] = Counter()
        self.started_at = time.monotonic()
        self._last = 0.0
        self._live = None
        if getattr(self.stream, "isatty", lambda: False)():
            from rich.console import Console
            from rich.live import Live

            self._live = Live(
                console=Console(file=self.stream), refresh_per_second=2, transient=False
            )
            self._live.start()

    def started(self, key: Cell) -> None:
        self.running.add(key)

    def finished(self, key: Cell, status: str) -> None:
        self.running.discard(key)
        self.outcomes[status] += 1

    def line(self) -> str:
        finished_now = sum(self.outcomes.values())
        done = self.already_done + self.outcomes["completed"] + self.outcomes["skipped"]
        pending = max(
            self.total
            - done
            - self.outcomes["diverged"]
            - self.outcomes["failed"]
            - len(self.running),
            0,
        )
        elapsed = time.monotonic() - self.started_at
        if finished_now:
            eta = _clock(elapsed / finished_now * (pending + len(self.running)))
        else:
            eta = "--"
        return (
            f"cells {self.total}: {done} done, {len(self.running)} running, {pending} pending, "
            f"{self.outcomes['failed']} failed, {self.outcomes['diverged']} diverged | "
            f"elapsed {_clock(elapsed)}, ETA {eta}"
        )

    def refresh(self, force: bool = False) -> None:
        if self._live is not None:
            self._live.update(self.line())
            return
        now = time.monotonic()
        if force or now - self._last >= self.every:
            self._last = now
            print(self.line(), file=self.stream, flush=True)

    def close(self) -> None:
        if self._live is not None:
            self._live.update(self.line())
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


def _unfinished_experiments(root: str, sweep_name: str) -> list[str]:
    """Experiment folders of this sweep that a crash left behind, newest first (local paths only;
    on object storage an interrupted experiment is recovered through the store's view)."""
    if "://" in root:
        return []
    folder = Path(root) / sweep_name
    if not folder.is_dir():
        return []
    candidates = [p for p in folder.iterdir() if p.is_dir() and not (p / DONE_MARKER).exists()]
    return [
        str(p)
        for p in sorted(candidates, key=lambda p: p.name, reverse=True)
        if tune.Tuner.can_restore(str(p))
    ]


# -- the launch -----------------------------------------------------------------------------
def connect(address: str | None, num_cpus: int | None = None, num_gpus: int | None = None) -> int:
    """Attach to a cluster (`--address`, RAY_ADDRESS, or the job we were submitted as) or start a
    local Ray. Token authentication stays whatever the cluster has: on by default."""
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": True}
        if address or os.environ.get("RAY_ADDRESS"):
            kwargs["address"] = address or os.environ["RAY_ADDRESS"]
        else:
            kwargs.update(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False)
        ray.init(**kwargs)
    return sum(1 for node in ray.nodes() if node.get("Alive"))


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
    """Run every missing cell of `sweep`; return what happened. Safe to call again at any time."""
    launch_plan = plan(sweep, store)
    store.register_sweep(sweep.name, spec_text, launch_plan.cells)
    summary = LaunchSummary()
    if not launch_plan.missing:
        return summary
    nodes = connect(address, num_cpus=num_cpus)
    root = storage_root(sweep, base_dir)
    check_storage_is_shared(sweep, root, nodes)
    progress = Progress(len(launch_plan.cells), len(launch_plan.completed), stream=progress_stream)
    callback = StoreCallback(store, summary, progress)
    try:
        for path in _unfinished_experiments(root, sweep.name)[:1]:
            summary.restored_experiment = path
            skip = frozenset(store.completed_cells(launch_plan.cells))
            tuner = tune.Tuner.restore(
                path, trainable=_trainable(sweep, skip), resume_unfinished=True, resume_errored=True
            )
            _attach(tuner, callback)
            _fit(tuner, path)
        # Whatever the restored experiment did not cover (or when there was none): the store's view.
        # Cells the restored run tried and failed past its retries wait for the next launch.
        missing = [c for c in plan(sweep, store).missing if cell_of(c) not in summary.attempted]
        if missing:
            name = datetime.now(timezone.utc).strftime("launch-%Y%m%dT%H%M%S%f")
            tuner = _new_tuner(sweep, missing, root, name, callback)
            _fit(tuner, _join(_join(root, sweep.name), name))
    finally:
        callback.flush()
        progress.close()
    return summary


def _trainable(sweep: SweepSpec, skip: frozenset[Cell]) -> Any:
    resources = {"cpu": sweep.resources.cpus, "gpu": sweep.resources.gpus}
    return tune.with_resources(tune.with_parameters(train_cell, skip=skip), resources)


def _new_tuner(
    sweep: SweepSpec, cells: Sequence[TrialSpec], root: str, name: str, callback: StoreCallback
) -> tune.Tuner:
    param_space = {"cell": tune.grid_search([_cell_config(c) for c in cells])}
    return tune.Tuner(
        _trainable(sweep, frozenset()),
        param_space=param_space,
        tune_config=tune.TuneConfig(max_concurrent_trials=sweep.max_concurrent, reuse_actors=True),
        run_config=tune.RunConfig(
            name=name,
            storage_path=_join(root, sweep.name),
            callbacks=[callback],
            failure_config=tune.FailureConfig(max_failures=sweep.retries),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            verbose=0,
        ),
    )


def _cell_config(spec: TrialSpec) -> dict[str, Any]:
    """The cell as Ray's config: every field but data_root/device travels as data."""
    return spec.to_dict()


def _join(root: str, name: str) -> str:
    return f"{root.rstrip('/')}/{name}" if "://" in root else str(Path(root) / name)


def _attach(tuner: tune.Tuner, callback: StoreCallback) -> None:
    """A restored Tuner carries the unpickled shell of the old callback; put the live one in."""
    tuner._local_tuner.get_run_config().callbacks = [callback]


def _fit(tuner: tune.Tuner, path: str) -> None:
    try:
        tuner.fit()
    except (ray.exceptions.RayError, tune.TuneError) as err:
        raise BnsweepError(f"the Ray Tune run stopped: {err}") from err
    # Marks the experiment as done so a later launch does not try to restore it.
    if "://" not in path and Path(path).is_dir():
        (Path(path) / DONE_MARKER).write_text(_now().isoformat())
