"""The significance tables of the paper (Tables 1-6), as one table model and several renderers.

`build_tables(trials, layout, options)` turns the trials frame into `Table` objects; the
renderers in `RENDERERS` (Markdown, LaTeX, HTML, terminal, CSV) only format that model.

The rules (Sect. 4.3): a cell is test accuracy in percent, mean ± sample std (ddof = 1) over
the seeds with a score, two decimals. **Bold**: significantly better than BASE (or the arm
chosen with `versus`) by a one-sided paired test over the seeds (p ≤ alpha). Underline: the
highest mean in its column within its block, decided on unrounded means. BASE is the last row
of each block. With `pairwise`, every block and column also gets a matrix of the one-sided
tests of each row against each other row (Sect. 4.5: "evaluated against each other").

A diverged run counts with the score of its best validation epoch before the divergence (the
official code has no NaN check; see analysis/pairing.py); a note under the table lists them.

Layouts (`LAYOUTS`):
- `gamma` (Tables 1, 3, 4, 5): rows γ ascending then BASE; columns α; blocks per whatever
  else varies (dataset, network, input normalisation, ...).
- `formulation` (Table 2): rows Ours, A1, A2, then BASE; each row shows the best γ of its
  own formulation per column, named ("For each formulation, the best performing γ from the
  previous set was used").
- `methods` (Table 6): rows RBN, RBN⁻, IEBN, IEBN⁻, Proposed (the best γ of the standard
  formulation with c > 1, chosen by mean and named), then BASE.
"""

from __future__ import annotations

import csv
import html
import io
import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from analysis.layout import TableLayout
from analysis.pairing import (
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
from analysis.stats import (
    FEWER_THAN_TWO,
    NO_COMMON_SEEDS,
    AnalysisOptions,
    CellStats,
    evaluate_comparisons,
    minimum_detectable_effect,
)
from workers.errors import choice_error

log = logging.getLogger(__name__)

__all__ = [
    "RENDERERS",
    "AnalysisError",
    "AnalysisOptions",
    "Block",
    "Cell",
    "PairCell",
    "PairwiseMatrix",
    "Row",
    "Table",
    "TableLayout",
    "build_tables",
    "render",
]


# -- how experiment fields and formulations are shown ----------------------------------------
@dataclass(frozen=True)
class FieldDisplay:
    """Header and value names of one experiment field; `order` lists known values first."""

    header: str
    names: Mapping[Any, str] = field(default_factory=dict)
    descending: bool = False

    def label(self, value: Any) -> str:
        if value in self.names:
            return self.names[value]
        return f"{value:g}" if isinstance(value, float) else str(value)

    def sort_key(self, value: Any) -> tuple[int, Any]:
        names = list(self.names)
        if value in names:
            return (0, names.index(value))
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return (1, -value if self.descending else value)
        return (2, str(value))


FIELD_DISPLAY: dict[str, FieldDisplay] = {
    # Dataset and network names as the paper prints them (Tables 3, 4, 6), in its order.
    "dataset": FieldDisplay(
        "Dataset",
        {
            "cifar10": "CIFAR-10",
            "cifar100": "CIFAR-100",
            "cub200": "CUB-200",
            "stanford_cars": "ST-Cars",
            "digits": "Digits",
            "synthetic": "Synthetic",
        },
    ),
    "arch": FieldDisplay(
        "Network",
        {
            "resnet8": "ResNet-8",
            "resnet18": "ResNet-18",
            "resnet34": "ResNet-34",
            "resnet50": "ResNet-50",
            "resnet101": "ResNet-101",
            "resnet152": "ResNet-152",
            "repvgg_a0": "RepVGG-A0",
            "mobilenet_v2": "MobileNetV2",
            "resnext50_32x4d": "ResNeXt-50",
        },
    ),
    # Table 5 names the BN-based input normalisation "Proposed" (Sect. 3.4).
    "input_norm": FieldDisplay(
        "Norm", {"fixed": "Fixed", "offline": "Offline", "bn": "Proposed", "none": "None"}
    ),
    # The paper's columns run from the largest α down (Tables 1-6).
    "lr": FieldDisplay("Learning rate (α)", descending=True),
    "epochs": FieldDisplay("Epochs"),
    "batch_size": FieldDisplay("Batch size"),
    "momentum": FieldDisplay("Momentum"),
    "weight_decay": FieldDisplay("Weight decay"),
    "val_fraction": FieldDisplay("Validation fraction"),
    "precision": FieldDisplay("Precision"),
    "memory_format": FieldDisplay("Memory format"),
}

#: Row names of the formulations (Sect. 4.4-4.5), in the order `gamma` rows list them.
FORMULATION_NAMES: dict[str, str] = {
    "standard": "Standard",
    "a1": "A1",
    "a2": "A2",
    "rbn": "RBN",
    "rbn_minus": "RBN⁻",
    "iebn": "IEBN",
    "iebn_minus": "IEBN⁻",
}


def _display(name: str) -> FieldDisplay:
    return FIELD_DISPLAY.get(name) or FieldDisplay(name)


def _formulation_name(formulation: str) -> str:
    return FORMULATION_NAMES.get(formulation, formulation)


def _formulation_rank(formulation: str) -> tuple[int, str]:
    names = list(FORMULATION_NAMES)
    return (names.index(formulation), "") if formulation in names else (len(names), formulation)


# -- the table model -----------------------------------------------------------------------
@dataclass(frozen=True)
class Cell:
    """One arm at one experiment: mean ± std (percent) over the seeds with a score.

    `stats` is the test against the table's reference arm, BASE unless `versus` chose another
    (None for the reference itself, and where there is no reference to compare with);
    `markers` point at the table's footnotes; `detail` names the γ a best-of row chose.
    `diverged_seeds` lists every diverged run of the cell, `diverged_scored` those counted
    with their pre-divergence score.
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

    def cells(self) -> list[tuple[Block, Row, int, Cell]]:
        """Every filled cell with its block, row and column index, in reading order."""
        return [
            (b, r, j, c)
            for b in self.blocks
            for r in b.rows
            for j, c in enumerate(r.cells)
            if c is not None
        ]


# -- row planning: which arm fills which cell -------------------------------------------------
@dataclass(frozen=True)
class _Summary:
    n: int
    mean: float
    std: float
    n_runs: int
    n_diverged: int
    diverged_seeds: tuple[int, ...]
    diverged_scored: tuple[int, ...]


@dataclass(frozen=True)
class _BlockData:
    exp_by_col: Mapping[Any, int]  # column value → experiment id
    arms_by_exp: Mapping[int, tuple[int, ...]]  # experiment id → arm ids present
    arms: tuple[Arm, ...]
    summaries: Mapping[tuple[int, int], _Summary]
    columns: tuple[Any, ...]
    layout: TableLayout
    gamma_format: Callable[[float], str]


@dataclass(frozen=True)
class _RowPlan:
    label: str
    picks: tuple[tuple[int, int] | None, ...]  # (experiment id, arm id) per column
    details: tuple[str, ...]
    is_base: bool = False
    arm: Arm | None = None
    candidates: tuple[int, ...] = ()  # arm ids a best-of row chose from


def _gamma_allowed(arm: Arm, layout: TableLayout) -> bool:
    return layout.gammas is None or any(math.isclose(arm.gamma, g) for g in layout.gammas)


def _block_arm_ids(data: _BlockData) -> list[int]:
    return sorted({a for e in data.exp_by_col.values() for a in data.arms_by_exp.get(e, ())})


def _base_row(data: _BlockData) -> list[_RowPlan]:
    base_id = next((a for a in _block_arm_ids(data) if data.arms[a].is_base), None)
    if base_id is None:
        return []
    picks = tuple(
        (data.exp_by_col[c], base_id)
        if c in data.exp_by_col and base_id in data.arms_by_exp.get(data.exp_by_col[c], ())
        else None
        for c in data.columns
    )
    return [_RowPlan("BASE", picks, ("",) * len(picks), is_base=True, arm=BASE)]


def _plan_gamma(data: _BlockData) -> list[_RowPlan]:
    """Table 1/3/4/5: one row per arm, γ ascending (as the paper lists it), then BASE."""
    ids = [a for a in _block_arm_ids(data) if not data.arms[a].is_base]
    ids = [a for a in ids if _gamma_allowed(data.arms[a], data.layout)]
    arms = [data.arms[a] for a in ids]
    several_c = len({a.c for a in arms}) > 1
    several_f = len({a.formulation for a in arms}) > 1 or any(
        a.formulation != "standard" for a in arms
    )
    # c descending puts the proposed lr reduction (c = 100) above its ablation (c = 1).
    ids.sort(
        key=lambda a: (
            _formulation_rank(data.arms[a].formulation),
            -data.arms[a].c,
            data.arms[a].gamma,
        )
    )
    rows = []
    for a in ids:
        arm = data.arms[a]
        label = data.gamma_format(arm.gamma)
        if several_c:
            label += f" (c = {arm.c:g})"
        if several_f:
            label = f"{_formulation_name(arm.formulation)} {label}"
        picks = tuple(
            (data.exp_by_col[c], a)
            if c in data.exp_by_col and a in data.arms_by_exp.get(data.exp_by_col[c], ())
            else None
            for c in data.columns
        )
        rows.append(_RowPlan(label, picks, ("",) * len(picks), arm=arm))
    return rows + _base_row(data)


def _best_of_row(
    data: _BlockData, label: str, candidates: list[int], name_gamma: bool
) -> _RowPlan | None:
    """One row whose cell in each column is the candidate arm with the highest mean there
    (Table 2: "the best performing γ ... was used"; Table 6: best of γ ∈ {0.5, 0.1, 0.05})."""
    if not candidates:
        return None
    picks: list[tuple[int, int] | None] = []
    for c in data.columns:
        exp = data.exp_by_col.get(c)
        present = [a for a in candidates if exp is not None and a in data.arms_by_exp.get(exp, ())]
        scored = [a for a in present if data.summaries[(exp, a)].n > 0]  # type: ignore[index]
        pool = scored or present
        if not pool:
            picks.append(None)
            continue
        best = max(
            pool,
            key=lambda a: (_finite_or(data.summaries[(exp, a)].mean), data.summaries[(exp, a)].n),
        )  # type: ignore[index]
        picks.append((exp, best))  # type: ignore[arg-type]
    chosen = [data.arms[p[1]] for p in picks if p is not None]
    if not chosen:
        return None
    show_gamma = name_gamma or len({data.arms[i].gamma for i in candidates}) > 1
    show_c = len({data.arms[i].c for i in candidates}) > 1

    def describe(arm: Arm) -> str:
        parts = [f"γ = {arm.gamma:g}"] if show_gamma else []
        if show_c:
            parts.append(f"c = {arm.c:g}")
        return ", ".join(parts)

    texts = {describe(a) for a in chosen}
    if len(texts) == 1:
        text = texts.pop()
        row_label = f"{label} ({text})" if text else label
        return _RowPlan(row_label, tuple(picks), ("",) * len(picks), candidates=tuple(candidates))
    details = tuple(describe(data.arms[p[1]]) if p is not None else "" for p in picks)
    return _RowPlan(label, tuple(picks), details, candidates=tuple(candidates))


def _finite_or(x: float, default: float = -math.inf) -> float:
    return x if math.isfinite(x) else default


def _plan_best_of(
    order: Sequence[tuple[str, str]], named: frozenset[str] = frozenset({"standard"})
) -> Callable[[_BlockData], list[_RowPlan]]:
    """Rows named by formulation (in `order`, name pairs), each the best γ of that formulation;
    the rows of the formulations in `named` always name the γ they show."""

    def plan(data: _BlockData) -> list[_RowPlan]:
        ids = [a for a in _block_arm_ids(data) if not data.arms[a].is_base]
        rows = []
        for formulation, label in order:
            cands = [a for a in ids if data.arms[a].formulation == formulation]
            if formulation == "standard":
                # "Ours"/"Proposed" is γ < 1 init *with* the lr reduction c > 1 (Sect. 3.2).
                proposed = [a for a in cands if data.arms[a].c > 1.0]
                cands = proposed or cands
                cands = [a for a in cands if _gamma_allowed(data.arms[a], data.layout)]
            row = _best_of_row(data, label, cands, name_gamma=formulation in named)
            if row is not None:
                rows.append(row)
        return rows + _base_row(data)

    return plan


@dataclass(frozen=True)
class LayoutKind:
    row_header: str
    title: str
    plan: Callable[[_BlockData], list[_RowPlan]]
    shows: Callable[[Arm], bool]  # which non-BASE arms the layout can show


LAYOUTS: dict[str, LayoutKind] = {
    "gamma": LayoutKind(
        "γ",
        "Test accuracy (%) by BN scale initialisation γ and learning rate α",
        _plan_gamma,
        lambda arm: True,
    ),
    "formulation": LayoutKind(
        "Formulation",
        "Test accuracy (%) of the feature-scaling formulations",
        # Table 2: "For each formulation, the best performing γ from the previous set was
        # used" (Sect. 4.4): each formulation at its own best γ of Table 1's grid, named.
        _plan_best_of(
            [("standard", "Ours"), ("a1", "A1"), ("a2", "A2")],
            named=frozenset({"standard", "a1", "a2"}),
        ),
        lambda arm: arm.formulation in ("standard", "a1", "a2"),
    ),
    "methods": LayoutKind(
        "Method",
        "Test accuracy (%) compared with RBN and IEBN",
        _plan_best_of(
            [
                ("rbn", "RBN"),
                ("rbn_minus", "RBN⁻"),
                ("iebn", "IEBN"),
                ("iebn_minus", "IEBN⁻"),
                ("a1", "A1"),
                ("a2", "A2"),
                ("standard", "Proposed"),
            ]
        ),
        lambda arm: True,
    ),
}


def infer_kind(arms: Sequence[Arm]) -> str:
    """methods if RBN/IEBN arms exist, formulation if A1/A2 arms exist, else gamma."""
    formulations = {a.formulation for a in arms}
    if formulations & {"rbn", "rbn_minus", "iebn", "iebn_minus"}:
        return "methods"
    if formulations & {"a1", "a2"}:
        return "formulation"
    return "gamma"


# -- building -------------------------------------------------------------------------------
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


def _summaries(prepared: PreparedTrials) -> dict[tuple[int, int], _Summary]:
    s = summarise(prepared)
    return {
        (int(e), int(a)): _Summary(
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
    columns = tuple(sorted(set(col_values), key=_display(col_field).sort_key))
    block_keys = [tuple((f, _plain(exps.at[e, f])) for f in block_fields) for e in range(len(exps))]
    by_block: dict[tuple[tuple[str, Any], ...], dict[Any, int]] = {}
    for e, (bk, cv) in enumerate(zip(block_keys, col_values, strict=True)):
        by_block.setdefault(bk, {})[cv] = e
    ordered_blocks = sorted(by_block, key=lambda bk: tuple(_display(f).sort_key(v) for f, v in bk))

    gamma_format = _gamma_formatter([a for a in prepared.arms if not a.is_base])
    plans: list[tuple[tuple[tuple[str, Any], ...], list[_RowPlan]]] = []
    for bk in ordered_blocks:
        data = _BlockData(
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
    column_labels = tuple(_display(col_field).label(c) if c is not None else "" for c in columns)
    matrices = (
        _pairwise(prepared, plans, blocks, columns, column_labels, col_field, options)
        if layout.pairwise
        else ()
    )
    return Table(
        kind=kind,
        title=title,
        block_header=", ".join(_display(f).header for f in block_fields),
        row_header=spec.row_header,
        column_header=_display(col_field).header,
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
    plans: Sequence[tuple[tuple[tuple[str, Any], ...], list[_RowPlan]]],
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
        rows = block.rows
        labels = tuple(
            f"{rows[i].label} ({rows[i].cells[j].detail})"  # type: ignore[union-attr]
            if rows[i].cells[j].detail  # type: ignore[union-attr]
            else rows[i].label
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
                arms=tuple(rows[i].cells[j].arm for i in shown),  # type: ignore[union-attr]
                cells=cells,
                row_cells=tuple(rows[i].cells[j] for i in shown),  # type: ignore[misc]
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


def _picks(plans: Sequence[tuple[Any, list[_RowPlan]]]) -> list[tuple[int, int]]:
    return [p for _, rows in plans for r in rows for p in r.picks if p is not None]


def _arm_text(arm: Arm) -> str:
    return f"{_formulation_name(arm.formulation)} γ = {arm.gamma:g}, c = {arm.c:g}"


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
    plans: list[_RowPlan],
    prepared: PreparedTrials,
    summaries: Mapping[tuple[int, int], _Summary],
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
        means = [summaries[r.picks[j]].mean for r in plans if r.picks[j] is not None]
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
                            "tested on fewer seeds than shown: some lack a BASE partner (see CSV)"
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
    label = ", ".join(_display(f).label(v) for f, v in key)
    return Block(label, key, tuple(rows), tuple(block_notes))


def _selection_notes(plans: Sequence[tuple[Any, list[_RowPlan]]], arms: Sequence[Arm]) -> list[str]:
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
    """Where diverged runs are: counted with their pre-divergence score (the default, as the
    official code, which has no NaN check, scored them), or dropped (no score, or excluded)."""
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
        else "Diverged runs without a score (diverged before any validation epoch), left out of "
        "means and pairs: "
    )
    return note(
        "Diverged runs counted in means and pairs with the test accuracy of their best "
        "validation epoch before the divergence (as the official code, which has no NaN check, "
        "scored them): ",
        scored,
    ) + note(dropped_head, dropped)


def _column_title(col_field: str, value: Any) -> str:
    name = "α" if col_field == "lr" else _display(col_field).header
    return f"{name} = {_display(col_field).label(value)}" if value is not None else name


def _default_title(
    base: str, prepared: PreparedTrials, block_fields: Sequence[str], col_field: str
) -> str:
    exps = prepared.experiments
    fixed = [
        _display(f).label(_plain(exps.at[0, f]))
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


# -- renderers ------------------------------------------------------------------------------
def _value_parts(cell: Cell) -> tuple[str, str]:
    return cell.mean_text, cell.std_text


def _p_text(name: str, p: float) -> str:
    return f"{name} < 0.001" if p < 0.001 else f"{name} = {p:.3f}"


def _pair_text(cell: PairCell | None, options: AnalysisOptions) -> str:
    """`+1.10 (p = 0.002)`; with a correction also `p̃ = …`; `—` on the diagonal."""
    if cell is None:
        return "—"
    s = cell.stats
    diff = f"{s.mean_diff:+.2f}".replace("-", "−") if math.isfinite(s.mean_diff) else "–"
    if not s.tested:
        return f"{diff} (not tested)"
    adjusted = f", {_p_text('p̃', s.p_adjusted)}" if options.correction != "none" else ""
    return f"{diff} ({_p_text('p', s.p)}{adjusted})"


def _pair_head(t: Table) -> str:
    return f"{t.row_header} (row) vs column"


def _markdown_pairwise(t: Table) -> list[str]:
    if not t.pairwise:
        return []
    lines = ["", _md_escape(t.pairwise_caption)]
    for m in t.pairwise:
        head = [_pair_head(t), *m.labels]
        lines += ["", f"#### {_md_escape(m.title)}", ""]
        lines.append("| " + " | ".join(_md_escape(h) for h in head) + " |")
        lines.append("|:---|" + "|".join(["---:"] * len(m.labels)) + "|")
        for label, row in zip(m.labels, m.cells, strict=True):
            texts = []
            for c in row:
                text = _md_escape(_pair_text(c, t.options))
                texts.append(f"**{text}**" if c is not None and c.significant else text)
            lines.append("| " + " | ".join([_md_escape(label), *texts]) + " |")
    return lines


def render_markdown(tables: Sequence[Table]) -> str:
    out = []
    for t in tables:
        has_blocks = any(b.label for b in t.blocks)
        head = ([t.block_header] if has_blocks else []) + [t.row_header] + list(t.column_titles)
        lines = [
            f"### {_md_escape(t.title)}",
            "",
            "| " + " | ".join(_md_escape(h) for h in head) + " |",
        ]
        lines.append(
            "|"
            + "|".join([":---"] * (len(head) - len(t.columns)) + ["---:"] * len(t.columns))
            + "|"
        )
        for b in t.blocks:
            for i, r in enumerate(b.rows):
                lead = ([_md_escape(b.label) if i == 0 else ""] if has_blocks else []) + [
                    _md_escape(r.label)
                ]
                lines.append("| " + " | ".join(lead + [_md_cell(c) for c in r.cells]) + " |")
        lines += ["", _md_escape(t.caption), "", _md_escape(t.mde)]
        extra = (
            [f"{m} {txt}" for m, txt in t.footnotes]
            + [n for b in t.blocks for n in ([f"{b.label}: {x}" for x in b.notes])]
            + list(t.notes)
        )
        if extra:
            lines.append("")
            lines += [f"- {_md_escape(x)}" for x in extra]
        lines += _markdown_pairwise(t)
        out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


def _md_escape(text: str) -> str:
    return re.sub(r"([|*_`<>\\])", r"\\\1", text)


def _md_cell(cell: Cell | None) -> str:
    if cell is None:
        return ""
    mean, std = _value_parts(cell)
    if cell.best:
        mean = f"<u>{mean}</u>"
    text = f"{mean} ± {std}"
    if cell.significant:
        text = f"**{text}**"
    if cell.detail:
        text += f" ({_md_escape(cell.detail)})"
    return text + "".join(f"<sup>{_md_escape(m)}</sup>" for m in cell.markers)


# LaTeX: escape the specials first, then map the paper's symbols to math mode.
_LATEX_SPECIALS = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}
_LATEX_UNICODE = {
    "γ": r"$\gamma$",
    "α": r"$\alpha$",
    "±": r"$\pm$",
    "≤": r"$\leq$",
    "–": "--",
    "⁻": r"$^{-}$",
    "×": r"$\times$",
    "†": r"\dag{}",
    "‡": r"\ddag{}",
    "§": r"\S{}",
    "¶": r"\P{}",
    "‖": r"$\|$",
}


def latex_escape(text: str) -> str:
    """Escape LaTeX specials and write γ, α, ±, ≤, –, ⁻ and the footnote marks as LaTeX."""
    escaped = "".join(_LATEX_SPECIALS.get(ch, ch) for ch in text)
    return "".join(_LATEX_UNICODE.get(ch, ch) for ch in escaped)


def _latex_cell(cell: Cell | None) -> str:
    if cell is None:
        return ""
    mean, std = _value_parts(cell)
    mean = r"\underline{" + mean + "}" if cell.best else mean
    text = f"{mean} $\\pm$ {latex_escape(std)}"
    if cell.significant:
        text = r"\textbf{" + text + "}"
    if cell.detail:
        text += f" ({latex_escape(cell.detail)})"
    if cell.markers:
        text += r"\textsuperscript{" + latex_escape("".join(cell.markers)) + "}"
    return text


def latex_label(title: str, taken: set[str]) -> str:
    """`tab:<words of the title>`, unique among `taken` (which it joins), for `\\ref`."""
    words, kept = re.findall(r"[a-z0-9]+", title.lower()), []
    for word in words:  # whole words, at most 48 characters
        if len("-".join([*kept, word])) > 48:
            break
        kept.append(word)
    base = "tab:" + ("-".join(kept) or "bnsweep")
    label, n = base, 2
    while label in taken:
        label, n = f"{base}-{n}", n + 1
    taken.add(label)
    return label


def _latex_text(text: str) -> str:
    """A caption or note line: escaped, with the effect size typeset as the paper's $d_z$."""
    return latex_escape(text).replace(r"d\_z", "$d_z$")


def render_latex(tables: Sequence[Table], fragment: bool = False) -> str:
    """One `table` float per table, with caption, `\\label` and notes; `fragment` gives only
    the `tabular`, for a document that sets its own float, caption and notes."""
    out = []
    labels: set[str] = set()
    for t in tables:
        has_blocks = any(b.label for b in t.blocks)
        lead = 2 if has_blocks else 1
        ncol = len(t.columns)
        head = [
            "% requires \\usepackage{booktabs}",
            r"\begin{table}[t]",
            r"\centering",
            r"\caption{" + latex_escape(t.title) + "}",
            r"\label{" + latex_label(t.title, labels) + "}",
        ]
        lines = [
            *(head if not fragment else [f"% {latex_escape(t.title)} (requires booktabs)"]),
            r"\begin{tabular}{" + "l" * lead + "r" * ncol + "}",
            r"\toprule",
            " & " * lead
            + r"\multicolumn{"
            + str(ncol)
            + "}{c}{"
            + latex_escape(t.column_header)
            + r"} \\",
            rf"\cmidrule(lr){{{lead + 1}-{lead + ncol}}}",
            " & ".join(
                ([latex_escape(t.block_header)] if has_blocks else [])
                + [latex_escape(t.row_header)]
                + [latex_escape(c) for c in t.column_labels]
            )
            + r" \\",
            r"\midrule",
        ]
        for k, b in enumerate(t.blocks):
            if k:
                lines.append(r"\midrule")
            for i, r in enumerate(b.rows):
                cells = ([latex_escape(b.label) if i == 0 else ""] if has_blocks else []) + [
                    latex_escape(r.label)
                ]
                lines.append(" & ".join(cells + [_latex_cell(c) for c in r.cells]) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}"]
        if not fragment:
            lines += ["", r"\smallskip", r"\footnotesize"]
            body = [t.caption, t.mde] + [f"{m} {x}" for m, x in t.footnotes]
            body += [f"{b.label}: {x}" for b in t.blocks for x in b.notes] + list(t.notes)
            lines += [_latex_text(x) + r"\par" for x in body]
            lines.append(r"\end{table}")
        lines += _latex_pairwise(t, fragment)
        out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


def _latex_pair(text: str) -> str:
    """latex_escape, plus the pairwise cells' p̃ (a combining tilde), −, — and <."""
    escaped = latex_escape(text.replace("p̃", "\x00"))
    for old, new in (("\x00", r"$\tilde{p}$"), ("−", "$-$"), ("—", "---"), ("<", "$<$")):
        escaped = escaped.replace(old, new)
    return escaped


def _latex_pairwise(t: Table, fragment: bool = False) -> list[str]:
    """Each pairwise matrix as a `table` float, or as its `tabular` alone for a fragment."""
    lines: list[str] = []
    for m in t.pairwise:
        cols = len(m.labels)
        lines.append("")
        if not fragment:
            lines += [
                r"\begin{table}[t]",
                r"\centering",
                r"\caption{" + latex_escape(m.title) + "}",
            ]
        lines += [
            r"\begin{tabular}{l" + "r" * cols + "}",
            r"\toprule",
            " & ".join(latex_escape(h) for h in (_pair_head(t), *m.labels)) + r" \\",
            r"\midrule",
        ]
        for label, row in zip(m.labels, m.cells, strict=True):
            texts = []
            for c in row:
                text = _latex_pair(_pair_text(c, t.options))
                texts.append(r"\textbf{" + text + "}" if c is not None and c.significant else text)
            lines.append(" & ".join([latex_escape(label), *texts]) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}"]
        if not fragment:
            lines += [
                "",
                r"\smallskip",
                r"\footnotesize",
                _latex_pair(t.pairwise_caption) + r"\par",
                r"\end{table}",
            ]
    return lines


def render_latex_fragment(tables: Sequence[Table]) -> str:
    return render_latex(tables, fragment=True)


_HTML_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem; color: #222; }
table { border-collapse: collapse; margin: 1rem 0; }
caption { caption-side: top; font-weight: 600; text-align: left; padding-bottom: .5rem; }
th, td { padding: .25rem .75rem; }
tbody th { text-align: left; font-weight: normal; }
thead tr:first-child th { border-top: 2px solid #222; }
thead tr:last-child th { border-bottom: 1px solid #222; }
tbody tr.block-start > * { border-top: 1px solid #888; }
tbody tr:last-child > * { border-bottom: 2px solid #222; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.base td { font-style: italic; }
p.note { font-size: .9rem; max-width: 60rem; margin: .25rem 0; }
"""


def render_html(tables: Sequence[Table]) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>{html.escape(tables[0].title if tables else 'bnsweep tables')}</title>",
        f"<style>{_HTML_STYLE}</style>",
        "</head>",
        "<body>",
    ]
    for t in tables:
        has_blocks = any(b.label for b in t.blocks)
        lead = 2 if has_blocks else 1
        parts.append("<table>")
        parts.append(f"<caption>{html.escape(t.title)}</caption>")
        parts.append("<thead>")
        parts.append(
            f'<tr><th colspan="{lead}"></th><th colspan="{len(t.columns)}">'
            f"{html.escape(t.column_header)}</th></tr>"
        )
        heads = ([t.block_header] if has_blocks else []) + [t.row_header] + list(t.column_labels)
        parts.append("<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in heads) + "</tr>")
        parts.append("</thead>")
        parts.append("<tbody>")
        for k, b in enumerate(t.blocks):
            for i, r in enumerate(b.rows):
                classes = [
                    c for c, on in (("block-start", i == 0 and k > 0), ("base", r.is_base)) if on
                ]
                attr = f' class="{" ".join(classes)}"' if classes else ""
                lead_cells = ([html.escape(b.label) if i == 0 else ""] if has_blocks else []) + [
                    html.escape(r.label)
                ]
                parts.append(
                    f"<tr{attr}>"
                    + "".join(f'<th scope="row">{x}</th>' for x in lead_cells)
                    + "".join(f'<td class="num">{html_cell(c)}</td>' for c in r.cells)
                    + "</tr>"
                )
        parts.append("</tbody>")
        parts.append("</table>")
        body = [t.caption, t.mde] + [f"{m} {x}" for m, x in t.footnotes]
        body += [f"{b.label}: {x}" for b in t.blocks for x in b.notes] + list(t.notes)
        parts += [f'<p class="note">{html.escape(x)}</p>' for x in body]
        parts += _html_pairwise(t)
    parts += ["</body>", "</html>"]
    return "\n".join(parts) + "\n"


def _html_pairwise(t: Table) -> list[str]:
    if not t.pairwise:
        return []
    parts = [f'<p class="note">{html.escape(t.pairwise_caption)}</p>']
    for m in t.pairwise:
        parts += ['<table class="pairwise">', f"<caption>{html.escape(m.title)}</caption>"]
        heads = (_pair_head(t), *m.labels)
        parts.append(
            "<thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in heads) + "</tr></thead>"
        )
        parts.append("<tbody>")
        for label, row in zip(m.labels, m.cells, strict=True):
            cells = []
            for c in row:
                text = html.escape(_pair_text(c, t.options))
                if c is not None and c.significant:
                    text = f"<strong>{text}</strong>"
                cells.append(f'<td class="num">{text}</td>')
            parts.append(
                f'<tr><th scope="row">{html.escape(label)}</th>' + "".join(cells) + "</tr>"
            )
        parts += ["</tbody>", "</table>"]
    return parts


def html_cell(cell: Cell | None) -> str:
    """A cell as HTML: `<u>` on the mean of the best, `<strong>` around a significant cell, the
    chosen γ and the footnote markers after it (the dashboard draws cells with it too)."""
    if cell is None:
        return ""
    mean, std = (html.escape(x) for x in _value_parts(cell))
    if cell.best:
        mean = f"<u>{mean}</u>"
    text = f"{mean} ± {std}"
    if cell.significant:
        text = f"<strong>{text}</strong>"
    if cell.detail:
        text += f" ({html.escape(cell.detail)})"
    if cell.markers:
        text += f"<sup>{html.escape(''.join(cell.markers))}</sup>"
    return text


#: Text marks of the terminal table where bold and underline cannot be shown (a file, a pipe).
TERM_MARKS = {"significant": "*", "best": "^"}
_TERM_MARKS_NOTE = "* significant against BASE; ^ best mean of the column"


def term_renderables(tables: Sequence[Table], marks: bool = False) -> list[Any]:
    """rich renderables for the terminal: bold = significant, underline = best mean; with
    `marks` also in text (TERM_MARKS), for output that keeps no styles."""
    from rich.table import Table as RichTable
    from rich.text import Text

    out: list[Any] = []
    for t in tables:
        has_blocks = any(b.label for b in t.blocks)
        rt = RichTable(title=t.title, title_style="bold", caption_justify="left", show_lines=False)
        if has_blocks:
            rt.add_column(t.block_header)
        rt.add_column(t.row_header)
        for title in t.column_titles:
            rt.add_column(title, justify="right")
        for k, b in enumerate(t.blocks):
            for i, r in enumerate(b.rows):
                lead = ([b.label if i == 0 else ""] if has_blocks else []) + [r.label]
                rt.add_row(
                    *lead,
                    *[_term_cell(c, Text, marks) for c in r.cells],
                    end_section=i == len(b.rows) - 1 and k < len(t.blocks) - 1,
                )
        out.append(rt)
        body = [t.caption, t.mde] + [f"{m} {x}" for m, x in t.footnotes]
        body += [f"{b.label}: {x}" for b in t.blocks for x in b.notes] + list(t.notes)
        if marks:
            body.append(_TERM_MARKS_NOTE)
        out.append(Text("\n".join(body) + "\n"))
        if t.pairwise:
            out.append(Text(t.pairwise_caption + "\n"))
        for m in t.pairwise:
            pt = RichTable(title=m.title, title_style="bold", show_lines=False)
            pt.add_column(_pair_head(t))
            for label in m.labels:
                pt.add_column(label, justify="right")
            for label, row in zip(m.labels, m.cells, strict=True):
                pt.add_row(
                    label,
                    *[
                        Text(
                            _pair_text(c, t.options),
                            style="bold" if c is not None and c.significant else "",
                        )
                        for c in row
                    ],
                )
            out.append(pt)
    return out


def _term_cell(cell: Cell | None, text_cls: Any, marks: bool = False) -> Any:
    if cell is None:
        return ""
    mean, std = _value_parts(cell)
    bold = "bold" if cell.significant else ""
    text = text_cls()
    text.append(mean, style=" ".join(s for s in (bold, "underline" if cell.best else "") if s))
    text.append(f" ± {std}", style=bold)
    if cell.detail:
        text.append(f" ({cell.detail})")
    if cell.markers:
        text.append("".join(cell.markers))
    if marks:
        flags = [TERM_MARKS[k] for k in ("significant", "best") if getattr(cell, k)]
        text.append(f" {''.join(flags)}" if flags else "")
    return text


def render_term(tables: Sequence[Table], width: int = 120, styles: bool = False) -> str:
    """The terminal rendering as text; with `styles` the bold/underline ANSI codes are kept,
    without them significance and the best mean are marked in text (TERM_MARKS)."""
    from rich.console import Console

    console = Console(
        record=True,
        width=width,
        file=io.StringIO(),
        force_terminal=styles,
        color_system="standard" if styles else None,
    )
    for r in term_renderables(tables, marks=not styles):
        console.print(r)
    return console.export_text(styles=styles)


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
