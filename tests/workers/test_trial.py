"""The training run: reproducible, resumable, and honest about divergence (CPU)."""

from __future__ import annotations

import itertools
import math
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from bnsweep.workers.checkpoint import CheckpointError, load_checkpoint
from bnsweep.workers.data import load_splits
from bnsweep.workers.results import EpochMetrics, TrialResult
from bnsweep.workers.spec import TrialSpec
from bnsweep.workers.trial import FINAL_LR, build, run_trial

SPEC = TrialSpec(dataset="digits", arch="resnet8", epochs=3, batch_size=64, lr=0.1, device="cpu")


def _metrics(history: tuple[EpochMetrics, ...]) -> list[dict]:
    """Everything but wall time, which is the one thing allowed to differ."""
    return [{k: v for k, v in asdict(m).items() if k != "seconds"} for m in history]


def _summary(result: TrialResult) -> tuple:
    return (
        result.status,
        result.epochs_run,
        result.best_epoch,
        result.best_val_acc,
        result.test_acc,
        result.final_test_acc,
    )


@pytest.fixture(scope="module")
def uninterrupted() -> TrialResult:
    return run_trial(SPEC)


def test_two_runs_of_one_spec_are_bit_identical(uninterrupted: TrialResult) -> None:
    again = run_trial(SPEC)
    assert _metrics(again.history) == _metrics(uninterrupted.history)
    assert _summary(again) == _summary(uninterrupted)


def test_another_seed_gives_another_run(uninterrupted: TrialResult) -> None:
    other = run_trial(SPEC.replace(seed=2, epochs=1))
    assert _metrics(other.history)[0] != _metrics(uninterrupted.history)[0]


def test_result_fields_follow_the_best_validation_epoch(uninterrupted: TrialResult) -> None:
    history = uninterrupted.history
    assert uninterrupted.status == "completed" and uninterrupted.epochs_run == SPEC.epochs
    best = max(history, key=lambda m: m.val_acc)
    first_best = next(m for m in history if m.val_acc == best.val_acc)
    assert uninterrupted.best_epoch == first_best.epoch
    assert uninterrupted.test_acc == first_best.test_acc
    assert uninterrupted.final_test_acc == history[-1].test_acc
    assert uninterrupted.images_per_sec > 0
    # Half-period cosine, one factor per epoch: α for the first epoch, then decreasing.
    lrs = [m.lr for m in history]
    assert lrs[0] == SPEC.lr and all(a > b for a, b in itertools.pairwise(lrs))
    # Learning happens: digits are easy for resnet8 even in a few epochs.
    assert uninterrupted.best_val_acc > 0.3


def test_resume_after_epoch_k_equals_an_uninterrupted_run(
    tmp_path: Path, uninterrupted: TrialResult
) -> None:
    seen: list[int] = []

    def stop_after_first(metrics: EpochMetrics, save) -> None:
        seen.append(metrics.epoch)
        save(tmp_path / f"epoch{metrics.epoch}")

    run_trial(SPEC, on_epoch=stop_after_first)
    # Resume from the checkpoint written after epoch 1, as if the run had stopped there.
    resumed = run_trial(SPEC, checkpoint=tmp_path / "epoch1")
    assert _metrics(resumed.history) == _metrics(uninterrupted.history)
    assert _summary(resumed) == _summary(uninterrupted)
    state = load_checkpoint(tmp_path / "epoch1")
    assert state["progress"]["epoch"] == 1 and state["seed"] == SPEC.seed


def test_a_checkpoint_of_another_trial_is_refused(tmp_path: Path) -> None:
    spec = SPEC.replace(epochs=1)
    run_trial(spec, on_epoch=lambda m, save: save(tmp_path))
    with pytest.raises(CheckpointError, match="belongs to trial"):
        run_trial(spec.replace(seed=2), checkpoint=tmp_path)


class Payload:
    def __reduce__(self):
        return (shutil.rmtree, ("/nonexistent-bnsweep-test",))


def test_loading_never_unpickles_arbitrary_objects(tmp_path: Path) -> None:
    torch.save({"format_version": 1, "evil": Payload()}, tmp_path / "trial.pt")
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(tmp_path)


def test_corrupt_and_missing_checkpoints(tmp_path: Path) -> None:
    (tmp_path / "trial.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nothing-here")


def test_divergence_is_a_result_not_a_crash() -> None:
    # An absurd learning rate overflows the weights within the first epoch.
    seen: list[EpochMetrics] = []
    result = run_trial(SPEC.replace(lr=1e38), on_epoch=lambda m, save: seen.append(m))
    assert result.status == "diverged"
    assert result.diverged_epoch == 1 and result.epochs_run == 1
    assert "epoch 1" in result.error
    assert len(seen) == 1 and not math.isfinite(seen[0].train_loss)
    # The NaN network is evaluated as the official loop does (tests/analysis/test_diverged.py).
    assert result.best_epoch == 1 and math.isfinite(result.test_acc)


# -- the learning-rate schedule ------------------------------------------------------------------


def _scheduled(
    spec: TrialSpec,
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    _, optimizer, scheduler = build(spec, load_splits(spec), torch.device("cpu"))
    return optimizer, scheduler


def _official(optimizer: torch.optim.Optimizer, epochs: int):
    """The official code's schedule over groups with the same initial learning rates:
    CosineAnnealingLR(T_max=epochs, eta_min=1e-8), stepped once per epoch."""
    twin = torch.optim.SGD(
        [
            {"params": [torch.zeros(1, requires_grad=True)], "lr": g["lr"]}
            for g in optimizer.param_groups
        ],
        lr=1.0,
    )
    return twin, torch.optim.lr_scheduler.CosineAnnealingLR(twin, T_max=epochs, eta_min=1e-8)


def test_every_group_follows_the_official_cosine_down_to_1e_8() -> None:
    spec = SPEC.replace(epochs=10, lr=0.1, bn_lr_divisor=100.0)
    optimizer, scheduler = _scheduled(spec)
    names = [g["name"] for g in optimizer.param_groups]
    gamma_group = names.index("bn_scale")
    assert optimizer.param_groups[gamma_group]["lr"] == pytest.approx(0.1 / 100)
    twin, official = _official(optimizer, spec.epochs)
    for epoch in range(spec.epochs + 1):
        for ours, theirs in zip(optimizer.param_groups, twin.param_groups, strict=True):
            expected = pytest.approx(theirs["lr"], rel=1e-9, abs=1e-18)
            assert ours["lr"] == expected, (epoch, ours["name"])
        # The closed form at a few points of the curve, for α and for α/c.
        for group, base in ((0, 0.1), (gamma_group, 0.001)):
            expected = 1e-8 + (base - 1e-8) * (1 + math.cos(math.pi * epoch / spec.epochs)) / 2
            assert optimizer.param_groups[group]["lr"] == pytest.approx(expected, rel=1e-12)
        optimizer.step()
        scheduler.step()
        twin.step()
        official.step()
    # The floor: every group, γ included, ends at eta_min = 1e-8 (not 1e-8/c).
    _, scheduler = _scheduled(spec)
    assert FINAL_LR == 1e-8
    for group, factor in zip(optimizer.param_groups, scheduler.lr_lambdas, strict=True):
        assert group["initial_lr"] * factor(spec.epochs) == pytest.approx(1e-8, rel=1e-9)
