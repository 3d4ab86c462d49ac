"""BN diagnostics figures from DataFrames with the store's `diagnostics()` columns."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bnsweep.analysis.pairing import AnalysisError
from bnsweep.analysis.plots import (
    PLAIN_GRADIENT_FACTOR,
    make_plots,
    plot_bn_drift,
    plot_diagnostics,
    plot_gradient_factor_at_init,
    plot_outlier_fraction,
)
from bnsweep.store.columns import DIAGNOSTIC_COLUMNS
from tests.analysis.data import EXPERIMENT, golden_trials

ARMS = (("standard", 1.0, 1.0), ("standard", 0.1, 100.0))
LAYERS = ("input_norm", "body.stem.1", "body.stages.0.bn1", "body.stages.0.bn2")


def frame(
    arms=ARMS, seeds=(1, 2, 3), epochs=(0, 1, 2, 3), lrs=(0.1,), **experiment
) -> pd.DataFrame:
    """Diagnostics rows: drift grows with the epoch and is 10× larger for BASE."""
    rows = []
    row = {**EXPERIMENT, **experiment}
    for (formulation, gamma, c), lr, seed, epoch in itertools.product(arms, lrs, seeds, epochs):
        scale = 1.0 if gamma == 1.0 else 0.1
        for depth, layer in enumerate(LAYERS):
            rows.append(
                {
                    **EXPERIMENT,
                    **experiment,
                    "lr": lr,
                    "trial_id": 0,
                    # As tests/analysis/data.py names trials, so golden_trials() pairs up.
                    "spec_hash": f"{formulation}-{gamma:g}-{c:g}-{row['dataset']}-{lr:g}",
                    "seed": seed,
                    "formulation": formulation,
                    "bn_scale_init": gamma,
                    "bn_lr_divisor": c,
                    "epoch": epoch,
                    "layer": layer,
                    "depth": depth,
                    "module": "InputBatchNorm2d" if depth == 0 else "BatchNorm2d",
                    "channels": 16,
                    "gamma_mean": gamma,
                    "gamma_std": 0.0,
                    "beta_mean": 0.0,
                    "beta_std": 0.0,
                    "gamma_drift": scale * 0.01 * epoch * (depth + 1),
                    "beta_drift": scale * 0.02 * epoch,
                    "outlier_fraction": 1e-4 * scale / (1 + epoch),
                    "gradient_factor": PLAIN_GRADIENT_FACTOR if depth else 2.0 * gamma,
                }
            )
    return pd.DataFrame(rows)[list(DIAGNOSTIC_COLUMNS)]


def _names(paths: list[Path]) -> list[str]:
    return sorted(p.name for p in paths)


def test_the_frame_has_the_stores_columns() -> None:
    assert list(frame().columns) == list(DIAGNOSTIC_COLUMNS)


def test_drift_at_the_end_of_training_one_figure_per_experiment(tmp_path: Path) -> None:
    df = pd.concat([frame(arch="resnet18"), frame(arch="resnet34")], ignore_index=True)
    paths = plot_bn_drift(df, tmp_path)
    assert _names(paths) == [
        "bn_drift_arch-resnet18.pdf",
        "bn_drift_arch-resnet18.png",
        "bn_drift_arch-resnet34.pdf",
        "bn_drift_arch-resnet34.png",
    ]
    assert all(p.stat().st_size > 1000 for p in paths)
    # Only initialisation recorded: nothing has drifted yet, so there is no figure.
    assert plot_bn_drift(frame(epochs=(0,)), tmp_path / "none") == []


def test_outlier_fraction_over_epochs_with_a_panel_per_lr(tmp_path: Path) -> None:
    paths = plot_outlier_fraction(frame(lrs=(0.1, 0.01)), tmp_path)
    assert _names(paths) == ["bn_outliers.pdf", "bn_outliers.png"]


def test_gradient_factor_at_init_a_panel_per_network(tmp_path: Path) -> None:
    arms = (("standard", 1.0, 1.0), ("standard", 0.5, 100.0), ("standard", 0.1, 100.0))
    df = pd.concat(
        [frame(arms, arch="resnet8"), frame(arms, arch="resnet18", lr=0.01)], ignore_index=True
    )
    paths = plot_gradient_factor_at_init(df, tmp_path)
    # α does not change a network at initialisation: one figure, panels resnet8 and resnet18.
    assert _names(paths) == ["gradient_factor_init.pdf", "gradient_factor_init.png"]
    assert plot_gradient_factor_at_init(df[df["epoch"] > 0], tmp_path / "none") == []


def test_only_completed_runs_are_drawn(tmp_path: Path) -> None:
    trials = pd.DataFrame(
        {"spec_hash": ["standard-1-1-cifar10-0.1"], "seed": [1], "status": ["diverged"]}
    )
    df = frame(arms=ARMS[:1])
    assert plot_bn_drift(df[df["seed"] == 1], tmp_path, trials) == []


def test_a_frame_without_the_columns_is_refused(tmp_path: Path) -> None:
    with pytest.raises(AnalysisError, match="gradient_factor"):
        plot_gradient_factor_at_init(frame().drop(columns=["gradient_factor"]), tmp_path)


def test_make_plots_adds_the_diagnostics_when_given(tmp_path: Path) -> None:
    trials = golden_trials()
    epochs = trials.assign(epoch=1, val_acc=trials["test_acc"]).iloc[0:0]
    without = make_plots(trials, epochs, tmp_path / "a")
    with_diag = make_plots(trials, epochs, tmp_path / "b", diagnostics=frame())
    added = sorted(set(_names(with_diag)) - set(_names(without)))
    assert added == sorted(
        f"{stem}.{ext}"
        for stem in ("bn_drift", "bn_outliers", "gradient_factor_init")
        for ext in ("pdf", "png")
    )


def test_measured_diagnostics_plot_the_plain_stack_and_resnet8(tmp_path: Path) -> None:
    """The figure of docs/diagnostics.md, from real measurements at initialisation."""
    measured = measured_at_init()
    paths = plot_diagnostics(measured, tmp_path)
    # Only initialisation was measured: no drift yet; outliers and factors, one panel per network.
    assert _names(paths) == sorted(
        f"{stem}.{ext}"
        for stem in (
            "bn_outliers_arch-conv-bn-relu-x8",
            "bn_outliers_arch-resnet8",
            "gradient_factor_init",
        )
        for ext in ("pdf", "png")
    )
    # Eqn. 24 on the plain stack: after the first BN, every γ gives the dotted line's level.
    plain = measured[(measured["arch"] == "conv-bn-relu x8") & (measured["depth"] > 0)]
    assert np.allclose(plain["gradient_factor"], PLAIN_GRADIENT_FACTOR, rtol=0.1)


def test_bnsweep_plots_draws_the_diagnostics_of_a_stored_sweep(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bnsweep.cli import main
    from bnsweep.store.api import Store
    from bnsweep.store.events import DiagnosticsRecorded, TrialFinished, TrialStarted
    from bnsweep.sweep import expand, parse_sweep_spec

    text = (
        "name: diag\n"
        "defaults: {dataset: digits, arch: resnet8, epochs: 2, bn_lr_divisor: 100}\n"
        "grids: [{bn_scale_init: [0.1]}]\n"
        "seeds: 2\n"
    )
    cells = expand(parse_sweep_spec(text))
    rows = frame(arms=ARMS, seeds=(1, 2), epochs=(0, 1, 2))
    url = f"sqlite:///{tmp_path / 'results.db'}"
    with Store.open(url) as store:
        store.register_sweep("diag", text, cells)
        events: list[object] = []
        for cell in cells:
            key = (cell.spec_hash, cell.seed)
            arm = rows[
                (rows["bn_scale_init"] == cell.bn_scale_init)
                & (rows["bn_lr_divisor"] == cell.bn_lr_divisor)
                & (rows["seed"] == cell.seed)
            ]
            events.append(TrialStarted(*key))
            for epoch, part in arm.groupby("epoch"):
                layers = tuple(part[list(DIAGNOSTIC_COLUMNS)[-12:]].to_dict("records"))
                events.append(DiagnosticsRecorded(*key, int(epoch), layers))
            events.append(
                TrialFinished(*key, "completed", epochs_run=2, best_epoch=2, test_acc=0.9)
            )
        store.apply(events)
    assert main(["plots", "--sweep", "diag", "--db", url, "--out", str(tmp_path / "out")]) == 0
    written = {Path(p).name for p in capsys.readouterr().out.split()}
    assert {"bn_drift.png", "bn_outliers.png", "gradient_factor_init.png"} <= written


def measured_at_init(gammas=(1.0, 0.5, 0.1)) -> pd.DataFrame:
    """Diagnostics at initialisation of Fig. 1's plain stack and of resnet8, as store rows."""
    import torch

    from bnsweep.workers.diagnostics import BNDiagnostics, conv_bn_relu_stack
    from bnsweep.workers.models import build_model
    from bnsweep.workers.norm import set_bn_scale

    probe = torch.rand(128, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    rows = []
    for arch, gamma in itertools.product(("conv-bn-relu x8", "resnet8"), gammas):
        torch.manual_seed(0)
        if arch == "resnet8":
            model = build_model("resnet8", 10, 3, True, "standard", gamma, "bn")
        else:
            model = conv_bn_relu_stack(depth=8, width=32)
            set_bn_scale(model, gamma)
        for d in BNDiagnostics(gamma).measure(model, probe):
            rows.append(
                {
                    **EXPERIMENT,
                    "arch": arch,
                    "trial_id": 0,
                    "spec_hash": f"{arch}-{gamma}",
                    "seed": 1,
                    "formulation": "standard",
                    "bn_scale_init": gamma,
                    "bn_lr_divisor": 100.0,
                    "epoch": 0,
                    **d.to_dict(),
                }
            )
    return pd.DataFrame(rows)[list(DIAGNOSTIC_COLUMNS)]


if __name__ == "__main__":
    # `python -m tests.analysis.test_diagnostic_plots` redraws docs/img/gradient_factor_init.png
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        (png,) = [p for p in plot_gradient_factor_at_init(measured_at_init(), folder)
                  if p.suffix == ".png"]  # fmt: skip
        target = Path(__file__).resolve().parents[2] / "docs" / "img" / "gradient_factor_init.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(png, target)
        print(target)
