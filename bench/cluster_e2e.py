"""Time the cluster end-to-end tests (tests/cluster/) and the machine's load while they run.

The figures are the tests' own: each test prints a `cluster timing:` line (submission to the
first trial starting, node loss to the interrupted trial restarting, job and test wall time);
this script runs the tests with BNSWEEP_CLUSTER_TIMINGS set to collect those lines, and adds the
pytest wall time, the CPU, and `uptime` before and after, for docs/benchmarks.md.

    python bench/cluster_e2e.py [--runs 1]

Needs PostgreSQL (BNSWEEP_TEST_POSTGRES_URL, default the local test server) like the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import cpu_model

REPO = Path(__file__).resolve().parent.parent
DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def uptime() -> str:
    result = subprocess.run(["uptime"], capture_output=True, text=True, check=False)
    return result.stdout.strip() or "uptime unavailable"


class LoadSampler(threading.Thread):
    """The 1-minute load average every few seconds while the tests run: the machine is shared,
    and a figure without the load it was measured under cannot be compared."""

    def __init__(self, every: float = 5.0) -> None:
        super().__init__(daemon=True)
        self.every, self.samples = every, []
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.samples.append(os.getloadavg()[0])
            self._stop_event.wait(self.every)

    def stop(self) -> str:
        self._stop_event.set()
        self.join()
        if not self.samples:
            return "no samples"
        mean = sum(self.samples) / len(self.samples)
        return f"mean {mean:.1f}, max {max(self.samples):.1f} ({len(self.samples)} samples)"


def run_once(postgres_url: str) -> tuple[int, float, list[dict], str]:
    """(pytest exit code, wall seconds, the tests' timing records, load during the run)."""
    with tempfile.TemporaryDirectory(prefix="bnsweep-cluster-bench-") as folder:
        timings = Path(folder) / "timings.jsonl"
        env = {
            **os.environ,
            "BNSWEEP_CLUSTER_TIMINGS": str(timings),
            "BNSWEEP_TEST_POSTGRES_URL": postgres_url,
        }
        command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "tests/cluster"]
        sampler = LoadSampler()
        sampler.start()
        started = time.monotonic()
        result = subprocess.run(command, cwd=REPO, env=env, check=False)
        wall = time.monotonic() - started
        load = sampler.stop()
        records = (
            [json.loads(line) for line in timings.read_text().splitlines() if line.strip()]
            if timings.exists()
            else []
        )
    return result.returncode, wall, records, load


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1, help="repetitions (default 1)")
    args = parser.parse_args()
    postgres_url = os.environ.get("BNSWEEP_TEST_POSTGRES_URL", DEFAULT_POSTGRES)

    print(
        f"machine: {cpu_model()}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}"
    )
    status = 0
    for run in range(1, args.runs + 1):
        before = uptime()
        code, wall, records, load = run_once(postgres_url)
        after = uptime()
        status = status or code
        print(f"\nrun {run}: pytest exit {code}, wall {wall:.0f} s")
        print(f"  uptime before: {before}")
        print(f"  uptime after:  {after}")
        print(f"  1-minute load during the run: {load}")
        for record in records:
            name = record.pop("test")
            print(f"  {name}: " + ", ".join(f"{k}={v}" for k, v in record.items()))
    return status


if __name__ == "__main__":
    sys.exit(main())
