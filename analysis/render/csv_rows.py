"""The CSV renderer: per-cell statistics, one line per cell and per ordered pairwise pair."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bnsweep.analysis.table_model import Cell, PairCell, PairwiseMatrix, Table

__all__ = ["CSV_COLUMNS", "render_csv"]


CSV_COLUMNS = (
    "table",
    "block",
    "row",
    "column",
    "formulation",
    "gamma",
    "c",
    "n",
    "mean",
    "std",
    "t",
    "df",
    "p",
    "p_adjusted",
    "significant",
    "best",
    "effect",
    "ci_low",
    "ci_high",
    "mean_diff",
    "n_pairs",
    "test",
    "not_tested",
    "diverged",
    "dropped",
    "versus",
)


def _num(x: float | None) -> str:
    return "" if x is None or not math.isfinite(x) else f"{x:.8g}"


def render_csv(tables: Sequence[Table]) -> str:
    """Per-cell statistics; `t` holds W+ when the test is Wilcoxon (the `test` column says so)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for t in tables:
        for b, r, j, c in t.cells():
            s = c.stats
            w.writerow(
                [
                    t.title,
                    b.label,
                    r.label,
                    t.column_labels[j],
                    c.arm.formulation,
                    f"{c.arm.gamma:g}",
                    f"{c.arm.c:g}",
                    c.n,
                    _num(c.mean),
                    _num(c.std),
                    _num(s.statistic) if s else "",
                    _num(s.df) if s else "",
                    _num(s.p) if s else "",
                    _num(s.p_adjusted) if s else "",
                    str(c.significant).lower(),
                    str(c.best).lower(),
                    _num(s.effect) if s else "",
                    _num(s.ci_low) if s else "",
                    _num(s.ci_high) if s else "",
                    _num(s.mean_diff) if s else "",
                    s.n if s else "",
                    s.test if s else "",
                    (s.degenerate or "") if s else "",
                    c.n_diverged,
                    c.comparison.dropped_text() if c.comparison else "",
                    t.reference if s else "",
                ]
            )
        for m in t.pairwise:
            for label, own, row in zip(m.labels, m.row_cells, m.cells, strict=True):
                for other, pc in zip(m.labels, row, strict=True):
                    if pc is None:
                        continue
                    w.writerow(_csv_pair_row(t, m, label, own, other, pc))
    return buf.getvalue()


def _csv_pair_row(
    t: Table, m: PairwiseMatrix, label: str, own: Cell, other: str, pc: PairCell
) -> list[Any]:
    """One ordered pair of a pairwise matrix, in the per-cell columns; `versus` names the
    column arm and `table` ends in "(pairwise)"."""
    s = pc.stats
    return [
        f"{t.title} (pairwise)",
        m.block,
        label,
        m.column_label,
        own.arm.formulation,
        f"{own.arm.gamma:g}",
        f"{own.arm.c:g}",
        own.n,
        _num(own.mean),
        _num(own.std),
        _num(s.statistic),
        _num(s.df),
        _num(s.p),
        _num(s.p_adjusted),
        str(s.significant).lower(),
        "",
        _num(s.effect),
        _num(s.ci_low),
        _num(s.ci_high),
        _num(s.mean_diff),
        s.n,
        s.test,
        s.degenerate or "",
        own.n_diverged,
        pc.comparison.dropped_text(),
        other,
    ]
