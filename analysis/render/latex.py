"""The LaTeX renderer: booktabs `table` floats with caption, `\\label` and notes, or fragments."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from bnsweep.analysis.render.text import pair_head, pair_text, value_parts

if TYPE_CHECKING:
    from bnsweep.analysis.table_model import Cell, Table

__all__ = ["latex_escape", "latex_label", "render_latex", "render_latex_fragment"]


# LaTeX: escape the specials first, then map the paper's symbols to math mode.
_LATEX_SPECIALS = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}
_LATEX_UNICODE = {
    "γ": r"$\gamma$",
    "α": r"$\alpha$",
    "±": r"$\pm$",
    "≤": r"$\leq$",
    "–": "--",
    "⁻": r"$^{-}$",
    "×": r"$\times$",
    "†": r"\dag{}",
    "‡": r"\ddag{}",
    "§": r"\S{}",
    "¶": r"\P{}",
    "‖": r"$\|$",
}


def latex_escape(text: str) -> str:
    """Escape LaTeX specials and write γ, α, ±, ≤, –, ⁻ and the footnote marks as LaTeX."""
    escaped = "".join(_LATEX_SPECIALS.get(ch, ch) for ch in text)
    return "".join(_LATEX_UNICODE.get(ch, ch) for ch in escaped)


def _latex_cell(cell: Cell | None) -> str:
    if cell is None:
        return ""
    mean, std = value_parts(cell)
    mean = r"\underline{" + mean + "}" if cell.best else mean
    text = f"{mean} $\\pm$ {latex_escape(std)}"
    if cell.significant:
        text = r"\textbf{" + text + "}"
    if cell.detail:
        text += f" ({latex_escape(cell.detail)})"
    if cell.markers:
        text += r"\textsuperscript{" + latex_escape("".join(cell.markers)) + "}"
    return text


def latex_label(title: str, taken: set[str]) -> str:
    """`tab:<words of the title>`, unique among `taken` (which it joins), for `\\ref`."""
    words, kept = re.findall(r"[a-z0-9]+", title.lower()), list[str]()
    for word in words:  # whole words, at most 48 characters
        if len("-".join([*kept, word])) > 48:
            break
        kept.append(word)
    base = "tab:" + ("-".join(kept) or "bnsweep")
    label, n = base, 2
    while label in taken:
        label, n = f"{base}-{n}", n + 1
    taken.add(label)
    return label


def _latex_text(text: str) -> str:
    """A caption or note line: escaped, with the effect size typeset as the paper's $d_z$."""
    return latex_escape(text).replace(r"d\_z", "$d_z$")


def render_latex(tables: Sequence[Table], fragment: bool = False) -> str:
    """One `table` float per table, with caption, `\\label` and notes; `fragment` gives only
    the `tabular`, for a document that sets its own float, caption and notes."""
    out = []
    labels: set[str] = set()
    for t in tables:
        has_blocks = any(b.label for b in t.blocks)
        lead = 2 if has_blocks else 1
        ncol = len(t.columns)
        head = [
            "% requires \\usepackage{booktabs}",
            r"\begin{table}[t]",
            r"\centering",
            r"\caption{" + latex_escape(t.title) + "}",
            r"\label{" + latex_label(t.title, labels) + "}",
        ]
        lines = [
            *(head if not fragment else [f"% {latex_escape(t.title)} (requires booktabs)"]),
            r"\begin{tabular}{" + "l" * lead + "r" * ncol + "}",
            r"\toprule",
            " & " * lead
            + r"\multicolumn{"
            + str(ncol)
            + "}{c}{"
            + latex_escape(t.column_header)
            + r"} \\",
            rf"\cmidrule(lr){{{lead + 1}-{lead + ncol}}}",
            " & ".join(
                ([latex_escape(t.block_header)] if has_blocks else [])
                + [latex_escape(t.row_header)]
                + [latex_escape(c) for c in t.column_labels]
            )
            + r" \\",
            r"\midrule",
        ]
        for k, b in enumerate(t.blocks):
            if k:
                lines.append(r"\midrule")
            for i, r in enumerate(b.rows):
                cells = ([latex_escape(b.label) if i == 0 else ""] if has_blocks else []) + [
                    latex_escape(r.label)
                ]
                lines.append(" & ".join(cells + [_latex_cell(c) for c in r.cells]) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}"]
        if not fragment:
            lines += ["", r"\smallskip", r"\footnotesize"]
            lines += [_latex_text(x) + r"\par" for x in t.notes_under()]
            lines.append(r"\end{table}")
        lines += _latex_pairwise(t, fragment)
        out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


def _latex_pair(text: str) -> str:
    """latex_escape, plus the pairwise cells' p̃ (a combining tilde), −, — and <."""
    escaped = latex_escape(text.replace("p̃", "\x00"))
    for old, new in (("\x00", r"$\tilde{p}$"), ("−", "$-$"), ("—", "---"), ("<", "$<$")):
        escaped = escaped.replace(old, new)
    return escaped


def _latex_pairwise(t: Table, fragment: bool = False) -> list[str]:
    """Each pairwise matrix as a `table` float, or as its `tabular` alone for a fragment."""
    lines: list[str] = []
    for m in t.pairwise:
        cols = len(m.labels)
        lines.append("")
        if not fragment:
            lines += [
                r"\begin{table}[t]",
                r"\centering",
                r"\caption{" + latex_escape(m.title) + "}",
            ]
        lines += [
            r"\begin{tabular}{l" + "r" * cols + "}",
            r"\toprule",
            " & ".join(latex_escape(h) for h in (pair_head(t), *m.labels)) + r" \\",
            r"\midrule",
        ]
        for label, row in zip(m.labels, m.cells, strict=True):
            texts = []
            for c in row:
                text = _latex_pair(pair_text(c, t.options))
                texts.append(r"\textbf{" + text + "}" if c is not None and c.significant else text)
            lines.append(" & ".join([latex_escape(label), *texts]) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}"]
        if not fragment:
            lines += [
                "",
                r"\smallskip",
                r"\footnotesize",
                _latex_pair(t.pairwise_caption) + r"\par",
                r"\end{table}",
            ]
    return lines


def render_latex_fragment(tables: Sequence[Table]) -> str:
    return render_latex(tables, fragment=True)
