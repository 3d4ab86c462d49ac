"""The registry of table formats (`RENDERERS`: name → renderer and file extension) and `render`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bnsweep.analysis.render.csv_rows import render_csv
from bnsweep.analysis.render.html_page import render_html
from bnsweep.analysis.render.latex import render_latex, render_latex_fragment
from bnsweep.analysis.render.markdown import render_markdown
from bnsweep.analysis.render.terminal import render_term
from bnsweep.workers.errors import choice_error

if TYPE_CHECKING:
    from bnsweep.analysis.table_model import Table

__all__ = ["RENDERERS", "Renderer", "render"]


@dataclass(frozen=True)
class Renderer:
    render: Callable[[Sequence[Table]], str]
    extension: str


RENDERERS: dict[str, Renderer] = {
    "md": Renderer(render_markdown, "md"),
    "latex": Renderer(render_latex, "tex"),
    "latex-fragment": Renderer(render_latex_fragment, "fragment.tex"),
    "html": Renderer(render_html, "html"),
    "csv": Renderer(render_csv, "csv"),
    "term": Renderer(render_term, "txt"),
}


def render(tables: Sequence[Table], fmt: str) -> str:
    if fmt not in RENDERERS:
        raise choice_error("format", fmt, RENDERERS)
    return RENDERERS[fmt].render(tables)
