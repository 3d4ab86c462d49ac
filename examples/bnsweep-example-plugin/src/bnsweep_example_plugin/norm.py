"""`ghost_bn`: ghost batch normalisation (Hoffer, Hubara & Soudry 2017, "Train longer,
generalize better", Sect. 4): in training, each slice of `ghost_size` examples of a batch is
normalised by its own statistics; evaluation uses the running statistics, as BN does.

A subclass of `nn.BatchNorm2d` whose `weight` is γ, so bnsweep's method applies unchanged: γ
initialised to the spec's `bn_scale_init` and trained at α/c.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

import bnsweep


@bnsweep.register_formulation("ghost_bn", recipe=1)
class GhostBatchNorm2d(nn.BatchNorm2d):
    #: Examples per ghost batch (the paper's |B_S| = 128 for ImageNet-size batches; the
    #: example's batches are small, so are its ghost batches).
    ghost_size = 16

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or x.shape[0] <= self.ghost_size:
            return super().forward(x)
        # Each slice updates the running statistics once, as a batch of its size would. (A
        # loop, not a comprehension: zero-argument super() fails inside one.)
        parts = []
        for part in x.split(self.ghost_size):
            parts.append(super().forward(part))
        return torch.cat(parts)
