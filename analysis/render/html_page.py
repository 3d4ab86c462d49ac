"""The HTML renderer: a standalone page of the tables, and `html_cell` for the dashboard."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import TYPE_CHECKING

from bnsweep.analysis.render.text import pair_head, pair_text, value_parts

if TYPE_CHECKING:
    from bnsweep.analysis.table_model import Cell, Table

__all__ = ["html_cell", "render_html"]


_HTML_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem; color: #222; }
table { border-collapse: collapse; margin: 1rem 0; }
caption { caption-side: top; font-weight: 600; text-align: left; padding-bottom: .5rem; }
th, td { padding: .25rem .75rem; }
tbody th { text-align: left; font-weight: normal; }
thead tr:first-child th { border-top: 2px solid #222; }
thead tr:last-child th { border-bottom: 1px solid #222; }
tbody tr.block-start > * { border-top: 1px solid #888; }
tbody tr:last-child > * { border-bottom: 2px solid #222; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.base td { font-style: italic; }
p.note { font-size: .9rem; max-width: 60rem; margin: .25rem 0; }
"""


def render_html(tables: Sequence[Table]) -> str:
    """A standalone HTML page of the tables, styled."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>{html.escape(tables[0].title if tables else 'bnsweep tables')}</title>",
        f"<style>{_HTML_STYLE}</style>",
        "</head>",
        "<body>",
        html_tables(tables),
        "</body>",
        "</html>",
    ]
    return "\n".join(parts) + "\n"


def html_tables(tables: Sequence[Table]) -> str:
    """The tables and their notes as an HTML fragment, without a page or a style sheet: what a
    notebook shows (it keeps its own styles) and what the page above wraps."""
    parts: list[str] = []
    for t in tables:
        has_blocks = any(b.label for b in t.blocks)
        lead = 2 if has_blocks else 1
        parts.append("<table>")
        parts.append(f"<caption>{html.escape(t.title)}</caption>")
        parts.append("<thead>")
        parts.append(
            f'<tr><th colspan="{lead}"></th><th colspan="{len(t.columns)}">'
            f"{html.escape(t.column_header)}</th></tr>"
        )
        heads = ([t.block_header] if has_blocks else []) + [t.row_header] + list(t.column_labels)
        parts.append("<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in heads) + "</tr>")
        parts.append("</thead>")
        parts.append("<tbody>")
        for k, b in enumerate(t.blocks):
            for i, r in enumerate(b.rows):
                classes = [
                    c for c, on in (("block-start", i == 0 and k > 0), ("base", r.is_base)) if on
                ]
                attr = f' class="{" ".join(classes)}"' if classes else ""
                lead_cells = ([html.escape(b.label) if i == 0 else ""] if has_blocks else []) + [
                    html.escape(r.label)
                ]
                parts.append(
                    f"<tr{attr}>"
                    + "".join(f'<th scope="row">{x}</th>' for x in lead_cells)
                    + "".join(f'<td class="num">{html_cell(c)}</td>' for c in r.cells)
                    + "</tr>"
                )
        parts.append("</tbody>")
        parts.append("</table>")
        parts += [f'<p class="note">{html.escape(x)}</p>' for x in t.notes_under()]
        parts += _html_pairwise(t)
    return "\n".join(parts)


def _html_pairwise(t: Table) -> list[str]:
    if not t.pairwise:
        return []
    parts = [f'<p class="note">{html.escape(t.pairwise_caption)}</p>']
    for m in t.pairwise:
        parts += ['<table class="pairwise">', f"<caption>{html.escape(m.title)}</caption>"]
        heads = (pair_head(t), *m.labels)
        parts.append(
            "<thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in heads) + "</tr></thead>"
        )
        parts.append("<tbody>")
        for label, row in zip(m.labels, m.cells, strict=True):
            cells = []
            for c in row:
                text = html.escape(pair_text(c, t.options))
                if c is not None and c.significant:
                    text = f"<strong>{text}</strong>"
                cells.append(f'<td class="num">{text}</td>')
            parts.append(
                f'<tr><th scope="row">{html.escape(label)}</th>' + "".join(cells) + "</tr>"
            )
        parts += ["</tbody>", "</table>"]
    return parts


def html_cell(cell: Cell | None) -> str:
    """A cell as HTML: `<u>` on the mean of the best, `<strong>` around a significant cell, the
    chosen γ and the footnote markers after it (the dashboard draws cells with it too)."""
    if cell is None:
        return ""
    mean, std = (html.escape(x) for x in value_parts(cell))
    if cell.best:
        mean = f"<u>{mean}</u>"
    text = f"{mean} ± {std}"
    if cell.significant:
        text = f"<strong>{text}</strong>"
    if cell.detail:
        text += f" ({html.escape(cell.detail)})"
    if cell.markers:
        text += f"<sup>{html.escape(''.join(cell.markers))}</sup>"
    return text
