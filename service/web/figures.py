"""The pages' figures as SVG text: the `bnsweep plots` figures, and three views only the pages
draw: training curves with per-seed traces on request, the paired difference to BASE per γ (the
test's own view), and one trial's epochs.

Every figure is a `matplotlib.figure.Figure` (no pyplot state), saved without a date so the same
results give the same bytes.
"""

from __future__ import annotations

import io
import math
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from bnsweep.analysis.layout import TableLayout
    from bnsweep.analysis.table_model import Table

#: Experiments drawn on one curves page; a 100,000-trial sweep has hundreds (the trials page
#: and the CSV have them all).
MAX_CURVE_FIGURES = 12


@dataclass(frozen=True)
class SvgFigure:
    stem: str  # file name without .svg
    title: str
    svg: str


def svg_text(fig: Figure) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    return clean_svg(buf.getvalue())


_METADATA = re.compile(r"\s*<metadata>.*?</metadata>", re.S)


def clean_svg(text: str) -> str:
    """matplotlib's SVG without its RDF metadata block (a creator line and vocabulary URLs that
    no reader needs): the report names no URL beyond the XML namespaces an SVG must declare."""
    return _METADATA.sub("", text, count=1)


def _read_svgs(paths: Sequence[Path], title: str) -> list[SvgFigure]:
    return [
        SvgFigure(
            p.stem, f"{title}: {p.stem.replace('_', ' ')}", clean_svg(p.read_text(encoding="utf-8"))
        )
        for p in paths
        if p.suffix == ".svg"
    ]


def analysis_figures(
    trials: pd.DataFrame,
    diagnostics: pd.DataFrame | None,
    layout: TableLayout,
) -> list[SvgFigure]:
    """`bnsweep plots`'s accuracy-vs-γ and BN-diagnostics figures, as SVG."""
    from bnsweep.analysis.pairing import AnalysisError
    from bnsweep.analysis.plots import plot_accuracy_vs_gamma, plot_diagnostics

    out: list[SvgFigure] = []
    with tempfile.TemporaryDirectory(prefix="bnsweep-figures-") as folder:
        try:
            paths = plot_accuracy_vs_gamma(trials, folder, layout, formats=("svg",))
            out += _read_svgs(paths, "Test accuracy against γ")
        except AnalysisError:
            pass  # nothing completed yet: the page says so above the figures
        if diagnostics is not None and not diagnostics.empty:
            paths = plot_diagnostics(
                diagnostics, Path(folder) / "diag", trials, layout.columns, formats=("svg",)
            )
            out += _read_svgs(paths, "BN diagnostics")
    return out


def _new_figure(ncols: int, width: float = 4.5, height: float = 3.4) -> tuple[Figure, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def _arm_key(frame: pd.DataFrame) -> list[tuple[str, float, float]]:
    return list(
        zip(
            frame["formulation"].astype(str),
            frame["bn_scale_init"].astype(float),
            frame["bn_lr_divisor"].astype(float),
            strict=True,
        )
    )


def curve_figures(
    epochs: pd.DataFrame, trials: pd.DataFrame, per_seed: bool = False
) -> tuple[list[SvgFigure], int]:
    """Validation accuracy and training loss per epoch, mean ± std over seeds per arm (completed
    runs), one figure per experiment; with `per_seed`, every seed's own trace behind the mean.
    Returns the figures and how many experiments there were (at most MAX_CURVE_FIGURES drawn)."""
    from bnsweep.analysis.plots import arm_labels
    from bnsweep.workers.spec import EXPERIMENT_FIELDS, is_base_arm

    done = trials.loc[trials["status"].astype(str) == "completed", ["spec_hash", "seed"]]
    df = epochs.merge(done.drop_duplicates(), on=["spec_hash", "seed"])
    if df.empty:
        return [], 0
    varying = [f for f in EXPERIMENT_FIELDS if f in df.columns and df[f].nunique() > 1]
    groups = list(df.groupby(varying, sort=True)) if varying else [((), df)]
    out: list[SvgFigure] = []
    for index, (key, part) in enumerate(groups[:MAX_CURVE_FIGURES]):
        key = key if isinstance(key, tuple) else (key,)
        label = ", ".join(f"{f}={_g(v)}" for f, v in zip(varying, key, strict=True))
        fig, axes = _new_figure(2)
        part = part.assign(_arm=_arm_key(part))
        arms = sorted(part["_arm"].unique(), key=lambda a: (not is_base_arm(*a), a))
        names, shared = arm_labels(arms)
        for ax, (column, scale, ylabel) in zip(
            axes,
            (("val_acc", 100.0, "validation accuracy (%)"), ("train_loss", 1.0, "training loss")),
            strict=True,
        ):
            k = 0
            for arm in arms:
                rows = part[part["_arm"] == arm]
                base = is_base_arm(*arm)
                color = "0.25" if base else f"C{k % 10}"
                k += 0 if base else 1
                if per_seed:
                    for _, seed_rows in rows.groupby("seed"):
                        seed_rows = seed_rows.sort_values("epoch")
                        ax.plot(
                            seed_rows["epoch"],
                            seed_rows[column].astype(float) * scale,
                            color=color,
                            linewidth=0.5,
                            alpha=0.35,
                            zorder=2,
                        )
                stats = rows.groupby("epoch")[column].agg(["mean", "std"]).reset_index()
                x = stats["epoch"].to_numpy()
                m = stats["mean"].to_numpy(dtype=float) * scale
                s = np.nan_to_num(stats["std"].to_numpy(dtype=float)) * scale
                ax.plot(
                    x,
                    m,
                    color=color,
                    linestyle="--" if base else "-",
                    linewidth=2.5 if base else 1.3,
                    zorder=1 if base else 3,
                    label=names[arm],
                )
                if not per_seed:
                    ax.fill_between(x, m - s, m + s, color=color, alpha=0.08, linewidth=0)
            ax.set_xlabel("epoch")
            ax.set_ylabel(ylabel)
            ax.grid(True, alpha=0.3)
        axes[0].legend(fontsize=7, title=shared or None, title_fontsize=7)
        band = "per-seed traces behind the mean" if per_seed else "mean ± std (ddof = 1) band"
        fig.suptitle((label + "\n" if label else "") + band, fontsize=9)
        stem = f"curves_{index}" + ("_seeds" if per_seed else "")
        out.append(SvgFigure(stem, label or "curves", svg_text(fig)))
    return out, len(groups)


def _g(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def difference_figures(table: Table) -> list[SvgFigure]:
    """Per block of a `gamma` table: the paired difference arm − BASE (percentage points) per γ
    with its confidence interval, a line at zero, and filled markers where the one-sided test
    is significant: what bold in the table means, drawn."""
    out: list[SvgFigure] = []
    for b, block in enumerate(table.blocks):
        fig, (ax,) = _new_figure(1, width=5.5, height=3.6)
        drawn = False
        n_cols = len(table.column_titles)
        for j, title in enumerate(table.column_titles):
            lines: dict[tuple[str, float], list[tuple[float, Any]]] = {}
            for row in block.rows:
                cell = row.cells[j]
                if row.is_base or cell is None or cell.stats is None or not cell.stats.tested:
                    continue
                lines.setdefault((cell.arm.formulation, cell.arm.c), []).append(
                    (cell.arm.gamma, cell)
                )
            several = len(lines) > 1
            for k, ((formulation, c), points) in enumerate(sorted(lines.items())):
                points.sort(key=lambda p: p[0])
                # Columns side by side at each γ (a few % apart on the log axis), not on top.
                shift = 1.0 + 0.04 * (j - (n_cols - 1) / 2)
                g = np.array([p[0] for p in points]) * shift
                d = np.array([p[1].stats.mean_diff for p in points])
                lo = np.array([p[1].stats.ci_low for p in points])
                hi = np.array([p[1].stats.ci_high for p in points])
                sig = np.array([p[1].significant for p in points])
                color = f"C{(j * max(1, len(lines)) + k) % 10}"
                label = title + (f", {formulation} c = {c:g}" if several else "")
                ax.errorbar(
                    g,
                    d,
                    yerr=[d - lo, hi - d],
                    color=color,
                    capsize=3,
                    linewidth=1,
                    fmt="none",
                    zorder=2,
                )
                ax.plot(g, d, color=color, linewidth=1, zorder=2, label=label)
                ax.scatter(g[sig], d[sig], color=color, s=30, zorder=3)
                ax.scatter(g[~sig], d[~sig], facecolors="white", edgecolors=color, s=30, zorder=3)
                drawn = True
        if not drawn:
            continue
        ax.axhline(0.0, color="black", linewidth=1, zorder=1)
        ax.set_xscale("log")
        ax.set_xlabel("γ at initialisation (log scale)")
        ax.set_ylabel("arm − BASE, test accuracy (pp)")
        level = f"{table.options.confidence:.0%}"
        ax.set_title(
            (block.label + "\n" if block.label else "")
            + f"paired difference with its {level} CI; filled: significant "
            f"(p ≤ {table.options.alpha:g})",
            fontsize=9,
        )
        ax.legend(fontsize=7)
        ax.grid(True, which="both", alpha=0.3)
        out.append(SvgFigure(f"difference_{b}", block.label or "difference", svg_text(fig)))
    return out


def trial_figure(epochs: pd.DataFrame) -> SvgFigure | None:
    """One trial's epochs: accuracies (validation, test) and losses (training, validation)."""
    if epochs.empty:
        return None
    frame = epochs.sort_values("epoch")
    fig, axes = _new_figure(2, width=4.2, height=3.0)
    x = frame["epoch"].to_numpy()
    for column, name in (("val_acc", "validation"), ("test_acc", "test")):
        values = frame[column].to_numpy(dtype=float) * 100.0
        axes[0].plot(x, values, marker=".", label=name)
    for column, name in (("train_loss", "training"), ("val_loss", "validation")):
        axes[1].plot(x, frame[column].to_numpy(dtype=float), marker=".", label=name)
    axes[0].set_ylabel("accuracy (%)")
    axes[1].set_ylabel("loss")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    return SvgFigure("trial", "epochs", svg_text(fig))


def finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)
