"""Parameter groups of Sect. 3.2 / 4.2, chosen by module type, on every formulation."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from bnsweep.workers.errors import SpecError
from bnsweep.workers.models import build_model
from bnsweep.workers.norm import FORMULATIONS, InputBatchNorm2d
from bnsweep.workers.param_groups import param_groups

EXTRA_NAMES = ("gamma0", "w_v", "w_b")


def _ids(params) -> set[int]:
    return {id(p) for p in params}


def _groups(model: nn.Module, **kwargs) -> dict[str, dict]:
    args = {"lr": 0.1, "weight_decay": 1e-4, "bn_lr_divisor": 100.0, **kwargs}
    return {g["name"]: g for g in param_groups(model, **args)}


@pytest.mark.parametrize("formulation", FORMULATIONS)
def test_membership_by_module_type(formulation: str) -> None:
    model = build_model("resnet8", 10, 3, True, formulation, 0.1, "bn")
    groups = _groups(model)
    assert list(groups) == ["decay", "bn_scale", "no_decay"]
    decay, scale, rest = (_ids(groups[n]["params"]) for n in groups)

    convs_and_linears = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert decay == _ids(m.weight for m in convs_and_linears)
    assert scale == _ids(m.weight for m in bns)
    extras = [getattr(m, n) for m in bns for n in EXTRA_NAMES if hasattr(m, n)]
    assert bool(extras) == (formulation != "standard" and formulation != "a1")
    assert _ids(extras) <= rest and not _ids(extras) & scale
    assert _ids(m.bias for m in bns if m.bias.requires_grad) <= rest
    assert id(model.body.fc.bias) in rest

    # Every trainable parameter in exactly one group; the input BN's frozen β in none.
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(decay) + len(scale) + len(rest) == len(trainable)
    assert decay | scale | rest == _ids(trainable)
    assert id(model.input_norm.bias) not in decay | scale | rest
    assert id(model.input_norm.weight) in scale


def test_rates_and_weight_decay_per_group() -> None:
    groups = _groups(
        nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)),
        lr=0.2,
        weight_decay=5e-4,
        bn_lr_divisor=50.0,
    )
    assert (groups["decay"]["lr"], groups["decay"]["weight_decay"]) == (0.2, 5e-4)
    assert (groups["bn_scale"]["lr"], groups["bn_scale"]["weight_decay"]) == (0.2 / 50, 0.0)
    assert (groups["no_decay"]["lr"], groups["no_decay"]["weight_decay"]) == (0.2, 0.0)


def test_sgd_step_moves_gamma_with_lr_over_c_and_scheduler_keeps_the_ratio() -> None:
    bn = InputBatchNorm2d(2)
    model = nn.Sequential(bn, nn.Conv2d(2, 2, 1))
    optimizer = torch.optim.SGD(param_groups(model, 0.1, 0.0, 100.0), lr=0.1)
    model(torch.randn(4, 2, 3, 3)).sum().backward()
    before, grad = bn.weight.detach().clone(), bn.weight.grad.clone()
    optimizer.step()
    torch.testing.assert_close(bn.weight.detach(), before - 0.001 * grad)
    assert torch.equal(bn.bias, torch.zeros(2))

    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=4)
    for _ in range(2):
        optimizer.step()
        scheduler.step()
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert lrs["bn_scale"] == pytest.approx(lrs["decay"] / 100)
    assert lrs["decay"] == pytest.approx(0.05)


class _Scaler(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(3))


def test_unknown_module_types_and_shared_parameters_get_no_decay_once() -> None:
    linear = nn.Linear(3, 3)
    tied = nn.Linear(3, 3, bias=False)
    tied.weight = linear.weight
    model = nn.Sequential(linear, tied, nn.LayerNorm(3), _Scaler())
    groups = _groups(model)
    assert _ids(groups["decay"]["params"]) == {id(linear.weight)}
    assert len(groups["decay"]["params"]) == 1
    assert _ids(groups["no_decay"]["params"]) == _ids(
        [linear.bias, model[2].weight, model[2].bias, model[3].weight]
    )


def test_group_sizes_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="bnsweep.workers.param_groups"):
        _groups(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))
    assert "decay 1 tensors / 108 values" in caplog.text
    assert "bn_scale 1 tensors / 4 values" in caplog.text


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"lr": 0.0}, "lr"),
        ({"weight_decay": -1.0}, "weight_decay"),
        ({"bn_lr_divisor": 0.0}, "bn_lr_divisor"),
    ],
)
def test_bad_arguments_raise(kwargs: dict, field: str) -> None:
    with pytest.raises(SpecError, match=f"^{field}: must be"):
        _groups(nn.Linear(2, 2), **kwargs)
