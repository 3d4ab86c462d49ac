"""The CSV renderer: the table model's lines (`Table.lines()`, the rows of `to_frame()`) as text."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from bnsweep.analysis.display import FRAME_COLUMNS

if TYPE_CHECKING:
    from bnsweep.analysis.table_model import Table

__all__ = ["CSV_COLUMNS", "csv_value", "render_csv"]

#: The CSV's header: the columns of `Table.to_frame()`, so the two are one shape.
CSV_COLUMNS = FRAME_COLUMNS


def csv_value(x: Any) -> str:
    """A line's value as the CSV writes it: empty for a missing or non-finite number, `true` /
    `false`, and numbers in at most 8 significant digits."""
    if x is None:
        return ""
    if isinstance(x, bool):
        return str(x).lower()
    if isinstance(x, float):
        return f"{x:.8g}" if math.isfinite(x) else ""
    return str(x)


def render_csv(tables: Sequence[Table]) -> str:
    """Every table's lines (`Table.lines()`) in CSV_COLUMNS."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for t in tables:
        for line in t.lines():
            w.writerow([csv_value(line[k]) for k in CSV_COLUMNS])
    return buf.getvalue()
