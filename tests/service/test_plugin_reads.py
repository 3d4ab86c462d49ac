"""Commands that read the store never import code a stored spec names: a sweep trained with a
plugin reads with `status`, `tables`, `query`, `report`, `bnsweep.trials` and the dashboard
where that plugin is not installed, and where it is installed but would fail to import.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bnsweep.store.api import Store
from bnsweep.workers import plugins
from bnsweep.workers.spec import TrialSpec
from tests.service.test_store import run_cell
from tests.workers import test_plugins
from tests.workers.test_plugins import GOOD_ENTRIES, MakePlugin, write_distribution

make_plugin = test_plugins.make_plugin

SPEC = """\
name: plugged
defaults: {dataset: blobs, arch: tinynet, epochs: 3}
grids:
  - {formulation: [offset_bn], bn_scale_init: [0.1], bn_lr_divisor: [100]}
base: true
seeds: 3
"""


@pytest.fixture
def db(tmp_path: Path, make_plugin: MakePlugin) -> str:
    """A store holding the sweep `plugged`, trained with the plugin; the plugin is then
    removed from this process."""
    from bnsweep.sweep import expand, parse_sweep_spec

    site = make_plugin("reads-plugin")
    url = f"sqlite:///{tmp_path / 'results.db'}"
    cells = expand(parse_sweep_spec(SPEC))
    with Store.open(url) as store:
        store.register_sweep("plugged", SPEC, cells)
        for spec in cells:
            bonus = 0.05 if spec.formulation == "offset_bn" else 0.0
            run_cell(store, spec, test_acc=0.6 + bonus + 0.01 * spec.seed)
    sys.path.remove(str(site))
    sys.modules.pop("reads_plugin", None)
    plugins.refresh()
    with pytest.raises(Exception, match="unknown value 'tinynet'"):
        TrialSpec(arch="tinynet")
    return url


def _bnsweep(*args: str, pythonpath: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    env["COLUMNS"] = "200"
    return subprocess.run(
        [sys.executable, "-m", "bnsweep", *args], env=env, capture_output=True, text=True
    )


@pytest.fixture
def poisoned(tmp_path: Path) -> tuple[str, Path]:
    """The plugin installed, but its module records that it was imported and then fails."""
    marker = tmp_path / "imported"
    site = tmp_path / "poisoned"
    text = f"open({str(marker)!r}, 'w').close()\nraise RuntimeError('must not be imported')\n"
    write_distribution(site, "reads-plugin", "0.1.0", "reads_plugin", text, GOOD_ENTRIES)
    return str(site), marker


def test_read_commands_never_import_the_plugin(
    db: str, tmp_path: Path, poisoned: tuple[str, Path]
) -> None:
    """Installed but failing at import: a command that imported it would fail or leave the
    marker (its absence is covered by the notebook and dashboard test, in this process)."""
    pythonpath, marker = poisoned
    status = _bnsweep("status", "--db", db, pythonpath=pythonpath)
    assert status.returncode == 0, status.stderr
    assert "plugged" in status.stdout and "all 6 cells done" in status.stdout
    tables = _bnsweep(
        "tables", "--db", db, "--sweep", "plugged", "--format", "csv", pythonpath=pythonpath
    )
    assert tables.returncode == 0, tables.stderr
    assert "offset_bn" in tables.stdout
    query = _bnsweep(
        "query", "--db", db, "--sweep", "plugged", "--format", "csv", pythonpath=pythonpath
    )
    assert query.returncode == 0, query.stderr
    assert query.stdout.count(",tinynet,") == 6 and "reads-plugin" in query.stdout
    out = tmp_path / "report"
    report = _bnsweep("report", "--db", db, "--out", str(out), pythonpath=pythonpath)
    assert report.returncode == 0, report.stderr
    assert "offset_bn" in "".join(p.read_text() for p in out.rglob("*.html"))
    assert not marker.exists()


def test_notebook_and_dashboard_need_no_plugin(db: str) -> None:
    from fastapi.testclient import TestClient

    import bnsweep
    from bnsweep.web.app import create_app

    frame = bnsweep.trials(db, "plugged")
    assert set(frame["arch"]) == {"tinynet"} and len(frame) == 6
    with TestClient(create_app(db), raise_server_exceptions=True) as client:
        assert "offset_bn" in client.get("/sweeps/plugged").text
        assert client.get("/api/sweeps/plugged/tables").status_code == 200
        assert client.get("/api/sweeps/plugged/status").json()["completed"] == 6
    assert "reads_plugin" not in sys.modules
