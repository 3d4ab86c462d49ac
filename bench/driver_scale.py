"""Can the driver keep up with a paper-size sweep? The real launch path on a simulated GPU cluster.

Everything is the product's own code (`bnsweep.driver.launch`: Ray Tune, the store callback, the
store on SQLite or PostgreSQL, checkpoint files in a storage folder) except the training itself:
`run_trial` is replaced, in every Ray worker, by a stand-in that emits an epoch every
`--epoch-seconds`, with BN diagnostics the size of CIFAR ResNet-18's (21 BN layers, about 7.6 kB
of JSON per epoch) and checkpoints of `--checkpoint-mb` megabytes. Ray is told it has `--gpus`
fake GPUs, and every trial asks for `--gpu-fraction` of one, so 8 GPUs x 0.25 run 32 trials at
once (on a 2-core machine: the stand-in sleeps, it does not compute).

Reported (JSON on stdout, a summary on stderr):

- trial-epochs per second the driver sustains at full load, and over the whole run;
- bytes and files written to storage (per epoch, in total) and the storage folder at the end;
- the driver's peak memory (RSS);
- how long a trial waits inside the call that reports an epoch (`on_epoch`: the checkpoint
  save, when there is one, and `tune.report`), median / p95 / max;
- cells completed, and the epochs with metrics and with BN diagnostics in the store (every
  epoch must reach it).

    python bench/driver_scale.py [--cells 360] [--epochs 30] [--gpus 8] [--gpu-fraction 0.25]
        [--epoch-seconds 0.5] [--checkpoint-mb 4] [--db sqlite:///... | postgresql+psycopg://...]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import ray
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bnsweep.driver import launch  # noqa: E402
from bnsweep.store.api import Store  # noqa: E402
from bnsweep.sweep import parse_sweep_spec  # noqa: E402

#: CIFAR ResNet-18 with an input BN: 20 BN layers in the network and the prepended one.
RESNET18_BN_LAYERS = 21
#: Where each worker appends one JSON line per finished trial (its waits and bytes written).
RECORDS_ENV = "BNSWEEP_BENCH_RECORDS"
EPOCH_SECONDS_ENV = "BNSWEEP_BENCH_EPOCH_SECONDS"
CHECKPOINT_BYTES_ENV = "BNSWEEP_BENCH_CHECKPOINT_BYTES"


# -- the stand-in, installed in every Ray worker ----------------------------------------------
def install_stand_in() -> None:
    """Ray's `worker_process_setup_hook`: swap the training for the stand-in in this worker."""
    import bnsweep.trainable as trainable

    trainable.run_trial = stand_in_run_trial
    trainable._inspector = lambda spec, settings: _FakeDiagnostics()


class _FakeLayer:
    def __init__(self, index: int, epoch: int) -> None:
        self.values = {
            "layer": f"body.stages.{index // 4}.{index % 4}.bn{1 + index % 2}",
            "depth": index,
            "module": "BatchNorm2d",
            "channels": 64 << min(index // 5, 3),
            "gamma_mean": 0.1 + 1e-3 * epoch,
            "gamma_std": 0.0123456789,
            "beta_mean": -0.0012345678,
            "beta_std": 0.0234567891,
            "gamma_drift": 0.0034567891,
            "beta_drift": 0.0045678912,
            "outlier_fraction": 0.0001234567,
            "gradient_factor": 1.2345678912,
        }

    def to_dict(self) -> dict[str, Any]:
        return dict(self.values)


class _FakeDiagnostics:
    """What `BNDiagnostics.take()` gives for a ResNet-18: every epoch's records, once."""

    def __init__(self) -> None:
        self.pending: dict[int, list[_FakeLayer]] = {}

    def record(self, epoch: int) -> None:
        self.pending[epoch] = [_FakeLayer(i, epoch) for i in range(RESNET18_BN_LAYERS)]

    def take(self) -> dict[int, list[_FakeLayer]]:
        taken, self.pending = self.pending, {}
        return taken


def _written_bytes() -> int:
    """Bytes this process has passed to write() so far (Linux /proc/self/io `wchar`)."""
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("wchar:"))


def stand_in_run_trial(spec, on_epoch=None, checkpoint=None, inspect=None):
    """`run_trial`'s contract at a set pace: epochs, saves and diagnostics, no computation."""
    from bnsweep.workers.checkpoint import load_checkpoint
    from bnsweep.workers.results import EpochMetrics, TrialResult

    period = float(os.environ[EPOCH_SECONDS_ENV])
    payload = b"\0" * int(os.environ[CHECKPOINT_BYTES_ENV])
    first = 1
    if checkpoint is not None:
        first = int(load_checkpoint(checkpoint)["progress"]["epoch"]) + 1
    waits: list[float] = []
    reported: list[float] = []  # when each epoch's report returned: the driver had taken it
    written = _written_bytes()
    next_at = time.monotonic()

    def save(folder):
        from bnsweep.workers.checkpoint import save_checkpoint

        path = save_checkpoint(folder, {"progress": {"epoch": epoch, "history": []}})
        with open(Path(folder) / "weights.bin", "wb") as f:
            f.write(payload)
        return path

    for epoch in range(first, spec.epochs + 1):
        next_at += period
        time.sleep(max(next_at - time.monotonic(), 0.0))
        if inspect is not None:
            inspect.record(epoch)
        metrics = EpochMetrics(epoch, 1.0 / epoch, 1.0, 0.5, 0.5, spec.lr, period)
        started = time.perf_counter()
        if on_epoch is not None:
            on_epoch(metrics, save)
        waits.append(time.perf_counter() - started)
        reported.append(time.time())
    with open(os.environ[RECORDS_ENV], "a") as f:
        record = {"waits": waits, "reported": reported, "written": _written_bytes() - written}
        f.write(json.dumps(record) + "\n")
    epochs = spec.epochs - first + 1
    return TrialResult("completed", spec.epochs, spec.epochs, 0.5, 0.5, 0.5, period * epochs, 1.0)


# -- the sweep ---------------------------------------------------------------------------------
def sweep_text(args: argparse.Namespace, storage: Path) -> str:
    """A Table-1-shaped sweep: 5 γ at c = 100 and BASE, 4 learning rates, seeds to fill `cells`."""
    gammas, lrs = [1.0, 0.5, 0.2, 0.1, 0.05], [0.1, 0.05, 0.01, 0.005]
    specs = (len(gammas) + 1) * len(lrs)
    sweep: dict[str, Any] = {
        # A fresh name per run: on a shared PostgreSQL store nothing is reused from a past run.
        "name": f"driver-scale-{os.getpid()}-{int(time.time())}",
        "defaults": {"dataset": "cifar10", "arch": "resnet18", "epochs": args.epochs},
        "grids": [{"bn_scale_init": gammas, "bn_lr_divisor": [100], "lr": lrs}],
        "base": True,
        "seeds": max(-(-args.cells // specs), 1),
        "resources": {"cpus": 0.01, "gpus": args.gpu_fraction},
        "retries": 0,
        "storage": str(storage),
    }
    if args.checkpoint_every is not None:
        sweep["checkpoint_every"] = args.checkpoint_every
    return yaml.safe_dump(sweep)


class _RssSampler(threading.Thread):
    """The driver's resident memory, sampled every second (peak and last)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = self.last = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(1.0):
            with open("/proc/self/statm") as f:
                self.last = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            self.peak = max(self.peak, self.last)


def _folder_size(path: Path) -> tuple[int, int]:
    files = [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files), len(files)


def _sustained_rate(reported: list[float]) -> float:
    """Epoch reports per second between the 10th and the 90th percentile of their times: the
    rate at full load, start-up and the last stragglers left out. A trial's report returns only
    once the driver has taken the result, so this is the driver's rate, not the stand-in's."""
    times = sorted(reported)
    if len(times) < 10:
        return float("nan")
    lo, hi = times[len(times) // 10], times[(9 * len(times)) // 10]
    return (0.8 * len(times)) / (hi - lo) if hi > lo else float("nan")


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bnsweep-driver-scale-"))
    storage, records = work / "storage", work / "records.jsonl"
    records.touch()
    db = args.db or f"sqlite:///{work / 'store.db'}"
    os.environ.update(
        {
            RECORDS_ENV: str(records),
            EPOCH_SECONDS_ENV: str(args.epoch_seconds),
            CHECKPOINT_BYTES_ENV: str(int(args.checkpoint_mb * 2**20)),
        }
    )
    text = sweep_text(args, storage)
    sweep = parse_sweep_spec(text)
    store = Store.open(db)
    ray.init(
        num_cpus=2,
        num_gpus=args.gpus,
        include_dashboard=False,
        logging_level="WARNING",
        runtime_env={"worker_process_setup_hook": install_stand_in},
    )
    rss = _RssSampler()
    rss.start()
    written = _written_bytes()
    started = time.monotonic()
    summary = launch(sweep, store, text, progress_stream=sys.stderr)
    wall = time.monotonic() - started
    driver_written = _written_bytes() - written
    rss.stop.set()
    ray.shutdown()

    trials = [json.loads(line) for line in records.read_text().splitlines() if line]
    waits = sorted(w for t in trials for w in t["waits"])
    worker_written = sum(t["written"] for t in trials)
    epochs = len(waits)
    stored_epochs = len(store.epochs(sweep=sweep.name))
    diagnostics = store.diagnostics(sweep.name)
    stored_diagnostics = len(diagnostics[["spec_hash", "seed", "epoch"]].drop_duplicates())
    size, files = _folder_size(storage)
    return {
        "cells": summary.ran,
        "completed": summary.completed,
        "epochs_per_cell": args.epochs,
        "concurrent_trials": int(args.gpus / args.gpu_fraction),
        "epoch_seconds": args.epoch_seconds,
        "checkpoint_mb": args.checkpoint_mb,
        "checkpoint_every": args.checkpoint_every,
        "database": db.split("://")[0],
        "wall_seconds": round(wall, 1),
        "trial_epochs": epochs,
        "stored_epochs": stored_epochs,
        "stored_diagnostics_epochs": stored_diagnostics,
        "trial_epochs_per_second": round(epochs / wall, 2),
        "trial_epochs_per_second_sustained": round(
            _sustained_rate([r for t in trials for r in t["reported"]]), 2
        ),
        "offered_trial_epochs_per_second": round(
            args.gpus / args.gpu_fraction / args.epoch_seconds, 2
        ),
        "bytes_written_driver": driver_written,
        "bytes_written_trials": worker_written,
        "bytes_written_per_epoch": round((driver_written + worker_written) / max(epochs, 1)),
        "storage_bytes_at_end": size,
        "storage_files_at_end": files,
        "driver_peak_rss_mb": round(
            max(rss.peak, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**20, 1
        ),
        "report_wait_seconds": {
            "median": round(statistics.median(waits), 4) if waits else None,
            "p95": round(waits[int(0.95 * (len(waits) - 1))], 4) if waits else None,
            "max": round(waits[-1], 4) if waits else None,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, default=360)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--gpu-fraction", type=float, default=0.25)
    parser.add_argument("--epoch-seconds", type=float, default=0.5)
    parser.add_argument("--checkpoint-mb", type=float, default=4.0)
    parser.add_argument("--checkpoint-every", type=int, default=None)
    parser.add_argument("--db", default=None, help="store URL (default: a fresh SQLite file)")
    args = parser.parse_args()
    result = run(args)
    print(json.dumps(result, indent=2))
    print(
        f"{result['trial_epochs_per_second_sustained']} trial-epochs/s sustained "
        f"({result['trial_epochs_per_second']} over the whole run with start-up; offered "
        f"{result['offered_trial_epochs_per_second']}), "
        f"{result['bytes_written_per_epoch'] / 2**20:.1f} MiB written per epoch, "
        f"driver peak {result['driver_peak_rss_mb']} MiB",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
