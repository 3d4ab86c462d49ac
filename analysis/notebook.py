"""The tables for a notebook: `tables(trials)` returns them as a list that shows itself as HTML
and turns into one DataFrame; `tables({"sweep-a": frame_a, "sweep-b": frame_b})` puts sweeps
side by side, one table each.

`bnsweep.tables` is this function. It sits above the table model and the renderers, so
that the model stays plain data that the renderers read.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from bnsweep.analysis.import_frame import normalise_runs
from bnsweep.analysis.layout import TableLayout
from bnsweep.analysis.pairing import AnalysisError
from bnsweep.analysis.render import formats
from bnsweep.analysis.render.html_page import html_tables
from bnsweep.analysis.stats import AnalysisOptions
from bnsweep.analysis.table_model import FRAME_COLUMNS, Table
from bnsweep.analysis.tables import build_sweep_tables, build_tables, layout_with


class Tables(list[Table]):
    """A list of `Table`: `to_frame()`, `render(fmt)`, and HTML in a notebook."""

    def to_frame(self) -> pd.DataFrame:
        """Every table's lines, one after the other: the CSV renderer's rows, as numbers."""
        return pd.DataFrame([x for t in self for x in t.lines()], columns=list(FRAME_COLUMNS))

    def render(self, fmt: str) -> str:
        """The tables in one of `bnsweep.analysis.render.formats.RENDERERS` (md, latex, html, csv,
        ...)."""
        return formats.render(self, fmt)

    def _repr_html_(self) -> str:
        # A fragment, not the renderer's page: a page's style sheet would restyle the notebook.
        return html_tables(self)

    def __repr__(self) -> str:
        """A few lines: how many tables, and per table its title, size, seeds and how many
        cells are significant. `str()` (and `print`) gives the tables in full."""
        if not self:
            return "Tables: none"
        head = f"Tables: {len(self)} table{'s' if len(self) > 1 else ''}"
        lines = [head]
        for i, t in enumerate(self):
            lines += [f"  [{i}] {t.title}", f"      {_summary(t)}"]
        return "\n".join([*lines, "  print() shows them in full; .to_frame(), .render(fmt)"])

    def __str__(self) -> str:
        return self.render("term")


def _summary(t: Table) -> str:
    """One line about one table for `Tables.__repr__`: its size, arms, seeds, and how many
    cells are significant."""
    cells = [c for _, _, _, c in t.cells()]
    arms = {c.arm for c in cells}
    ns = sorted({c.n for c in cells if c.n > 0})
    seeds = (
        "no seed with a score"
        if not ns
        else f"n = {ns[0]}" + (f"–{ns[-1]} seeds" if len(ns) > 1 else " seeds")
    )
    tested = sum(1 for c in cells if c.stats is not None and c.stats.tested)
    significant = sum(1 for c in cells if c.significant)
    test = "paired t-test" if t.options.test == "t" else f"{t.options.test} test"
    detail = (
        f"{len(t.blocks)} block{'s' if len(t.blocks) != 1 else ''} × {len(t.columns)} "
        f"column{'s' if len(t.columns) != 1 else ''}, {len(arms)} arms, {seeds}; "
        f"{significant} of {tested} tested cells significantly better than {t.reference} "
        f"({test}, p ≤ {t.options.alpha:g}"
        f"{', ' + t.options.correction if t.options.correction != 'none' else ''})"
    )
    if t.pairwise:
        detail += f"; {len(t.pairwise)} pairwise matrices"
    return detail


def tables(
    trials: pd.DataFrame | Mapping[str, pd.DataFrame],
    layout: TableLayout | Mapping[str, Any] | None = None,
    options: AnalysisOptions | None = None,
    *,
    versus: str | None = None,
    pairwise: bool | None = None,
    mapping: Mapping[str, str] | None = None,
    scale: str = "auto",
) -> Tables:
    """The significance tables of a trials frame (`bnsweep.trials(url, sweep)`, or any frame
    with the store's columns), tested against BASE by a one-sided paired t-test at p ≤ 0.05
    unless `options` say otherwise.

    `layout` is a `TableLayout` or a sweep spec's `report:` mapping (`{"layout": "gamma",
    "blocks": ["dataset"]}`); None infers it from the arms present (docs/analysis.md).

    `versus` tests every cell against that arm instead of BASE (`"rbn γ=1 c=1"`), `pairwise`
    adds each block's matrices of every row against every other, as `bnsweep tables --versus
    ARM --pairwise` does; None leaves the layout's choice.

    A mapping of sweep name → trials frame gives one table per sweep, in the mapping's order,
    all with the same layout and each titled with its sweep (`build_sweep_tables`).

    `mapping` reads runs made elsewhere (an MLflow `search_runs()` frame, a W&B export, one's
    own CSV) as `bnsweep import` reads them: `{"bn_scale_init": "params.gamma", ...}` names the
    column of a store field, `scale` says whether accuracies are fractions or percentages
    (docs/import.md); with several sweeps it applies to each frame. Without `mapping` a frame
    is taken as the store's trials frame.
    """
    layout = layout_with(layout, versus=versus, pairwise=pairwise)
    if isinstance(trials, pd.DataFrame):
        return Tables(build_tables(_runs(trials, mapping, scale), layout, options))
    if isinstance(trials, Mapping):
        frames = {name: _runs(frame, mapping, scale) for name, frame in trials.items()}
        return Tables(build_sweep_tables(frames, layout, options))
    raise AnalysisError(
        f"tables: expected a trials DataFrame or a mapping of sweep name → DataFrame, "
        f"got {type(trials).__name__}"
    )


def _runs(frame: pd.DataFrame, mapping: Mapping[str, str] | None, scale: str) -> pd.DataFrame:
    """A store trials frame as it is; runs made elsewhere read through `mapping` as
    `bnsweep import` reads them."""
    return frame if mapping is None else normalise_runs(frame, mapping=mapping, scale=scale).frame
