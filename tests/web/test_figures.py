"""The figures' readability rules (analysis/plots.py) and the pages' own figures."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bnsweep.analysis.layout import TableLayout
from bnsweep.analysis.plots import _gamma_figure, arm_labels, plot_outlier_fraction
from bnsweep.analysis.tables import build_tables
from bnsweep.store.api import Store
from bnsweep.web.figures import curve_figures, difference_figures
from tests.web.stores import make_store


def test_legends_name_only_what_differs() -> None:
    arms = [("standard", 1.0, 1.0), ("standard", 0.1, 100.0), ("standard", 0.5, 100.0)]
    names, shared = arm_labels(arms)
    assert names == {arms[0]: "BASE", arms[1]: "γ=0.1", arms[2]: "γ=0.5"}
    assert shared == "standard, c=100"
    both = [("standard", 1.0, 100.0), ("standard", 1.0, 1.0), ("a1", 0.1, 100.0)]
    names, shared = arm_labels(both)
    assert names[both[0]] == "standard γ=1" and names[both[2]] == "a1 γ=0.1"
    assert shared == "c=100"


def _finished_trials(tmp_path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    url = make_store(tmp_path / "r.db", "finished")
    with Store.open(url, create=False) as store:
        return store.trials(), store.epochs()


def test_the_gamma_plot_draws_base_underneath_and_says_c_once(tmp_path: Path) -> None:
    trials, _ = _finished_trials(tmp_path)
    table = build_tables(trials, TableLayout(kind="gamma"))[0]
    fig = _gamma_figure(table, table.blocks[0])
    ax = fig.axes[0]
    base = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    arms = [c for c in ax.containers]  # the error bars of the arms
    assert base and arms
    assert max(line.get_zorder() for line in base) < min(c.lines[0].get_zorder() for c in arms)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert not any("c = 100" in label or "c=100" in label for label in labels), labels
    assert "standard c=100" in ax.get_title()


def test_the_outlier_plot_has_no_overlapping_bands(tmp_path: Path, monkeypatch) -> None:
    from matplotlib.axes import Axes

    rows = []
    for g in (1.0, 0.5, 0.1, 0.05, 0.01):
        for seed in (1, 2, 3):
            for epoch in (0, 1, 2):
                rows.append(
                    {
                        "spec_hash": f"h{g}",
                        "seed": seed,
                        "epoch": epoch,
                        "layer": "bn1",
                        "depth": 0,
                        "formulation": "standard",
                        "bn_scale_init": g,
                        "bn_lr_divisor": 1.0 if g == 1.0 else 100.0,
                        "outlier_fraction": 1e-4 * (1 + seed) * g,
                    }
                )
    bands: list[object] = []
    monkeypatch.setattr(Axes, "fill_between", lambda self, *a, **k: bands.append(a))
    paths = plot_outlier_fraction(pd.DataFrame(rows), tmp_path, formats=("svg",))
    assert [p.suffix for p in paths] == [".svg"] and not bands


def test_curves_with_per_seed_traces_and_the_paired_difference(tmp_path: Path) -> None:
    trials, epochs = _finished_trials(tmp_path)
    figures, experiments = curve_figures(epochs, trials, per_seed=True)
    assert experiments == 2 and len(figures) == 2 and figures[0].svg.lstrip().startswith("<?xml")
    assert all("<metadata>" not in f.svg for f in figures)
    table = build_tables(trials, TableLayout(kind="gamma"))[0]
    diffs = difference_figures(table)
    assert [f.stem for f in diffs] == ["difference_0"]
