"""Time what a plugin costs before anything trains: listing the entry points, and validating
the example plugin's sweep spec in a fresh process (the target, issue 21: about a second,
without importing torch or the plugin).

The example plugin (examples/bnsweep-example-plugin) is installed with pip into a temporary
folder put on PYTHONPATH. Each figure is the median of `--repeat` fresh processes, the
interpreter's start included; the in-process entry-point scan is the median of `--repeat`
scans after a warm-up.

    python bench/plugin_validation.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "bnsweep-example-plugin"

VALIDATE = (
    "import sys; from bnsweep.sweep import load_sweep_spec; "
    f"load_sweep_spec({str(EXAMPLE / 'sweep.yaml')!r}); "
    "assert 'torch' not in sys.modules and 'bnsweep_example_plugin' not in sys.modules"
)


def timed(argv: list[str], env: dict[str, str], repeat: int) -> float:
    seconds = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, env=env, cwd=ROOT)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def scan_seconds(repeat: int) -> float:
    from bnsweep.workers import plugins

    plugins.names("arch")  # warm-up: the first scan also imports importlib.metadata's parts
    seconds = []
    for _ in range(repeat):
        plugins.refresh()
        start = time.perf_counter()
        for kind in plugins.GROUPS:
            plugins.names(kind)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        source, site = Path(tmp) / "source", Path(tmp) / "site"
        shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
             "--target", str(site), str(source)],
            check=True,
        )  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(site)}
        rows = [
            ("python -c pass (the interpreter alone)", [sys.executable, "-c", "pass"]),
            ("bnsweep --help", [sys.executable, "-m", "bnsweep", "--help"]),
            ("validate the example plugin's sweep spec", [sys.executable, "-c", VALIDATE]),
        ]
        print("| what | median s |")
        print("| --- | ---: |")
        for label, argv in rows:
            print(f"| {label} | {timed(argv, env, args.repeat):.2f} |")
        sys.path.insert(0, str(site))
        scan = scan_seconds(args.repeat)
        print(f"| listing the four entry-point groups, in process | {scan * 1000:.0f} ms |")


if __name__ == "__main__":
    main()
