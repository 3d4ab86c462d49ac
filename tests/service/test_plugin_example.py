"""The example plugin package (examples/bnsweep-example-plugin) end to end: installed with pip
into a folder of its own, its sweep launched on a local Ray with SQLite on the CPU, and its
arms in `bnsweep tables`, each trial recording the plugin's distribution and version."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "bnsweep-example-plugin"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _run(*args: str, cwd: Path, site: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(site), "COLUMNS": "200"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=540
    )


def test_the_example_plugin_sweeps_end_to_end(tmp_path: Path) -> None:
    # Built from a copy: pip's build folders never land in the repository.
    source = tmp_path / "source"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    site = tmp_path / "site"
    install = _run(
        "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target",
        str(site), str(source), cwd=tmp_path, site=site,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr
    db = f"sqlite:///{tmp_path / 'example.db'}"
    spec = str(source / "sweep.yaml")

    plan = _run("-m", "bnsweep", "launch", spec, "--db", db, "--dry-run", cwd=tmp_path, site=site)
    assert plan.returncode == 0, plan.stderr
    assert "6 cells" in plan.stdout and "ghost_bn" in plan.stdout

    launch = _run(
        "-m", "bnsweep", "launch", spec, "--db", db, "--no-tables", "--num-cpus", "2",
        cwd=tmp_path, site=site,
    )  # fmt: skip
    assert launch.returncode == 0, launch.stdout[-2000:] + launch.stderr[-2000:]
    assert "6 completed" in launch.stdout

    tables = _run(
        "-m", "bnsweep", "tables", "--db", db, "--sweep", "example-plugin", "--format", "csv",
        cwd=tmp_path, site=site,
    )  # fmt: skip
    assert tables.returncode == 0, tables.stderr
    assert "ghost_bn" in tables.stdout and "BASE" in tables.stdout

    query = _run(
        "-m", "bnsweep", "query", "--db", db, "--sweep", "example-plugin", "--format", "json",
        cwd=tmp_path, site=site,
    )  # fmt: skip
    assert query.returncode == 0, query.stderr
    rows = json.loads(query.stdout)
    assert len(rows) == 6 and {r["status"] for r in rows} == {"completed"}
    recorded = {
        kind: (entry["distribution"], entry["version"], entry["recipe"])
        for row in rows
        for kind, entry in json.loads(row["plugins"]).items()
    }
    assert recorded == {
        "arch": ("bnsweep-example-plugin", "0.1.0", 1),
        "dataset": ("bnsweep-example-plugin", "0.1.0", 1),
        "formulation": ("bnsweep-example-plugin", "0.1.0", 1),
    }
