"""The device-resident loader: uint8 images on the training device, augmented there by indexing.

Each epoch draws its order, flips and crop offsets from a seeded CPU generator (so the order is
the same on every device and a checkpointed generator state restores it) and augments on the
device by indexing.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from bnsweep.workers.errors import DataError

#: The augmentations `DeviceLoader` applies; every dataset's entry and `DataSplits` name one.
AUGMENTS = ("flip", "crop_flip", "none")


# -- the device-resident loader -------------------------------------------------------------
class DeviceLoader:
    """Batches of (images as `dtype` in [0, 1], int64 labels) from uint8 data on `device`.

    Training: each `iter()` draws, from the CPU `generator`, the epoch's permutation, then (flip)
    one flip decision per position, then (crop_flip) crop tops and lefts; these go to the device
    once, and cropping and flipping are one gather there. The draws happen when `iter()` is
    called, so the generator state saved after an epoch restores the next epoch's order exactly.
    A final batch of one example is dropped (BN cannot normalise one example); any other
    remainder is kept. Evaluation: source order, no flip, centre crop for crop_flip, and the
    generator is never touched. Nothing in the loop reads from the device (no host sync).
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        batch_size: int,
        device: torch.device | str,
        *,
        train: bool,
        augment: str,
        crop_size: int | None = None,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if x.dtype != torch.uint8 or x.ndim != 4:
            raise ValueError(f"x: expected uint8 [N, C, H, W], got {x.dtype} {tuple(x.shape)}")
        if y.shape != (len(x),):
            raise ValueError(f"y: expected [{len(x)}] labels, got {tuple(y.shape)}")
        if batch_size < 1:
            raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
        if augment not in AUGMENTS:
            raise ValueError(f"augment: unknown value {augment!r}; allowed: {', '.join(AUGMENTS)}")
        height, width = int(x.shape[2]), int(x.shape[3])
        if augment == "crop_flip" and (
            crop_size is None or not 0 < crop_size <= min(height, width)
        ):
            raise DataError(f"crop_size: {crop_size} does not fit images of {height}×{width}")
        if train and generator is None:
            raise ValueError("generator: a training loader needs a seeded CPU torch.Generator")
        if generator is not None and generator.device.type != "cpu":
            raise ValueError(
                "generator: must be a CPU generator, so the order is the same on every device"
            )

        self.device = torch.device(device)
        self.x = x.to(self.device)  # moved once; batches are gathered on the device
        self.y = y.to(self.device, torch.int64)
        self.batch_size = batch_size
        self.train = train
        self.augment = augment
        self.crop_size = crop_size if augment == "crop_flip" else None
        self.generator = generator
        self.dtype = dtype
        self._size = (self.crop_size or height, self.crop_size or width)
        self._channels = torch.arange(x.shape[1], device=self.device).view(1, -1, 1, 1)
        self._rows = torch.arange(self._size[0], device=self.device)
        self._cols = torch.arange(self._size[1], device=self.device)

    def __len__(self) -> int:
        full, rest = divmod(len(self.x), self.batch_size)
        return full + (rest > (1 if self.train else 0))

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return self._train_batches(self._draw_epoch()) if self.train else self._eval_batches()

    def _draw_epoch(self) -> dict[str, Tensor]:
        n, g = len(self.x), self.generator
        plan = {"order": torch.randperm(n, generator=g)}
        if self.augment in ("flip", "crop_flip"):
            plan["flip"] = torch.rand(n, generator=g) < 0.5
        if self.augment == "crop_flip":
            plan["top"] = torch.randint(0, self.x.shape[2] - self._size[0] + 1, (n,), generator=g)
            plan["left"] = torch.randint(0, self.x.shape[3] - self._size[1] + 1, (n,), generator=g)
        return {k: _to_device(v, self.device) for k, v in plan.items()}

    def _train_batches(self, plan: dict[str, Tensor]) -> Iterator[tuple[Tensor, Tensor]]:
        augment = {"none": self._plain, "flip": self._flip, "crop_flip": self._crop_flip}
        batch = augment[self.augment]
        n = len(self.x)
        for start in range(0, n, self.batch_size):
            span = slice(start, min(start + self.batch_size, n))
            if span.stop - span.start == 1 < self.batch_size:
                return  # a last, partial batch of one example: BN cannot normalise it
            index = plan["order"][span]
            yield self._to_float(batch(index, plan, span)), self.y[index]

    def _plain(self, index: Tensor, plan: dict[str, Tensor], span: slice) -> Tensor:
        return self.x.index_select(0, index)

    def _flip(self, index: Tensor, plan: dict[str, Tensor], span: slice) -> Tensor:
        images = self.x.index_select(0, index)
        return torch.where(plan["flip"][span].view(-1, 1, 1, 1), images.flip(3), images)

    def _crop_flip(self, index: Tensor, plan: dict[str, Tensor], span: slice) -> Tensor:
        """One gather: out[b, c, i, j] = x[index[b], c, top[b] + i, cols[b, j]], where a flipped
        image reads its crop's columns right to left. Only the crop is ever copied."""
        rows = plan["top"][span, None] + self._rows
        cols = plan["left"][span, None] + self._cols
        cols = torch.where(plan["flip"][span, None], cols.flip(1), cols)
        return self.x[
            index.view(-1, 1, 1, 1), self._channels, rows[:, None, :, None], cols[:, None, None, :]
        ]

    def _eval_batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        top = left = 0
        if self.crop_size is not None:
            # Same rounding as torchvision's CenterCrop.
            top = round((self.x.shape[2] - self._size[0]) / 2.0)
            left = round((self.x.shape[3] - self._size[1]) / 2.0)
        for start in range(0, len(self.x), self.batch_size):
            images = self.x[
                start : start + self.batch_size,
                :,
                top : top + self._size[0],
                left : left + self._size[1],
            ]
            yield self._to_float(images), self.y[start : start + self.batch_size]

    def _to_float(self, images: Tensor) -> Tensor:
        return images.to(self.dtype).div_(255)


def _to_device(t: Tensor, device: torch.device) -> Tensor:
    if device.type == "cuda":
        # Pinned memory lets the once-per-epoch copy run without blocking the host.
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)
