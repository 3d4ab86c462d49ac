"""BN formulations checked against the paper's equations; γ setting; input normalisation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bnsweep.workers.errors import DataError, SpecError
from bnsweep.workers.norm import (
    FIXED_MEAN,
    FIXED_STD,
    FORMULATIONS,
    INPUT_NORMS,
    SIGMA_ACT_RELU,
    InputBatchNorm2d,
    Standardize,
    bn_modules,
    bn_other_parameters,
    bn_scale_parameters,
    set_bn_scale,
)

EPS = 1e-5


def _x_hat(x: torch.Tensor) -> torch.Tensor:
    """Eq. 1-3 with batch statistics (biased variance), by hand."""
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    var = x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + EPS)


def _c(t: torch.Tensor) -> torch.Tensor:
    return t.view(1, -1, 1, 1)


def _gap(t: torch.Tensor) -> torch.Tensor:
    return t.mean(dim=(2, 3), keepdim=True)


# Y for each formulation from the paper's equations, given the module, the raw input X and X̂.
EXPECTED = {
    "standard": lambda m, x, xh: _c(m.weight) * xh + _c(m.bias),  # Eq. 4
    "a1": lambda m, x, xh: _c(m.weight) * (xh + _c(m.bias)),  # Eq. 26
    "a2": lambda m, x, xh: _c(m.weight) * (_c(m.gamma0) * xh + _c(m.bias)),  # Eq. 27
    # Eq. 28-29: RBN takes GAP of X̂, IEBN of the raw X; the minus variants drop w_v·GAP.
    "rbn": lambda m, x, xh: (
        _c(m.weight) * torch.sigmoid(_c(m.w_v) * _gap(xh) + _c(m.w_b)) * xh + _c(m.bias)
    ),
    "iebn": lambda m, x, xh: (
        _c(m.weight) * torch.sigmoid(_c(m.w_v) * _gap(x) + _c(m.w_b)) * xh + _c(m.bias)
    ),
    "rbn_minus": lambda m, x, xh: _c(m.weight) * torch.sigmoid(_c(m.w_b)) * xh + _c(m.bias),
    "iebn_minus": lambda m, x, xh: _c(m.weight) * torch.sigmoid(_c(m.w_b)) * xh + _c(m.bias),
}

# The extra parameters and their initial values (Sect. 4.4, 4.5).
EXTRAS = {
    "standard": {},
    "a1": {},
    "a2": {"gamma0": 1.0},
    "rbn": {"w_v": 0.0, "w_b": 1.0},
    "rbn_minus": {"w_b": 1.0},
    "iebn": {"w_v": 0.0, "w_b": -1.0},
    "iebn_minus": {"w_b": -1.0},
}


def test_every_formulation_has_an_expected_formula() -> None:
    assert set(EXPECTED) == set(FORMULATIONS) == set(EXTRAS)


@pytest.mark.parametrize("name", FORMULATIONS)
def test_formulation_matches_the_paper_equation_in_train_mode(name: str) -> None:
    torch.manual_seed(0)
    bn = FORMULATIONS[name](3)
    with torch.no_grad():
        for param in bn.parameters():
            param.copy_(torch.randn_like(param))
    x = torch.randn(4, 3, 5, 5) * 3 + 1
    expected = EXPECTED[name](bn, x, _x_hat(x))
    torch.testing.assert_close(bn(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", FORMULATIONS)
def test_formulation_is_a_batchnorm2d_norm_layer_with_its_extras(name: str) -> None:
    cls = FORMULATIONS[name]
    bn = cls(6, eps=1e-3, momentum=0.2)
    assert isinstance(bn, nn.BatchNorm2d)
    assert bn.eps == 1e-3 and bn.momentum == 0.2
    own = dict(bn.named_parameters())
    assert set(own) == {"weight", "bias", *EXTRAS[name]}
    for extra, value in EXTRAS[name].items():
        assert torch.equal(own[extra], torch.full((6,), value))
    assert list(bn_scale_parameters(bn)) == [bn.weight]
    assert {id(p) for p in bn_other_parameters(bn)} == {
        id(p) for n, p in own.items() if n != "weight"
    }


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("name", FORMULATIONS)
def test_running_stats_and_eval_mode_behave_like_batchnorm2d(name: str, momentum) -> None:
    torch.manual_seed(1)
    reference, bn = nn.BatchNorm2d(3, momentum=momentum), FORMULATIONS[name](3, momentum=momentum)
    for _ in range(2):
        x = torch.randn(4, 3, 5, 5) * 2 + 0.5
        reference(x)
        bn(x)
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(bn.state_dict()[key], value)
    bn.eval()
    x = torch.randn(2, 3, 5, 5)
    x_hat = (x - _c(bn.running_mean)) / torch.sqrt(_c(bn.running_var) + EPS)
    torch.testing.assert_close(bn(x), EXPECTED[name](bn, x, x_hat), atol=1e-5, rtol=1e-5)
    assert int(bn.num_batches_tracked) == 2


@pytest.mark.parametrize("name", ["rbn", "iebn"])
def test_instance_scaling_starts_at_the_papers_effective_scale(name: str) -> None:
    # Sect. 4.5: with γ = 1 the initial effective scale is sigmoid(±1) = 0.731 / 0.269.
    bn = FORMULATIONS[name](2)
    x = torch.randn(3, 2, 4, 4)
    expected = 1 / (1 + math.exp(-bn.w_b_init))
    torch.testing.assert_close(bn(x), expected * _x_hat(x), atol=1e-5, rtol=1e-5)


def test_sigma_act_is_the_std_of_a_relu_gated_unit_gaussian() -> None:
    assert math.isclose(SIGMA_ACT_RELU, math.sqrt(0.5 - 1 / (2 * math.pi)), abs_tol=0.005)


def test_set_bn_scale_sets_gamma_beta_and_input_bn_but_not_extras() -> None:
    model = nn.Sequential(
        InputBatchNorm2d(3),
        nn.Conv2d(3, 4, 3),
        FORMULATIONS["a2"](4),
        FORMULATIONS["iebn"](4),
    )
    with torch.no_grad():
        for module in bn_modules(model):
            module.bias.fill_(0.7)
        model[2].gamma0.fill_(2.0)
    set_bn_scale(model, 0.25)
    assert torch.equal(model[0].weight, torch.full((3,), 0.58 * 0.25))
    for module in model[2:]:
        assert torch.equal(module.weight, torch.full((4,), 0.25))
    for module in bn_modules(model):
        assert torch.equal(module.bias, torch.zeros_like(module.bias))
    assert torch.equal(model[2].gamma0, torch.full((4,), 2.0))
    assert torch.equal(model[3].w_v, torch.zeros(4)) and torch.equal(model[3].w_b, -torch.ones(4))
    assert len(bn_modules(model)) == 3


@pytest.mark.parametrize("gamma", [0.0, -0.1, float("nan"), float("inf"), True, "0.1"])
def test_gamma_not_a_positive_number_is_an_error(gamma) -> None:
    with pytest.raises(SpecError, match=r"^bn_scale_init \(γ\): must be a finite number > 0"):
        set_bn_scale(nn.BatchNorm2d(2), gamma)


@pytest.mark.parametrize("gamma", [1.5, 4])
def test_gamma_above_one_is_allowed(gamma: float) -> None:
    # Sect. 4.4 tried γ > 1 ("degraded results, as expected"): a user may try it too.
    model = nn.Sequential(InputBatchNorm2d(3), nn.BatchNorm2d(2))
    set_bn_scale(model, gamma)
    assert torch.equal(model[1].weight, torch.full((2,), float(gamma)))
    assert torch.equal(model[0].weight, torch.full((3,), SIGMA_ACT_RELU * gamma))


# -- input normalisation ----------------------------------------------------------------------

STATS = (torch.tensor([0.4, 0.5, 0.6]), torch.tensor([0.2, 0.25, 0.3]))


def _check_bn(module: nn.Module, x: torch.Tensor) -> None:
    # Sect. 3.4: one trainable γ̂ = 0.58·γ per input channel, β frozen at 0.
    assert isinstance(module, InputBatchNorm2d)
    trainable = [p for p in module.parameters() if p.requires_grad]
    assert len(trainable) == 1 and trainable[0] is module.weight and module.weight.numel() == 3
    assert torch.equal(module.weight, torch.full((3,), 0.58 * 0.5))
    assert torch.equal(module.bias, torch.zeros(3)) and not module.bias.requires_grad
    module(x).sum().backward()
    assert module.bias.grad is None
    torch.testing.assert_close(module(x), 0.58 * 0.5 * _x_hat(x), atol=1e-5, rtol=1e-5)


def _check_fixed(module: nn.Module, x: torch.Tensor) -> None:
    # Sect. 3.4: μ = σ = 128 on the 8-bit scale; the model sees pixel/255, so 128/255 here.
    assert FIXED_MEAN == FIXED_STD == 128 / 255
    assert isinstance(module, Standardize) and not list(module.parameters())
    torch.testing.assert_close(module.mean.flatten(), torch.full((3,), 128 / 255))
    torch.testing.assert_close(module.std.flatten(), torch.full((3,), 128 / 255))
    torch.testing.assert_close(module(x), (x * 255 - 128) / 128)
    # The 8-bit values 0, 128 and 255 land on -1, 0 and 127/128, as (p - 128) / 128 does.
    pixels = torch.tensor([0.0, 128.0, 255.0]).view(1, 3, 1, 1)
    torch.testing.assert_close(module(pixels / 255).flatten(), torch.tensor([-1.0, 0.0, 127 / 128]))


def _check_offline(module: nn.Module, x: torch.Tensor) -> None:
    assert isinstance(module, Standardize) and not list(module.parameters())
    torch.testing.assert_close(module(x), (x - _c(STATS[0])) / _c(STATS[1]))
    assert set(module.state_dict()) == {"mean", "std"}


def _check_none(module: nn.Module, x: torch.Tensor) -> None:
    assert torch.equal(module(x), x) and not list(module.parameters())


INPUT_NORM_CHECKS = {
    "bn": _check_bn,
    "fixed": _check_fixed,
    "offline": _check_offline,
    "none": _check_none,
}


def test_every_input_norm_is_checked() -> None:
    assert set(INPUT_NORM_CHECKS) == set(INPUT_NORMS)


@pytest.mark.parametrize("name", INPUT_NORMS)
def test_input_norm(name: str) -> None:
    torch.manual_seed(2)
    module = INPUT_NORMS[name](3, 0.5, STATS)
    INPUT_NORM_CHECKS[name](module, torch.rand(4, 3, 6, 6))


def test_offline_needs_matching_positive_stats() -> None:
    with pytest.raises(SpecError, match=r"offline.*mean, std"):
        INPUT_NORMS["offline"](3, 0.1, None)
    with pytest.raises(SpecError, match="3 channels"):
        INPUT_NORMS["offline"](3, 0.1, (torch.zeros(1), torch.ones(1)))
    with pytest.raises(DataError, match="std must be > 0"):
        INPUT_NORMS["offline"](3, 0.1, (torch.zeros(3), torch.tensor([1.0, 0.0, 1.0])))
