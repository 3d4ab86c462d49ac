"""Time the commands a user runs to look before they launch: `bnsweep --help` and
`bnsweep launch SPEC --dry-run` for every paper spec, against a store that does not exist yet and
against an existing SQLite store.

The target (issue 13): a dry run prints its plan in under 2 s, which means it imports neither
torch nor Ray nor the analysis stack (tests/service/test_cli.py checks the imports). Each figure
is the median of `--repeat` fresh processes, the interpreter's start included.

    python bench/cli_latency.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted((ROOT / "configs" / "paper").glob("table*.yaml"))


def timed(argv: list[str], repeat: int) -> tuple[float, float]:
    """(median, max) seconds of `python -m bnsweep.cli ARGV` over `repeat` fresh processes."""
    seconds = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "bnsweep.cli", *argv],
            check=True,
            stdout=subprocess.DEVNULL,
            cwd=ROOT,
        )
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), max(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        absent = f"sqlite:///{Path(tmp) / 'absent.db'}"
        existing = f"sqlite:///{Path(tmp) / 'store.db'}"
        subprocess.run(
            [sys.executable, "-m", "bnsweep.cli", "db", "upgrade", "--db", existing],
            check=True,
            stdout=subprocess.DEVNULL,
            cwd=ROOT,
        )
        rows = [("bnsweep --help", ["--help"])]
        for spec in SPECS:
            for name, url in (("no store yet", absent), ("SQLite store", existing)):
                rows.append(
                    (
                        f"launch {spec.name} --dry-run ({name})",
                        ["launch", str(spec), "--db", url, "--dry-run"],
                    )
                )
        print(f"| command | median s | max s |  ({args.repeat} runs each)")
        print("| --- | ---: | ---: |")
        for label, argv in rows:
            median, worst = timed(argv, args.repeat)
            print(f"| `{label}` | {median:.2f} | {worst:.2f} |", flush=True)


if __name__ == "__main__":
    main()
