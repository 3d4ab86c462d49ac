"""Time the tables of a store of ~100,000 completed trials: the read, `build_tables`, renderers.

The target: `bnsweep tables` for 100,000 trials in under 2 s, the read from the store included,
on SQLite and on PostgreSQL. With `--db URL` the fabricated trials are written to a fresh sweep
of that store (bulk inserts, once) and every repeat reads them back as `bnsweep tables` does
(`bnsweep.store.results.load_trials`); without it, only the analysis side is timed.

    python bench/tables_bench.py [--trials 100000] [--repeat 3] [--db URL]
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import time

import numpy as np
import pandas as pd

from bnsweep.analysis.render.formats import RENDERERS
from bnsweep.analysis.stats import AnalysisOptions
from bnsweep.analysis.tables import build_tables

DATASETS = ("cifar10", "cifar100", "cub200", "stanford_cars")
ARCHS = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "repvgg_a0",
    "mobilenet_v2",
    "resnext50_32x4d",
    "resnet8",
)
INPUT_NORMS = ("bn", "fixed", "offline")
LRS = (0.1, 0.01, 0.001)
EPOCHS = (180, 90)
GAMMAS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.25, 0.5, 0.75, 0.9, 1.0)
SEEDS = range(1, 16)


def fabricate(target: int, seed: int = 0) -> pd.DataFrame:
    """~`target` completed trials: a grid of experiments × (γ × c ∈ {1, 100}, BASE) × 15 seeds."""
    arms = [("standard", 1.0, 1.0)] + [
        ("standard", g, c) for g in GAMMAS for c in (100.0, 1.0) if (g, c) != (1.0, 1.0)
    ]
    per_experiment = len(arms) * len(SEEDS)
    experiments = list(itertools.product(EPOCHS, DATASETS, ARCHS, INPUT_NORMS, LRS))
    experiments = experiments[: max(1, math.ceil(target / per_experiment))]
    rng = np.random.default_rng(seed)
    n = len(experiments) * per_experiment
    exp_idx = np.repeat(np.arange(len(experiments)), per_experiment)
    arm_idx = np.tile(np.repeat(np.arange(len(arms)), len(SEEDS)), len(experiments))
    seed = np.tile(np.array(SEEDS), len(experiments) * len(arms))
    seed_effect = rng.normal(0, 0.004, size=(len(experiments), len(SEEDS)))
    arm_effect = rng.normal(0.003, 0.004, size=(len(experiments), len(arms)))
    arm_effect[:, 0] = 0.0
    acc = (
        0.85
        + seed_effect[exp_idx, seed - 1]
        + arm_effect[exp_idx, arm_idx]
        + rng.normal(0, 0.002, size=n)
    )
    exp = np.array(experiments, dtype=object)
    arm = np.array(arms, dtype=object)
    status = np.where(rng.random(n) < 0.01, "diverged", "completed")
    return pd.DataFrame(
        {
            "epochs": exp[exp_idx, 0].astype(int),
            "dataset": exp[exp_idx, 1],
            "arch": exp[exp_idx, 2],
            "input_norm": exp[exp_idx, 3],
            "lr": exp[exp_idx, 4].astype(float),
            "batch_size": 128,
            "momentum": 0.9,
            "weight_decay": 1e-4,
            "val_fraction": 0.1,
            "precision": "fp32",
            "memory_format": "contiguous",
            "formulation": arm[arm_idx, 0],
            "bn_scale_init": arm[arm_idx, 1].astype(float),
            "bn_lr_divisor": arm[arm_idx, 2].astype(float),
            "spec_hash": [f"h{e}-{a}" for e, a in zip(exp_idx, arm_idx, strict=True)],
            "seed": seed,
            "status": status,
            "test_acc": np.where(status == "completed", acc, np.nan),
        }
    ).astype(
        {
            "dataset": "str",
            "arch": "str",
            "input_norm": "str",
            "formulation": "str",
            "status": "str",
        }
    )


def fill_store(url: str, trials: pd.DataFrame) -> str:
    """Write `trials` as completed cells of a new sweep; return the sweep's name. Rows go in with
    bulk inserts: the store's event API would take minutes for 100,000 trials."""
    import os
    from datetime import datetime, timezone

    import sqlalchemy as sa

    from bnsweep.store.api import Store
    from bnsweep.store.models import Sweep, SweepTrial, Trial
    from bnsweep.workers.spec import RECIPE

    name = f"tables-bench-{os.getpid()}-{int(time.time())}"
    now = datetime.now(timezone.utc)
    rows = trials.assign(
        spec_hash=[f"{name[-10:]}{h}"[-64:] for h in trials["spec_hash"]],
        best_val_acc=trials["test_acc"],
        final_test_acc=trials["test_acc"],
        best_epoch=180,
        epochs_run=180,
        attempts=1,
        recipe=RECIPE,
        started_at=now,
        finished_at=now,
        created_at=now,
        updated_at=now,
    )
    records = rows.replace({np.nan: None}).to_dict("records")
    with Store.open(url) as store, store._engine.begin() as conn:
        sweep_id = conn.execute(
            sa.insert(Sweep).values(name=name, spec_text="", created_at=now, updated_at=now)
        ).inserted_primary_key[0]
        for start in range(0, len(records), 5000):
            conn.execute(sa.insert(Trial), records[start : start + 5000])
        ids = conn.execute(sa.select(Trial.id).where(Trial.spec_hash.like(f"{name[-10:]}%")))
        links = [{"sweep_id": sweep_id, "trial_id": i} for (i,) in ids]
        for start in range(0, len(links), 20000):
            conn.execute(sa.insert(SweepTrial), links[start : start + 20000])
    return name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--db", default=None, help="also time the read from this store")
    args = parser.parse_args()
    trials = fabricate(args.trials)
    sweep = None
    if args.db:
        t0 = time.perf_counter()
        sweep = fill_store(args.db, trials)
        print(f"wrote {len(trials):,} trials to {args.db.split('://')[0]} in "
              f"{time.perf_counter() - t0:.1f} s")  # fmt: skip
    cells = trials.groupby(
        ["epochs", "dataset", "arch", "input_norm", "lr", "bn_scale_init", "bn_lr_divisor"]
    ).ngroups
    print(f"{len(trials):,} trials, {cells:,} cells")
    timings: dict[str, list[float]] = {"read": [], "build_tables": []} | {f: [] for f in RENDERERS}
    for correction in ("none", "holm"):
        for _ in range(args.repeat):
            if sweep is not None:
                from bnsweep.store.results import load_trials

                t0 = time.perf_counter()
                trials = load_trials(args.db, sweep)
                timings["read"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            tables = build_tables(trials, options=AnalysisOptions(correction=correction))
            timings["build_tables"].append(time.perf_counter() - t0)
            for name, renderer in RENDERERS.items():
                t0 = time.perf_counter()
                renderer.render(tables)
                timings[name].append(time.perf_counter() - t0)
    for name, values in timings.items():
        if values:
            median = statistics.median(values)
            print(f"{name:>13}: median {median:.3f} s  (min {min(values):.3f} s)")
    parts = ["build_tables", "md"] + (["read"] if sweep is not None else [])
    total = sum(statistics.median(timings[p]) for p in parts)
    print(f"{' + '.join(parts)}: {total:.3f} s (target < 2 s)")


if __name__ == "__main__":
    main()
