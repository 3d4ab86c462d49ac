"""What the sweep service costs per trial: a sweep of 40 short trials through `launch()` (local
Ray, SQLite store) against the same trials run back to back in one process with `run_trial`.

    overhead per trial = (service wall time - sequential wall time / parallelism) / trials

Parallelism is how many trials Ray runs at once (CPUs / CPUs per trial, capped by the spec).
Both sides train the same cells with the same threads per trial (1), BN diagnostics off, so the
difference is Ray's scheduling and actors, Tune's loop and checkpoints, and the store's writes.
Ray's start-up is a fixed cost per launch, shown apart. The machine's load is printed before
and after: on a shared machine, rerun when it is quiet.

    python bench/service_overhead.py [--trials 40] [--epochs 1] [--cpus 2]
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import ray
import torch
import yaml

from bnsweep.driver import connect, launch
from bnsweep.store.api import Store
from bnsweep.sweep import expand, parse_sweep_spec
from bnsweep.workers.trial import run_trial

ARMS = 4  # γ ∈ {0.5, 0.1, 0.05} at c = 100, and BASE


def sweep_text(trials: int, epochs: int, cpus: int, storage: Path) -> str:
    seeds = max(trials // ARMS, 1)
    return yaml.safe_dump(
        {
            "name": "overhead",
            "defaults": {
                "dataset": "digits",
                "arch": "resnet8",
                "epochs": epochs,
                "batch_size": 64,
                "device": "cpu",
            },
            "grids": [{"bn_scale_init": [0.5, 0.1, 0.05], "bn_lr_divisor": [100]}],
            "base": True,
            "seeds": seeds,
            "resources": {"cpus": 1},
            "max_concurrent": cpus,
            "retries": 0,
            "storage": str(storage),
            "diagnostics": {"every": 0},
        }
    )


def sequential(text: str) -> float:
    """Every cell with `run_trial`, one after another, one thread each (as a 1-CPU Ray trial)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        started = time.perf_counter()
        for cell in expand(parse_sweep_spec(text)):
            run_trial(cell)
        return time.perf_counter() - started
    finally:
        torch.set_num_threads(threads)


@dataclass(frozen=True)
class ServiceRun:
    ray_start: float  # seconds for ray.init
    seconds: float  # launch() from call to return
    first_start: float  # launch() called → first trial started (Tune set-up, worker imports)
    trials_span: float  # first trial started → last trial finished
    completed: int


def through_the_service(text: str, folder: Path, cpus: int) -> ServiceRun:
    """One launch on a fresh store; the trials' start and finish times come from the store."""
    started = time.perf_counter()
    connect(None, num_cpus=cpus)
    ray_start = time.perf_counter() - started
    sweep = parse_sweep_spec(text)
    with Store.open(f"sqlite:///{folder / 'overhead.db'}") as store:
        called = datetime.now(timezone.utc)
        started = time.perf_counter()
        summary = launch(sweep, store, text, progress_stream=io.StringIO())
        seconds = time.perf_counter() - started
        trials = store.trials(sweep=sweep.name)
    ray.shutdown()
    first, last = trials["started_at"].min(), trials["finished_at"].max()
    return ServiceRun(
        ray_start=ray_start,
        seconds=seconds,
        first_start=(first - called).total_seconds(),
        trials_span=(last - first).total_seconds(),
        completed=summary.completed,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=40, help="cells in the sweep (default 40)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per trial (default 1)")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs for the local Ray (default 2)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bnsweep-bench-") as tmp:
        folder = Path(tmp)
        text = sweep_text(args.trials, args.epochs, args.cpus, folder / "runs")
        trials = len(expand(parse_sweep_spec(text)))
        parallel = args.cpus  # 1 CPU per trial, capped at --cpus
        run = through_the_service(text, folder, args.cpus)
        alone = sequential(text)
    load_after = os.getloadavg()

    ideal = alone / parallel
    print(f"trials: {trials} x {args.epochs} epoch(s) of resnet8 on digits, {run.completed} done")
    print(f"parallelism: {parallel} (1 CPU per trial, {args.cpus} CPUs)")
    print(f"sequential run_trial, one process: {alone:7.1f} s  ({alone / trials:.2f} s per trial)")
    print(f"  ... divided by the parallelism:  {ideal:7.1f} s")
    print(f"through the service (launch):      {run.seconds:7.1f} s")
    print(f"  of which until the first trial:  {run.first_start:7.1f} s  (Tune, worker imports)")
    print(f"  first start to last finish:      {run.trials_span:7.1f} s")
    print(f"Ray start-up (once per launch):    {run.ray_start:7.1f} s")
    print(
        f"overhead per trial:                {(run.seconds - ideal) / trials:7.2f} s"
        "  (Ray start-up excluded)"
    )
    with_start = (run.seconds + run.ray_start - ideal) / trials
    print(f"  ... start-up included:           {with_start:7.2f} s")
    print(
        f"  ... once the workers are up:     {(run.trials_span - ideal) / trials:7.2f} s"
        "  (per-trial cost in a long sweep)"
    )
    print(
        "load average (1/5/15 min): before "
        + "/".join(f"{x:.2f}" for x in load_before)
        + ", after "
        + "/".join(f"{x:.2f}" for x in load_after)
        + f" on {os.cpu_count()} CPUs"
    )


if __name__ == "__main__":
    main()
