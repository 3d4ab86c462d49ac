"""Figures from DataFrames alone: one accuracy-vs-γ figure per block, curves per experiment."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bnsweep.analysis.plots import plot_accuracy_vs_gamma, plot_validation_curves
from tests.analysis.data import golden_trials


def _epochs(trials: pd.DataFrame) -> pd.DataFrame:
    done = trials[trials["status"] == "completed"]
    parts = []
    for epoch in (1, 2, 3):
        part = done.drop(columns=["test_acc"]).assign(
            epoch=epoch, val_acc=done["test_acc"] - 0.01 * (3 - epoch), test_acc=done["test_acc"]
        )
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def test_accuracy_vs_gamma_one_figure_per_block(tmp_path: Path):
    paths = plot_accuracy_vs_gamma(golden_trials(), tmp_path)
    assert sorted(p.name for p in paths) == [
        "accuracy_vs_gamma_cifar-10.pdf",
        "accuracy_vs_gamma_cifar-10.png",
        "accuracy_vs_gamma_cifar-100.pdf",
        "accuracy_vs_gamma_cifar-100.png",
    ]
    assert all(p.stat().st_size > 1000 for p in paths)


def test_validation_curves_of_completed_runs(tmp_path: Path):
    trials = golden_trials()
    paths = plot_validation_curves(_epochs(trials), tmp_path, trials)
    # Dataset and network vary together: one figure per combination, a panel per α.
    assert sorted(p.name for p in paths) == [
        "validation_curves_dataset-cifar10-arch-resnet18.pdf",
        "validation_curves_dataset-cifar10-arch-resnet18.png",
        "validation_curves_dataset-cifar100-arch-resnet34.pdf",
        "validation_curves_dataset-cifar100-arch-resnet34.png",
    ]


def test_no_epochs_no_figures(tmp_path: Path):
    trials = golden_trials()
    assert plot_validation_curves(_epochs(trials).iloc[0:0], tmp_path, trials) == []
