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

import contextlib
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from bnsweep.analysis.display import display, formulation_name
from bnsweep.analysis.layout import TableLayout
from bnsweep.analysis.pairing import (
    BASE,
    AnalysisError,
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
from bnsweep.analysis.planning import (
    LAYOUTS,
    BlockData,
    LayoutKind,
    RowPlan,
    Summary,
    infer_kind,
)
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

__all__ = ["build_sweep_tables", "build_tables", "layout_with"]


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
    return [_build_table(prepared, layout, kind, options, _reference_arm(prepared, layout))]


def build_sweep_tables(
    frames: Mapping[str, pd.DataFrame],
    layout: TableLayout | None = None,
    options: AnalysisOptions | None = None,
) -> list[Table]:
    """Sweeps side by side: one table per sweep of `frames` (sweep name → trials frame), in
    the mapping's order, every one drawn with the same layout and titled with its sweep's name.

    The layout kind, when `layout` leaves it open, is inferred once from the arms of every
    sweep, so the tables share their rows. Each sweep's cells are tested against that sweep's
    own reference runs: seeds are paired within a sweep, never across two. Raises
    `AnalysisError` naming the sweep that cannot be tabulated (or `versus` arm it lacks).
    """
    if not frames:
        raise AnalysisError("no sweeps to compare: give at least one sweep name → trials frame")
    layout = layout or TableLayout()
    options = options or AnalysisOptions()
    prepared: dict[str, PreparedTrials] = {}
    for name, trials in frames.items():
        if not isinstance(trials, pd.DataFrame):
            raise AnalysisError(
                f"sweep {name}: expected a trials DataFrame, got {type(trials).__name__}"
            )
        with _naming_sweep(name):
            prepared[name] = prepare_trials(trials, exclude_diverged=options.exclude_diverged)
    kind = layout.kind or infer_kind([a for p in prepared.values() for a in p.arms])
    out = []
    for name, p in prepared.items():
        with _naming_sweep(name):
            table = _build_table(p, layout, kind, options, _reference_arm(p, layout))
        out.append(replace(table, title=f"{name}: {table.title}"))
    return out


@contextlib.contextmanager
def _naming_sweep(name: str) -> Iterator[None]:
    """An `AnalysisError` inside says which sweep it is about."""
    try:
        yield
    except AnalysisError as err:
        raise AnalysisError(f"sweep {name}: {err}") from err


def layout_with(
    layout: TableLayout | Mapping[str, Any] | None,
    *,
    kind: str | None = None,
    versus: str | None = None,
    pairwise: bool | None = None,
) -> TableLayout:
    """`layout` (or a sweep spec's `report:` mapping) with the choices made when the tables are
    asked for: `bnsweep tables --layout/--versus/--pairwise` and `bnsweep.tables(versus=...,
    pairwise=...)` both come here. None leaves the layout's own choice."""
    if not isinstance(layout, TableLayout):
        layout = TableLayout.from_dict(layout)
    changes: dict[str, Any] = {
        k: v
        for k, v in (("kind", kind), ("versus", versus), ("pairwise", pairwise))
        if v is not None
    }
    return replace(layout, **changes) if changes else layout


def _reference_arm(prepared: PreparedTrials, layout: TableLayout) -> Arm:
    """The arm every cell is tested against: `layout.versus`, else BASE."""
    return find_arm(prepared.arms, layout.versus) if layout.versus is not None else BASE


#: (experiment id, arm id) in the prepared trials: one cell of the table.
Pick = tuple[int, int]
#: ((field, value), ...): the experiment fields a block shares.
BlockKey = tuple[tuple[str, Any], ...]


@dataclass(frozen=True)
class _Grid:
    """Where every experiment sits: its block (by `block_fields`) and its column value."""

    block_fields: tuple[str, ...]
    column_field: str
    columns: tuple[Any, ...]  # column values, in display order
    blocks: tuple[BlockKey, ...]  # block keys, in display order
    exp_by_block: Mapping[BlockKey, Mapping[Any, int]]  # block → column value → experiment id

    @property
    def column_labels(self) -> tuple[str, ...]:
        shown = display(self.column_field)
        return tuple(shown.label(c) if c is not None else "" for c in self.columns)


@dataclass(frozen=True)
class _BlockPlan:
    """One block's key and the rows the layout planned for it."""

    key: BlockKey
    rows: tuple[RowPlan, ...]


@dataclass(frozen=True)
class _Reference:
    """The arm a table tests against, its name, and whether the table / this block ran it."""

    arm: Arm
    name: str
    in_table: bool
    in_block: bool
    arm_id: int | None  # its id in the prepared trials (compared per cell: ids, not Arms)


@dataclass(frozen=True)
class _Scores:
    """What each cell of one table reads: its summary, its comparison with the reference and
    that comparison's test (absent where not tested), and the table's largest n."""

    arms: tuple[Arm, ...]
    summaries: Mapping[Pick, Summary]
    comparisons: Mapping[Pick, Comparison]
    results: Mapping[Pick, CellStats]
    max_n: int


def _build_table(
    prepared: PreparedTrials,
    layout: TableLayout,
    kind: str,
    options: AnalysisOptions,
    reference: Arm = BASE,
) -> Table:
    spec = LAYOUTS[kind]
    summaries = _summaries(prepared)
    arms_by_exp = _arms_by_experiment(summaries)
    grid = _grid(prepared, layout)
    plans = _plan_blocks(spec, grid, prepared, summaries, arms_by_exp, layout)
    ref_id = prepared.arms.index(reference) if reference in prepared.arms else None
    ref_name = arm_label(reference)
    comparisons = pair_prepared(prepared, reference)
    results = _test_shown(plans, comparisons, ref_id, options)
    scores = _Scores(
        prepared.arms,
        summaries,
        comparisons,
        results,
        max_n=max((summaries[p].n for p in _picks(plans)), default=0),
    )
    has_ref = {
        bk: ref_id is not None and any(ref_id in arms_by_exp[e] for e in by_col.values())
        for bk, by_col in grid.exp_by_block.items()
    }
    any_ref = any(has_ref.values())
    foot = _Footnotes()
    blocks = [
        _build_block(
            plan,
            scores,
            foot,
            _Reference(reference, ref_name, any_ref, has_ref[plan.key], ref_id),
            len(grid.columns),
        )
        for plan in plans
    ]
    column_labels = grid.column_labels
    return Table(
        kind=kind,
        title=layout.title
        or _default_title(spec.title, prepared, grid.block_fields, grid.column_field),
        block_header=", ".join(display(f).header for f in grid.block_fields),
        row_header=spec.row_header,
        column_header=display(grid.column_field).header,
        column_field=grid.column_field,
        columns=grid.columns,
        column_labels=column_labels,
        blocks=tuple(blocks),
        caption=_caption(options, scores.max_n, blocks, len(results), ref_name),
        mde=_mde_line(sorted({s.n for s in results.values() if s.tested}), options),
        footnotes=foot.items(),
        notes=tuple(_table_notes(kind, plans, prepared, summaries, blocks, grid, options, any_ref)),
        options=options,
        reference=ref_name,
        pairwise=(
            _pairwise(prepared, plans, blocks, grid, column_labels, options)
            if layout.pairwise
            else ()
        ),
        pairwise_caption=_pairwise_caption(options) if layout.pairwise else "",
    )


def _arms_by_experiment(summaries: Mapping[Pick, Summary]) -> dict[int, tuple[int, ...]]:
    """Experiment id → the arm ids that ran in it, in the summaries' order."""
    arms: dict[int, list[int]] = {}
    for e, a in summaries:
        arms.setdefault(e, []).append(a)
    return {e: tuple(v) for e, v in arms.items()}


def _grid(prepared: PreparedTrials, layout: TableLayout) -> _Grid:
    """The column values and blocks of the table, each in display order."""
    exps = prepared.experiments
    block_fields = _block_fields(prepared, layout)
    col_field = layout.columns
    col_values = exps[col_field].map(_plain).tolist() if col_field in exps else [None] * len(exps)
    columns = tuple(sorted(set(col_values), key=display(col_field).sort_key))
    block_keys = [tuple((f, _plain(exps.at[e, f])) for f in block_fields) for e in range(len(exps))]
    exp_by_block: dict[BlockKey, dict[Any, int]] = {}
    for e, (bk, cv) in enumerate(zip(block_keys, col_values, strict=True)):
        exp_by_block.setdefault(bk, {})[cv] = e
    ordered = sorted(exp_by_block, key=lambda bk: tuple(display(f).sort_key(v) for f, v in bk))
    return _Grid(block_fields, col_field, columns, tuple(ordered), exp_by_block)


def _plan_blocks(
    spec: LayoutKind,
    grid: _Grid,
    prepared: PreparedTrials,
    summaries: Mapping[Pick, Summary],
    arms_by_exp: Mapping[int, tuple[int, ...]],
    layout: TableLayout,
) -> list[_BlockPlan]:
    """Each block's rows, as the layout plans them (analysis/planning.py)."""
    gamma_format = _gamma_formatter([a for a in prepared.arms if not a.is_base])
    return [
        _BlockPlan(
            bk,
            tuple(
                spec.plan(
                    BlockData(
                        grid.exp_by_block[bk],
                        arms_by_exp,
                        prepared.arms,
                        summaries,
                        grid.columns,
                        layout,
                        gamma_format,
                    )
                )
            ),
        )
        for bk in grid.blocks
    ]


def _test_shown(
    plans: Sequence[_BlockPlan],
    comparisons: Mapping[Pick, Comparison],
    ref_id: int | None,
    options: AnalysisOptions,
) -> dict[Pick, CellStats]:
    """The test of every shown cell against the reference, corrected as one family: every
    tested comparison the table shows."""
    shown_pairs = sorted({p for p in _picks(plans) if p[1] != ref_id})
    tested_pairs = [p for p in shown_pairs if p in comparisons]
    stats = evaluate_comparisons([comparisons[p] for p in tested_pairs], options)
    return dict(zip(tested_pairs, stats, strict=True))


def _table_notes(
    kind: str,
    plans: Sequence[_BlockPlan],
    prepared: PreparedTrials,
    summaries: Mapping[Pick, Summary],
    blocks: Sequence[Block],
    grid: _Grid,
    options: AnalysisOptions,
    any_ref: bool,
) -> list[str]:
    """The notes under the table: no reference, the best-of rows' choices, arms the layout
    leaves out, diverged runs."""
    notes = []
    if not any_ref:
        notes.append(
            "No BASE arm (standard BN, γ = 1, c = 1) in these results: nothing to compare with, "
            "so no cell is bold."
        )
    notes.extend(_selection_notes(plans, prepared.arms))
    considered = {a for _, a in _picks(plans)} | {
        a for plan in plans for r in plan.rows for a in r.candidates
    }
    hidden = {prepared.arms[a] for _, a in summaries if a not in considered}
    if hidden:
        names = ", ".join(_arm_text(a) for a in sorted(hidden))
        notes.append(f"Arms not shown by the {kind} layout: {names}.")
    notes.extend(_diverged_notes(blocks, grid.columns, grid.column_field, options.exclude_diverged))
    return notes


@dataclass(frozen=True)
class _Shown:
    """One shown row of a block in one column: its index in the block, pick and cell."""

    index: int
    pick: Pick
    cell: Cell
    label: str


def _shown_rows(plan: _BlockPlan, block: Block, j: int) -> list[_Shown]:
    """The rows of `block` with a cell in column `j`."""
    return [
        _Shown(i, pick, cell, row.label)
        for i, (planned, row) in enumerate(zip(plan.rows, block.rows, strict=True))
        if (pick := planned.picks[j]) is not None and (cell := row.cells[j]) is not None
    ]


@dataclass(frozen=True)
class _MatrixPlan:
    """One pairwise matrix to fill: its block and column, its rows, and the ordered pairs of
    rows with different arms (indices into `shown`), row first."""

    block: Block
    column: int
    shown: tuple[_Shown, ...]
    ordered: tuple[tuple[int, int], ...]


def _matrix_plans(
    plans: Sequence[_BlockPlan], blocks: Sequence[Block], n_cols: int
) -> list[_MatrixPlan]:
    """Every block and column with at least two shown rows: the pairs its matrix tests."""
    out = []
    for plan, block in zip(plans, blocks, strict=True):
        for j in range(n_cols):
            shown = _shown_rows(plan, block, j)
            if len(shown) < 2:
                continue
            ordered = tuple(
                (a, b)
                for a in range(len(shown))
                for b in range(len(shown))
                if a != b and shown[a].pick[1] != shown[b].pick[1]
            )
            out.append(_MatrixPlan(block, j, tuple(shown), ordered))
    return out


def _pairwise(
    prepared: PreparedTrials,
    plans: Sequence[_BlockPlan],
    blocks: Sequence[Block],
    grid: _Grid,
    column_labels: Sequence[str],
    options: AnalysisOptions,
) -> tuple[PairwiseMatrix, ...]:
    """Per block and column, every shown row against every other shown row (Sect. 4.5: "When
    evaluated against each other using a one-sided paired t-test"). Row i against row j is the
    one-sided test that row i is better; each matrix is one family for the correction."""
    matrices = _matrix_plans(plans, blocks, len(grid.columns))
    # One pairing pass for every matrix: pairing per matrix costs a merge each.
    requests = [(m.shown[a].pick, m.shown[b].pick[1]) for m in matrices for a, b in m.ordered]
    comps = pair_arms(
        prepared,
        [pick[0] for pick, _ in requests],
        [pick[1] for pick, _ in requests],
        [other for _, other in requests],
    )
    out = []
    k = 0
    for m in matrices:
        mine = comps[k : k + len(m.ordered)]
        k += len(m.ordered)
        out.append(_matrix(m, mine, grid, column_labels, options))
    return tuple(out)


def _matrix(
    m: _MatrixPlan,
    comparisons: Sequence[Comparison],
    grid: _Grid,
    column_labels: Sequence[str],
    options: AnalysisOptions,
) -> PairwiseMatrix:
    """One pairwise matrix from its plan and the comparisons of its ordered pairs."""
    tested = dict(zip(m.ordered, evaluate_comparisons(comparisons, options), strict=True))
    by_pair = dict(zip(m.ordered, comparisons, strict=True))
    n = len(m.shown)
    cells = tuple(
        tuple(
            PairCell(by_pair[(a, b)], tested[(a, b)]) if (a, b) in tested else None
            for b in range(n)
        )
        for a in range(n)
    )
    j = m.column
    return PairwiseMatrix(
        block=m.block.label,
        column=_column_title(grid.column_field, grid.columns[j]),
        column_label=column_labels[j],
        labels=tuple(f"{s.label} ({s.cell.detail})" if s.cell.detail else s.label for s in m.shown),
        arms=tuple(s.cell.arm for s in m.shown),
        cells=cells,
        row_cells=tuple(s.cell for s in m.shown),
    )


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


def _picks(plans: Sequence[_BlockPlan]) -> list[Pick]:
    return [p for plan in plans for r in plan.rows for p in r.picks if p is not None]


def _arm_text(arm: Arm) -> str:
    return f"{formulation_name(arm.formulation)} γ = {arm.gamma:g}, c = {arm.c:g}"


def _build_block(
    plan: _BlockPlan, scores: _Scores, foot: _Footnotes, ref: _Reference, n_cols: int
) -> Block:
    block_notes = []
    if ref.in_table and not ref.in_block:
        block_notes.append(
            f"No {ref.name} arm in this block: nothing to compare with, so no cell is bold."
        )
    best = _best_means(plan, scores.summaries, n_cols)
    rows = [
        Row(
            row.label,
            tuple(
                _cell(pick, row.details[j], best[j], scores, foot, ref)
                if pick is not None
                else None
                for j, pick in enumerate(row.picks)
            ),
            row.is_base,
            row.arm,
        )
        for row in plan.rows
    ]
    label = ", ".join(display(f).label(v) for f, v in plan.key)
    return Block(label, plan.key, tuple(rows), tuple(block_notes))


def _best_means(plan: _BlockPlan, summaries: Mapping[Pick, Summary], n_cols: int) -> list[float]:
    """Underline: the highest unrounded mean per column within the block, BASE included
    (Table 3); NaN where no cell of the column has a mean."""
    best = []
    for j in range(n_cols):
        means = [summaries[p].mean for r in plan.rows if (p := r.picks[j]) is not None]
        finite = [m for m in means if math.isfinite(m)]
        best.append(max(finite) if finite else math.nan)
    return best


def _cell(
    pick: Pick, detail: str, best: float, scores: _Scores, foot: _Footnotes, ref: _Reference
) -> Cell:
    s = scores.summaries[pick]
    stats = scores.results.get(pick)
    is_ref = pick[1] == ref.arm_id
    return Cell(
        arm=scores.arms[pick[1]],
        n=s.n,
        mean=s.mean,
        std=s.std,
        significant=bool(stats is not None and stats.significant and not is_ref),
        best=bool(math.isfinite(s.mean) and s.mean == best),
        markers=_cell_markers(s, stats, is_ref, scores.max_n, foot, ref),
        detail=detail,
        stats=stats,
        comparison=scores.comparisons.get(pick),
        n_runs=s.n_runs,
        n_diverged=s.n_diverged,
        diverged_seeds=s.diverged_seeds,
        diverged_scored=s.diverged_scored,
    )


def _cell_markers(
    s: Summary,
    stats: CellStats | None,
    is_ref: bool,
    max_n: int,
    foot: _Footnotes,
    ref: _Reference,
) -> tuple[str, ...]:
    """The footnote markers of one cell, marked in reading order so footnotes number as read."""
    markers: list[str] = []
    if is_ref and not ref.arm.is_base:
        markers.append(
            foot.mark(f"the reference arm ({ref.name}): the others are tested against it")
        )
    if s.n == 0:
        markers.append(foot.mark("no run with a score yet (failed, diverged or unfinished)"))
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
            markers.append(foot.mark(f"no {ref.name} run in this column: nothing to compare with"))
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
                    f"tested on fewer seeds than shown: some lack a {ref.name} partner (see CSV)"
                )
            )
    return tuple(markers)


def _selection_notes(plans: Sequence[_BlockPlan], arms: Sequence[Arm]) -> list[str]:
    """Say which γ a best-of row chose from (Tables 2 and 6), and that the choice is made on
    the same runs the test uses, which no correction here accounts for."""
    pools: dict[str, set[Arm]] = {}
    for plan in plans:
        for r in plan.rows:
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
