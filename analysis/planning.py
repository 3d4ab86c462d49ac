"""Row planning: which arm fills which cell of each layout (`LAYOUTS`), and `infer_kind`.

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

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bnsweep.analysis.display import FORMULATION_NAMES, formulation_name
from bnsweep.analysis.layout import TableLayout
from bnsweep.analysis.pairing import BASE, Arm

__all__ = ["LAYOUTS", "BlockData", "LayoutKind", "RowPlan", "Summary", "infer_kind"]


def _formulation_rank(formulation: str) -> tuple[int, str]:
    names = list(FORMULATION_NAMES)
    return (names.index(formulation), "") if formulation in names else (len(names), formulation)


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    std: float
    n_runs: int
    n_diverged: int
    diverged_seeds: tuple[int, ...]
    diverged_scored: tuple[int, ...]


@dataclass(frozen=True)
class BlockData:
    exp_by_col: Mapping[Any, int]  # column value → experiment id
    arms_by_exp: Mapping[int, tuple[int, ...]]  # experiment id → arm ids present
    arms: tuple[Arm, ...]
    summaries: Mapping[tuple[int, int], Summary]
    columns: tuple[Any, ...]
    layout: TableLayout
    gamma_format: Callable[[float], str]


@dataclass(frozen=True)
class RowPlan:
    label: str
    picks: tuple[tuple[int, int] | None, ...]  # (experiment id, arm id) per column
    details: tuple[str, ...]
    is_base: bool = False
    arm: Arm | None = None
    candidates: tuple[int, ...] = ()  # arm ids a best-of row chose from


def _gamma_allowed(arm: Arm, layout: TableLayout) -> bool:
    return layout.gammas is None or any(math.isclose(arm.gamma, g) for g in layout.gammas)


def _block_arm_ids(data: BlockData) -> list[int]:
    return sorted({a for e in data.exp_by_col.values() for a in data.arms_by_exp.get(e, ())})


def _base_row(data: BlockData) -> list[RowPlan]:
    base_id = next((a for a in _block_arm_ids(data) if data.arms[a].is_base), None)
    if base_id is None:
        return []
    picks = tuple(
        (data.exp_by_col[c], base_id)
        if c in data.exp_by_col and base_id in data.arms_by_exp.get(data.exp_by_col[c], ())
        else None
        for c in data.columns
    )
    return [RowPlan("BASE", picks, ("",) * len(picks), is_base=True, arm=BASE)]


def _plan_gamma(data: BlockData) -> list[RowPlan]:
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
            label = f"{formulation_name(arm.formulation)} {label}"
        picks = tuple(
            (data.exp_by_col[c], a)
            if c in data.exp_by_col and a in data.arms_by_exp.get(data.exp_by_col[c], ())
            else None
            for c in data.columns
        )
        rows.append(RowPlan(label, picks, ("",) * len(picks), arm=arm))
    return rows + _base_row(data)


def _best_of_row(
    data: BlockData, label: str, candidates: list[int], name_gamma: bool
) -> RowPlan | None:
    """One row whose cell in each column is the candidate arm with the highest mean there
    (Table 2: "the best performing γ ... was used"; Table 6: best of γ ∈ {0.5, 0.1, 0.05})."""
    if not candidates:
        return None
    picks: list[tuple[int, int] | None] = []
    for c in data.columns:
        exp = data.exp_by_col.get(c)
        if exp is None:
            picks.append(None)
            continue
        present = [a for a in candidates if a in data.arms_by_exp.get(exp, ())]
        if not present:
            picks.append(None)
            continue
        summaries = {a: data.summaries[(exp, a)] for a in present}
        pool = [a for a in present if summaries[a].n > 0] or present
        best = max(pool, key=lambda a: (_finite_or(summaries[a].mean), summaries[a].n))
        picks.append((exp, best))
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
        return RowPlan(row_label, tuple(picks), ("",) * len(picks), candidates=tuple(candidates))
    details = tuple(describe(data.arms[p[1]]) if p is not None else "" for p in picks)
    return RowPlan(label, tuple(picks), details, candidates=tuple(candidates))


def _finite_or(x: float, default: float = -math.inf) -> float:
    return x if math.isfinite(x) else default


def _plan_best_of(
    order: Sequence[tuple[str, str]], named: frozenset[str] = frozenset({"standard"})
) -> Callable[[BlockData], list[RowPlan]]:
    """Rows named by formulation (in `order`, name pairs), each the best γ of that formulation;
    the rows of the formulations in `named` always name the γ they show."""

    def plan(data: BlockData) -> list[RowPlan]:
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
    plan: Callable[[BlockData], list[RowPlan]]


LAYOUTS: dict[str, LayoutKind] = {
    "gamma": LayoutKind(
        "γ",
        "Test accuracy (%) by BN scale initialisation γ and learning rate α",
        _plan_gamma,
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
