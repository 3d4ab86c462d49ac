"""The table model: cells, rows, blocks, pairwise matrices and tables; renderers only format it.

In a notebook a `Table` and the `Tables` that `build_tables` returns show themselves as the
HTML renderer draws them, and `to_frame()` gives their lines (the CSV's rows) as a DataFrame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from bnsweep.analysis.display import FRAME_COLUMNS, TEXT_MARKS
from bnsweep.analysis.pairing import Arm, Comparison
from bnsweep.analysis.stats import AnalysisOptions, CellStats

__all__ = [  # FRAME_COLUMNS and TEXT_MARKS live in analysis/display.py, which renderers read
    "FRAME_COLUMNS",
    "TEXT_MARKS",
    "Block",
    "Cell",
    "PairCell",
    "PairwiseMatrix",
    "Row",
    "Table",
]


@dataclass(frozen=True)
class Cell:
    """One arm at one experiment: mean ± std (percent) over the seeds with a score.

    `stats` is the test against the table's reference arm, BASE unless `versus` chose another
    (None for the reference itself, and where there is no reference to compare with);
    `markers` point at the table's footnotes; `detail` names the γ a best-of row chose.
    `diverged_seeds` lists every diverged run of the cell, `diverged_scored` those counted
    with their score (the official code counts them, analysis/pairing.py).
    """

    arm: Arm
    n: int
    mean: float
    std: float
    significant: bool = False
    best: bool = False
    markers: tuple[str, ...] = ()
    detail: str = ""
    stats: CellStats | None = None
    comparison: Comparison | None = None
    n_runs: int = 0
    n_diverged: int = 0
    diverged_seeds: tuple[int, ...] = ()
    diverged_scored: tuple[int, ...] = ()

    @property
    def mean_text(self) -> str:
        return f"{self.mean:.2f}" if math.isfinite(self.mean) else "–"

    @property
    def std_text(self) -> str:
        return f"{self.std:.2f}" if math.isfinite(self.std) else "–"


@dataclass(frozen=True)
class Row:
    label: str
    cells: tuple[Cell | None, ...]  # one per table column; None where the arm did not run
    is_base: bool = False
    arm: Arm | None = None  # the row's arm; None for best-of rows


@dataclass(frozen=True)
class Block:
    label: str  # "" when nothing but the columns varies
    key: tuple[tuple[str, Any], ...]
    rows: tuple[Row, ...]
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class PairCell:
    """Row arm against column arm of one pairwise matrix: the comparison and its one-sided test
    (row better than column), corrected across the matrix."""

    comparison: Comparison
    stats: CellStats

    @property
    def significant(self) -> bool:
        return self.stats.significant


@dataclass(frozen=True)
class PairwiseMatrix:
    """Every row of one block against every other row, in one column (one experiment).

    `cells[i][j]` tests row i against row j (None on the diagonal); `labels` are the rows'
    labels, with the γ a best-of row chose in this column."""

    block: str
    column: str  # the column's title, e.g. "α = 0.1"
    column_label: str  # its value as the main table prints it, e.g. "0.1"
    labels: tuple[str, ...]
    arms: tuple[Arm, ...]
    cells: tuple[tuple[PairCell | None, ...], ...]
    row_cells: tuple[Cell, ...] = ()  # the rows' cells of the main table in this column

    @property
    def title(self) -> str:
        return "Pairwise: " + ", ".join(x for x in (self.block, self.column) if x)

    @property
    def m(self) -> int:
        return sum(1 for row in self.cells for c in row if c is not None and c.stats.tested)


@dataclass(frozen=True)
class Table:
    kind: str
    title: str
    block_header: str
    row_header: str
    column_header: str
    column_field: str
    columns: tuple[Any, ...]
    column_labels: tuple[str, ...]
    blocks: tuple[Block, ...]
    caption: str
    mde: str
    footnotes: tuple[tuple[str, str], ...]  # (marker, text)
    notes: tuple[str, ...]
    options: AnalysisOptions
    reference: str = "BASE"  # what bold means "significantly better than"
    pairwise: tuple[PairwiseMatrix, ...] = ()
    pairwise_caption: str = ""

    @property
    def column_titles(self) -> tuple[str, ...]:
        """`α = 0.1` for the paper's columns, `<header> = <value>` for any other field."""
        name = "α" if self.column_field == "lr" else self.column_header
        return tuple(f"{name} = {c}" if c else name for c in self.column_labels)

    def notes_under(self, marks: bool = False) -> list[str]:
        """The lines under the table, in order: caption, minimum detectable effect, footnotes
        (marker first), each block's notes (its label first), the table's notes, and with
        `marks` the legend of the text marks (`marks_legend`). Every renderer writes these, so
        the surfaces never differ in what they say under a table."""
        lines = [self.caption, self.mde] + [f"{m} {x}" for m, x in self.footnotes]
        lines += [f"{b.label}: {x}" for b in self.blocks for x in b.notes]
        return lines + list(self.notes) + ([self.marks_legend()] if marks else [])

    def marks_legend(self) -> str:
        """What the text marks (TEXT_MARKS) stand for where bold and underline are lost: the
        same meaning as the caption's, naming the arm the table was tested against."""
        sig, best = TEXT_MARKS["significant"], TEXT_MARKS["best"]
        text = (
            f"{sig} marks bold: significantly better than {self.reference}; {best} marks "
            "underline: highest mean in its column within its block"
        )
        if self.pairwise:
            text += f"; in the pairwise matrices {sig} marks bold: the row is significantly "
            text += "better than the column"
        return text

    def cells(self) -> list[tuple[Block, Row, int, Cell]]:
        """Every filled cell with its block, row and column index, in reading order."""
        return [
            (b, r, j, c)
            for b in self.blocks
            for r in b.rows
            for j, c in enumerate(r.cells)
            if c is not None
        ]

    def lines(self) -> list[dict[str, Any]]:
        """The table's lines in FRAME_COLUMNS: every filled cell in reading order, then every
        ordered pair of each pairwise matrix. `to_frame()` and the CSV are both made of them."""
        out = []
        for b, r, j, c in self.cells():
            out.append(
                _line(
                    self.title,
                    b.label,
                    r.label,
                    self.column_labels[j],
                    self.columns[j],
                    c,
                    c.stats,
                    best=c.best,
                    dropped=c.comparison.dropped_text() if c.comparison else "",
                    versus=self.reference if c.stats is not None else "",
                )
            )
        for m in self.pairwise:
            j = self.column_labels.index(m.column_label)
            for label, own, row in zip(m.labels, m.row_cells, m.cells, strict=True):
                for other, pc in zip(m.labels, row, strict=True):
                    if pc is None:
                        continue
                    out.append(
                        _line(
                            f"{self.title} (pairwise)",
                            m.block,
                            label,
                            m.column_label,
                            self.columns[j],
                            own,
                            pc.stats,
                            best=None,
                            dropped=pc.comparison.dropped_text(),
                            versus=other,
                        )
                    )
        return out

    def to_frame(self) -> pd.DataFrame:
        """The table's lines (`lines()`) as a DataFrame with FRAME_COLUMNS: what the CSV
        renderer writes, with numbers as numbers."""
        return pd.DataFrame(self.lines(), columns=list(FRAME_COLUMNS))


def _line(
    table: str,
    block: str,
    row: str,
    column: str,
    column_value: Any,
    cell: Cell,
    stats: CellStats | None,
    *,
    best: bool | None,
    dropped: str,
    versus: str,
) -> dict[str, Any]:
    """One line of FRAME_COLUMNS: `cell`'s arm, n, mean and std with the statistics `stats`
    (the cell's test against the reference, or a pairwise test)."""

    def stat(name: str) -> float:
        return float(getattr(stats, name)) if stats is not None else math.nan

    line = {
        "table": table,
        "block": block,
        "row": row,
        "column": column,
        "formulation": cell.arm.formulation,
        "gamma": cell.arm.gamma,
        "c": cell.arm.c,
        "n": cell.n,
        "mean": cell.mean,
        "std": cell.std,
        "t": stat("statistic"),
        "df": stat("df"),
        "p": stat("p"),
        "p_adjusted": stat("p_adjusted"),
        # A pairwise line's significance is its own test's; a cell's is the table's bold.
        "significant": cell.significant if best is not None else bool(stats and stats.significant),
        "best": best,
        "effect": stat("effect"),
        "ci_low": stat("ci_low"),
        "ci_high": stat("ci_high"),
        "mean_diff": stat("mean_diff"),
        "n_pairs": stats.n if stats is not None else None,
        "test": stats.test if stats is not None else "",
        "not_tested": (stats.degenerate or "") if stats is not None else "",
        "diverged": cell.n_diverged,
        "dropped": dropped,
        "versus": versus,
        "detail": cell.detail if best is not None else "",
        "n_runs": cell.n_runs,
        "column_value": column_value,
    }
    return line
