"""Time `bnsweep import` of a 100,000-row MLflow export: reading, checking, writing, again.

The runs are fabricated in the shape of `mlflow.search_runs()` saved as CSV (params as text,
metrics as fractions), a full grid: experiments × (BASE and 19 γ × c arms) × 15 seeds. Each
phase is timed apart (read the file, normalise and check it, key the rows, write them in one
transaction), then the same file is imported again (every row compared, nothing written), then
`bnsweep tables` reads the sweep back. Run with `--db URL` for PostgreSQL; default a fresh
SQLite file in a temporary folder.

    python bench/import_bench.py [--rows 100000] [--db URL] [--format csv|parquet]
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bnsweep.analysis.import_frame import normalise_runs, read_runs_file
from bnsweep.store import imports
from bnsweep.store.api import Store
from bnsweep.store.results import load_trials

GAMMAS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.25, 0.5, 0.75, 0.9, 1.0)
SEEDS = range(1, 16)
MAPPING = {"bn_scale_init": "gamma", "bn_lr_divisor": "c", "test_acc": "test_accuracy"}


def fabricate(rows: int, seed: int = 0) -> pd.DataFrame:
    """About `rows` finished MLflow runs: as many (dataset, lr, epochs) experiments as fit."""
    arms = [(1.0, 1.0)] + [(g, c) for g in GAMMAS for c in (100.0, 1.0) if (g, c) != (1.0, 1.0)]
    per_experiment = len(arms) * len(SEEDS)
    experiments = max(1, round(rows / per_experiment))
    names = (f"set{i}" for i in itertools.count())
    rng = np.random.default_rng(seed)
    out = []
    for e, dataset in zip(range(experiments), names, strict=False):
        for gamma, c in arms:
            for s in SEEDS:
                out.append(
                    {
                        "run_id": f"{e:06d}{gamma}{c}{s}",
                        "experiment_id": "1",
                        "status": "FINISHED",
                        "params.dataset": dataset,
                        "params.gamma": str(gamma),
                        "params.c": str(c),
                        "params.seed": str(s),
                        "metrics.test_accuracy": float(0.9 + rng.normal(0, 0.005)),
                    }
                )
    return pd.DataFrame(out)


def timed(what: str, times: dict[str, float], call):  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    value = call()
    times[what] = time.perf_counter() - started
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--db", default=None, help="a store URL (default: a fresh SQLite file)")
    parser.add_argument("--format", choices=("csv", "parquet"), default="csv")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"runs.{args.format}"
        runs = fabricate(args.rows)
        if args.format == "csv":
            runs.to_csv(path, index=False)
        else:
            runs.to_parquet(path)
        url = args.db or f"sqlite:///{Path(folder) / 'results.db'}"
        sweep = f"import-bench-{int(time.time())}"
        times: dict[str, float] = {}
        frame, kind = timed("read", times, lambda: read_runs_file(path))
        normal = timed("check", times, lambda: normalise_runs(frame, MAPPING))
        origin = imports.ImportOrigin(path.name, "0" * 64, "mlflow")
        records = normal.frame.to_dict("records")
        rows = timed("key", times, lambda: imports.trial_rows(records, sweep, origin))
        with Store.open(url) as store:
            first = timed("write", times, lambda: imports.write_import(store, sweep, rows, origin))
            again = timed("again", times, lambda: imports.write_import(store, sweep, rows, origin))
        trials = timed("tables read", times, lambda: load_trials(url, sweep))
        size = path.stat().st_size
    total = times["read"] + times["check"] + times["key"] + times["write"]
    print(f"{len(runs):,} rows ({kind}, {size / 1e6:.1f} MB) into {url}")
    for name, seconds in times.items():
        print(f"  {name:<12} {seconds:7.2f} s")
    print(f"  import in all {total:7.2f} s = {len(runs) / total:,.0f} rows/s")
    print(f"  first: {first}; again: {again}; read back {len(trials):,} trials")


if __name__ == "__main__":
    main()
