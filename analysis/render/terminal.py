"""The terminal renderer: rich tables, bold and underline, or text marks where styles are lost."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from bnsweep.analysis.display import TEXT_MARKS
from bnsweep.analysis.render.text import pair_head, pair_text, value_parts

if TYPE_CHECKING:
    from bnsweep.analysis.table_model import Cell, PairCell, Table

__all__ = ["TERM_MARKS", "render_term", "term_renderables"]


#: Text marks of the terminal table where bold and underline cannot be shown (a file, a pipe).
TERM_MARKS = TEXT_MARKS


def term_renderables(tables: Sequence[Table], marks: bool = False) -> list[Any]:
    """rich renderables for the terminal: bold = significant, underline = best mean; with
    `marks` also in text (TERM_MARKS), for output that keeps no styles."""
    from rich.table import Table as RichTable
    from rich.text import Text

    out: list[Any] = []
    for t in tables:
        has_blocks = any(b.label for b in t.blocks)
        rt = RichTable(title=t.title, title_style="bold", caption_justify="left", show_lines=False)
        if has_blocks:
            rt.add_column(t.block_header)
        rt.add_column(t.row_header)
        for title in t.column_titles:
            rt.add_column(title, justify="right")
        for k, b in enumerate(t.blocks):
            for i, r in enumerate(b.rows):
                lead = ([b.label if i == 0 else ""] if has_blocks else []) + [r.label]
                rt.add_row(
                    *lead,
                    *[_term_cell(c, Text, marks) for c in r.cells],
                    end_section=i == len(b.rows) - 1 and k < len(t.blocks) - 1,
                )
        out.append(rt)
        out.append(Text("\n".join(t.notes_under(marks=marks)) + "\n"))
        if t.pairwise:
            out.append(Text(t.pairwise_caption + "\n"))
        for m in t.pairwise:
            pt = RichTable(title=m.title, title_style="bold", show_lines=False)
            pt.add_column(pair_head(t))
            for label in m.labels:
                pt.add_column(label, justify="right")
            for label, row in zip(m.labels, m.cells, strict=True):
                pt.add_row(label, *[_term_pair(c, t, Text, marks) for c in row])
            out.append(pt)
    return out


def _term_cell(cell: Cell | None, text_cls: Any, marks: bool = False) -> Any:
    if cell is None:
        return ""
    mean, std = value_parts(cell)
    bold = "bold" if cell.significant else ""
    text = text_cls()
    text.append(mean, style=" ".join(s for s in (bold, "underline" if cell.best else "") if s))
    text.append(f" ± {std}", style=bold)
    if cell.detail:
        text.append(f" ({cell.detail})")
    if cell.markers:
        text.append("".join(cell.markers))
    if marks:
        flags = [TERM_MARKS[k] for k in ("significant", "best") if getattr(cell, k)]
        text.append(f" {''.join(flags)}" if flags else "")
    return text


def _term_pair(cell: PairCell | None, t: Table, text_cls: Any, marks: bool = False) -> Any:
    significant = cell is not None and cell.significant
    text = text_cls(pair_text(cell, t.options), style="bold" if significant else "")
    if marks and significant:
        text.append(f" {TERM_MARKS['significant']}")
    return text


def render_term(tables: Sequence[Table], width: int = 120, styles: bool = False) -> str:
    """The terminal rendering as text; with `styles` the bold/underline ANSI codes are kept,
    without them significance and the best mean are marked in text (TERM_MARKS)."""
    from rich.console import Console

    console = Console(
        record=True,
        width=width,
        file=io.StringIO(),
        force_terminal=styles,
        color_system="standard" if styles else None,
    )
    for r in term_renderables(tables, marks=not styles):
        console.print(r)
    return console.export_text(styles=styles)
