"""BN diagnostics: the run is bit-identical with them on or off, and they measure what the paper
says (Sect. 3.2 outliers, Eqn. 20 gradient factor, Eqn. 24 at initialisation). CPU, tiny."""

from __future__ import annotations

import math
import random
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bnsweep.workers.checkpoint import load_checkpoint
from bnsweep.workers.diagnostics import (
    BNDiagnostics,
    conv_bn_relu_stack,
    probe_batch,
    should_inspect,
)
from bnsweep.workers.errors import SpecError
from bnsweep.workers.models import build_model
from bnsweep.workers.norm import SIGMA_ACT_RELU, bn_modules, set_bn_scale
from bnsweep.workers.results import EpochMetrics, LayerDiagnostics, TrialResult
from bnsweep.workers.spec import TrialSpec
from bnsweep.workers.trial import run_trial

SPEC = TrialSpec(
    dataset="digits", arch="resnet8", epochs=2, batch_size=64, lr=0.1, device="cpu", seed=3
)
#: σ_act of ReLU(N(0, 1)) exactly; Eqn. 23 uses its rounded 0.58.
SIGMA_ACT = math.sqrt(0.5 - 1.0 / (2.0 * math.pi))
#: Eqn. 24's claim "equal across γ" is checked to this relative tolerance. The only term that
#: does not cancel is ε in √(γ²σ² + ε): at γ = 0.1 it moves the factor by well under 1 %.
GAMMA_TOLERANCE = 0.05


def _metrics(history: tuple[EpochMetrics, ...]) -> list[dict]:
    return [{k: v for k, v in asdict(m).items() if k != "seconds"} for m in history]


class _Run:
    def __init__(self, result: TrialResult, folder: Path, inspector: BNDiagnostics | None):
        self.result, self.folder, self.inspector = result, folder, inspector
        self.records = inspector.take() if inspector is not None else {}


def _run(folder: Path, inspector: BNDiagnostics | None) -> _Run:
    def save(metrics: EpochMetrics, save) -> None:
        save(folder / f"epoch{metrics.epoch}")

    return _Run(run_trial(SPEC, on_epoch=save, inspect=inspector), folder, inspector)


@pytest.fixture(scope="module")
def _data_loaded() -> None:
    # The first `load_digits` of a process imports scikit-learn, which draws from Python's global
    # RNG after `seed_everything`; load once up front so both runs start from the same state.
    from bnsweep.workers.data import load_splits

    load_splits(SPEC)


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory: pytest.TempPathFactory, _data_loaded: None) -> _Run:
    return _run(tmp_path_factory.mktemp("off"), None)


@pytest.fixture(scope="module")
def inspected_run(tmp_path_factory: pytest.TempPathFactory, _data_loaded: None) -> _Run:
    return _run(tmp_path_factory.mktemp("on"), BNDiagnostics.for_spec(SPEC))


# -- no trace ---------------------------------------------------------------------------------


def _assert_states_equal(a: object, b: object, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype, where
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            _assert_states_equal(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_states_equal(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), where
    else:
        assert a == b, where


def test_metrics_and_every_checkpointed_state_are_bit_identical_with_diagnostics(
    plain_run: _Run, inspected_run: _Run
) -> None:
    assert _metrics(inspected_run.result.history) == _metrics(plain_run.result.history)
    for epoch in range(1, SPEC.epochs + 1):
        on = load_checkpoint(inspected_run.folder / f"epoch{epoch}")
        off = load_checkpoint(plain_run.folder / f"epoch{epoch}")
        # Weights, BN running statistics, optimizer momentum, schedule, data order, every RNG.
        for key in ("model", "optimizer", "scheduler", "data_generator", "rng"):
            _assert_states_equal(on[key], off[key], key)
    assert sorted(inspected_run.records) == [0, 1, 2]


def test_measuring_leaves_buffers_modes_and_rngs_as_they_were() -> None:
    # Dropout in front of a BN draws from torch's RNG in train mode: restored all the same.
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Dropout(0.5), nn.BatchNorm2d(8), nn.ReLU())
    model.eval()
    probe = torch.rand(16, 3, 8, 8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rngs = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    records = BNDiagnostics(1.0).measure(model, probe)
    assert len(records) == 1
    _assert_states_equal(dict(model.state_dict()), before)
    assert torch.equal(torch.get_rng_state(), rngs[0])
    assert np.array_equal(np.random.get_state()[1], rngs[1]) and random.getstate() == rngs[2]
    assert not any(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    assert not model[2]._forward_hooks


# -- what is recorded -------------------------------------------------------------------------


def test_every_bn_module_is_recorded_by_path_and_depth(inspected_run: _Run) -> None:
    model = build_model("resnet8", 10, 1, True, "standard", SPEC.bn_scale_init, "bn")
    names = {n for n, m in model.named_modules() if m in set(bn_modules(model))}
    for layers in inspected_run.records.values():
        assert {d.layer for d in layers} == names
        assert [d.depth for d in layers] == list(range(len(names)))
        assert layers[0].layer == "input_norm" and layers[0].module == "InputBatchNorm2d"
        for d in layers:
            assert 0.0 <= d.outlier_fraction <= 1.0 and d.gradient_factor > 0


def test_at_initialisation_nothing_has_drifted(inspected_run: _Run) -> None:
    gamma = SPEC.bn_scale_init
    for d in inspected_run.records[0]:
        expected = gamma * (SIGMA_ACT_RELU if d.module == "InputBatchNorm2d" else 1.0)
        assert d.gamma_mean == pytest.approx(expected) and d.gamma_std == 0.0
        assert d.beta_mean == d.beta_std == d.gamma_drift == d.beta_drift == 0.0
    final = {d.layer: d for d in inspected_run.records[SPEC.epochs]}
    assert final["body.stem.1"].gamma_drift > 0 and final["body.stem.1"].beta_drift > 0
    assert final["input_norm"].beta_drift == 0.0  # β of the input BN is fixed at 0 (Sect. 3.4)


def test_a_resumed_run_measures_what_the_uninterrupted_run_measured(
    inspected_run: _Run,
) -> None:
    # Drift needs the initial γ and β: recomputed from the spec, nothing saved in the checkpoint.
    inspector = BNDiagnostics.for_spec(SPEC)
    run_trial(SPEC, checkpoint=inspected_run.folder / "epoch1", inspect=inspector)
    resumed = inspector.take()
    assert sorted(resumed) == [2]  # epoch 0 is not inspected again on a resume
    assert resumed[2] == inspected_run.records[2]


def test_the_gradient_factor_and_outliers_are_computed_as_bn_normalises() -> None:
    bn = nn.BatchNorm2d(2)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.5, 2.0]))
    x = torch.zeros(4, 2, 5, 5)
    x[:, 1] = torch.arange(100.0).view(4, 5, 5)
    x[0, 0, 0, 0] = 1000.0  # one spike in 100 values: |X̂| = 99/√99 ≈ 9.9 > 6
    (d,) = BNDiagnostics(1.0).measure(nn.Sequential(bn), x)
    var = x.var(dim=(0, 2, 3), unbiased=False)
    expected = (bn.weight.detach() / torch.sqrt(var + bn.eps)).mean().item()
    assert d.gradient_factor == pytest.approx(expected, rel=1e-6)
    assert d.outlier_fraction == pytest.approx(1 / 200)
    assert d.gamma_mean == pytest.approx(1.25) and d.gamma_drift == pytest.approx(0.75)


def test_epochs_are_thinned_but_initialisation_and_the_last_epoch_are_kept() -> None:
    assert [e for e in range(11) if should_inspect(e, 3, 10)] == [0, 3, 6, 9, 10]
    assert [e for e in range(4) if should_inspect(e, 1, 3)] == [0, 1, 2, 3]
    assert not any(should_inspect(e, 0, 3) for e in range(4))
    with pytest.raises(SpecError, match=r"diagnostics\.every"):
        BNDiagnostics(0.1, every=-1)


def test_without_gamma_the_initial_values_are_copied_at_epoch_0() -> None:
    model = conv_bn_relu_stack(depth=2, width=4)
    set_bn_scale(model, 0.3)
    probe = torch.randn(8, 3, 6, 6)
    inspector = BNDiagnostics()
    assert all(d.gamma_drift == 0 for d in inspector.measure(model, probe, epoch=0))
    with torch.no_grad():
        model[1].weight.add_(0.1)
    assert inspector.measure(model, probe, epoch=1)[0].gamma_drift == pytest.approx(0.1)
    with pytest.raises(ValueError, match="must be epoch 0"):
        BNDiagnostics().measure(model, probe, epoch=2)


def test_the_probe_is_the_first_validation_images_without_augmentation() -> None:
    from bnsweep.workers.data import load_splits

    data = load_splits(SPEC)
    probe = probe_batch(data, 32, "cpu")
    assert torch.equal(probe, data.val_x[:32].float() / 255)


# -- Eqn. 24 -----------------------------------------------------------------------------------


def _factors_at_init(model_for_gamma, probe: torch.Tensor) -> dict[float, list[LayerDiagnostics]]:
    out = {}
    for gamma in (1.0, 0.5, 0.1):
        torch.manual_seed(0)  # the same weights for every γ: only γ differs
        out[gamma] = list(BNDiagnostics(gamma).measure(model_for_gamma(gamma), probe))
    return out


def _relative_spread(values: list[float]) -> float:
    return (max(values) - min(values)) / (sum(values) / len(values))


def test_eqn_24_the_gradient_factor_at_initialisation_does_not_depend_on_gamma() -> None:
    """Fig. 1's setting: conv3×3 (Kaiming fan-in) – BN – ReLU × 8 on random input, batch 128."""

    def stack(gamma: float) -> nn.Module:
        model = conv_bn_relu_stack(depth=8, width=32, in_channels=3)
        set_bn_scale(model, gamma)
        return model

    factors = _factors_at_init(stack, torch.randn(128, 3, 12, 12, generator=_g()))
    depth = len(factors[1.0])
    for layer in range(1, depth):  # every BN whose input came through a previous BN and ReLU
        values = [factors[g][layer].gradient_factor for g in factors]
        assert _relative_spread(values) < GAMMA_TOLERANCE, (layer, values)
        # Eqn. 22-24 with Kaiming fan-in (Σ w² ≈ 2): γ / √(γ² σ²_act Σ w²) = 1 / (σ_act √2).
        assert values[0] == pytest.approx(1 / (SIGMA_ACT * math.sqrt(2)), rel=0.1)
    # The first BN sees the raw input: no γ_prev to cancel, so its factor is proportional to γ.
    first = [factors[g][0].gradient_factor / g for g in factors]
    assert _relative_spread(first) < 1e-3


def test_resnet8_keeps_the_cancellation_but_departs_from_the_plain_level() -> None:
    """With β = 0 and ReLU every activation scales with γ, shortcuts included, so γ still
    cancels; what departs is the level: a BN reading a block's output (shortcut + branch) sees
    more variance than σ²_act·γ²·Σw² and gets a smaller factor than the plain stack's."""

    def resnet8(gamma: float) -> nn.Module:
        return build_model("resnet8", 10, 3, True, "standard", gamma, "bn")

    factors = _factors_at_init(resnet8, torch.rand(128, 3, 16, 16, generator=_g()))
    plain_level = 1 / (SIGMA_ACT * math.sqrt(2))
    for layer in range(1, len(factors[1.0])):
        values = [factors[g][layer].gradient_factor for g in factors]
        assert _relative_spread(values) < GAMMA_TOLERANCE, (layer, values)
    by_name = {d.layer: d.gradient_factor for d in factors[1.0]}
    after_shortcut = ["body.stages.1.bn1", "body.stages.2.bn1", "body.stages.1.downsample.1"]
    for name in after_shortcut:
        assert by_name[name] < 0.85 * plain_level, (name, by_name[name])
    assert by_name["body.stages.0.bn2"] == pytest.approx(plain_level, rel=0.1)
    # Without the input BN (Sect. 3.4) the stem's BN reads γ-free data: its factor scales with γ.

    def fixed_input(gamma: float) -> nn.Module:
        return build_model("resnet8", 10, 3, True, "standard", gamma, "fixed")

    fixed = _factors_at_init(fixed_input, torch.rand(128, 3, 16, 16, generator=_g()))
    stem = [fixed[g][0].gradient_factor / g for g in fixed]
    assert fixed[1.0][0].layer == "body.stem.1" and _relative_spread(stem) < 1e-3


def _g() -> torch.Generator:
    return torch.Generator().manual_seed(1234)
