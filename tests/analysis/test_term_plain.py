"""The terminal format draws its tables itself, segment for segment as rich draws them: the same
text, styles included, at every width; rich's own drawing where a table does not fit."""

from __future__ import annotations

import io

import pytest
from rich.console import Console
from rich.table import Table as RichTable
from rich.text import Text

from bnsweep.analysis.layout import TableLayout
from bnsweep.analysis.render.terminal import _PlainTable, render_term, term_renderables
from bnsweep.analysis.tables import build_tables
from tests.analysis import test_versus
from tests.analysis.data import golden_trials

WIDTHS = [20, 40, 60, 80, 100, 110, 120, 160, 250]


def _by_rich(renderables: list, width: int, styles: bool = False) -> str:
    console = Console(
        record=True,
        width=width,
        file=io.StringIO(),
        force_terminal=styles,
        color_system="standard" if styles else None,
    )
    for r in renderables:
        console.print(r)
    return console.export_text(styles=styles)


def _plain(renderables: list, width: int, styles: bool = False) -> str:
    return _by_rich([_PlainTable.of(r) for r in renderables], width, styles)


CASES = {
    "gamma": lambda: build_tables(golden_trials()),
    "pairwise": lambda: build_tables(golden_trials(), TableLayout(pairwise=True)),
    "methods versus": lambda: build_tables(
        test_versus._frame(), TableLayout(pairwise=True, versus="rbn γ=1 c=1")
    ),
    "gamma of methods": lambda: build_tables(test_versus._frame(), TableLayout(kind="gamma")),
}


@pytest.mark.parametrize("styles", [False, True])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("width", WIDTHS)
def test_the_tables_are_rich_s_text_at_every_width(case: str, width: int, styles: bool) -> None:
    tables = CASES[case]()
    renderables = term_renderables(tables, marks=not styles)
    drawn_here = [r for r in renderables if isinstance(_PlainTable.of(r), _PlainTable)]
    assert len(drawn_here) == sum(isinstance(r, RichTable) for r in renderables) > 0
    expected = _by_rich(renderables, width, styles)
    assert render_term(tables, width=width, styles=styles) == expected
    if styles:
        assert "\x1b[1m" in expected


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
        (("a", Text("4.5", style="bold")), (Text("b", style="underline"), "6")),
        (("two\nlines", "4"),),  # rich's own drawing
        (("wide 表 cells", "5"), ("α ± β", "6")),
        (),
    ],
)
@pytest.mark.parametrize("styles", [False, True])
@pytest.mark.parametrize("width", [12, 30, 80])
def test_any_simple_table_is_drawn_as_rich_draws_it(rows, width: int, styles: bool) -> None:
    drawn = _plain([_table(*rows)], width, styles)
    assert drawn == _by_rich([_table(*rows)], width, styles)


def test_only_tables_it_can_draw_are_taken_over() -> None:
    plain = _table(("a", "1"))
    assert isinstance(_PlainTable.of(plain), _PlainTable)
    lined = RichTable(show_lines=True)
    assert _PlainTable.of(lined) is lined
    assert _PlainTable.of("text") == "text"
