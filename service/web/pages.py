"""The pages, as HTML text, from the view values; the same functions serve both sites.

Each page sits in the frame of service/web/frame.py (links from a `Site`, the layout, the
live sections). Bold and underline in a table are placed exactly as `bnsweep.analysis.render`'s
renderers place them (`<strong>` = significantly better than the arm compared against,
`<u>` = highest mean in its column within its block); nothing here decides either.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from bnsweep.analysis.render.html_page import html_cell
from bnsweep.web.frame import Site, esc, layout, num, plain_table, scroll, section, time
from bnsweep.web.view import (
    COUNT_ORDER,
    Failure,
    Progress,
    RunningTrial,
    SweepOverview,
    TableQuery,
    cell_id,
)

if TYPE_CHECKING:
    import pandas as pd

    from bnsweep.analysis.table_model import Block, Cell, Row, Table
    from bnsweep.store.values import Note, SweepStatus
    from bnsweep.web.figures import SvgFigure

#: The downloads of a sweep's tables: `bnsweep tables --format F` writes the same text.
TABLE_DOWNLOADS = (("md", "md"), ("tex", "latex"), ("csv", "csv"), ("html", "html"))


# -- sweeps (the index) ------------------------------------------------------------------------


def progress_bar(progress: Progress) -> str:
    """A bar of done (completed, diverged), failed and running cells out of the total."""
    parts = []
    for name in ("completed", "diverged", "failed", "running"):
        count = getattr(progress, name)
        if count and progress.total:
            width = 100.0 * count / progress.total
            parts.append(
                f'<span class="bar-{name}" style="width:{width:.2f}%" title="{count} {name}">'
                "</span>"
            )
    label = f"{progress.done}/{progress.total} done ({progress.fraction:.0%})"
    return (
        f'<div class="bar" role="progressbar" aria-valuemin="0" aria-valuemax="{progress.total}"'
        f' aria-valuenow="{progress.done}" aria-label="{esc(label)}">{"".join(parts)}</div>'
        f'<span class="bar-label">{esc(label)}</span>'
    )


def _recipe(overview: SweepOverview) -> str:
    return "; ".join(f"{esc(k)} {esc(v)}" for k, v in overview.recipe)


def sweeps_section(site: Site, overviews: Sequence[SweepOverview]) -> str:
    if not overviews:
        return "<p>No sweeps in this store yet: `bnsweep launch SPEC` registers one.</p>"
    headers = ["sweep", "total", *COUNT_ORDER, "progress", "ETA", "last update", "recipe"]
    rows = []
    for o in overviews:
        p = o.progress
        rows.append(
            [
                f'<a href="{esc(site.page("sweeps", site.sweep(o.name)))}">{esc(o.name)}</a>',
                *(f'<span data-count="{k}">{v}</span>' for k, v in p.counts().items()),
                progress_bar(p),
                esc(p.eta_text),
                esc(time(p.last_update)),
                f'<span class="recipe">{_recipe(o)}</span>',
            ]
        )
    return plain_table(headers, rows, cls="sweeps")


def index_page(site: Site, overviews: Sequence[SweepOverview], store_url: str) -> str:
    body = f'<p class="store">Store: <code>{esc(store_url)}</code> (read-only)</p>' + section(
        "sweeps", sweeps_section(site, overviews), site
    )
    return layout(site, "Sweeps", body)


# -- a sweep: progress, its table, missing seeds and failures -------------------------------


def progress_section(overview: SweepOverview) -> str:
    p = overview.progress
    counts = " · ".join(f'<span data-count="{k}">{v}</span> {k}' for k, v in p.counts().items())
    return (
        f"<p>{progress_bar(p)}</p><p>{counts}</p>"
        f'<p>ETA: <span class="eta">{esc(p.eta_text)}</span> · last update '
        f"{esc(time(p.last_update))}</p>"
    )


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f} %"


def epoch_counter(epoch: int, epochs: int) -> str:
    """The "epoch 3 of 10" counter and a bar of it; "no epoch yet" before the first is stored."""
    text = f"epoch {epoch} of {epochs}" if epoch else f"no epoch yet (of {epochs})"
    width = 100.0 * min(epoch, epochs) / epochs if epochs else 0.0
    return (
        f'<span class="epochs" data-epoch="{epoch}" data-epochs="{epochs}">'
        f'<span class="bar small"><span class="bar-running" style="width:{width:.2f}%"></span>'
        f"</span>{esc(text)}</span>"
    )


def running_section(site: Site, name: str, running: Sequence[RunningTrial]) -> str:
    """The running cells, each with its epoch counter and its last stored epoch's metrics."""
    if not running:
        return ""
    rows = [
        [
            site.trial_link(name, r.trial_id, f"{r.arm} · seed {r.seed}"),
            epoch_counter(r.epoch, r.epochs),
            _percent(r.val_acc),
            _percent(r.test_acc),
            num(r.train_loss),
            esc(r.host),
            esc(time(r.started_at)),
        ]
        for r in running
    ]
    headers = ["running cell", "epoch", "val acc", "test acc", "train loss", "host", "started"]
    return "<h2>Running</h2>" + plain_table(headers, rows, cls="running")


def _options(name: str, values: Sequence[tuple[str, str]], selected: str) -> str:
    opts = "".join(
        f'<option value="{esc(v)}"{" selected" if v == selected else ""}>{esc(text)}</option>'
        for v, text in values
    )
    return f'<select name="{esc(name)}">{opts}</select>'


def controls(site: Site, query: TableQuery) -> str:
    """The table's controls (live site only: the static report shows the defaults)."""
    from bnsweep.analysis.planning import LAYOUTS
    from bnsweep.analysis.stats import CORRECTIONS, TESTS

    if not site.live:
        return (
            '<p class="note">One-sided paired t-test, no correction, p ≤ 0.05, the sweep\'s '
            "layout. `bnsweep dashboard` (or `bnsweep tables`) gives the other choices.</p>"
        )
    layouts = [("", "the sweep's")] + [(k, k) for k in LAYOUTS]
    return (
        '<form class="controls" method="get">'
        f"<label>test {_options('test', [(t, t) for t in TESTS], query.test)}</label> "
        f"<label>correction "
        f"{_options('correction', [(c, c) for c in CORRECTIONS], query.correction)}</label> "
        f'<label>significance level <input name="alpha" size="5" value="{query.alpha:g}">'
        "</label> "
        f"<label>layout {_options('layout', layouts, query.layout or '')}</label> "
        '<label>compared against <input name="versus" size="22" placeholder="BASE" '
        f'value="{esc(query.versus or "")}" title="an arm, e.g. BASE or standard γ=0.1 c=100">'
        "</label> "
        '<button type="submit">apply</button></form>'
    )


def downloads(site: Site, name: str, query: TableQuery) -> str:
    folder = site.sweep(name)
    links = [
        f'<a href="{esc(site.file("sweeps", folder, f"tables.{ext}", query=query.params()))}"'
        f" download>{ext}</a>"
        for ext, _ in TABLE_DOWNLOADS
    ]
    return '<p class="downloads">Download the tables: ' + " · ".join(links) + "</p>"


def table_html(site: Site, name: str, table: Table, query: TableQuery) -> str:
    """The paper's table with every cell a link to its statistics."""
    has_blocks = any(b.label for b in table.blocks)
    lead = 2 if has_blocks else 1
    parts = [
        '<table class="paper">',
        f"<caption>{esc(table.title)}</caption>",
        f'<thead><tr><th colspan="{lead}"></th><th colspan="{len(table.columns)}">'
        f"{esc(table.column_header)}</th></tr>",
    ]
    heads = ([table.block_header] if has_blocks else []) + [table.row_header]
    heads += list(table.column_labels)
    parts.append("<tr>" + "".join(f"<th>{esc(h)}</th>" for h in heads) + "</tr></thead><tbody>")
    for b, block in enumerate(table.blocks):
        for r, row in enumerate(block.rows):
            classes = [
                c for c, on in (("block-start", r == 0 and b > 0), ("base", row.is_base)) if on
            ]
            attr = f' class="{" ".join(classes)}"' if classes else ""
            lead_cells = [esc(block.label) if r == 0 else ""] if has_blocks else []
            lead_cells.append(esc(row.label))
            cells = []
            for j, cell in enumerate(row.cells):
                if cell is None:
                    cells.append('<td class="num"></td>')
                    continue
                href = site.page(
                    "sweeps", site.sweep(name), "cells", cell_id(b, r, j), query=query.params()
                )
                p = cell.stats.p if cell.stats is not None else math.nan
                cells.append(
                    f'<td class="num" data-block="{esc(block.label)}" data-row="{esc(row.label)}"'
                    f' data-column="{esc(table.column_labels[j])}"'
                    f' data-significant="{str(cell.significant).lower()}"'
                    f' data-best="{str(cell.best).lower()}" data-p="{num(p, 8)}">'
                    f'<a class="cell" href="{esc(href)}" title="{esc(cell_hover(cell, query))}">'
                    f"{html_cell(cell)}</a></td>"
                )
            parts.append(
                f"<tr{attr}>"
                + "".join(f'<th scope="row">{x}</th>' for x in lead_cells)
                + "".join(cells)
                + "</tr>"
            )
    parts.append("</tbody></table>")
    parts = [scroll("\n".join(parts))]
    parts += [f'<p class="note">{esc(x)}</p>' for x in table.notes_under()]
    return "\n".join(parts)


def cell_hover(cell: Cell, query: TableQuery) -> str:
    """What a click on a table cell shows, as its hover text: "15 seed pairs, t, p, CI and d_z
    for rbn γ=0.1 c=100 vs BASE", or the seeds of a cell that is not compared."""
    from bnsweep.analysis.pairing import arm_label

    arm = arm_label(cell.arm)
    if cell.stats is None:
        return f"the {cell.n_runs} runs of {arm} by seed (not compared)"
    statistic = "W+" if cell.stats.test == "wilcoxon" else "t"
    return (
        f"{cell.stats.n} seed pairs, {statistic}, p, CI and d_z for {arm} "
        f"vs {query.versus or 'BASE'}"
    )


def table_section(site: Site, name: str, tables: Sequence[Table] | str, query: TableQuery) -> str:
    if isinstance(tables, str):
        return f'<p class="empty">No table yet: {esc(tables)}</p>'
    return "\n".join(table_html(site, name, t, query) for t in tables) + downloads(
        site, name, query
    )


def status_section(site: Site, name: str, status: SweepStatus, failures: Sequence[Failure]) -> str:
    """`bnsweep status`'s arm table, and the failed cells with their errors."""
    from bnsweep.store.values import missing_text

    parts = ["<h2>Missing seeds</h2>"]
    arms = status.incomplete_arms
    if not arms:
        parts.append(f"<p>All {status.total} cells done.</p>")
    else:
        rows = []
        for arm in arms:
            missing = missing_text(arm)
            done = len(arm.seeds) - len(arm.missing_seeds)
            rows.append(
                [
                    esc(arm.label),
                    f"<code>{esc(arm.spec_hash)}</code>",
                    f"{done}/{len(arm.seeds)}",
                    esc(missing),
                ]
            )
        parts.append(plain_table(["arm", "spec_hash", "done", "missing seeds"], rows, cls="status"))
    parts.append("<h2>Failures</h2>")
    if not failures:
        parts.append("<p>No failed cells.</p>")
    else:
        rows = [
            [
                site.trial_link(name, f.trial_id, f"{f.arm} · seed {f.seed}"),
                str(f.attempts),
                esc(f.host),
                esc(time(f.finished_at)),
                f'<span class="error">{esc(f.error)}</span>',
                f"<code>{esc(f.traceback_at)}</code>",
            ]
            for f in failures
        ]
        parts.append(
            plain_table(
                ["cell", "attempts", "host", "failed at", "error", "full traceback"],
                rows,
                cls="failures",
            )
        )
        parts.append(
            '<p class="note">The store keeps each failure\'s last line; Ray keeps the whole '
            "traceback in the trial's folder under the sweep's storage, on the host that ran "
            "the launch (or the shared storage of a cluster).</p>"
        )
    return "\n".join(parts)


def sweep_links(site: Site, name: str) -> str:
    n = site.sweep(name)
    return (
        '<p class="links">'
        f'<a href="{esc(site.page("sweeps", n, "curves"))}">curves and figures</a> · '
        f'<a href="{esc(site.page("sweeps", n, "trials"))}">every trial</a> · '
        f'<a href="{esc(site.file("sweeps", n, "trials.csv"))}" download>trials.csv</a> · '
        f'<a href="{esc(site.file("sweeps", n, "trials.parquet"))}" download>trials.parquet</a>'
        "</p>"
    )


def _recipe_block(overview: SweepOverview) -> str:
    fixed = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in overview.recipe)
    varying = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in overview.varying)
    return (
        "<details><summary>Training recipe</summary>"
        f'<dl class="recipe">{fixed}</dl>'
        + (f'<h3>Varies</h3><dl class="recipe">{varying}</dl>' if varying else "")
        + f"<h3>Spec</h3><pre>{esc(overview.spec_text)}</pre></details>"
    )


def sweep_page(
    site: Site,
    overview: SweepOverview,
    running: Sequence[RunningTrial],
    query: TableQuery,
    tables: Sequence[Table] | str,
    status: SweepStatus,
    failures: Sequence[Failure],
    notes: Sequence[Note] = (),
) -> str:
    name = overview.name
    body = "\n".join(
        [
            section("progress", progress_section(overview), site),
            section("running", running_section(site, name, running), site),
            notes_section(notes),
            _recipe_block(overview),
            sweep_links(site, name),
            "<h2>Table</h2>",
            controls(site, query),
            section("table", table_section(site, name, tables, query), site),
            section("status", status_section(site, name, status, failures), site),
        ]
    )
    return layout(site, f"Sweep {name}", body)


def sweep_fragment(
    ident: str,
    site: Site,
    overview: SweepOverview,
    running: Sequence[RunningTrial],
    query: TableQuery,
    tables: Sequence[Table] | str,
    status: SweepStatus,
    failures: Sequence[Failure],
) -> str | None:
    """The inner HTML of one refreshable section of the sweep page (None: no such section)."""
    if ident == "progress":
        return progress_section(overview)
    if ident == "running":
        return running_section(site, overview.name, running)
    if ident == "table":
        return table_section(site, overview.name, tables, query)
    if ident == "status":
        return status_section(site, overview.name, status, failures)
    return None


# -- notes -----------------------------------------------------------------------------------


def notes_section(notes: Sequence[Note]) -> str:
    """The notes written with `bnsweep note`, newest first as the store lists them; nothing when
    there are none. Shown only: the dashboard has no route that writes."""
    if not notes:
        return ""
    items = "".join(
        f'<li class="user-note" data-note="{note.id}"><p class="note-meta">{esc(note.author)} · '
        f"{time(note.created_at)} · on {esc(note.target)}</p>"
        f'<p class="note-text">{esc(note.text)}</p></li>'
        for note in notes
    )
    return f'<section id="notes"><h2>Notes</h2><ul class="user-notes">{items}</ul></section>'


# -- a cell ----------------------------------------------------------------------------------


def cell_page(
    site: Site,
    name: str,
    table: Table,
    ident: str,
    located: tuple[Block, Row, int, Cell],
    trial_ids: Mapping[int, int],
    query: TableQuery,
    notes: Sequence[Note] = (),
) -> str:
    """The seed-by-seed pairs behind one cell and every number of its test, and its notes."""
    from bnsweep.analysis.stats import minimum_detectable_effect

    block, row, j, cell = located
    where = " / ".join(x for x in (block.label, row.label, table.column_titles[j]) if x)
    parts = [f"<p>{esc(table.title)}: <strong>{esc(where)}</strong></p>"]
    parts.append(
        f"<p>{html_cell(cell)} over n = {cell.n} seeds with a score "
        f"({cell.n_runs} runs, {cell.n_diverged} diverged)</p>"
    )
    s, comp = cell.stats, cell.comparison
    reference = query.versus or "BASE"
    if s is None and (row.is_base and not query.versus):
        parts.append("<p>This is the BASE row: the arm every other row is compared against.</p>")
    elif s is None:
        parts.append(
            f"<p>Not compared: this is the reference arm ({esc(reference)}), or it has no run "
            "in this column.</p>"
        )
    else:
        label = "W+" if s.test == "wilcoxon" else "t"
        test_name = "Wilcoxon signed-rank test" if s.test == "wilcoxon" else "t-test"
        stats_rows = [
            ("test", f"one-sided paired {test_name}, arm better than {reference}"),
            (label, num(s.statistic)),
            ("df", num(s.df)),
            ("p", num(s.p, 6)),
            ("adjusted p", f"{num(s.p_adjusted, 6)} ({table.options.correction})"),
            ("significant", f"{'yes' if cell.significant else 'no'} (p ≤ {table.options.alpha:g})"),
            ("mean difference", f"{num(s.mean_diff)} pp"),
            (f"{table.options.confidence:.0%} CI", f"[{num(s.ci_low)}, {num(s.ci_high)}] pp"),
            ("effect size d_z", num(s.effect)),
            ("n (pairs)", str(s.n)),
        ]
        if s.degenerate:
            stats_rows.append(("not tested", s.degenerate))
        if s.n >= 2:
            mde = minimum_detectable_effect(s.n, table.options.alpha, table.options.power)
            stats_rows.append(
                (
                    "minimum detectable effect",
                    f"d_z = {mde:.2f} at {table.options.power:.0%} power, n = {s.n}",
                )
            )
        parts.append(
            scroll(
                '<table class="stats">'
                + "".join(
                    f'<tr><th scope="row">{esc(k)}</th><td data-stat="{esc(k)}">{esc(v)}</td></tr>'
                    for k, v in stats_rows
                )
                + "</table>"
            )
        )
    if comp is not None:
        rows = []
        for seed, a, b in zip(comp.seeds, comp.arm_scores, comp.base_scores, strict=True):
            link = (
                site.trial_link(name, trial_ids[seed], str(seed))
                if seed in trial_ids
                else str(seed)
            )
            rows.append([link, f"{100 * a:.2f}", f"{100 * b:.2f}", f"{100 * (a - b):+.2f}"])
        parts.append("<h2>Pairs (matched by seed)</h2>")
        parts.append(
            plain_table(
                ["seed", "arm (%)", f"{reference} (%)", "difference (pp)"],
                rows,
                cls="pairs sortable",
            )
        )
        if comp.dropped:
            parts.append("<h2>Seeds dropped</h2>")
            parts.append(
                plain_table(
                    ["seed", "why"],
                    [[str(d.seed), esc(d.reason)] for d in comp.dropped],
                    cls="dropped",
                )
            )
        else:
            parts.append("<p>No seed dropped.</p>")
    parts.append(notes_section(notes))
    back = site.page("sweeps", site.sweep(name), query=query.params())
    crumbs = [(name, back)]
    return layout(site, f"Cell {where}", "\n".join(parts), crumbs)


# -- curves ---------------------------------------------------------------------------------


def curves_page(
    site: Site,
    name: str,
    curves: Sequence[SvgFigure],
    experiments: int,
    per_seed: bool,
    differences: Sequence[SvgFigure],
    others: Sequence[SvgFigure],
) -> str:
    n = site.sweep(name)
    other = "curves" if per_seed else "curves_seeds"
    switch = site.page("sweeps", n, other)
    parts = [
        "<h2>Training curves</h2>",
        f'<p><a href="{esc(switch)}">'
        + ("mean ± std only" if per_seed else "show the per-seed traces")
        + "</a></p>",
    ]
    if not curves:
        parts.append("<p>No completed run has epochs yet.</p>")
    if experiments > len(curves):
        parts.append(
            f'<p class="note">The first {len(curves)} of {experiments} experiments; '
            "trials.csv and `bnsweep query --epochs` have them all.</p>"
        )
    parts += [_figure(site, n, f) for f in curves]
    parts.append("<h2>Paired difference to BASE per γ</h2>")
    parts += [_figure(site, n, f) for f in differences] or ["<p>No tested comparison yet.</p>"]
    parts.append("<h2>Accuracy against γ, and the BN diagnostics</h2>")
    parts += [_figure(site, n, f) for f in others] or ["<p>Nothing to draw yet.</p>"]
    return layout(site, f"Curves of {name}", "\n".join(parts), [(name, site.page("sweeps", n))])


def _figure(site: Site, sweep: str, fig: SvgFigure) -> str:
    src = site.file("sweeps", sweep, "figures", f"{fig.stem}.svg")
    return (
        f'<figure><img src="{esc(src)}" alt="{esc(fig.title)}" loading="lazy">'
        f"<figcaption>{esc(fig.title)}</figcaption></figure>"
    )


# -- trials -----------------------------------------------------------------------------------


def cell_text(value: Any) -> str:
    import pandas as pd

    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, pd.Timestamp):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def trials_page(
    site: Site,
    name: str,
    frame: pd.DataFrame,
    total: int,
    shown_from: int,
    controls_html: str,
    constant: Sequence[tuple[str, str]] = (),
) -> str:
    """One page of trials in `frame`'s columns (`trial_id` first, a link to the trial), under
    the fields that have one value in every trial."""
    n = site.sweep(name)
    columns = list(frame.columns)
    rows = []
    for record in frame.itertuples(index=False):
        values = [esc(cell_text(v)) for v in record]
        values[0] = site.trial_link(name, int(record[0]), cell_text(record[0]))
        rows.append(values)
    end = shown_from + len(frame)
    same = (
        '<p class="constant"><span class="note">In every trial:</span> '
        + " · ".join(f"{esc(k)} <strong>{esc(v)}</strong>" for k, v in constant)
        + "</p>"
        if constant
        else ""
    )
    parts = [
        controls_html,
        f"<p>Trials {shown_from + 1 if len(frame) else 0}–{end} of {total} "
        f'(downloads, every column: <a href="{esc(site.file("sweeps", n, "trials.csv"))}" '
        f'download>CSV</a>, <a href="{esc(site.file("sweeps", n, "trials.parquet"))}" '
        "download>Parquet</a>). Click a column to sort; type to filter the rows shown.</p>",
        '<p><input type="search" data-filter="trials" placeholder="filter rows"></p>',
        same,
        plain_table(columns, rows, cls="trials sortable", ident="trials"),
    ]
    return layout(site, f"Trials of {name}", "\n".join(parts), [(name, site.page("sweeps", n))])


def trial_page(
    site: Site,
    name: str,
    trial: Mapping[str, Any],
    epochs: pd.DataFrame,
    diagnostics: pd.DataFrame,
    figure: SvgFigure | None,
    notes: Sequence[Note] = (),
) -> str:
    """A trial's notes, spec, result, epochs and diagnostics; the trial's part is refreshed in
    place while it runs."""
    n = site.sweep(name)
    body = trial_body(site, name, trial, epochs, diagnostics, figure)
    title = f"Trial {trial['trial_id']} (seed {trial['seed']})"
    return layout(
        site,
        title,
        notes_section(notes) + section("trial", body, site, live=trial.get("status") == "running"),
        [(name, site.page("sweeps", n)), ("trials", site.page("sweeps", n, "trials"))],
    )


def trial_body(
    site: Site,
    name: str,
    trial: Mapping[str, Any],
    epochs: pd.DataFrame,
    diagnostics: pd.DataFrame,
    figure: SvgFigure | None,
) -> str:
    """The inner HTML of a trial page (its refreshed section)."""
    from bnsweep.store.columns import SPEC_COLUMNS

    spec = "".join(
        f"<dt>{esc(c)}</dt><dd>{esc(cell_text(trial[c]))}</dd>"
        for c in ("spec_hash", "seed", *SPEC_COLUMNS)
    )
    result_names = [c for c in trial if c not in ("trial_id", "spec_hash", "seed", *SPEC_COLUMNS)]
    result = "".join(
        f"<dt>{esc(c)}</dt><dd>{esc(cell_text(trial[c]))}</dd>"
        for c in result_names
        if c != "error"
    )
    parts = []
    if trial.get("status") == "running":
        last = epochs.iloc[-1] if not epochs.empty else None
        metrics = (
            f" · val acc {_percent(_float(last['val_acc']))}"
            f" · test acc {_percent(_float(last['test_acc']))}"
            f" · train loss {num(_float(last['train_loss']))}"
            if last is not None
            else ""
        )
        reached = int(epochs["epoch"].max()) if not epochs.empty else 0
        parts.append(
            f'<p class="live">Running: {epoch_counter(reached, int(trial["epochs"]))}{metrics}</p>'
        )
    parts += [
        '<div class="columns">',
        f'<div><h2>Spec</h2><dl class="recipe">{spec}</dl></div>',
        f'<div><h2>Result, host and attempts</h2><dl class="recipe">{result}</dl></div>',
        "</div>",
    ]
    if trial.get("error"):
        parts.append(f'<h2>Error</h2><pre class="error">{esc(str(trial["error"]))}</pre>')
    parts.append("<h2>Epochs</h2>")
    if figure is not None:
        parts.append(f'<figure class="inline">{_inline_svg(figure.svg)}</figure>')
    columns = [
        "epoch",
        "train_loss",
        "val_loss",
        "val_acc",
        "test_acc",
        "epoch_lr",
        "epoch_seconds",
    ]
    parts.append(
        plain_table(
            columns,
            ([esc(cell_text(v)) for v in r] for r in epochs[columns].itertuples(index=False)),
            cls="epochs sortable",
        )
        if not epochs.empty
        else "<p>No epoch recorded.</p>"
    )
    parts.append("<h2>BN diagnostics</h2>")
    if diagnostics.empty:
        parts.append("<p>None recorded (the sweep's `diagnostics:` was off).</p>")
    else:
        columns = [
            "epoch",
            "depth",
            "layer",
            "module",
            "gamma_mean",
            "gamma_drift",
            "beta_drift",
            "outlier_fraction",
            "gradient_factor",
        ]
        parts.append(
            plain_table(
                columns,
                (
                    [esc(cell_text(v)) for v in r]
                    for r in diagnostics[columns].itertuples(index=False)
                ),
                cls="diag sortable",
            )
        )
    return "\n".join(parts)


def _float(value: Any) -> float | None:
    """A frame's value as a float, None where it is missing (NaN)."""
    return None if value is None or value != value else float(value)


_XMLNS = re.compile(r'\s+xmlns(?::\w+)?="[^"]*"')


def _inline_svg(svg: str) -> str:
    """An SVG document as an element inside HTML: without its XML prolog, doctype and namespace
    declarations (HTML's parser puts `<svg>` and `xlink:href` in their namespaces itself)."""
    start = svg.find("<svg")
    return _XMLNS.sub("", svg[start:]) if start >= 0 else ""


# -- errors ---------------------------------------------------------------------------------


def error_page(site: Site, title: str, message: str) -> str:
    return layout(site, title, f'<p class="error-message">{esc(message)}</p>')
