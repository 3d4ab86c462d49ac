"""Text shared by the renderers: a cell's mean and std, a pairwise cell, a matrix's corner."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    # The renderers only read the model: its names serve annotations alone, so the model may
    # use the renderers without a circle.
    from bnsweep.analysis.stats import AnalysisOptions
    from bnsweep.analysis.table_model import Cell, PairCell, Table

__all__ = ["pair_head", "pair_text", "value_parts"]


def value_parts(cell: Cell) -> tuple[str, str]:
    return cell.mean_text, cell.std_text


def _p_text(name: str, p: float) -> str:
    return f"{name} < 0.001" if p < 0.001 else f"{name} = {p:.3f}"


def pair_text(cell: PairCell | None, options: AnalysisOptions) -> str:
    """`+1.10 (p = 0.002)`; with a correction also `p̃ = …`; `—` on the diagonal."""
    if cell is None:
        return "—"
    s = cell.stats
    diff = f"{s.mean_diff:+.2f}".replace("-", "−") if math.isfinite(s.mean_diff) else "–"
    if not s.tested:
        return f"{diff} (not tested)"
    adjusted = f", {_p_text('p̃', s.p_adjusted)}" if options.correction != "none" else ""
    return f"{diff} ({_p_text('p', s.p)}{adjusted})"


def pair_head(t: Table) -> str:
    return f"{t.row_header} (row) vs column"
