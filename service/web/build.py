"""Each page, download and API answer from a `Snapshot`: the one place both sites call.

The static report writes what these return to files; the dashboard returns them from routes.
Everything is cached under the snapshot's fingerprint, so a second request for a page of an
unchanged store costs one fingerprint read.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from bnsweep.web import pages
from bnsweep.web.figures import (
    SvgFigure,
    analysis_figures,
    curve_figures,
    difference_figures,
    trial_figure,
)
from bnsweep.web.frame import Site, esc
from bnsweep.web.view import (
    BadRequest,
    NotFound,
    Snapshot,
    TableQuery,
    TrialFilter,
    cell_trials,
    find_cell,
    records,
    report_of,
)

if TYPE_CHECKING:
    import pandas as pd

    from bnsweep.analysis.table_model import Table

#: Rows of the trials page per screen on the live site (the static page shows up to
#: STATIC_TRIAL_ROWS; the CSV and Parquet downloads have every row).
TRIALS_PER_PAGE = 200
STATIC_TRIAL_ROWS = 5000
#: The static report draws a trial page's figure only for sweeps up to this many trial pages
#: (each figure costs ~0.1 s; the epochs table is on every page).
STATIC_TRIAL_FIGURES = 50
#: Download name → (renderer of `bnsweep.analysis.render.formats`, media type).
TABLE_FORMATS: dict[str, tuple[str, str]] = {
    "md": ("md", "text/markdown; charset=utf-8"),
    "tex": ("latex", "application/x-tex; charset=utf-8"),
    "csv": ("csv", "text/csv; charset=utf-8"),
    "html": ("html", "text/html; charset=utf-8"),
}


def tables_or_reason(snap: Snapshot, name: str, query: TableQuery) -> list[Table] | str:
    """The sweep's tables, or why there are none yet (no completed trial)."""
    from bnsweep.analysis.pairing import AnalysisError

    try:
        return snap.tables(name, query)
    except AnalysisError as err:
        if query.versus:
            try:  # a table against BASE exists: then the chosen arm is what is wrong
                snap.tables(name, replace(query, versus=None))
            except AnalysisError:
                return str(err)
            raise BadRequest(str(err)) from None
        return str(err)


def index(snap: Snapshot, site: Site, fragment: str | None = None) -> str:
    overviews = snap.overviews()
    if fragment == "sweeps":
        return pages.sweeps_section(site, overviews)
    if fragment is not None:
        raise NotFound(f"no section {fragment!r} on this page; it has: sweeps")
    return pages.index_page(site, overviews, snap.store.url)


def sweep(
    snap: Snapshot, site: Site, name: str, query: TableQuery, fragment: str | None = None
) -> str:
    overview = snap.overview(name)
    parts = (
        overview,
        snap.running(name),
        query,
        tables_or_reason(snap, name, query),
        snap.status(name),
        snap.failures(name),
    )
    if fragment is not None:
        text = pages.sweep_fragment(fragment, site, *parts)
        if text is None:
            raise NotFound(
                f"no section {fragment!r} on this page; it has: progress, running, table, status"
            )
        return text
    # The sweep's own notes and its cells'; a trial's notes are on the trial's page.
    notes = [note for note in snap.notes(name) if note.trial_id is None]
    return pages.sweep_page(site, *parts, notes=notes)


def _one_table(snap: Snapshot, name: str, query: TableQuery) -> Table:
    tables = tables_or_reason(snap, name, query)
    if isinstance(tables, str):
        raise NotFound(f"sweep {name}: no table yet ({tables})")
    return tables[0]


def cell(snap: Snapshot, site: Site, name: str, ident: str, query: TableQuery) -> str:
    table = _one_table(snap, name, query)
    located = find_cell(table, ident)
    block, _, j, found = located
    trials = cell_trials(snap.results(name), found, block, table.column_field, table.columns[j])
    ids = {int(s): int(t) for s, t in zip(trials["seed"], trials["trial_id"], strict=True)}
    notes = snap.notes(name, spec_hashes=trials["spec_hash"])
    return pages.cell_page(site, name, table, ident, located, ids, query, notes)


def cell_ids(table: Table) -> list[str]:
    from bnsweep.web.view import cell_id

    return [
        cell_id(b, r, j)
        for b, block in enumerate(table.blocks)
        for r, row in enumerate(block.rows)
        for j, c in enumerate(row.cells)
        if c is not None
    ]


def figures(snap: Snapshot, name: str) -> dict[str, SvgFigure]:
    """Every figure of the sweep's curves pages, by file stem."""

    def build() -> dict[str, SvgFigure]:
        from bnsweep.analysis.layout import TableLayout

        trials, epochs = snap.results(name), snap.epochs(name, results=True)
        layout = TableLayout.from_dict(report_of(snap.overview(name).spec_text))
        out: list[SvgFigure] = []
        for per_seed in (False, True):
            out += curve_figures(epochs, trials, per_seed)[0]
        out += _difference(snap, name, layout)
        out += analysis_figures(trials, snap.diagnostics(name, results=True), layout)
        return {f.stem: f for f in out}

    return snap.page(("figures", name), build)


def _difference(snap: Snapshot, name: str, layout: Any) -> list[SvgFigure]:
    from bnsweep.analysis.pairing import AnalysisError
    from bnsweep.analysis.tables import build_tables

    try:
        # The gamma layout: one point per γ, whichever table the sweep itself shows.
        table = build_tables(snap.results(name), replace(layout, kind="gamma"))[0]
    except AnalysisError:
        return []
    return difference_figures(table)


def curves(snap: Snapshot, site: Site, name: str, per_seed: bool) -> str:
    snap.overview(name)
    found = figures(snap, name)
    curves_list, experiments = _curve_list(snap, name, per_seed, found)
    differences = [f for s, f in found.items() if s.startswith("difference_")]
    others = [f for s, f in found.items() if not s.startswith(("difference_", "curves_"))]
    return pages.curves_page(site, name, curves_list, experiments, per_seed, differences, others)


def _curve_list(
    snap: Snapshot, name: str, per_seed: bool, found: dict[str, SvgFigure]
) -> tuple[list[SvgFigure], int]:
    listed = [
        f for s, f in found.items() if s.startswith("curves_") and s.endswith("_seeds") == per_seed
    ]
    epochs, trials = snap.epochs(name, results=True), snap.results(name)

    def count() -> int:
        from bnsweep.workers.spec import EXPERIMENT_FIELDS

        done = trials[trials["status"].astype(str) == "completed"]
        merged = epochs.merge(done[["spec_hash", "seed"]], on=["spec_hash", "seed"])
        if merged.empty:
            return 0
        varying = [f for f in EXPERIMENT_FIELDS if f in merged and merged[f].nunique() > 1]
        return int(merged.groupby(varying).ngroups) if varying else 1

    return listed, snap.page(("experiments", name), count)


def trials_frame(
    snap: Snapshot, name: str, where: TrialFilter, sort: str | None, descending: bool
) -> pd.DataFrame:
    """The sweep's trials that `where` keeps (the store's filter, as `bnsweep query --where`
    applies it), sorted by `sort`."""
    frame = snap.trials(name, where)
    if sort:
        if sort not in frame.columns:
            raise BadRequest(f"sort: unknown column {sort!r}; allowed: {', '.join(frame.columns)}")
        frame = frame.sort_values(sort, ascending=not descending, kind="stable")
    return frame


def trials(
    snap: Snapshot,
    site: Site,
    name: str,
    where: TrialFilter | None = None,
    sort: str | None = None,
    descending: bool = False,
    page: int = 1,
    per_page: int = TRIALS_PER_PAGE,
    columns: Sequence[str] = (),
) -> str:
    """The trials page: the chosen columns (default: the spec fields that vary and the
    results), the fields with one value in every row shown above the table, one page of rows."""
    where = where or TrialFilter()
    check_paging(page, per_page)
    frame = trials_frame(snap, name, where, sort, descending)
    chosen = choose_columns(frame, columns)
    constant = constant_fields(frame, chosen)
    total = len(frame)
    if site.live:
        last = max(1, math.ceil(total / per_page))
        page = min(page, last)
        start = (page - 1) * per_page
        shown = frame.iloc[start : start + per_page]
        state = TrialsState(where, sort, descending, page, per_page, tuple(columns))
        html = _trials_controls(site, name, frame.columns, chosen, state, last)
    else:
        start, shown = 0, frame.iloc[:STATIC_TRIAL_ROWS]
        html = (
            f'<p class="note">The first {len(shown)} of {total} trials; the downloads have all.</p>'
            if total > len(shown)
            else ""
        )
    return pages.trials_page(site, name, shown[chosen], total, start, html, constant)


#: The trials page's columns when none are chosen, in this order, after the spec fields that
#: vary: the results first, then where and when the trial ran.
RESULT_LEAD = (
    "status",
    "test_acc",
    "best_val_acc",
    "final_test_acc",
    "best_epoch",
    "epochs_run",
    "diverged_epoch",
    "seconds",
    "images_per_sec",
    "attempts",
    "host",
    "finished_at",
)
#: `per_page` runs from 1 to this.
MAX_PER_PAGE = 1000


def check_paging(page: int, per_page: int) -> None:
    if page < 1:
        raise BadRequest(f"page: expected an integer >= 1, got {page}")
    if not 1 <= per_page <= MAX_PER_PAGE:
        raise BadRequest(f"per_page: expected an integer from 1 to {MAX_PER_PAGE}, got {per_page}")


def split_columns(values: Sequence[str]) -> tuple[str, ...]:
    """`?columns=a,b&columns=c` (the chooser's checkboxes, or a link's one list) → (a, b, c)."""
    return tuple(c.strip() for v in values for c in v.split(",") if c.strip())


def choose_columns(frame: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    """The columns asked for, in the frame's order; none asked: the spec fields with more than
    one value among these trials, the seed and the results (`RESULT_LEAD`), leaving out those
    with one value in every row. `trial_id` always leads: it links to the trial's page."""
    from bnsweep.store.columns import SPEC_COLUMNS

    listed = [c for c in frame.columns if c != "error"]
    if columns:
        unknown = [c for c in columns if c not in listed]
        if unknown:
            raise BadRequest(
                f"columns: unknown column {unknown[0]!r}; allowed: {', '.join(listed)}"
            )
        return ["trial_id", *(c for c in listed if c in columns and c != "trial_id")]
    varying = [c for c in (*SPEC_COLUMNS, "seed") if _varies(frame, c)]
    results = [c for c in RESULT_LEAD if _varies(frame, c)]
    return ["trial_id", *varying, *results]


def _varies(frame: pd.DataFrame, column: str) -> bool:
    return len(frame) < 2 or frame[column].nunique(dropna=False) > 1


def constant_fields(frame: pd.DataFrame, shown: Sequence[str]) -> list[tuple[str, str]]:
    """The spec fields and results not shown that have one value in every row: one line above
    the table instead of a column that repeats it."""
    from bnsweep.store.columns import SPEC_COLUMNS

    if frame.empty:
        return []
    out = []
    for column in ("spec_hash", *SPEC_COLUMNS, "seed", *RESULT_LEAD):
        if column not in shown and not _varies(frame, column):
            out.append((column, pages.cell_text(frame[column].iloc[0]) or "–"))
    return out


@dataclass(frozen=True)
class TrialsState:
    """What the trials page's URL holds, for the links that keep it (paging, the form)."""

    where: TrialFilter
    sort: str | None
    descending: bool
    page: int
    per_page: int
    columns: tuple[str, ...]  # as chosen; () for the default

    def params(self, **changes: Any) -> dict[str, str]:
        state = replace(self, **changes)
        query = {
            "where": state.where.text,
            "sort": state.sort or "",
            "desc": "1" if state.descending else "",
            "columns": ",".join(state.columns),
            "page": str(state.page) if state.page > 1 else "",
            "per_page": str(state.per_page) if state.per_page != TRIALS_PER_PAGE else "",
        }
        return {k: v for k, v in query.items() if v}


def _trials_controls(
    site: Site,
    name: str,
    every: Sequence[str],
    chosen: Sequence[str],
    state: TrialsState,
    last: int,
) -> str:
    filters = state.where.text  # as typed: the box and the links keep the user's own words
    options = "".join(
        f'<option value="{esc(c)}"{" selected" if c == state.sort else ""}>{esc(c)}</option>'
        for c in ["", *every]
    )
    boxes = "".join(
        f'<label><input type="checkbox" name="columns" value="{esc(c)}"'
        f"{' checked' if c in chosen else ''}> {esc(c)}</label>"
        for c in every
        if c not in ("trial_id", "error")
    )
    nav = []
    path = ("sweeps", site.sweep(name), "trials")
    if state.page > 1:
        back = state.params(page=state.page - 1)
        nav.append(f'<a rel="prev" href="{esc(site.page(*path, query=back))}">previous</a>')
    nav.append(f"page {state.page} of {last}")
    if state.page < last:
        ahead = state.params(page=state.page + 1)
        nav.append(f'<a rel="next" href="{esc(site.page(*path, query=ahead))}">next</a>')
    default = state.params(columns=())
    reset = f' · <a href="{esc(site.page(*path, query=default))}">default columns</a>'
    return (
        '<form class="controls" method="get">'
        f'<label>where <input name="where" size="40" value="{esc(filters)}" '
        'placeholder="status=completed test_acc&gt;0.9" '
        'title="bnsweep query --where items: FIELD=VALUE, or FIELD&gt;VALUE '
        '(&gt;=, &lt;, &lt;=, !=)">'
        "</label> "
        f'<label>sort by <select name="sort">{options}</select></label> '
        f'<label><input type="checkbox" name="desc" value="1"'
        f"{' checked' if state.descending else ''}> descending</label> "
        f'<label>per page <input name="per_page" size="4" value="{state.per_page}"></label> '
        '<button type="submit">apply</button>'
        f'<details class="chooser"><summary>columns ({len(chosen) - 1} of {len(every) - 2})'
        f"</summary><p>{boxes}</p>"
        '<p><button type="submit">show these columns</button></p></details>'
        "</form>" + f'<p class="paging">{" · ".join(nav)}{reset}</p>'
    )


def parse_where(text: str) -> TrialFilter:
    """`status=failed test_acc>0.9 host="node 1"`: `bnsweep query`'s `--where` items, split as a
    shell splits words; a bad one is a BadRequest with the CLI's message."""
    return TrialFilter.parse(text)


def trial(
    snap: Snapshot,
    site: Site,
    name: str,
    trial_id: int,
    figure: bool = True,
    fragment: str | None = None,
) -> str:
    frame = snap.trials(name)
    rows = frame[frame["trial_id"] == trial_id]
    if rows.empty:
        raise NotFound(f"no trial {trial_id} in sweep {name!r}")
    record = records(rows)[0]
    epochs = snap.epochs(name)
    epochs = epochs[epochs["trial_id"] == trial_id]
    diagnostics = snap.diagnostics(name)
    diagnostics = diagnostics[diagnostics["trial_id"] == trial_id]
    drawn = trial_figure(epochs) if figure else None
    if fragment == "trial":
        return pages.trial_body(site, name, record, epochs, diagnostics, drawn)
    if fragment is not None:
        raise NotFound(f"no section {fragment!r} on this page; it has: trial")
    notes = snap.notes(name, trial_id=trial_id)
    return pages.trial_page(site, name, record, epochs, diagnostics, drawn, notes)


# -- downloads and the JSON API ---------------------------------------------------------------


def table_download(snap: Snapshot, name: str, query: TableQuery, ext: str) -> tuple[str, str]:
    """(text, media type) of `bnsweep tables --format F` for this sweep and these options."""
    from bnsweep.analysis.render.formats import render

    if ext not in TABLE_FORMATS:
        raise NotFound(f"no table format {ext!r}; allowed: {', '.join(TABLE_FORMATS)}")
    fmt, media = TABLE_FORMATS[ext]
    tables = tables_or_reason(snap, name, query)
    if isinstance(tables, str):
        raise NotFound(f"sweep {name}: no table yet ({tables})")
    return render(tables, fmt), media


def trials_csv(snap: Snapshot, name: str) -> str:
    return snap.trials(name).to_csv(index=False)


def trials_parquet(snap: Snapshot, name: str) -> bytes:
    buf = io.BytesIO()
    snap.trials(name).to_parquet(buf, index=False)
    return buf.getvalue()


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def api_sweeps(snap: Snapshot) -> list[dict[str, Any]]:
    return [
        {
            "name": o.name,
            **o.progress.counts(),
            "done": o.progress.done,
            "eta_seconds": o.progress.eta_seconds,
            "eta": o.progress.eta_text,
            "last_update": _jsonable(o.progress.last_update),
            "created_at": _jsonable(o.created_at),
            "updated_at": _jsonable(o.updated_at),
            "recipe": dict(o.recipe),
        }
        for o in snap.overviews()
    ]


def api_status(snap: Snapshot, name: str) -> dict[str, Any]:
    s = snap.status(name)
    return {
        "name": s.name,
        "total": s.total,
        **{k: getattr(s, k) for k in ("completed", "running", "failed", "diverged", "pending")},
        "arms": [
            {
                "spec_hash": a.spec_hash,
                "label": a.label,
                "seeds": list(a.seeds),
                "missing_seeds": list(a.missing_seeds),
                "failed_seeds": list(a.failed_seeds),
                "running_seeds": list(a.running_seeds),
            }
            for a in s.arms
        ],
        "failures": [
            {
                "trial_id": f.trial_id,
                "spec_hash": f.spec_hash,
                "seed": f.seed,
                "error": f.error,
                "traceback_at": f.traceback_at,
            }
            for f in snap.failures(name)
        ],
    }


def api_trials(snap: Snapshot, name: str, where: TrialFilter) -> str:
    """Every trial column, as a JSON array of objects (times ISO 8601 UTC, missing = null)."""
    frame = trials_frame(snap, name, where, None, False)
    return frame.to_json(orient="records", date_format="iso")


def api_tables(snap: Snapshot, name: str, query: TableQuery) -> list[dict[str, Any]]:
    """The CSV's rows as objects with the CSV's columns; numbers as numbers, empty as null."""
    text, _ = table_download(snap, name, query, "csv")
    rows = []
    for record in csv.DictReader(io.StringIO(text)):
        rows.append({k: _typed(k, v) for k, v in record.items()})
    return rows


_TEXT_COLUMNS = {"table", "block", "row", "column", "formulation", "test", "not_tested", "dropped"}


def _typed(column: str, value: str) -> Any:
    if column in _TEXT_COLUMNS:
        return value
    if value == "":
        return None
    if value in ("true", "false"):
        return value == "true"
    try:
        number = float(value)
    except ValueError:
        return value
    return int(number) if number.is_integer() and column in ("n", "n_pairs", "diverged") else number


def json_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False, default=str)
