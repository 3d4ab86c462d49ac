"""Offline input normalisation statistics: per-channel mean and std of a training split."""

from __future__ import annotations

import torch
from torch import Tensor

from bnsweep.workers.errors import DataError


def channel_stats(x: Tensor, chunk: int = 1024) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std (population, ddof = 0) of uint8 images, in [0, 1] units.

    For the `offline` input normalisation (Sect. 3.4). Pass the training split only
    (`DataSplits.train_x`): validation and test images must not leak into the statistics.
    Sums run in float64 over chunks of `chunk` images, so memory stays small and the result
    does not depend on the chunking beyond float64 rounding.
    """
    if x.dtype != torch.uint8 or x.ndim != 4 or len(x) == 0:
        raise DataError(
            f"channel_stats: expected non-empty uint8 [N, C, H, W], got {x.dtype} {tuple(x.shape)}"
        )
    total = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    squares = torch.zeros_like(total)
    for start in range(0, len(x), chunk):
        part = x[start : start + chunk].to(torch.float64)
        total += part.sum(dim=(0, 2, 3))
        squares += part.square().sum(dim=(0, 2, 3))
    count = x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt()
    return (mean / 255).float(), (std / 255).float()
