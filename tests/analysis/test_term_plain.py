"""The terminal format without styles draws its tables itself, character for character as rich
draws them: the same text at every width, rich's own drawing where a table does not fit."""

from __future__ import annotations

import io

import pytest
from rich.console import Console
from rich.table import Table as RichTable

from bnsweep.analysis.layout import TableLayout
from bnsweep.analysis.render.terminal import _PlainTable, render_term, term_renderables
from bnsweep.analysis.tables import build_tables
from tests.analysis import test_versus
from tests.analysis.data import golden_trials

WIDTHS = [20, 40, 60, 80, 100, 110, 120, 160, 250]


def _by_rich(renderables: list, width: int) -> str:
    console = Console(
        record=True, width=width, file=io.StringIO(), force_terminal=False, color_system=None
    )
    for r in renderables:
        console.print(r)
    return console.export_text(styles=False)


def _plain(renderables: list, width: int) -> str:
    return _by_rich([_PlainTable.of(r) for r in renderables], width)


CASES = {
    "gamma": lambda: build_tables(golden_trials()),
    "pairwise": lambda: build_tables(golden_trials(), TableLayout(pairwise=True)),
    "methods versus": lambda: build_tables(
        test_versus._frame(), TableLayout(pairwise=True, versus="rbn γ=1 c=1")
    ),
    "gamma of methods": lambda: build_tables(test_versus._frame(), TableLayout(kind="gamma")),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("width", WIDTHS)
def test_the_tables_are_rich_s_text_at_every_width(case: str, width: int) -> None:
    tables = CASES[case]()
    expected = _by_rich(term_renderables(tables, marks=True), width)
    assert render_term(tables, width=width) == expected


def _table(*rows: tuple[str, ...], title: str = "A title long enough to wrap at a narrow width"):
    t = RichTable(title=title, title_style="bold")
    t.add_column("name")
    t.add_column("value", justify="right")
    for i, row in enumerate(rows):
        t.add_row(*row, end_section=i == 0)
    return t


@pytest.mark.parametrize(
    "rows",
    [
        (("a", "1"), ("bb", "22")),
        (("[bold]markup[/bold] is read as rich reads it", "3 "), ("x", "")),
        (("two\nlines", "4"),),  # rich's own drawing
        (("wide 表 cells", "5"), ("α ± β", "6")),
        (),
    ],
)
@pytest.mark.parametrize("width", [12, 30, 80])
def test_any_simple_table_is_drawn_as_rich_draws_it(rows, width: int) -> None:
    assert _plain([_table(*rows)], width) == _by_rich([_table(*rows)], width)


def test_only_tables_it_can_draw_are_taken_over() -> None:
    plain = _table(("a", "1"))
    assert isinstance(_PlainTable.of(plain), _PlainTable)
    lined = RichTable(show_lines=True)
    assert _PlainTable.of(lined) is lined
    assert _PlainTable.of("text") == "text"
