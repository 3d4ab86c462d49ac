"""Optimizer parameter groups of the paper (Sect. 3.2, 4.2), selected by module type.

- "decay": convolution and linear weights - weight decay, learning rate α.
- "bn_scale": the γ of every BN, input BN included - no weight decay, learning rate α/c.
- "no_decay": BN shifts β, A2's γ0, RBN/IEBN's w_v and w_b, every bias, and any parameter of a
  module type not named above - no weight decay, learning rate α.

Every group carries its own "lr", so a scheduler (LambdaLR, CosineAnnealingLR, ...) scales all
of them by the same factor and γ keeps its α/c ratio throughout training.
"""

from __future__ import annotations

import logging
from typing import Any

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from bnsweep.workers.errors import SpecError

log = logging.getLogger(__name__)

GROUP_NAMES = ("decay", "bn_scale", "no_decay")


def _group_of(module: nn.Module, param: nn.Parameter) -> str:
    if isinstance(module, _BatchNorm):
        # Only γ is a scale (Sect. 3.2); β and the alternatives' extra parameters are not.
        return "bn_scale" if param is module.weight else "no_decay"
    if isinstance(module, (_ConvNd, nn.Linear)) and param is module.weight:
        return "decay"
    return "no_decay"


def param_groups(
    model: nn.Module, lr: float, weight_decay: float, bn_lr_divisor: float
) -> list[dict[str, Any]]:
    """Groups "decay", "bn_scale", "no_decay" for `torch.optim.SGD(groups, momentum=...)`.

    `lr` is α, `bn_lr_divisor` is c (γ trains with α/c). Every trainable parameter lands in
    exactly one group, chosen by the type of the module that owns it; frozen parameters (the
    input BN's β) in none. Parameters shared between modules count once, with their first owner.
    """
    for name, value, ok, allowed in (
        ("lr", lr, lr > 0, "> 0"),
        ("weight_decay", weight_decay, weight_decay >= 0, ">= 0"),
        ("bn_lr_divisor", bn_lr_divisor, bn_lr_divisor > 0, "> 0"),
    ):
        if not ok:
            raise SpecError(f"{name}: must be {allowed}, got {value!r}")

    members: dict[str, list[nn.Parameter]] = {name: [] for name in GROUP_NAMES}
    seen: set[int] = set()
    for module in model.modules():
        for param in module.parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            members[_group_of(module, param)].append(param)

    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    grouped = [id(p) for params in members.values() for p in params]
    assert len(grouped) == len(set(grouped)) and set(grouped) == trainable, (
        "every trainable parameter must be in exactly one group"
    )

    settings = {
        "decay": (lr, weight_decay),
        "bn_scale": (lr / bn_lr_divisor, 0.0),
        "no_decay": (lr, 0.0),
    }
    groups: list[dict[str, Any]] = [
        {
            "name": name,
            "params": members[name],
            "lr": settings[name][0],
            "weight_decay": settings[name][1],
        }
        for name in GROUP_NAMES
    ]
    log.info(
        "parameter groups: %s",
        ", ".join(
            f"{g['name']} {len(g['params'])} tensors / {sum(p.numel() for p in g['params'])} "
            f"values (lr {g['lr']:g}, wd {g['weight_decay']:g})"
            for g in groups
        ),
    )
    return groups
