"""The Markdown renderer: one pipe table per table, caption and notes under it."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from bnsweep.analysis.render.text import pair_head, pair_text, value_parts

if TYPE_CHECKING:
    from bnsweep.analysis.table_model import Cell, Table

__all__ = ["render_markdown"]


def _markdown_pairwise(t: Table) -> list[str]:
    if not t.pairwise:
        return []
    lines = ["", _md_escape(t.pairwise_caption)]
    for m in t.pairwise:
        head = [pair_head(t), *m.labels]
        lines += ["", f"#### {_md_escape(m.title)}", ""]
        lines.append("| " + " | ".join(_md_escape(h) for h in head) + " |")
        lines.append("|:---|" + "|".join(["---:"] * len(m.labels)) + "|")
        for label, row in zip(m.labels, m.cells, strict=True):
            texts = []
            for c in row:
                text = _md_escape(pair_text(c, t.options))
                texts.append(f"**{text}**" if c is not None and c.significant else text)
            lines.append("| " + " | ".join([_md_escape(label), *texts]) + " |")
    return lines


def render_markdown(tables: Sequence[Table]) -> str:
    out = []
    for t in tables:
        has_blocks = any(b.label for b in t.blocks)
        head = ([t.block_header] if has_blocks else []) + [t.row_header] + list(t.column_titles)
        lines = [
            f"### {_md_escape(t.title)}",
            "",
            "| " + " | ".join(_md_escape(h) for h in head) + " |",
        ]
        lines.append(
            "|"
            + "|".join([":---"] * (len(head) - len(t.columns)) + ["---:"] * len(t.columns))
            + "|"
        )
        for b in t.blocks:
            for i, r in enumerate(b.rows):
                lead = ([_md_escape(b.label) if i == 0 else ""] if has_blocks else []) + [
                    _md_escape(r.label)
                ]
                lines.append("| " + " | ".join(lead + [_md_cell(c) for c in r.cells]) + " |")
        caption, mde, *extra = t.notes_under()
        lines += ["", _md_escape(caption), "", _md_escape(mde)]
        if extra:
            lines.append("")
            lines += [f"- {_md_escape(x)}" for x in extra]
        lines += _markdown_pairwise(t)
        out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


def _md_escape(text: str) -> str:
    return re.sub(r"([|*_`<>\\])", r"\\\1", text)


def _md_cell(cell: Cell | None) -> str:
    if cell is None:
        return ""
    mean, std = value_parts(cell)
    if cell.best:
        mean = f"<u>{mean}</u>"
    text = f"{mean} ± {std}"
    if cell.significant:
        text = f"**{text}**"
    if cell.detail:
        text += f" ({_md_escape(cell.detail)})"
    return text + "".join(f"<sup>{_md_escape(m)}</sup>" for m in cell.markers)
