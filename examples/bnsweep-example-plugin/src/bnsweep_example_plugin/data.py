"""`shapes`: 16×16 RGB images of four shapes (disc, square, cross, ring), drawn in code.

No download and no files: the images are generated from a fixed seed, so every node and every
run sees the same dataset. bnsweep carves the validation split out of `train` itself
(`stratified_split`), as for its own datasets.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

import bnsweep
from bnsweep.workers.loaders import RawDataset

SIZE = 16
CLASSES = ("disc", "square", "cross", "ring")
TRAIN_PER_CLASS = 80
TEST_PER_CLASS = 40


def _draw(kind: int, rng: np.random.Generator) -> np.ndarray:
    """One uint8 [3, SIZE, SIZE] image: a shape of random size, place and colour on noise."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    radius = rng.uniform(3.0, 6.0)
    cy, cx = rng.uniform(radius, SIZE - radius, size=2)
    dy, dx = np.abs(yy - cy), np.abs(xx - cx)
    distance = np.hypot(dy, dx)
    masks = (
        distance <= radius,  # disc
        np.maximum(dy, dx) <= radius * 0.8,  # square
        (np.minimum(dy, dx) <= 1.0) & (np.maximum(dy, dx) <= radius),  # cross
        (distance <= radius) & (distance >= radius - 1.8),  # ring
    )
    background = rng.integers(0, 80, size=(3, 1, 1))
    colour = rng.integers(150, 256, size=(3, 1, 1))
    image = np.where(masks[kind], colour, background) + rng.normal(0.0, 12.0, (3, SIZE, SIZE))
    return np.clip(image, 0, 255).astype(np.uint8)


def _split(per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(CLASSES)), per_class)
    rng.shuffle(labels)
    images = np.stack([_draw(int(k), rng) for k in labels])
    return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))


@bnsweep.register_dataset(
    "shapes", augment="flip", layout="nothing: generated in memory", needs_root=False
)
def shapes(data_root: str | Path | None = None) -> RawDataset:
    train_x, train_y = _split(TRAIN_PER_CLASS, seed=0)
    test_x, test_y = _split(TEST_PER_CLASS, seed=1)
    return RawDataset(train_x, train_y, test_x, test_y, num_classes=len(CLASSES))
