"""A run that diverges keeps the score of its best validation epoch, the diverged network's own
evaluation included, from the worker through the store into the tables: the official loop has no
NaN check, so it validates and tests a diverged network like any other, and such a run was
scored and counted in the paper's means and tests (at chance level when its first epoch
diverged)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import bnsweep.workers.trial
from bnsweep.analysis.render.formats import render
from bnsweep.analysis.stats import AnalysisOptions
from bnsweep.analysis.tables import build_tables
from bnsweep.store.api import Store
from bnsweep.store.events import EpochRecorded, TrialFinished, TrialStarted
from bnsweep.workers.data import load_splits
from bnsweep.workers.results import EpochMetrics, TrialResult
from bnsweep.workers.spec import TrialSpec
from bnsweep.workers.trial import run_trial

SPEC = TrialSpec(
    dataset="digits",
    arch="resnet8",
    epochs=4,
    batch_size=64,
    lr=0.1,
    bn_scale_init=0.1,
    bn_lr_divisor=100.0,
    device="cpu",
)
DIVERGES_IN = 3


@pytest.fixture(scope="module")
def diverged() -> tuple[TrialResult, list[EpochMetrics]]:
    """SPEC trained normally for two epochs whose third epoch's loss is NaN."""
    real = bnsweep.workers.trial.train_one_epoch
    calls = {"n": 0}

    def nan_in_third_epoch(*args, **kwargs):
        loss_sum, images = real(*args, **kwargs)
        calls["n"] += 1
        return (torch.tensor(math.nan) if calls["n"] == DIVERGES_IN else loss_sum), images

    seen: list[EpochMetrics] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bnsweep.workers.trial, "train_one_epoch", nan_in_third_epoch)
        result = run_trial(SPEC, on_epoch=lambda m, save: seen.append(m))
    return result, seen


def test_the_worker_reports_the_best_epoch_the_diverged_one_included(diverged) -> None:
    result, seen = diverged
    assert result.status == "diverged" and result.diverged_epoch == DIVERGES_IN
    assert len(seen) == DIVERGES_IN and all(math.isfinite(m.val_acc) for m in seen)
    best = max(seen, key=lambda m: m.val_acc)
    best = next(m for m in seen if m.val_acc == best.val_acc)  # ties: the first (Sect. 4.2)
    assert result.best_epoch == best.epoch and result.best_val_acc == best.val_acc
    assert result.test_acc == best.test_acc and math.isfinite(result.test_acc)
    assert result.final_test_acc is None


def _store_trials(tmp_path: Path, spec: TrialSpec, result: TrialResult, seen, base_acc: float):
    """The diverged run of `spec` (seed 1), a completed BASE seed 1 at `base_acc` and a
    completed seed 2 of the arm at 0.5, through a store: its trials frame."""
    base = spec.replace(bn_scale_init=1.0, bn_lr_divisor=1.0)
    url = f"sqlite:///{tmp_path / 'results.db'}"
    with Store.open(url) as store:
        store.register_sweep("d", "name: d", [spec, base, spec.replace(seed=2)])
        events: list = [TrialStarted(spec.spec_hash, spec.seed)]
        events += [EpochRecorded(spec.spec_hash, spec.seed, metrics=m) for m in seen]
        events.append(TrialFinished.from_result(spec.spec_hash, spec.seed, result))
        for other, acc in ((base, base_acc), (spec.replace(seed=2), 0.5)):
            events.append(TrialStarted(other.spec_hash, other.seed))
            events.append(
                TrialFinished(other.spec_hash, other.seed, "completed", test_acc=acc, best_epoch=1)
            )
        store.apply(events)
        return store.trials()


def test_a_run_diverged_in_its_first_epoch_counts_at_chance_level(tmp_path: Path) -> None:
    # The official loop evaluates the NaN network: argmax of NaN logits is class 0 for every
    # image, so its test accuracy is class 0's share of the test set, and it counts.
    spec = SPEC.replace(lr=1e38, epochs=2)  # overflows the weights within the first epoch
    seen: list[EpochMetrics] = []
    result = run_trial(spec, on_epoch=lambda m, save: seen.append(m))
    assert result.status == "diverged" and result.diverged_epoch == 1 and len(seen) == 1
    assert not math.isfinite(seen[0].train_loss)
    test_y = load_splits(spec).test_y
    assert result.test_acc == pytest.approx(float((test_y == 0).float().mean()))
    assert result.best_epoch == 1 and result.best_val_acc == seen[0].val_acc

    trials = _store_trials(tmp_path, spec, result, seen, base_acc=0.9)
    assert trials.loc[trials["status"] == "diverged", "test_acc"].item() == result.test_acc
    (table,) = build_tables(trials)
    cell = next(r for r in table.blocks[0].rows if not r.is_base).cells[0]
    assert cell.n == 2 and cell.n_diverged == 1 and cell.diverged_scored == (1,)
    assert cell.comparison.seeds == (1,)
    assert cell.comparison.arm_scores == (result.test_acc,)
    (note,) = [n for n in table.notes if "Diverged runs counted" in n]
    assert "seed 1" in note and "official code" in note
    assert not any("without a score" in n for n in table.notes)


def test_the_store_and_the_table_keep_that_score(diverged, tmp_path: Path) -> None:
    result, seen = diverged
    # BASE seed 1 and arm seed 2 as plain completed runs, so the cell has a partner.
    trials = _store_trials(tmp_path, SPEC, result, seen, base_acc=result.test_acc - 0.05)
    row = trials[trials["status"] == "diverged"].iloc[0]
    assert row["test_acc"] == result.test_acc and row["best_epoch"] == result.best_epoch
    assert row["diverged_epoch"] == DIVERGES_IN

    (table,) = build_tables(trials)
    (arm_row,) = [r for r in table.blocks[0].rows if not r.is_base]
    cell = arm_row.cells[0]
    assert cell.n == 2 and cell.mean == pytest.approx(100 * (result.test_acc + 0.5) / 2)
    assert cell.comparison.seeds == (1,)
    assert cell.comparison.arm_scores == (result.test_acc,)
    assert "seed 1" in " ".join(n for n in table.notes if "counted in means" in n)
    assert "counted in means and pairs" in render([table], "md")

    (excluded,) = build_tables(trials, options=AnalysisOptions(exclude_diverged=True))
    cell = next(r for r in excluded.blocks[0].rows if not r.is_base).cells[0]
    assert cell.n == 1 and cell.mean == pytest.approx(50.0) and cell.comparison.seeds == ()
    assert any("diverged runs excluded" in n and "seed 1" in n for n in excluded.notes)
