"""Figures: test accuracy against γ per α with the BASE level, and validation-accuracy curves.

Figures are built with `matplotlib.figure.Figure` directly (no pyplot, no global backend
state), so plotting works headless and inside a long-running service. Each figure is saved as
PNG and PDF; the functions return the paths written.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from analysis.pairing import COMPLETED, EXPERIMENT_FIELDS
from analysis.stats import AnalysisOptions
from analysis.tables import Table, TableLayout, build_tables
from workers.spec import ARM_FIELDS

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

FORMATS = ("png", "pdf")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower() or "all"


def _save(fig: Figure, out_dir: Path, stem: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in FORMATS:
        path = out_dir / f"{stem}.{ext}"
        fig.savefig(path, dpi=150, bbox_inches="tight")
        paths.append(path)
    return paths


def _new_figure(ncols: int = 1) -> tuple[Figure, Sequence[Any]]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.5 * ncols, 3.6), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, axes


def plot_accuracy_vs_gamma(
    trials: pd.DataFrame,
    out_dir: str | Path,
    layout: TableLayout | None = None,
    options: AnalysisOptions | None = None,
) -> list[Path]:
    """One figure per block of the `gamma` table: mean test accuracy against γ (log axis) per α,
    ± sample std as error bars, and BASE as a horizontal line with a ± std band."""
    base_layout = layout or TableLayout()
    gamma_layout = TableLayout(
        kind="gamma",
        columns=base_layout.columns,
        blocks=base_layout.blocks,
        gammas=base_layout.gammas,
    )
    table = build_tables(trials, gamma_layout, options)[0]
    paths: list[Path] = []
    for block in table.blocks:
        fig = _gamma_figure(table, block)
        if fig is None:
            continue
        stem = "accuracy_vs_gamma" + (f"_{_slug(block.label)}" if block.label else "")
        paths += _save(fig, Path(out_dir), stem)
    return paths


def _gamma_figure(table: Table, block: Any) -> Figure | None:
    fig, (ax,) = _new_figure()
    colors = [f"C{i}" for i in range(10)]
    drawn = False
    for j, title in enumerate(table.column_titles):
        color = colors[j % len(colors)]
        # One line per (formulation, c): the proposed c = 100 and its c = 1 ablation apart.
        lines: dict[tuple[str, float], list[tuple[float, float, float]]] = {}
        base_cell = None
        for row in block.rows:
            cell = row.cells[j]
            if cell is None or not np.isfinite(cell.mean):
                continue
            if row.is_base:
                base_cell = cell
                continue
            key = (cell.arm.formulation, cell.arm.c)
            lines.setdefault(key, []).append((cell.arm.gamma, cell.mean, cell.std))
        several = len(lines) > 1
        for k, ((formulation, c), pts) in enumerate(sorted(lines.items())):
            pts.sort()
            g, m, s = (np.array(v, dtype=float) for v in zip(*pts, strict=True))
            label = title + (f", {formulation} c = {c:g}" if several else "")
            ax.errorbar(
                g,
                m,
                yerr=np.nan_to_num(s),
                color=color,
                marker="os^v"[k % 4],
                capsize=3,
                label=label,
            )
            drawn = True
        if base_cell is not None:
            ax.axhline(
                base_cell.mean, color=color, linestyle="--", linewidth=1, label=f"BASE, {title}"
            )
            if np.isfinite(base_cell.std):
                ax.axhspan(
                    base_cell.mean - base_cell.std,
                    base_cell.mean + base_cell.std,
                    color=color,
                    alpha=0.12,
                )
            drawn = True
    if not drawn:
        return None
    ax.set_xscale("log")
    ax.set_xlabel("γ at initialisation (log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(block.label or table.title, fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    return fig


def plot_validation_curves(
    epochs: pd.DataFrame,
    out_dir: str | Path,
    trials: pd.DataFrame | None = None,
    columns: str = "lr",
) -> list[Path]:
    """Validation accuracy per epoch, mean ± std band over seeds, one line per arm; one figure
    per experiment group (everything but `columns` and the arm), one panel per `columns` value.

    With `trials`, only runs whose status is completed are drawn (a diverged run's curve stops
    early and would bend the mean)."""
    needed = {"seed", "epoch", "val_acc", *ARM_FIELDS}
    missing = sorted(needed - set(epochs.columns))
    if missing:
        from analysis.pairing import AnalysisError

        raise AnalysisError(f"epochs table lacks column(s) {', '.join(missing)}")
    df = epochs
    if trials is not None and "spec_hash" in df.columns and "spec_hash" in trials.columns:
        done = trials.loc[trials["status"].astype(str) == COMPLETED, ["spec_hash", "seed"]]
        df = df.merge(done.drop_duplicates(), on=["spec_hash", "seed"])
    if df.empty:
        log.info("no epochs to plot")
        return []
    exp_fields = [f for f in EXPERIMENT_FIELDS if f in df.columns and f != columns]
    group_fields = [f for f in exp_fields if df[f].nunique(dropna=False) > 1]
    col_values = sorted(df[columns].unique(), reverse=True) if columns in df.columns else [None]
    keys = [*group_fields, *([columns] if columns in df.columns else []), *ARM_FIELDS, "epoch"]
    curves = (
        df.assign(val=df["val_acc"].astype(float) * 100.0)
        .groupby(keys, dropna=False)["val"]
        .agg(["mean", "std"])
        .reset_index()
    )
    groups = curves.groupby(group_fields, dropna=False) if group_fields else [((), curves)]
    paths: list[Path] = []
    for gkey, part in groups:
        gkey = gkey if isinstance(gkey, tuple) else (gkey,)
        label = ", ".join(f"{f}={v}" for f, v in zip(group_fields, gkey, strict=True))
        fig, axes = _new_figure(len(col_values))
        for ax, cv in zip(axes, col_values, strict=True):
            panel = part if cv is None else part[part[columns] == cv]
            # BASE last, as in the tables.
            lines = sorted(
                panel.groupby(list(ARM_FIELDS), sort=True), key=lambda kv: _is_base(kv[0])
            )
            for k, (arm, line) in enumerate(lines):
                formulation, gamma, c = arm
                is_base = _is_base(arm)
                name = "BASE" if is_base else f"{formulation} γ={gamma:g} c={c:g}"
                x = line["epoch"].to_numpy()
                m = line["mean"].to_numpy()
                s = np.nan_to_num(line["std"].to_numpy())
                color = "black" if is_base else f"C{k % 10}"
                ax.plot(x, m, color=color, linestyle="--" if is_base else "-", label=name)
                ax.fill_between(x, m - s, m + s, color=color, alpha=0.15, linewidth=0)
            ax.set_title(
                f"α = {cv:g}" if cv is not None and columns == "lr" else str(cv or ""), fontsize=10
            )
            ax.set_xlabel("epoch")
            ax.set_ylabel("validation accuracy (%)")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
        if label:
            fig.suptitle(label, fontsize=10)
        stem = "validation_curves" + (f"_{_slug(label)}" if label else "")
        paths += _save(fig, Path(out_dir), stem)
    return paths


def _is_base(arm: tuple[Any, ...]) -> bool:
    formulation, gamma, c = arm
    return bool(formulation == "standard" and gamma == 1.0 and c == 1.0)


def make_plots(
    trials: pd.DataFrame,
    epochs: pd.DataFrame,
    out_dir: str | Path,
    layout: TableLayout | None = None,
) -> list[Path]:
    """Every figure `bnsweep plots` draws."""
    return plot_accuracy_vs_gamma(trials, out_dir, layout) + plot_validation_curves(
        epochs, out_dir, trials, columns=(layout or TableLayout()).columns
    )
