"""The tables for a notebook: `tables(trials)` returns them as a list that shows itself as HTML
and turns into one DataFrame.

`bnsweep.tables` is this function. It sits above the table model and the renderers, so
that the model stays plain data that the renderers read.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from bnsweep.analysis.import_frame import normalise_runs
from bnsweep.analysis.layout import TableLayout
from bnsweep.analysis.render import formats
from bnsweep.analysis.render.html_page import html_tables
from bnsweep.analysis.stats import AnalysisOptions
from bnsweep.analysis.table_model import FRAME_COLUMNS, Table
from bnsweep.analysis.tables import build_tables


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


def tables(
    trials: pd.DataFrame,
    layout: TableLayout | Mapping[str, Any] | None = None,
    options: AnalysisOptions | None = None,
    *,
    mapping: Mapping[str, str] | None = None,
    scale: str = "auto",
) -> Tables:
    """The significance tables of a trials frame (`bnsweep.trials(url, sweep)`, or any frame
    with the store's columns), tested against BASE by a one-sided paired t-test at p ≤ 0.05
    unless `options` say otherwise.

    `layout` is a `TableLayout` or a sweep spec's `report:` mapping (`{"layout": "gamma",
    "blocks": ["dataset"]}`); None infers it from the arms present (docs/analysis.md).

    `mapping` reads runs made elsewhere (an MLflow `search_runs()` frame, a W&B export, one's
    own CSV) as `bnsweep import` reads them: `{"bn_scale_init": "params.gamma", ...}` names the
    column of a store field, `scale` says whether accuracies are fractions or percentages
    (docs/import.md). Without `mapping` the frame is taken as the store's trials frame.
    """
    if mapping is not None:
        trials = normalise_runs(trials, mapping=mapping, scale=scale).frame
    if not isinstance(layout, TableLayout):
        layout = TableLayout.from_dict(layout)
    return Tables(build_tables(trials, layout, options))
