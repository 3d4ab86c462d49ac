"""The terminal renderer: rich tables, bold and underline, or text marks where styles are lost."""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
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
        console.print(_PlainTable.of(r))
    return console.export_text(styles=styles)


class _PlainTable:
    """A rich `Table` drawn as rich draws it, segment for segment, when no column has to wrap:
    rich measures and lays out every cell as a renderable of its own (about 0.2 ms a cell,
    seconds for the thousands of cells of a 100,000-trial store), where here each cell is its
    text justified to its column. A table that does not fit the width, or has anything else
    (a line break in a cell, another box, row styles), is left to rich."""

    def __init__(self, table: Any) -> None:
        self.table = table

    @classmethod
    def of(cls, renderable: Any) -> Any:
        from rich import box
        from rich.table import Table as RichTable

        t = renderable
        plain = (
            isinstance(t, RichTable)
            and t.box is box.HEAVY_HEAD
            and t.show_header
            and t.show_edge
            and not (t.show_footer or t.show_lines or t.leading or t.caption or t.expand)
            and t.width is None
            and t.min_width is None
            and t.padding == (0, 1, 0, 1)
            and t.pad_edge
            and not t.collapse_padding
            and not t.row_styles
            and t.style in (None, "", "none")
            and not t.border_style
            and all(
                c.width is None
                and c.min_width is None
                and c.max_width is None
                and not c.style
                and not c.header_style
                and c.justify in ("left", "right")
                for c in t.columns
            )
        )
        return cls(t) if plain else renderable

    def __rich_console__(self, console: Any, options: Any) -> Iterator[Any]:
        from rich.cells import cell_len
        from rich.segment import Segment
        from rich.style import Style
        from rich.text import Text

        t = self.table
        columns = self._columns(console)
        # Each cell's measure, padding included (Padding(cell, (0, 1)) in rich); the table's
        # width adds a line per column and one for the right edge.
        widths = [max(cell_len(x.plain) for x in cells) + 2 for cells in columns or ()]
        table_width = sum(widths) + len(widths) + 1
        if columns is None or table_width > options.max_width:
            yield from t.__rich_console__(console, options)
            return
        render_options = options.update(width=table_width, highlight=t.highlight, height=None)
        if t.title:
            title = console.render_str(
                t.title, style=Style.pick_first(t.title_style, "table.title"), highlight=False
            )
            yield from console.render(title, options=render_options.update(justify=t.title_justify))
        edges = t.box.substitute(
            options, safe=t.safe_box if t.safe_box is not None else console.safe_box
        )
        header_style = console.get_style(t.header_style or "")
        null = Style.null()
        newline = Text("\n")
        # Without a colour system no style ever reaches the output (Style.render returns the
        # bare text): a cell is then its string, which is most of the time saved.
        styled = console.color_system is not None

        def cell(text: Text, width: int, justify: str, overflow: Any, style: Style) -> list[Any]:
            if not styled:
                plain = text.plain.rstrip() if justify == "right" else text.plain
                fill = " " * (width - 2 - cell_len(plain))
                return [Segment(f" {fill}{plain} " if justify == "right" else f" {plain}{fill} ")]
            text = text.copy()
            # As rich's Lines.justify: right-justified text loses its trailing spaces.
            if justify == "right":
                text.rstrip()
                text.pad_left(width - 2 - cell_len(text.plain))
            else:
                text.truncate(width - 2, overflow=overflow, pad=True)
            pad = Segment(" ", style)
            # Joined as rich's Text.__rich_console__ joins its lines: the base style becomes a
            # span, which is how it reaches the segments.
            inner = list(newline.join([text]).render(console, end=""))
            return [pad, *(Segment.apply_style(inner, style) if style else inner), pad]

        def line(row: int, left: str, divider: str, right: str) -> list[Any]:
            style = header_style if row == 0 else null
            out = [Segment(left)]
            for j, (cells, width, column) in enumerate(
                zip(columns, widths, t.columns, strict=True)
            ):
                if j:
                    out.append(Segment(divider))
                out += cell(cells[row], width, column.justify, column.overflow, style)
            return [*out, Segment(right), Segment.line()]

        yield Segment(edges.get_top(widths))
        yield Segment.line()
        yield from line(0, edges.head_left, edges.head_vertical, edges.head_right)
        yield Segment(edges.get_row(widths, "head", edge=True))
        yield Segment.line()
        last = len(t.rows)
        for i, row in enumerate(t.rows, start=1):
            if i == last:
                yield from line(i, edges.foot_left, edges.foot_vertical, edges.foot_right)
            else:
                yield from line(i, edges.mid_left, edges.mid_vertical, edges.mid_right)
                if row.end_section:
                    yield Segment(edges.get_row(widths, "row", edge=True))
                    yield Segment.line()
        yield Segment(edges.get_bottom(widths))
        yield Segment.line()

    def _columns(self, console: Any) -> list[list[Any]] | None:
        """Per column its header and cells as rich `Text`, or None if any is more than a line."""
        out = []
        for column in self.table.columns:
            texts = [_one_line(console, x) for x in (column.header, *column.cells)]
            if any(x is None for x in texts):
                return None
            out.append(texts)
        return out


def _one_line(console: Any, cell: Any) -> Any:
    """A cell as rich lays it out (a string read as rich reads it, markup and all) when it is
    one line of text; None otherwise."""
    from rich.text import Text

    text = console.render_str(cell, highlight=False) if isinstance(cell, str) else cell
    if not isinstance(text, Text) or "\n" in text.plain or "\t" in text.plain:
        return None
    return text
