"""The notebook face of the tables: `Table.to_frame()`, and the `Tables` that `tables()`
(`bnsweep.tables`) returns, with `to_frame()`, `render()` and `_repr_html_`."""

from __future__ import annotations

import csv
import io
import math

import pytest

from bnsweep.analysis.layout import TableLayout
from bnsweep.analysis.notebook import Tables
from bnsweep.analysis.notebook import tables as notebook_tables
from bnsweep.analysis.render.csv_rows import csv_value
from bnsweep.analysis.render.formats import RENDERERS, render
from bnsweep.analysis.render.html_page import html_tables, render_html
from bnsweep.analysis.stats import AnalysisOptions
from bnsweep.analysis.table_model import FRAME_COLUMNS
from bnsweep.analysis.tables import build_tables
from tests.analysis.data import golden_trials


@pytest.fixture(scope="module")
def tables() -> Tables:
    return notebook_tables(golden_trials())


def test_the_notebook_tables_are_the_built_tables(tables: Tables) -> None:
    assert isinstance(tables, list) and isinstance(tables, Tables)
    assert tables == build_tables(golden_trials())
    (table,) = tables  # unpacking, indexing and slicing as a list
    assert tables[:1] == [table]
    by_mapping = notebook_tables(golden_trials(), {"layout": "gamma"})
    assert by_mapping == build_tables(golden_trials(), TableLayout(kind="gamma"))


def test_a_table_frame_has_one_line_per_filled_cell(tables: Tables) -> None:
    (table,) = tables
    frame = table.to_frame()
    assert tuple(frame.columns) == FRAME_COLUMNS
    cells = table.cells()
    assert len(frame) == len(cells)
    for line, (b, r, j, c) in zip(frame.itertuples(index=False), cells, strict=True):
        assert (line.block, line.row) == (b.label, r.label)
        assert (line.column, line.column_value) == (table.column_labels[j], table.columns[j])
        assert (line.formulation, line.gamma, line.c) == (c.arm.formulation, c.arm.gamma, c.arm.c)
        assert (line.n, line.mean, line.std) == (c.n, c.mean, c.std)
        assert (line.significant, line.best, line.detail) == (c.significant, c.best, c.detail)
        if c.stats is None:
            assert math.isnan(line.p) and line.versus == ""
        else:
            assert line.p == c.stats.p and line.versus == table.reference
    base = frame[frame["row"] == "BASE"]
    assert not base.empty and base["p"].isna().all() and not base["significant"].any()
    assert frame["significant"].any() and frame["best"].any()


def test_the_frame_of_tables_names_the_table(tables: Tables) -> None:
    frame = tables.to_frame()
    assert tuple(frame.columns) == FRAME_COLUMNS and FRAME_COLUMNS[0] == "table"
    assert len(frame) == len(tables[0].cells())
    assert set(frame["table"]) == {tables[0].title}
    assert tuple(Tables().to_frame().columns) == FRAME_COLUMNS


def test_a_notebook_shows_the_html_renderers_tables_without_a_page(tables: Tables) -> None:
    shown = tables._repr_html_()
    assert shown == html_tables(tables)
    assert shown in render_html(tables) and render_html(tables) == render(tables, "html")
    assert "<strong>" in shown and "<u>" in shown
    # No page and no style sheet: the notebook keeps its own look.
    assert "<html" not in shown and "<style" not in shown and "<body" not in shown


@pytest.mark.parametrize("fmt", list(RENDERERS))
def test_tables_render_in_every_format(tables: Tables, fmt: str) -> None:
    assert tables.render(fmt) == render(tables, fmt)


def test_pairwise_tables_have_the_same_faces() -> None:
    tables = notebook_tables(golden_trials(), TableLayout(pairwise=True))
    assert tables[0].pairwise
    assert 'class="pairwise"' in tables._repr_html_()
    pairs = sum(1 for m in tables[0].pairwise for row in m.cells for c in row if c is not None)
    frame = tables.to_frame()
    assert len(frame) == len(tables[0].cells()) + pairs
    assert frame["table"].str.endswith("(pairwise)").sum() == pairs


@pytest.mark.parametrize(
    ("layout", "options"),
    [
        (TableLayout(), AnalysisOptions()),
        (TableLayout(pairwise=True, versus="standard γ=0.05"), AnalysisOptions(correction="holm")),
        (TableLayout(), AnalysisOptions(test="wilcoxon")),
    ],
)
def test_the_frame_and_the_csv_are_one_shape(layout: TableLayout, options: AnalysisOptions) -> None:
    # Two faces of one table: the same columns and lines, the CSV's text the frame's numbers.
    tables = notebook_tables(golden_trials(), layout, options)
    frame = tables.to_frame()
    text = list(csv.reader(io.StringIO(render(tables, "csv"))))
    assert tuple(text[0]) == tuple(frame.columns) == FRAME_COLUMNS
    assert len(text) - 1 == len(frame)
    for written, line in zip(text[1:], frame.itertuples(index=False), strict=True):
        assert written == [csv_value(v) for v in line], written
    # The CI and the effect size are in both (the frame once dropped them).
    tested = frame[frame["p"].notna()]
    assert not tested.empty
    for name in ("effect", "ci_low", "ci_high", "mean_diff", "t", "df", "n_pairs"):
        if name != "df" or options.test == "t":
            assert tested[name].notna().all(), name
    assert (tested["ci_low"] <= tested["mean_diff"]).all()
    assert (tested["mean_diff"] <= tested["ci_high"]).all()
