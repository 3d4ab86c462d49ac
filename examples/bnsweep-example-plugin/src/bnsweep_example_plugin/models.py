"""`shapenet`: three convolutions, each followed by the formulation's BN, then a linear head."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

import bnsweep


# recipe: bump it when a change here changes what an unchanged spec trains; bnsweep then
# trains this network's cells again and never mixes the two in a table.
@bnsweep.register_model("shapenet", recipe=1)
def shapenet(
    num_classes: int, in_channels: int, small_input: bool, norm_layer: Callable[..., nn.Module]
) -> nn.Module:
    # Every BN comes from `norm_layer`: it is the formulation under test, and bnsweep sets and
    # trains the γ (`weight`) of exactly these modules.
    stride = 1 if small_input else 2
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, stride=stride, padding=1, bias=False),
        norm_layer(16),
        nn.ReLU(inplace=True),
        nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False),
        norm_layer(32),
        nn.ReLU(inplace=True),
        nn.Conv2d(32, 32, 3, stride=2, padding=1, bias=False),
        norm_layer(32),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, num_classes),
    )
