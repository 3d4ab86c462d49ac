"""`import bnsweep`: the public face. Each name resolves, is documented, and costs nothing until
it is used; `python -m bnsweep` and `bnsweep --version` work."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import bnsweep
from tests.analysis.data import golden_trials

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", [n for n in bnsweep.__all__ if n != "__version__"])
def test_every_public_name_resolves_and_is_documented(name: str) -> None:
    value = getattr(bnsweep, name)
    assert f"`{name}`" in (bnsweep.__doc__ or ""), f"the package docstring does not name {name}"
    if callable(value) and not isinstance(value, dict):
        assert inspect.getdoc(value), f"bnsweep.{name} has no docstring"
    assert name in dir(bnsweep)


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        bnsweep.nope  # noqa: B018


def test_importing_the_face_loads_neither_torch_ray_nor_pandas() -> None:
    probe = (
        "import sys, bnsweep\n"
        "print(sorted(m for m in ('torch', 'ray', 'pandas', 'sqlalchemy') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "argv", [[sys.executable, "-m", "bnsweep", "--version"], ["bnsweep", "--version"]]
)
def test_the_version_on_the_command_line(argv: list[str]) -> None:
    if argv[0] == "bnsweep":
        argv = [str(Path(sys.executable).with_name("bnsweep")), *argv[1:]]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == f"bnsweep {bnsweep.__version__}"


def test_python_dash_m_bnsweep_is_the_command_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bnsweep", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert done.stdout.startswith("usage: bnsweep ")


def test_the_tables_of_a_frame_for_a_notebook() -> None:
    tables = bnsweep.tables(golden_trials(), {"layout": "gamma"})
    assert "<table>" in tables._repr_html_()
    frame = tables.to_frame()
    assert isinstance(frame, pd.DataFrame) and frame["significant"].any()


def test_trials_reads_a_stores_current_recipe(tmp_path: Path) -> None:
    from tests.service.test_store import make_spec, run_cell

    url = f"sqlite:///{tmp_path / 'face.db'}"
    with bnsweep.Store.open(url) as store:
        spec = make_spec(seed=1)
        store.register_sweep("face", "name: face\n", [spec])
        run_cell(store, spec)
    trials = bnsweep.trials(url, "face")
    assert list(trials["seed"]) == [1] and trials["status"].iloc[0] == "completed"
    assert bnsweep.trials(url, "face").equals(trials)  # read-only: nothing changed
