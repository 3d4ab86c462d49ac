"""What each part of bnsweep's install costs: distributions and megabytes on disk for the core
dependencies and for each extra of pyproject.toml, and the import time of each part.

Sizes are read from the installed distributions of the environment this runs in (every extra
installed, as `make venv` leaves it): each requirement is followed through the `Requires-Dist`
of what is installed, its markers evaluated for this interpreter, and each distribution's files
are summed as its RECORD lists them (their size on disk where RECORD gives none). An extra's
figure is what it adds to the core. Nothing is downloaded or installed.

Import times are the median of `--repeat` fresh interpreters importing the module, less the
median of an interpreter that imports nothing.

    python bench/install_footprint.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import statistics
import subprocess
import sys
import time
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
MB = 1e6

#: What a user of one part imports, and what each optional part brings in.
IMPORTS = {
    "bnsweep (the public face)": "import bnsweep",
    "the method (build_model, param_groups, set_bn_scale)": (
        "from bnsweep import build_model, param_groups, set_bn_scale; build_model"
    ),
    "the tables (bnsweep.analysis.tables)": "import bnsweep.analysis.tables",
    "the store (bnsweep.store.api)": "import bnsweep.store.api",
    "the sweep driver (bnsweep.driver: Ray Tune)": "import bnsweep.driver",
    "plots (matplotlib.figure)": "import matplotlib.figure",
    "postgres extra (psycopg)": "import psycopg",
    "dashboard extra (fastapi, uvicorn)": "import fastapi, uvicorn",
    "cluster extra (Ray's job submission client)": (
        "from ray.job_submission import JobSubmissionClient"
    ),
}


def installed() -> dict[str, md.Distribution]:
    found: dict[str, md.Distribution] = {}
    for dist in md.distributions():
        found.setdefault(canonicalize_name(dist.metadata["Name"]), dist)
    return found


def closure(requirements: list[str], dists: dict[str, md.Distribution]) -> set[str]:
    """The installed distributions `requirements` need, themselves included."""
    seen: set[str] = set()
    walked: set[tuple[str, str]] = set()  # (distribution, extra) already followed
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = canonicalize_name(req.name)
        dist = dists.get(name)
        if dist is None:
            raise SystemExit(f"{req} is not installed here: run `make venv` first")
        seen.add(name)
        for extra in ("", *sorted(req.extras)):
            if (name, extra) in walked:
                continue
            walked.add((name, extra))
            for line in dist.requires or []:
                sub = Requirement(line)
                if sub.marker is None and extra == "":
                    todo.append(sub)
                elif sub.marker is not None and sub.marker.evaluate({"extra": extra}):
                    sub.marker = None  # evaluated here, for this extra
                    todo.append(sub)
    return seen


def own_extras(requirements: list[str], extras: dict[str, list[str]]) -> list[str]:
    """`requirements` with `bnsweep[a,b]` (an extra naming others) replaced by what a and b list."""
    out: list[str] = []
    for line in requirements:
        req = Requirement(line)
        if canonicalize_name(req.name) == "bnsweep":
            out += own_extras([r for e in sorted(req.extras) for r in extras[e]], extras)
        else:
            out.append(line)
    return out


def size(dist: md.Distribution) -> int:
    total = 0
    for file in dist.files or []:
        if file.size is not None:
            total += file.size
        else:
            path = Path(str(dist.locate_file(file)))
            total += path.stat().st_size if path.is_file() else 0
    return total


def footprint() -> list[tuple[str, int, float]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras: dict[str, list[str]] = project["optional-dependencies"]
    dists = installed()
    mb = {name: size(d) / MB for name, d in dists.items()}
    core = closure(project["dependencies"], dists)
    rows = [("core (`pip install bnsweep`)", len(core), sum(mb[n] for n in core))]
    torch = closure(["torch"], dists)
    rows.append(("  of which torch and its CUDA wheels", len(torch), sum(mb[n] for n in torch)))
    without_torch = core - torch
    rows.append(("  of which the rest", len(without_torch), sum(mb[n] for n in without_torch)))
    for extra, requirements in extras.items():
        if extra == "all":
            continue
        added = closure(own_extras(requirements, extras), dists) - core
        rows.append((f"`[{extra}]` adds", len(added), sum(mb[n] for n in added)))
    everything = closure(own_extras(extras.get("all", []), extras), dists) | core
    rows.append(("core and `[all]`", len(everything), sum(mb[n] for n in everything)))
    return rows


def import_seconds(statement: str, repeat: int) -> float:
    seconds = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", statement], check=True, cwd=ROOT)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print("| what | distributions | MB on disk |")
    print("| --- | ---: | ---: |")
    for label, count, megabytes in footprint():
        print(f"| {label} | {count} | {megabytes:,.0f} |")
    print()
    bare = import_seconds("pass", args.repeat)
    print(f"| import | median s (less {bare:.2f} s of a bare interpreter) |")
    print("| --- | ---: |")
    for label, statement in IMPORTS.items():
        seconds = import_seconds(statement, args.repeat) - bare
        print(f"| {label} | {seconds:.2f} |", flush=True)


if __name__ == "__main__":
    main()
