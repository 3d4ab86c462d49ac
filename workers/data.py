"""The dataset registry, and the train/val/test splits a trial trains on.

- `DATASETS`: registry name → `DatasetEntry` (loader, augmentation, layout). Every loader
  (`bnsweep.workers.loaders`) returns the dataset's official train/test splits as uint8 NCHW
  tensors;
  `load_dataset` then carves the validation split out of the training split (Sect. 4.1: "we
  randomly sampled 10% of the training examples class-wise for validation"), identically for
  every run and every seed.

Augmentation follows Sect. 4.2: CIFAR horizontal flip only; CUB-200 / Stanford Cars resized to
256×256, random 224×224 crop and flip for training, centre crop for evaluation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from bnsweep.workers.device_loader import AUGMENTS
from bnsweep.workers.errors import DataError
from bnsweep.workers.loaders import (
    CROP,
    LAYOUTS,
    RawDataset,
    load_cifar10,
    load_cifar100,
    load_cub200,
    load_digits,
    load_stanford_cars,
    load_synthetic,
)
from bnsweep.workers.plugins import Plugin, Registry, check_dataset, register_dataset
from bnsweep.workers.splits import stratified_split

if TYPE_CHECKING:
    from bnsweep.workers.spec import TrialSpec

log = logging.getLogger(__name__)


# -- what load_dataset returns ------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class DataSplits:
    """Train/val/test as uint8 NCHW image tensors and int64 labels, on the CPU."""

    train_x: Tensor
    train_y: Tensor
    val_x: Tensor
    val_y: Tensor
    test_x: Tensor
    test_y: Tensor
    num_classes: int
    augment: str  # "flip" | "crop_flip" | "none"
    crop_size: int | None  # crop_flip only

    def __post_init__(self) -> None:
        shape = self.train_x.shape[1:]
        for split in ("train", "val", "test"):
            x, y = getattr(self, f"{split}_x"), getattr(self, f"{split}_y")
            if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1:] != shape:
                raise ValueError(
                    f"{split}_x: expected uint8 [N, {', '.join(map(str, shape))}], "
                    f"got {x.dtype} {tuple(x.shape)}"
                )
            if y.dtype != torch.int64 or y.shape != (len(x),):
                raise ValueError(
                    f"{split}_y: expected int64 [{len(x)}], got {y.dtype} {tuple(y.shape)}"
                )
        if self.augment not in AUGMENTS:
            raise ValueError(
                f"augment: unknown value {self.augment!r}; allowed: {', '.join(AUGMENTS)}"
            )
        if (self.augment == "crop_flip") != (self.crop_size is not None):
            raise ValueError("crop_size: set for augment 'crop_flip' and only for it")

    @property
    def in_channels(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def image_size(self) -> int:
        """The side of the images the model sees: the crop for crop_flip, else the stored size."""
        return self.crop_size if self.crop_size is not None else int(self.train_x.shape[2])

    def __repr__(self) -> str:
        return (
            f"DataSplits(train={len(self.train_y)}, val={len(self.val_y)}, "
            f"test={len(self.test_y)}, "
            f"shape={tuple(self.train_x.shape[1:])}, num_classes={self.num_classes}, "
            f"augment={self.augment!r}, crop_size={self.crop_size})"
        )


# -- the registry ---------------------------------------------------------------------------
Loader = Callable[[str | Path | None], RawDataset]


@dataclass(frozen=True)
class DatasetEntry:
    """How to load one dataset and how the paper augments it."""

    name: str
    load: Loader
    augment: str
    layout: str  # one line, for error messages and docs/datasets.md
    crop_size: int | None = None
    needs_root: bool = True


def register(
    name: str, *, augment: str, layout: str, crop_size: int | None = None, needs_root: bool = True
) -> Callable[[Loader], Loader]:
    """Mark a loader as the dataset `name` (`bnsweep.register_dataset`); its entry point in
    `bnsweep.datasets` makes it a choice of `dataset`."""
    return register_dataset(
        name, augment=augment, layout=layout, crop_size=crop_size, needs_root=needs_root
    )


def _entry(plugin: Plugin) -> DatasetEntry:
    options = plugin.options
    return DatasetEntry(
        plugin.ref.name,
        plugin.target,
        options["augment"],
        options["layout"],
        options["crop_size"],
        options.get("needs_root", False),
    )


#: name → `DatasetEntry`: the `bnsweep.datasets` entry points, bnsweep's own (below) and every
#: installed plugin's (docs/extending.md). A name is imported when it is first looked up.
DATASETS: Registry[DatasetEntry] = Registry("dataset", _entry)

# Each built-in under the name its entry point gives it (pyproject.toml, `bnsweep.datasets`).
cifar10 = register("cifar10", augment="flip", layout=LAYOUTS["cifar10"])(load_cifar10)
cifar100 = register("cifar100", augment="flip", layout=LAYOUTS["cifar100"])(load_cifar100)
cub200 = register("cub200", augment="crop_flip", crop_size=CROP, layout=LAYOUTS["cub200"])(
    load_cub200
)
stanford_cars = register(
    "stanford_cars", augment="crop_flip", crop_size=CROP, layout=LAYOUTS["stanford_cars"]
)(load_stanford_cars)
digits = register(
    "digits",
    augment="none",  # flipping a digit changes its meaning
    needs_root=False,
    layout=LAYOUTS["digits"],
)(load_digits)
synthetic = register("synthetic", augment="flip", needs_root=False, layout=LAYOUTS["synthetic"])(
    load_synthetic
)


# -- a dataset's splits ---------------------------------------------------------------------
def load_dataset(
    name: str, data_root: str | Path | None = None, val_fraction: float = 0.1
) -> DataSplits:
    """The dataset's train/val/test splits; the validation split is drawn by `stratified_split`."""
    if name not in DATASETS:
        raise DataError(f"dataset: unknown value {name!r}; allowed: {', '.join(sorted(DATASETS))}")
    entry = DATASETS[name]
    raw = entry.load(data_root)
    check_dataset(name, raw)
    kept, val = (
        torch.from_numpy(i)
        for i in stratified_split(raw.train_y, val_fraction, what=f"{name} training split")
    )
    splits = DataSplits(
        train_x=raw.train_x[kept],
        train_y=raw.train_y[kept],
        val_x=raw.train_x[val],
        val_y=raw.train_y[val],
        test_x=raw.test_x,
        test_y=raw.test_y,
        num_classes=raw.num_classes,
        augment=entry.augment,
        crop_size=entry.crop_size,
    )
    log.info("%s: %r", name, splits)
    return splits


def load_splits(spec: TrialSpec) -> DataSplits:
    """The splits for a trial: only `dataset`, `data_root` and `val_fraction` matter."""
    return load_dataset(spec.dataset, spec.data_root, spec.val_fraction)
