"""Figures: test accuracy against γ per α with the BASE level, validation-accuracy curves, and the
BN diagnostics (γ/β drift, the >6σ fraction, the gradient factor at initialisation).

Figures are built with `matplotlib.figure.Figure` directly (no pyplot, no global backend
state), so plotting works headless and inside a long-running service. Each figure is saved as
PNG and PDF (`formats=("svg",)` for the web pages); the functions return the paths written.

Readability rules every figure follows: a legend names only what differs between its lines (what
all of them share goes into the title), BASE is drawn first and underneath so an arm that
tracks it (γ = 1, c = 100) stays visible, and spread is shown as error bars offset per arm rather
than as overlapping bands.

`plot_trend` draws the paired difference to BASE against training length (`epochs`), and
`PLOT_KINDS` names each set of figures for `bnsweep plots --kind`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from bnsweep.analysis.layout import TableLayout
from bnsweep.analysis.pairing import COMPLETED
from bnsweep.analysis.stats import AnalysisOptions
from bnsweep.analysis.table_model import Table
from bnsweep.analysis.tables import build_tables
from bnsweep.workers.spec import ARM_FIELDS, EXPERIMENT_FIELDS, is_base_arm

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

FORMATS = ("png", "pdf")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower() or "all"


def _save(fig: Figure, out_dir: Path, stem: str, formats: Sequence[str] = FORMATS) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in formats:
        path = out_dir / f"{stem}.{ext}"
        # No creation date in the file: the same results give the same bytes (static reports).
        metadata = {"Date": None} if ext == "svg" else None
        fig.savefig(path, dpi=150, bbox_inches="tight", metadata=metadata)
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
    formats: Sequence[str] = FORMATS,
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
        paths += _save(fig, Path(out_dir), stem, formats)
    return paths


def _gamma_figure(table: Table, block: Any) -> Figure | None:
    fig, (ax,) = _new_figure()
    colors = [f"C{i}" for i in range(10)]
    Points = list[tuple[float, float, float]]  # (γ, mean, std)
    per_column: list[tuple[int, dict[tuple[str, float], Points], Any]] = []
    for j in range(len(table.column_titles)):
        # One line per (formulation, c): the proposed c = 100 and its c = 1 ablation apart.
        lines: dict[tuple[str, float], Points] = {}
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
        per_column.append((j, lines, base_cell))
    kinds = sorted({key for _, lines, _ in per_column for key in lines})
    kind_names, shared = arm_labels([(f, 1.0, c) for f, c in kinds], fields=(0, 2))
    if len(kinds) == 1:
        # One line per column: its formulation and c belong in the title, not on every line.
        shared = kind_names[(kinds[0][0], 1.0, kinds[0][1])]
        kind_names = dict.fromkeys(kind_names, "")
    several_columns = len(table.column_titles) > 1
    drawn = False
    for j, lines, base_cell in per_column:
        color = colors[j % len(colors)]
        title = table.column_titles[j]
        if base_cell is not None:
            # Underneath the arms (zorder 1): the γ = 1 point of an arm sits on this line.
            ax.axhline(
                base_cell.mean,
                color=color,
                linestyle="--",
                linewidth=1,
                zorder=1,
                label=f"BASE, {title}" if several_columns else "BASE",
            )
            if np.isfinite(base_cell.std):
                ax.axhspan(
                    base_cell.mean - base_cell.std,
                    base_cell.mean + base_cell.std,
                    color=color,
                    alpha=0.12,
                    zorder=0,
                )
            drawn = True
        for (formulation, c), pts in sorted(lines.items()):
            pts.sort()
            g, m, s = (np.array(v, dtype=float) for v in zip(*pts, strict=True))
            name = kind_names[(formulation, 1.0, c)]
            label = ", ".join(x for x in (title if several_columns else "", name) if x)
            ax.errorbar(
                g,
                m,
                yerr=np.nan_to_num(s),
                color=color,
                marker="os^v"[kinds.index((formulation, c)) % 4],
                capsize=3,
                zorder=3,
                label=label or "mean ± std",
            )
            drawn = True
    if not drawn:
        return None
    ax.set_xscale("log")
    ax.set_xlabel("γ at initialisation (log scale)")
    ax.set_ylabel("test accuracy (%)")
    heading = block.label or table.title
    constant = [shared] if shared else []
    if not several_columns and table.column_titles:
        constant.append(table.column_titles[0])
    ax.set_title(heading + (f"\n{', '.join(constant)}" if constant else ""), fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    return fig


def plot_validation_curves(
    epochs: pd.DataFrame,
    out_dir: str | Path,
    trials: pd.DataFrame | None = None,
    columns: str = "lr",
    formats: Sequence[str] = FORMATS,
) -> list[Path]:
    """Validation accuracy per epoch, mean ± std band over seeds, one line per arm; one figure
    per experiment group (everything but `columns` and the arm), one panel per `columns` value.

    With `trials`, only runs whose status is completed are drawn (a diverged run's curve stops
    early and would bend the mean)."""
    needed = {"seed", "epoch", "val_acc", *ARM_FIELDS}
    missing = sorted(needed - set(epochs.columns))
    if missing:
        from bnsweep.analysis.pairing import AnalysisError

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
            arms = sorted(panel.groupby(list(ARM_FIELDS), sort=True), key=lambda kv: kv[0])
            names, shared = arm_labels([arm for arm, _ in arms])
            k = 0
            for arm, line in arms:
                is_base = is_base_arm(*arm)
                x = line["epoch"].to_numpy()
                m = line["mean"].to_numpy()
                s = np.nan_to_num(line["std"].to_numpy())
                color = "0.25" if is_base else f"C{k % 10}"
                k += 0 if is_base else 1
                # BASE wide and underneath, the arms thinner with markers on top: an arm that
                # tracks BASE (γ = 1, c = 100) stays visible instead of vanishing under it.
                ax.plot(
                    x,
                    m,
                    color=color,
                    linestyle="--" if is_base else "-",
                    linewidth=2.5 if is_base else 1.2,
                    marker=None if is_base else "os^v<>"[k % 6],
                    markersize=3,
                    markevery=max(1, len(x) // 12),
                    zorder=1 if is_base else 3,
                    label=names[arm],
                )
                ax.fill_between(x, m - s, m + s, color=color, alpha=0.08, linewidth=0, zorder=0)
            legend_title = shared or None
            ax.set_title(
                f"α = {cv:g}" if cv is not None and columns == "lr" else str(cv or ""), fontsize=10
            )
            ax.set_xlabel("epoch")
            ax.set_ylabel("validation accuracy (%)")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7, title=legend_title, title_fontsize=7)
        if label:
            fig.suptitle(label, fontsize=10)
        stem = "validation_curves" + (f"_{_slug(label)}" if label else "")
        paths += _save(fig, Path(out_dir), stem, formats)
    return paths


def arm_labels(
    arms: Sequence[tuple[Any, ...]], fields: Sequence[int] = (0, 1, 2)
) -> tuple[dict[tuple[Any, ...], str], str]:
    """Legend labels naming only the arm fields (formulation, γ, c) that differ between the
    non-BASE arms, and the text of those all of them share (for a title): a legend that says
    "standard ... c=100" on every line hides the one thing that differs."""
    parts = (
        lambda a: str(a[0]),
        lambda a: f"γ={a[1]:g}",
        lambda a: f"c={a[2]:g}",
    )
    others = [a for a in arms if not is_base_arm(*a)]
    varying = [i for i in fields if len({parts[i](a) for a in others}) > 1]
    if not varying:
        varying = list(fields)  # one arm: name it fully rather than not at all
    shared = ", ".join(parts[i](others[0]) for i in fields if i not in varying) if others else ""
    names = {a: "BASE" if is_base_arm(*a) else " ".join(parts[i](a) for i in varying) for a in arms}
    return names, shared


def make_plots(
    trials: pd.DataFrame,
    epochs: pd.DataFrame,
    out_dir: str | Path,
    layout: TableLayout | None = None,
    diagnostics: pd.DataFrame | None = None,
    formats: Sequence[str] = FORMATS,
) -> list[Path]:
    """Every figure `bnsweep plots` draws; the BN diagnostics figures when `diagnostics` (the
    store's `diagnostics()` frame) has rows."""
    columns = (layout or TableLayout()).columns
    paths = plot_accuracy_vs_gamma(
        trials, out_dir, layout, formats=formats
    ) + plot_validation_curves(epochs, out_dir, trials, columns=columns, formats=formats)
    if diagnostics is not None and not diagnostics.empty:
        paths += plot_diagnostics(diagnostics, out_dir, trials, columns=columns, formats=formats)
    return paths


# -- BN diagnostics (docs/diagnostics.md) -------------------------------------------------------

#: σ_act of ReLU(z), z ~ N(0, 1), exactly (Eqn. 23 rounds it to 0.58).
SIGMA_ACT = float(np.sqrt(0.5 - 1.0 / (2.0 * np.pi)))
#: Eqn. 22-24 for a plain conv–BN–ReLU stack with Kaiming fan-in weights (Σ w² ≈ 2, Sect. 3.3):
#: γ_curr / √(σ²_act·γ²_prev·Σw²) = 1 / (σ_act·√2) ≈ 1.21 for every BN after the first.
PLAIN_GRADIENT_FACTOR = 1.0 / (SIGMA_ACT * float(np.sqrt(2.0)))
#: Fields that change a network at initialisation (α, c, epochs, momentum and decay do not).
INIT_FIELDS: tuple[str, ...] = (
    "dataset",
    "input_norm",
    "formulation",
    "batch_size",
    "val_fraction",
    "precision",
    "memory_format",
)
_DIAGNOSTIC_NEEDS = ("spec_hash", "seed", "epoch", "layer", "depth", *ARM_FIELDS)


def plot_diagnostics(
    diagnostics: pd.DataFrame,
    out_dir: str | Path,
    trials: pd.DataFrame | None = None,
    columns: str = "lr",
    formats: Sequence[str] = FORMATS,
) -> list[Path]:
    """The three BN diagnostics figures: drift at the end of training, the >6σ fraction over
    epochs, and the gradient factor at initialisation."""
    return (
        plot_bn_drift(diagnostics, out_dir, trials, columns, formats)
        + plot_outlier_fraction(diagnostics, out_dir, trials, columns, formats)
        + plot_gradient_factor_at_init(diagnostics, out_dir, formats)
    )


def _check_diagnostics(frame: pd.DataFrame, values: Sequence[str]) -> None:
    missing = sorted(set(_DIAGNOSTIC_NEEDS) - set(frame.columns) | set(values) - set(frame.columns))
    if missing:
        from bnsweep.analysis.pairing import AnalysisError

        raise AnalysisError(f"diagnostics table lacks column(s) {', '.join(missing)}")


def _completed_only(frame: pd.DataFrame, trials: pd.DataFrame | None) -> pd.DataFrame:
    if trials is None or "spec_hash" not in trials.columns:
        return frame
    done = trials.loc[trials["status"].astype(str) == COMPLETED, ["spec_hash", "seed"]]
    return frame.merge(done.drop_duplicates(), on=["spec_hash", "seed"])


def _panels(
    df: pd.DataFrame, columns: str, fields: Sequence[str] = EXPERIMENT_FIELDS
) -> tuple[list[str], list[Any]]:
    """(fields that split figures, values of `columns` that split panels), as the curves do."""
    group_fields = [
        f for f in fields if f in df.columns and f != columns and df[f].nunique(dropna=False) > 1
    ]
    col_values = sorted(df[columns].unique(), reverse=True) if columns in df.columns else [None]
    return group_fields, col_values


def _groups(df: pd.DataFrame, fields: list[str]) -> Any:
    if not fields:
        return [("", df)]
    out = []
    for key, part in df.groupby(fields, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        out.append((", ".join(f"{f}={v}" for f, v in zip(fields, key, strict=True)), part))
    return out


def _panel_title(value: Any, columns: str) -> str:
    if value is None:
        return ""
    return f"α = {value:g}" if columns == "lr" else f"{columns} = {value}"


def _depth_ticks(ax: Any, part: pd.DataFrame) -> None:
    """Layer paths as tick labels, so a dip can be read off as 'stages.1.bn1'."""
    names = part.drop_duplicates("depth").sort_values("depth")
    if len(names) > 40:
        return
    ax.set_xticks(names["depth"].to_numpy())
    ax.set_xticklabels(
        [str(n).removeprefix("body.") for n in names["layer"]], rotation=90, fontsize=6
    )


def plot_bn_drift(
    diagnostics: pd.DataFrame,
    out_dir: str | Path,
    trials: pd.DataFrame | None = None,
    columns: str = "lr",
    formats: Sequence[str] = FORMATS,
) -> list[Path]:
    """Mean |γ − γ_init| and mean |β − β_init| per BN layer (by depth) at each run's last recorded
    epoch, mean over seeds, one line per arm: how far BN's affine parameters move in training
    (the paper's first observation, Sect. 1 and 3.2). Completed runs only when `trials` is given."""
    _check_diagnostics(diagnostics, ("gamma_drift", "beta_drift"))
    df = _completed_only(diagnostics, trials)
    if df.empty:
        return []
    last = df.groupby(["spec_hash", "seed"])["epoch"].transform("max")
    df = df[(df["epoch"] == last) & (df["epoch"] > 0)]
    if df.empty:
        log.info("no diagnostics after training to plot")
        return []
    group_fields, col_values = _panels(df, columns)
    paths: list[Path] = []
    for label, part in _groups(df, group_fields):
        fig, axes = _new_grid(2, len(col_values))
        for j, cv in enumerate(col_values):
            panel = part if cv is None else part[part[columns] == cv]
            for row, (value, name) in enumerate(
                (("gamma_drift", "mean |γ − γ_init|"), ("beta_drift", "mean |β − β_init|"))
            ):
                ax = axes[row][j]
                shared = _arm_lines(ax, panel, "depth", value)
                ax.set_ylabel(name)
                ax.set_yscale("symlog", linthresh=1e-4)
                ax.grid(True, alpha=0.3)
                if row == 0:
                    ax.set_title(_panel_title(cv, columns), fontsize=10)
                    ax.legend(fontsize=7, title=shared or None, title_fontsize=7)
                else:
                    _depth_ticks(ax, panel)
                    ax.set_xlabel("BN layer (forward order)")
        fig.suptitle(
            "BN γ and β drift from initialisation, end of training"
            + (f"\n{label}" if label else ""),
            fontsize=10,
        )
        stem = "bn_drift" + (f"_{_slug(label)}" if label else "")
        paths += _save(fig, Path(out_dir), stem, formats)
    return paths


def plot_outlier_fraction(
    diagnostics: pd.DataFrame,
    out_dir: str | Path,
    trials: pd.DataFrame | None = None,
    columns: str = "lr",
    formats: Sequence[str] = FORMATS,
) -> list[Path]:
    """Fraction of normalised values with |X̂| > 6 (Sect. 3.2) on the probe batch, averaged
    over a run's BN layers, per epoch (0 = initialisation): mean ± std over seeds per arm, the
    std as error bars offset per arm (bands of five arms on one axis hid each other's data)."""
    _check_diagnostics(diagnostics, ("outlier_fraction",))
    df = _completed_only(diagnostics, trials)
    if df.empty:
        return []
    keys = [c for c in df.columns if c in EXPERIMENT_FIELDS or c in ARM_FIELDS]
    per_run = (
        df.groupby([*keys, "seed", "epoch"], dropna=False)["outlier_fraction"].mean().reset_index()
    )
    group_fields, col_values = _panels(per_run, columns)
    paths: list[Path] = []
    for label, part in _groups(per_run, group_fields):
        fig, axes = _new_figure(len(col_values))
        for ax, cv in zip(axes, col_values, strict=True):
            panel = part if cv is None else part[part[columns] == cv]
            shared = _arm_lines(ax, panel, "epoch", "outlier_fraction", spread=True)
            ax.set_yscale("symlog", linthresh=1e-6)
            ax.set_xlabel("epoch (0 = initialisation)")
            ax.set_ylabel("fraction of |X̂| > 6, mean over BN layers")
            ax.set_title(_panel_title(cv, columns), fontsize=10)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7, title=shared or None, title_fontsize=7)
        if label:
            fig.suptitle(label, fontsize=10)
        stem = "bn_outliers" + (f"_{_slug(label)}" if label else "")
        paths += _save(fig, Path(out_dir), stem, formats)
    return paths


def plot_gradient_factor_at_init(
    diagnostics: pd.DataFrame, out_dir: str | Path, formats: Sequence[str] = FORMATS
) -> list[Path]:
    """The BN gradient factor γ/√(σ²_B + ε) per layer at initialisation (epoch 0), one line per
    γ (mean over seeds and c; c acts only after the first update), a panel per network.

    Eqn. 24 predicts the lines to coincide (γ_prev in σ_B cancels γ_curr) for every BN after
    the first, at 1/(σ_act·√2) in a plain conv–BN–ReLU stack with Kaiming fan-in weights (the
    dotted line). The figure shows where a network departs: the first BN (and, without the
    input BN of Sect. 3.4, the stem's) scales with γ; in residual networks a BN that reads a
    block's output (branch + shortcut) sits below the line, because the shortcut adds its own
    variance to σ²_B."""
    _check_diagnostics(diagnostics, ("gradient_factor",))
    df = diagnostics[diagnostics["epoch"] == 0]
    if df.empty:
        log.info("no diagnostics at initialisation to plot")
        return []
    group_fields, archs = _panels(df, "arch", INIT_FIELDS)
    keys = [*group_fields, *(["arch"] if "arch" in df.columns else []), "bn_scale_init", "depth"]
    lines = (
        df.groupby(keys, dropna=False)
        .agg(factor=("gradient_factor", "mean"), layer=("layer", "first"))
        .reset_index()
    )
    paths: list[Path] = []
    for label, part in _groups(lines, group_fields):
        fig, axes = _new_figure(len(archs))
        for ax, arch in zip(axes, archs, strict=True):
            panel = part if arch is None else part[part["arch"] == arch]
            gammas = sorted(panel["bn_scale_init"].unique(), reverse=True)
            for k, gamma in enumerate(gammas):
                line = panel[panel["bn_scale_init"] == gamma].sort_values("depth")
                ax.plot(
                    line["depth"].to_numpy(),
                    line["factor"].to_numpy(),
                    marker="os^v<>"[k % 6],
                    markersize=4,
                    color=f"C{k % 10}",
                    label=f"γ = {gamma:g}",
                )
            ax.axhline(
                PLAIN_GRADIENT_FACTOR,
                color="black",
                linestyle=":",
                linewidth=1,
                label="Eqn. 24, plain conv–BN–ReLU",
            )
            ax.set_yscale("log")
            _depth_ticks(ax, panel)
            ax.set_xlabel("BN layer (forward order)")
            ax.set_ylabel("gradient factor γ/√(σ²_B + ε)")
            ax.set_title(str(arch) if arch is not None else "", fontsize=10)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle(
            "BN gradient factor at initialisation" + (f"\n{label}" if label else ""), fontsize=10
        )
        stem = "gradient_factor_init" + (f"_{_slug(label)}" if label else "")
        paths += _save(fig, Path(out_dir), stem, formats)
    return paths


def _arm_lines(ax: Any, df: pd.DataFrame, x: str, value: str, spread: bool = False) -> str:
    """One line per arm (mean over seeds), BASE first, underneath, dashed and grey; with
    `spread`, ± std over seeds as error bars, each arm's nudged sideways so none hides another.
    Labels name only what differs between the arms; returns what they share, for the legend's
    title."""
    curves = df.groupby([*ARM_FIELDS, x], dropna=False)[value].agg(["mean", "std"]).reset_index()
    groups = curves.groupby(list(ARM_FIELDS), sort=True)
    arms = sorted(groups, key=lambda kv: not is_base_arm(*kv[0]))
    names, shared = arm_labels([arm for arm, _ in arms])
    steps = np.diff(np.sort(curves[x].unique()))
    width = 0.5 * float(steps.min()) if len(steps) else 0.0  # half the x spacing for all arms
    k = 0
    for i, (arm, line) in enumerate(arms):
        line = line.sort_values(x)
        is_base = is_base_arm(*arm)
        color = "0.25" if is_base else f"C{k % 10}"
        k += 0 if is_base else 1
        xs, m = line[x].to_numpy(dtype=float), line["mean"].to_numpy()
        if spread and len(arms) > 1:
            xs = xs + width * (i / (len(arms) - 1) - 0.5)
        style = {
            "color": color,
            "linestyle": "--" if is_base else "-",
            "linewidth": 2.0 if is_base else 1.2,
            "marker": "." if len(xs) < 60 else None,
            "zorder": 1 if is_base else 3,
            "label": names[arm],
        }
        if spread:
            s = np.nan_to_num(line["std"].to_numpy())
            # A fraction is never negative: the lower bar stops at 0 (the axis is symlog).
            low = np.minimum(s, np.maximum(m, 0))
            ax.errorbar(xs, m, yerr=np.vstack([low, s]), capsize=2, elinewidth=0.8, **style)
        else:
            ax.plot(xs, m, **style)
    return shared


def _new_grid(nrows: int, ncols: int) -> tuple[Figure, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.5 * ncols, 3.0 * nrows + 0.6), layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False, sharex="col")


# -- the paired difference to BASE by training length -------------------------------------------


def trend_points(trials: pd.DataFrame, options: AnalysisOptions | None = None) -> pd.DataFrame:
    """Per experiment and arm: the mean paired difference arm − BASE of test accuracy in
    percentage points, its two-sided CI and the number of pairs, from the same pairing
    (`pair_with_base`) and statistics (`evaluate_comparisons`) the tables use.

    One row per comparison, with the experiment fields as columns (`epochs` among them), the arm
    fields, `n`, `mean_diff`, `ci_low` and `ci_high`. Refuses a frame whose comparisons have
    fewer than two `epochs` values: a trend needs the same arms trained for several lengths."""
    from bnsweep.analysis.pairing import AnalysisError, pair_with_base
    from bnsweep.analysis.stats import evaluate_comparisons

    options = options or AnalysisOptions()
    comparisons = pair_with_base(trials, options.exclude_diverged)
    stats = evaluate_comparisons(comparisons, options)
    rows = [
        {
            **comp.experiment_dict,
            "formulation": comp.arm.formulation,
            "bn_scale_init": comp.arm.gamma,
            "bn_lr_divisor": comp.arm.c,
            "n": cell.n,
            "mean_diff": cell.mean_diff,
            "ci_low": cell.ci_low,
            "ci_high": cell.ci_high,
        }
        for comp, cell in zip(comparisons, stats, strict=True)
    ]
    points = pd.DataFrame(rows)
    lengths = sorted(points["epochs"].unique()) if "epochs" in points.columns else []
    if len(lengths) < 2:
        found = f"only epochs={lengths[0]:g}" if lengths else "no arm paired with BASE"
        raise AnalysisError(
            "trend: needs the same arms paired with BASE at two or more `epochs` values; "
            f"this sweep has {found} (launch a spec with an epochs grid, e.g. "
            "configs/demo-long.yaml)"
        )
    return points


def plot_trend(
    trials: pd.DataFrame,
    out_dir: str | Path,
    layout: TableLayout | None = None,
    options: AnalysisOptions | None = None,
    formats: Sequence[str] = FORMATS,
) -> list[Path]:
    """The mean paired difference arm − BASE (percentage points, the tables' Δ) against
    `epochs`, with its CI as error bars, one line per arm: whether a gap seen in short training
    closes, holds or opens with longer training. One figure per experiment group (everything but
    `epochs`, the arm and the layout's columns), one panel per column value (α by default)."""
    columns = (layout or TableLayout()).columns
    options = options or AnalysisOptions()
    points = trend_points(trials, options)
    fields = [f for f in EXPERIMENT_FIELDS if f != "epochs"]
    group_fields, col_values = _panels(points, columns, fields)
    paths: list[Path] = []
    for label, part in _groups(points, group_fields):
        fig = _trend_figure(part, columns, col_values, options.confidence, label)
        stem = "trend" + (f"_{_slug(label)}" if label else "")
        paths += _save(fig, Path(out_dir), stem, formats)
    return paths


def _trend_figure(
    points: pd.DataFrame, columns: str, col_values: list[Any], confidence: float, label: str
) -> Figure:
    fig, axes = _new_figure(len(col_values))
    for ax, cv in zip(axes, col_values, strict=True):
        panel = points if cv is None else points[points[columns] == cv]
        # BASE is the zero line: each point is already a difference to it, seed by seed.
        ax.axhline(0.0, color="0.25", linestyle="--", linewidth=2.0, zorder=1, label="BASE")
        arms = sorted(panel.groupby(list(ARM_FIELDS), sort=True), key=lambda kv: kv[0])
        names, shared = arm_labels([arm for arm, _ in arms])
        steps = np.diff(np.sort(panel["epochs"].unique().astype(float)))
        # Bars of neighbouring arms nudged apart by at most a quarter of the epochs spacing.
        width = 0.25 * float(steps.min()) if len(steps) else 0.0
        for k, (arm, line) in enumerate(arms):
            line = line.sort_values("epochs")
            x = line["epochs"].to_numpy(dtype=float)
            if len(arms) > 1:
                x = x + width * (k / (len(arms) - 1) - 0.5)
            m = line["mean_diff"].to_numpy(dtype=float)
            low = np.nan_to_num(m - line["ci_low"].to_numpy(dtype=float))
            high = np.nan_to_num(line["ci_high"].to_numpy(dtype=float) - m)
            ax.errorbar(
                x,
                m,
                yerr=np.vstack([low, high]),
                color=f"C{k % 10}",
                marker="os^v<>"[k % 6],
                markersize=4,
                capsize=3,
                linewidth=1.2,
                zorder=3,
                label=names[arm],
            )
        ax.set_xticks(sorted(panel["epochs"].unique().astype(float)))
        ax.set_xlabel("training length (epochs)")
        ax.set_ylabel("test accuracy − BASE (points)")
        title = _panel_title(cv, columns)
        ax.set_title(title, fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, title=shared or None, title_fontsize=7)
    heading = f"Mean paired difference to BASE (seed by seed), {confidence:.0%} CI"
    fig.suptitle(heading + (f"\n{label}" if label else ""), fontsize=10)
    return fig


# -- plot kinds: what `bnsweep plots --kind NAME` draws ------------------------------------------


@dataclass(frozen=True)
class PlotInputs:
    """What a plot kind draws from: a sweep's trials, epochs and BN diagnostics frames (the
    store's), and the table layout its spec names."""

    trials: pd.DataFrame
    epochs: pd.DataFrame
    diagnostics: pd.DataFrame | None = None
    layout: TableLayout | None = None

    @property
    def columns(self) -> str:
        return (self.layout or TableLayout()).columns


#: name → (inputs, output folder, file formats) → paths written.
PlotKind = Callable[[PlotInputs, Path, Sequence[str]], list[Path]]


def _diagnostics_kind(inputs: PlotInputs, out_dir: Path, formats: Sequence[str]) -> list[Path]:
    if inputs.diagnostics is None or inputs.diagnostics.empty:
        return []
    return plot_diagnostics(inputs.diagnostics, out_dir, inputs.trials, inputs.columns, formats)


PLOT_KINDS: dict[str, PlotKind] = {
    # The default set, as before kinds existed: every figure that needs one training length.
    "all": lambda d, out, fmt: make_plots(d.trials, d.epochs, out, d.layout, d.diagnostics, fmt),
    "gamma": lambda d, out, fmt: plot_accuracy_vs_gamma(d.trials, out, d.layout, formats=fmt),
    "curves": lambda d, out, fmt: plot_validation_curves(
        d.epochs, out, d.trials, d.columns, formats=fmt
    ),
    "diagnostics": _diagnostics_kind,
    "trend": lambda d, out, fmt: plot_trend(d.trials, out, d.layout, formats=fmt),
}
