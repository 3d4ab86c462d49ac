"""A sweep's significance tables from a trials frame: built, rendered and written to files.

What `bnsweep tables` and `bnsweep plots`, `bnsweep launch` at its end and the dashboard share:
the layout from a spec's `report:` mapping and the command line, the table options, the
formats. analysis/ is imported inside the functions, so `bnsweep --help` stays quick.
"""

from __future__ import annotations

import logging
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from bnsweep.analysis.table_model import Table

log = logging.getLogger(__name__)

# Literal here so `bnsweep --help` does not import scipy; a test keeps it equal to the registry
# in bnsweep.analysis.render.formats.
FORMATS = ("md", "latex", "latex-fragment", "html", "csv", "term")


def _options(values: Mapping[str, Any]) -> Any:
    from bnsweep.analysis.stats import AnalysisOptions

    known = {"alpha", "correction", "test", "confidence", "power", "exclude_diverged"}
    unknown = sorted(set(values) - known)
    if unknown:
        from bnsweep.analysis.pairing import AnalysisError

        raise AnalysisError(
            f"unknown table option(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}"
        )
    return AnalysisOptions(**{k: v for k, v in values.items() if v is not None})


def table_layout(
    report: Mapping[str, Any] | None,
    kind: str | None,
    versus: str | None = None,
    pairwise: bool = False,
) -> Any:
    """The spec's `report:` layout with the command line's choices; unset options (no
    `--layout`, no `--versus`, no `--pairwise`) leave it as it is. The notebook's
    `bnsweep.tables(versus=..., pairwise=...)` goes through the same `layout_with`."""
    from bnsweep.analysis.tables import layout_with

    return layout_with(report, kind=kind or None, versus=versus or None, pairwise=pairwise or None)


def render_tables(tables: list[Table], fmt: str, *, for_terminal: bool) -> str:
    from bnsweep.analysis.render.formats import render
    from bnsweep.analysis.render.terminal import render_term

    if fmt == "term" and for_terminal:
        # Styled only when a person reads it: bold and underline become ANSI codes.
        return render_term(tables, width=shutil.get_terminal_size().columns, styles=True)
    return render(tables, fmt)


def write_tables(text: str, out: str | Path, name: str, fmt: str) -> Path:
    from bnsweep.analysis.render.formats import RENDERERS

    path = Path(out) / f"{safe_name(name)}.{RENDERERS[fmt].extension}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def safe_name(name: str, empty: str = "tables") -> str:
    """A sweep name as a file or folder name: `bnsweep tables --out`, the report's folders and
    the dashboard's downloads; `empty` stands in for a name with no character left."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name) or empty


def tables_for(
    trials: pd.DataFrame | Mapping[str, pd.DataFrame],
    report: Mapping[str, Any] | None = None,
    layout_kind: str | None = None,
    versus: str | None = None,
    pairwise: bool = False,
    **options: Any,
) -> list[Table]:
    """Tables of a trials frame with a spec's `report:` mapping and table options; `versus`
    and `pairwise` override the mapping's (see `bnsweep.analysis.layout.TableLayout`). A
    mapping of sweep name → trials frame puts the sweeps side by side, one table each
    (`bnsweep.analysis.tables.build_sweep_tables`, which `bnsweep.tables` uses too)."""
    from bnsweep.analysis.tables import build_sweep_tables, build_tables

    layout = table_layout(report, layout_kind, versus, pairwise)
    if isinstance(trials, Mapping):
        return build_sweep_tables(trials, layout, _options(options))
    return build_tables(trials, layout, _options(options))


def render_sweep_tables(
    store_url: str | None,
    sweep_name: str,
    fmt: str = "term",
    out: str | Path | None = None,
    *,
    empty_ok: bool = True,
    **options: Any,
) -> str:
    """The tables of a stored sweep, rendered as `fmt` (layout from the `report:` of the spec
    text the sweep was registered with); the rest as `tables_text`."""
    from bnsweep.store.results import load_trials, sweep_report

    _check_format(fmt)
    trials = load_trials(store_url, sweep_name)
    report = sweep_report(store_url, sweep_name)
    return tables_text(trials, report, sweep_name, fmt, out, empty_ok=empty_ok, **options)


def tables_text(
    trials: pd.DataFrame,
    report: Mapping[str, Any] | None,
    sweep_name: str,
    fmt: str = "term",
    out: str | Path | None = None,
    *,
    empty_ok: bool = True,
    **options: Any,
) -> str:
    """The tables of a sweep's trials frame with its spec's `report:` mapping, rendered as `fmt`:
    what `bnsweep launch` prints at the end, from the spec it launched.

    With `out`, also writes `<out>/<sweep>.<ext>`. `options` are `AnalysisOptions` fields
    (alpha, correction, test, ...). With `empty_ok` (what `launch` wants at the end of a sweep
    in which nothing completed) a sweep without any completed trial gives a one-line message
    instead of raising `AnalysisError`.
    """
    from bnsweep.analysis.pairing import AnalysisError

    _check_format(fmt)
    try:
        tables = tables_for(trials, report, **options)
    except AnalysisError as err:
        if not empty_ok:
            raise
        return f"sweep {sweep_name}: no tables yet ({err})"
    text = render_tables(tables, fmt, for_terminal=out is None and sys.stdout.isatty())
    if out is not None:
        log.info("wrote %s", write_tables(text, out, sweep_name, fmt))
    return text


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        from bnsweep.workers.errors import choice_error

        raise choice_error("format", fmt, FORMATS)
