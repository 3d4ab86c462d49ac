"""Time the commands a user runs to look before they launch: `bnsweep --help` and
`bnsweep launch SPEC --dry-run` for every paper spec, against a store that does not exist yet and
against an existing SQLite store; and `bnsweep tables` on a SQLite store of 100,000 trials.

The target (issue 13): a dry run prints its plan in under 2 s, which means it imports neither
torch nor Ray nor the analysis stack (tests/service/test_cli.py checks the imports). The target
(issue 22): `bnsweep tables` of 100,000 trials in under 3 s, the interpreter's start, the imports
and the read from the store included. Each figure comes from `--repeat` fresh processes.

`--part tables` fabricates the trials as bench/tables_bench.py does and writes them to a fresh
SQLite store in a temporary folder (or reuses `--db URL --sweep NAME`), then times the command
with its output to a file (the plain terminal format), with `--color always` (the styled one,
as wide as the terminal: COLUMNS=200 for a terminal the tables fit) and with `--format csv`.
To time another checkout, run this script with `PYTHONPATH` at that checkout's `bnsweep`
package tree (a folder `bnsweep/` linking service/*, workers/ and analysis/).

    python bench/cli_latency.py [--repeat 5] [--part all|launch|tables] [--trials 100000]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted((ROOT / "configs" / "paper").glob("table*.yaml"))


def timed(argv: list[str], repeat: int) -> tuple[float, float, float, float]:
    """(median, min, max) wall seconds and the median CPU seconds (user + system) of
    `python -m bnsweep.cli ARGV` over `repeat` fresh processes. On a shared machine the
    minimum is the run least slowed by the others, and the CPU time what one idle core needs."""
    seconds, cpu = [], []
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "bnsweep.cli", *argv],
            check=True,
            stdout=subprocess.DEVNULL,
            cwd=ROOT,
        )
        seconds.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return statistics.median(seconds), min(seconds), max(seconds), statistics.median(cpu)


def upgrade(url: str) -> None:
    """Create the store's tables, as a user would before a launch."""
    subprocess.run(
        [sys.executable, "-m", "bnsweep.cli", "db", "upgrade", "--db", url],
        check=True,
        stdout=subprocess.DEVNULL,
        cwd=ROOT,
    )


def launch_rows(tmp: str) -> list[tuple[str, list[str]]]:
    absent = f"sqlite:///{Path(tmp) / 'absent.db'}"
    existing = f"sqlite:///{Path(tmp) / 'store.db'}"
    upgrade(existing)
    rows = [("bnsweep --help", ["--help"])]
    for spec in SPECS:
        for name, url in (("no store yet", absent), ("SQLite store", existing)):
            rows.append(
                (
                    f"launch {spec.name} --dry-run ({name})",
                    ["launch", str(spec), "--db", url, "--dry-run"],
                )
            )
    return rows


def tables_rows(
    tmp: str, trials: int, db: str | None, sweep: str | None
) -> list[tuple[str, list[str]]]:
    """The `bnsweep tables` commands on a store of `trials` fabricated trials."""
    if db is None or sweep is None:
        sys.path.insert(0, str(ROOT / "bench"))
        from tables_bench import fabricate, fill_store

        db = f"sqlite:///{Path(tmp) / 'tables.db'}"
        upgrade(db)
        sweep = fill_store(db, fabricate(trials))
    base = ["tables", "--sweep", sweep, "--db", db]
    return [
        (f"tables, {trials:,} trials, not a terminal", base),
        (f"tables, {trials:,} trials, --color always", [*base, "--color", "always"]),
        (f"tables, {trials:,} trials, --format csv", [*base, "--format", "csv"]),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--part", choices=("all", "launch", "tables"), default="all")
    parser.add_argument("--trials", type=int, default=100_000, help="for --part tables")
    parser.add_argument("--db", help="reuse this store for --part tables (with --sweep)")
    parser.add_argument("--sweep", help="the sweep of --db holding the fabricated trials")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = launch_rows(tmp) if args.part in ("all", "launch") else []
        if args.part in ("all", "tables"):
            rows += tables_rows(tmp, args.trials, args.db, args.sweep)
        print(f"| command | median s | min s | max s | CPU s |  ({args.repeat} runs each)")
        print("| --- | ---: | ---: | ---: | ---: |")
        for label, argv in rows:
            median, best, worst, cpu = timed(argv, args.repeat)
            print(
                f"| `{label}` | {median:.2f} | {best:.2f} | {worst:.2f} | {cpu:.2f} |", flush=True
            )


if __name__ == "__main__":
    main()
