"""The notebook face of the table model: `to_frame()` and `_repr_html_` of a table and of the
`Tables` that `build_tables` returns."""

from __future__ import annotations

import math

import pytest

from analysis.layout import TableLayout
from analysis.render.formats import RENDERERS, render
from analysis.render.html_page import render_html
from analysis.table_model import FRAME_COLUMNS, Tables
from analysis.tables import build_tables
from tests.analysis.data import golden_trials


@pytest.fixture(scope="module")
def tables() -> Tables:
    return build_tables(golden_trials())


def test_build_tables_returns_a_list_that_callers_keep_using(tables: Tables) -> None:
    assert isinstance(tables, list) and isinstance(tables, Tables)
    assert tables == [tables[0]]
    (table,) = tables  # unpacking, indexing and slicing as before
    assert tables[:1] == [table]


def test_a_table_frame_has_one_line_per_filled_cell(tables: Tables) -> None:
    (table,) = tables
    frame = table.to_frame()
    assert tuple(frame.columns) == FRAME_COLUMNS
    cells = table.cells()
    assert len(frame) == len(cells)
    for line, (b, r, j, c) in zip(frame.itertuples(index=False), cells, strict=True):
        assert (line.block, line.row, line.column) == (b.label, r.label, table.columns[j])
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
    assert tuple(frame.columns) == ("table", *FRAME_COLUMNS)
    assert len(frame) == len(tables[0].cells())
    assert set(frame["table"]) == {tables[0].title}
    assert tuple(Tables().to_frame().columns) == ("table", *FRAME_COLUMNS)


def test_a_notebook_shows_the_html_renderers_output(tables: Tables) -> None:
    (table,) = tables
    assert table._repr_html_() == render_html([table]) == render(tables, "html")
    assert tables._repr_html_() == render_html(tables)
    assert "<strong>" in table._repr_html_() and "<u>" in table._repr_html_()


@pytest.mark.parametrize("fmt", list(RENDERERS))
def test_tables_render_in_every_format(tables: Tables, fmt: str) -> None:
    assert tables.render(fmt) == render(tables, fmt)


def test_pairwise_tables_have_the_same_faces() -> None:
    tables = build_tables(golden_trials(), TableLayout(pairwise=True))
    assert tables[0].pairwise
    assert tables._repr_html_() == render_html(tables)
    assert len(tables.to_frame()) == len(tables[0].cells())
