"""The significance tables of the paper (Tables 1-6): `build_tables` fills the table model.

`build_tables(trials, layout, options)` turns the trials frame into `Table` objects
(analysis/table_model.py) with the rows analysis/planning.py plans; the renderers in
`bnsweep.analysis.render.formats.RENDERERS` (Markdown, LaTeX, HTML, terminal, CSV) only format that
model.

The rules (Sect. 4.3): a cell is test accuracy in percent, mean ± sample std (ddof = 1) over
the seeds with a score, two decimals. **Bold**: significantly better than BASE (or the arm
chosen with `versus`) by a one-sided paired test over the seeds (p ≤ alpha). Underline: the
highest mean in its column within its block, decided on unrounded means. BASE is the last row
of each block. With `pairwise`, every block and column also gets a matrix of the one-sided
tests of each row against each other row (Sect. 4.5: "evaluated against each other").

A diverged run counts with the score of its best validation epoch, the diverged network's own
evaluation included (the official code has no NaN check; see analysis/pairing.py); a note under
the table lists them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from bnsweep.analysis.display import display, formulation_name
from bnsweep.analysis.layout import TableLayout
from bnsweep.analysis.pairing import (
    BASE,
    Arm,
    Comparison,
    PreparedTrials,
    arm_label,
    find_arm,
    pair_arms,
    pair_prepared,
    prepare_trials,
    summarise,
)
from bnsweep.analysis.planning import LAYOUTS, BlockData, RowPlan, Summary, infer_kind
from bnsweep.analysis.stats import (
    FEWER_THAN_TWO,
    NO_COMMON_SEEDS,
    AnalysisOptions,
    CellStats,
    evaluate_comparisons,
    minimum_detectable_effect,
)
from bnsweep.analysis.table_model import Block, Cell, PairCell, PairwiseMatrix, Row, Table

log = logging.getLogger(__name__)

__all__ = ["build_tables"]


class _Footnotes:
    """Footnote texts get markers in order of first use."""

    MARKERS = ("†", "‡", "§", "¶", "‖", "#", "**", "††", "‡‡")

    def __init__(self) -> None:
        self._by_text: dict[str, str] = {}

    def mark(self, text: str) -> str:
        if text not in self._by_text:
            i = len(self._by_text)
            self._by_text[text] = self.MARKERS[i] if i < len(self.MARKERS) else f"[{i + 1}]"
        return self._by_text[text]

    def items(self) -> tuple[tuple[str, str], ...]:
        return tuple((m, t) for t, m in self._by_text.items())


def _gamma_formatter(arms: Sequence[Arm]) -> Callable[[float], str]:
    # Table 1 prints γ with two decimals (0.01 ... 1.00); finer grids fall back to %g.
    two = all(math.isclose(round(a.gamma, 2), a.gamma, abs_tol=1e-12) for a in arms)
    return (lambda g: f"{g:.2f}") if two else (lambda g: f"{g:g}")


def _summaries(prepared: PreparedTrials) -> dict[tuple[int, int], Summary]:
    s = summarise(prepared)
    return {
        (int(e), int(a)): Summary(
            int(n),
            float(m),
            float(sd),
            int(nr),
            int(nd),
            tuple(ds) if isinstance(ds, tuple) else (),
            tuple(dk) if isinstance(dk, tuple) else (),
        )
        for e, a, n, m, sd, nr, nd, ds, dk in zip(
            s["_exp"],
            s["_arm"],
            s["n"],
            s["mean"],
            s["std"],
            s["n_runs"],
            s["n_diverged"],
            s["diverged_seeds"].tolist(),
            s["diverged_scored"].tolist(),
            strict=True,
        )
    }


#: Which varying fields name a block first (Tables 3-6 label blocks by dataset, network, norm).
_BLOCK_PRIORITY = ("dataset", "arch", "input_norm")


def _block_fields(prepared: PreparedTrials, layout: TableLayout) -> tuple[str, ...]:
    """The layout's block fields, plus any other field needed so no two experiments share a
    cell. A field that only co-varies with those already chosen (the network and batch size
    that go with each dataset in Table 3) adds nothing and is left out of the label."""
    exps = prepared.experiments
    cols = [layout.columns] if layout.columns in exps else []
    chosen = [f for f in (layout.blocks or ()) if f in exps]
    rest = [f for f in prepared.experiment_fields if f not in chosen and f not in cols]
    rest.sort(
        key=lambda f: _BLOCK_PRIORITY.index(f) if f in _BLOCK_PRIORITY else len(_BLOCK_PRIORITY)
    )
    for f in rest:
        keys = chosen + cols
        splits = (
            exps.groupby(keys, dropna=False)[f].nunique(dropna=False).gt(1).any()
            if keys
            else exps[f].nunique(dropna=False) > 1
        )
        if splits:
            if layout.blocks is not None:
                log.info("blocks also split by %s, which varies within the layout's blocks", f)
            chosen.append(f)
    return tuple(chosen)


def build_tables(
    trials: pd.DataFrame, layout: TableLayout | None = None, options: AnalysisOptions | None = None
) -> list[Table]:
    """The significance tables of `trials` (one table for one layout).

    `layout.versus` tests every cell against that arm instead of BASE; `layout.pairwise` adds
    the pairwise matrices; `options.exclude_diverged` leaves diverged runs out of every score.
    Raises `AnalysisError` only when nothing can be shown (no trials, no run with a score, a
    `versus` arm that is not in the results); every other defect (no BASE, single seeds, no
    common seeds) is marked in the table.
    """
    layout = layout or TableLayout()
    options = options or AnalysisOptions()
    prepared = prepare_trials(trials, exclude_diverged=options.exclude_diverged)
    kind = layout.kind or infer_kind(prepared.arms)
    reference = find_arm(prepared.arms, layout.versus) if layout.versus is not None else BASE
    return [_build_table(prepared, layout, kind, options, reference)]


def _build_table(
    prepared: PreparedTrials,
    layout: TableLayout,
    kind: str,
    options: AnalysisOptions,
    reference: Arm = BASE,
) -> Table:
    spec = LAYOUTS[kind]
    summaries = _summaries(prepared)
    comparisons = pair_prepared(prepared, reference)
    ref_id = prepared.arms.index(reference) if reference in prepared.arms else None
    ref_name = arm_label(reference)
    exps = prepared.experiments
    block_fields = _block_fields(prepared, layout)
    col_field = layout.columns

    arms_by_exp: dict[int, list[int]] = {}
    for e, a in summaries:
        arms_by_exp.setdefault(e, []).append(a)
    arms_by_exp_t = {e: tuple(v) for e, v in arms_by_exp.items()}

    col_values = exps[col_field].map(_plain).tolist() if col_field in exps else [None] * len(exps)
    columns = tuple(sorted(set(col_values), key=display(col_field).sort_key))
    block_keys = [tuple((f, _plain(exps.at[e, f])) for f in block_fields) for e in range(len(exps))]
    by_block: dict[tuple[tuple[str, Any], ...], dict[Any, int]] = {}
    for e, (bk, cv) in enumerate(zip(block_keys, col_values, strict=True)):
        by_block.setdefault(bk, {})[cv] = e
    ordered_blocks = sorted(by_block, key=lambda bk: tuple(display(f).sort_key(v) for f, v in bk))

    gamma_format = _gamma_formatter([a for a in prepared.arms if not a.is_base])
    plans: list[tuple[tuple[tuple[str, Any], ...], list[RowPlan]]] = []
    for bk in ordered_blocks:
        data = BlockData(
            by_block[bk], arms_by_exp_t, prepared.arms, summaries, columns, layout, gamma_format
        )
        plans.append((bk, spec.plan(data)))
    considered = {a for _, a in _picks(plans)} | {
        a for _, rows in plans for r in rows for a in r.candidates
    }
    hidden = {prepared.arms[a] for _, a in summaries if a not in considered}

    # One family for the correction: every tested comparison the table shows.
    shown_pairs = sorted({p for p in _picks(plans) if p[1] != ref_id})
    tested_pairs = [p for p in shown_pairs if p in comparisons]
    results = dict(
        zip(
            tested_pairs,
            evaluate_comparisons([comparisons[p] for p in tested_pairs], options),
            strict=True,
        )
    )

    max_n = max((summaries[p].n for p in _picks(plans)), default=0)
    foot = _Footnotes()
    has_ref = {
        bk: ref_id is not None and any(ref_id in arms_by_exp_t[e] for e in by_block[bk].values())
        for bk in ordered_blocks
    }
    any_ref = any(has_ref.values())
    blocks = [
        _build_block(
            bk,
            rows,
            prepared,
            summaries,
            comparisons,
            results,
            max_n,
            foot,
            _Reference(reference, ref_name, any_ref, has_ref[bk], ref_id),
            len(columns),
        )
        for bk, rows in plans
    ]

    notes = []
    if not any_ref:
        notes.append(
            "No BASE arm (standard BN, γ = 1, c = 1) in these results: nothing to compare with, "
            "so no cell is bold."
        )
    notes.extend(_selection_notes(plans, prepared.arms))
    if hidden:
        names = ", ".join(_arm_text(a) for a in sorted(hidden))
        notes.append(f"Arms not shown by the {kind} layout: {names}.")
    notes.extend(_diverged_notes(blocks, columns, col_field, options.exclude_diverged))

    ns = sorted({s.n for s in results.values() if s.tested})
    title = layout.title or _default_title(spec.title, prepared, block_fields, col_field)
    column_labels = tuple(display(col_field).label(c) if c is not None else "" for c in columns)
    matrices = (
        _pairwise(prepared, plans, blocks, columns, column_labels, col_field, options)
        if layout.pairwise
        else ()
    )
    return Table(
        kind=kind,
        title=title,
        block_header=", ".join(display(f).header for f in block_fields),
        row_header=spec.row_header,
        column_header=display(col_field).header,
        column_field=col_field,
        columns=columns,
        column_labels=column_labels,
        blocks=tuple(blocks),
        caption=_caption(options, max_n, blocks, len(results), ref_name),
        mde=_mde_line(ns, options),
        footnotes=foot.items(),
        notes=tuple(notes),
        options=options,
        reference=ref_name,
        pairwise=matrices,
        pairwise_caption=_pairwise_caption(options) if layout.pairwise else "",
    )


def _pairwise(
    prepared: PreparedTrials,
    plans: Sequence[tuple[tuple[tuple[str, Any], ...], list[RowPlan]]],
    blocks: Sequence[Block],
    columns: Sequence[Any],
    column_labels: Sequence[str],
    col_field: str,
    options: AnalysisOptions,
) -> tuple[PairwiseMatrix, ...]:
    """Per block and column, every shown row against every other shown row (Sect. 4.5: "When
    evaluated against each other using a one-sided paired t-test"). Row i against row j is the
    one-sided test that row i is better; each matrix is one family for the correction."""
    layouts: list[tuple[Block, int, list[int], list[tuple[int, int]]]] = []
    requests: list[tuple[int, int, int]] = []
    for (_, rows), block in zip(plans, blocks, strict=True):
        for j in range(len(columns)):
            shown = [i for i, r in enumerate(rows) if r.picks[j] is not None]
            if len(shown) < 2:
                continue
            ordered = [
                (a, b)
                for a in shown
                for b in shown
                if a != b and rows[a].picks[j][1] != rows[b].picks[j][1]  # type: ignore[index]
            ]
            layouts.append((block, j, shown, ordered))
            for a, b in ordered:
                exp, arm = rows[a].picks[j]  # type: ignore[misc]
                requests.append((exp, arm, rows[b].picks[j][1]))  # type: ignore[index]
    comps = pair_arms(
        prepared, [r[0] for r in requests], [r[1] for r in requests], [r[2] for r in requests]
    )
    out = []
    k = 0
    for block, j, shown, ordered in layouts:
        mine = comps[k : k + len(ordered)]
        k += len(ordered)
        tested = dict(zip(ordered, evaluate_comparisons(mine, options), strict=True))
        by_pair = dict(zip(ordered, mine, strict=True))
        block_rows = block.rows
        labels = tuple(
            f"{block_rows[i].label} ({block_rows[i].cells[j].detail})"  # type: ignore[union-attr]
            if block_rows[i].cells[j].detail  # type: ignore[union-attr]
            else block_rows[i].label
            for i in shown
        )
        cells = tuple(
            tuple(
                PairCell(by_pair[(a, b)], tested[(a, b)]) if (a, b) in tested else None
                for b in shown
            )
            for a in shown
        )
        out.append(
            PairwiseMatrix(
                block=block.label,
                column=_column_title(col_field, columns[j]),
                column_label=column_labels[j],
                labels=labels,
                arms=tuple(block_rows[i].cells[j].arm for i in shown),  # type: ignore[union-attr]
                cells=cells,
                row_cells=tuple(block_rows[i].cells[j] for i in shown),  # type: ignore[misc]
            )
        )
    return tuple(out)


def _pairwise_caption(options: AnalysisOptions) -> str:
    level = (
        f"p ≤ {options.alpha:g}, no correction for multiple comparisons"
        if options.correction == "none"
        else f"p̃ ≤ {options.alpha:g}, p̃ Holm-adjusted across the matrix's one-sided tests "
        "(both directions of every pair count, which is conservative)"
    )
    return (
        "Pairwise matrices: the cell in row R and column C is the mean difference R − C "
        "(percentage points) over the seeds both have a score for, with the one-sided "
        f"{_TEST_NAMES[options.test]} p that R is better than C (runs matched by seed); both "
        f"directions of every pair are tested. Bold: R is significantly better than C, {level}. "
        "Untested cells give their reason in the CSV."
    )


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _picks(plans: Sequence[tuple[Any, list[RowPlan]]]) -> list[tuple[int, int]]:
    return [p for _, rows in plans for r in rows for p in r.picks if p is not None]


def _arm_text(arm: Arm) -> str:
    return f"{formulation_name(arm.formulation)} γ = {arm.gamma:g}, c = {arm.c:g}"


@dataclass(frozen=True)
class _Reference:
    """The arm a table tests against, its name, and whether the table / this block ran it."""

    arm: Arm
    name: str
    in_table: bool
    in_block: bool
    arm_id: int | None  # its id in the prepared trials (compared per cell: ids, not Arms)


def _build_block(
    key: tuple[tuple[str, Any], ...],
    plans: list[RowPlan],
    prepared: PreparedTrials,
    summaries: Mapping[tuple[int, int], Summary],
    comparisons: Mapping[tuple[int, int], Comparison],
    results: Mapping[tuple[int, int], CellStats],
    max_n: int,
    foot: _Footnotes,
    ref: _Reference,
    n_cols: int,
) -> Block:
    block_notes = []
    if ref.in_table and not ref.in_block:
        block_notes.append(
            f"No {ref.name} arm in this block: nothing to compare with, so no cell is bold."
        )

    # Underline: highest unrounded mean per column within the block, BASE included (Table 3).
    best = []
    for j in range(n_cols):
        means = [summaries[p].mean for r in plans if (p := r.picks[j]) is not None]
        finite = [m for m in means if math.isfinite(m)]
        best.append(max(finite) if finite else math.nan)

    rows = []
    for plan in plans:
        cells: list[Cell | None] = []
        for j, pick in enumerate(plan.picks):
            if pick is None:
                cells.append(None)
                continue
            s = summaries[pick]
            markers: list[str] = []
            stats = results.get(pick)
            comp = comparisons.get(pick)
            is_ref = pick[1] == ref.arm_id
            if is_ref and not ref.arm.is_base:
                markers.append(
                    foot.mark(f"the reference arm ({ref.name}): the others are tested against it")
                )
            if s.n == 0:
                markers.append(
                    foot.mark("no run with a score yet (failed, diverged or unfinished)")
                )
            elif s.n == 1:
                markers.append(foot.mark("a single seed: no std and no test"))
            if 0 < s.n < max_n:
                markers.append(
                    foot.mark(
                        f"fewer seeds with a score than the table's {max_n}: missing, failed and "
                        "unfinished runs, and diverged runs without a score, are left out "
                        "(counts in the CSV)"
                    )
                )
            if not is_ref and s.n > 0:
                if stats is None and ref.in_block:
                    markers.append(
                        foot.mark(f"no {ref.name} run in this column: nothing to compare with")
                    )
                elif stats is not None and stats.degenerate == NO_COMMON_SEEDS:
                    markers.append(foot.mark(f"no seed in common with {ref.name}: not tested"))
                elif (
                    stats is not None
                    and stats.degenerate
                    and not (s.n == 1 and stats.degenerate == FEWER_THAN_TWO)
                ):
                    markers.append(foot.mark(f"not tested: {stats.degenerate}"))
                elif stats is not None and stats.tested and stats.n < s.n:
                    markers.append(
                        foot.mark(
                            "tested on fewer seeds than shown: some lack a "
                            f"{ref.name} partner (see CSV)"
                        )
                    )
            cells.append(
                Cell(
                    arm=prepared.arms[pick[1]],
                    n=s.n,
                    mean=s.mean,
                    std=s.std,
                    significant=bool(stats is not None and stats.significant and not is_ref),
                    best=bool(math.isfinite(s.mean) and s.mean == best[j]),
                    markers=tuple(markers),
                    detail=plan.details[j],
                    stats=stats,
                    comparison=comp,
                    n_runs=s.n_runs,
                    n_diverged=s.n_diverged,
                    diverged_seeds=s.diverged_seeds,
                    diverged_scored=s.diverged_scored,
                )
            )
        rows.append(Row(plan.label, tuple(cells), plan.is_base, plan.arm))
    label = ", ".join(display(f).label(v) for f, v in key)
    return Block(label, key, tuple(rows), tuple(block_notes))


def _selection_notes(plans: Sequence[tuple[Any, list[RowPlan]]], arms: Sequence[Arm]) -> list[str]:
    """Say which γ a best-of row chose from (Tables 2 and 6), and that the choice is made on
    the same runs the test uses, which no correction here accounts for."""
    pools: dict[str, set[Arm]] = {}
    for _, rows in plans:
        for r in rows:
            if len(r.candidates) > 1:
                name = r.label.split(" (")[0]
                pools.setdefault(name, set()).update(arms[a] for a in r.candidates)
    notes = []
    for name, pool in pools.items():
        gammas = ", ".join(f"{g:g}" for g in sorted({a.gamma for a in pool}))
        cs = sorted({a.c for a in pool})
        c_text = f" (c = {', '.join(f'{c:g}' for c in cs)})"
        notes.append(
            f"{name}: in each column the γ with the highest mean among {gammas}{c_text}; the "
            "choice uses the same runs as the test and is not corrected for."
        )
    return notes


def _diverged_notes(
    blocks: Sequence[Block],
    columns: Sequence[Any],
    col_field: str,
    excluded: bool,
    limit: int = 12,
) -> list[str]:
    """Where diverged runs are: counted with their score (the default, as the official code,
    which has no NaN check, scored them), or dropped (no score stored, or excluded)."""
    scored: list[str] = []
    dropped: list[str] = []
    for b in blocks:
        for r in b.rows:
            for j, c in enumerate(r.cells):
                if c is None or not c.n_diverged:
                    continue
                arm = "BASE" if r.is_base else _arm_text(c.arm)
                where = " / ".join(
                    x for x in (b.label, arm, _column_title(col_field, columns[j])) if x
                )
                kept = set(c.diverged_scored)
                for entries, seeds in (
                    (scored, [x for x in c.diverged_seeds if x in kept]),
                    (dropped, [x for x in c.diverged_seeds if x not in kept]),
                ):
                    if seeds:
                        entries.append(
                            f"{where}: {len(seeds)} of {c.n_runs} "
                            f"(seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))})"
                        )

    def note(head: str, entries: list[str]) -> list[str]:
        if not entries:
            return []
        more = (
            f"; and {len(entries) - limit} more cells (see the CSV)" if len(entries) > limit else ""
        )
        return [head + "; ".join(entries[:limit]) + more + "."]

    dropped_head = (
        "Diverged runs left out of means and pairs (diverged runs excluded): "
        if excluded
        else "Diverged runs without a score (no test accuracy stored), left out of means and "
        "pairs: "
    )
    return note(
        "Diverged runs counted in means and pairs with the test accuracy of their best "
        "validation epoch, the diverged network's own evaluation included (as the official "
        "code, which has no NaN check, scored them; chance level when the first epoch "
        "diverged): ",
        scored,
    ) + note(dropped_head, dropped)


def _column_title(col_field: str, value: Any) -> str:
    name = "α" if col_field == "lr" else display(col_field).header
    return f"{name} = {display(col_field).label(value)}" if value is not None else name


def _default_title(
    base: str, prepared: PreparedTrials, block_fields: Sequence[str], col_field: str
) -> str:
    exps = prepared.experiments
    fixed = [
        display(f).label(_plain(exps.at[0, f]))
        for f in ("dataset", "arch")
        if f in exps and f not in block_fields and f != col_field and exps[f].nunique() == 1
    ]
    return f"{base}: {', '.join(fixed)}" if fixed else base


_TEST_NAMES = {"t": "paired t-test", "wilcoxon": "Wilcoxon signed-rank test"}
_CORRECTION_TEXT = {
    "none": "no correction for multiple comparisons",
    "holm": "Holm-adjusted across the table's {m} tests",
}


def _caption(
    options: AnalysisOptions, max_n: int, blocks: Sequence[Block], m: int, reference: str = "BASE"
) -> str:
    ns = sorted({c.n for b in blocks for r in b.rows for c in r.cells if c is not None and c.n > 0})
    n_text = f"n = {ns[0]}" if len(ns) == 1 else f"n = {ns[0]}–{ns[-1]}" if ns else "n = 0"
    return (
        "Test accuracy (%) at the epoch of best validation accuracy: mean ± sample standard "
        f"deviation (ddof = 1) over {n_text} seeds. Bold: significantly better than "
        f"{reference} by a one-sided {_TEST_NAMES[options.test]} (runs matched by seed), "
        f"p ≤ {options.alpha:g}, "
        f"{_CORRECTION_TEXT[options.correction].format(m=m)}. Underline: highest mean in its "
        "column within its block (decided before rounding)."
    )


def _mde_line(ns: Sequence[int], options: AnalysisOptions) -> str:
    head = (
        f"Minimum detectable effect ({options.power:.0%} power, one-sided paired t-test, "
        f"p ≤ {options.alpha:g}{', before correction' if options.correction != 'none' else ''})"
    )
    if not ns:
        return f"{head}: not available, no comparison could be tested."
    if len(ns) == 1:
        d = minimum_detectable_effect(ns[0], options.alpha, options.power)
        return (
            f"{head}: d_z = {d:.2f} at n = {ns[0]} pairs "
            "(d_z = mean difference / std of differences)."
        )
    lo = minimum_detectable_effect(ns[-1], options.alpha, options.power)
    hi = minimum_detectable_effect(ns[0], options.alpha, options.power)
    return (
        f"{head}: d_z = {hi:.2f} at n = {ns[0]} to {lo:.2f} at n = {ns[-1]} pairs "
        "(d_z = mean difference / std of differences)."
    )
