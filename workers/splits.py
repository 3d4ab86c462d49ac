"""Fixed, class-stratified splits: the same for every run, every seed and every machine."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from bnsweep.workers.errors import DataError, SpecError, one_line
from bnsweep.workers.seeding import complex_seed

if TYPE_CHECKING:
    from torch import Tensor

#: Every fixed split (validation, and digits' test split) is drawn with the complex seed of 0.
SPLIT_SEED = complex_seed(0)


def stratified_split(
    labels: Tensor | np.ndarray, fraction: float, *, what: str = "dataset"
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (kept, held-out), class-stratified, `fraction` held out; both sorted.

    Identical to `sklearn.model_selection.train_test_split(np.arange(n), test_size=fraction,
    stratify=labels, random_state=complex_seed(0))` with each part sorted, so every run and every
    seed gets the same split and each part keeps the source order.
    """
    from sklearn.model_selection import train_test_split

    if not 0.0 < fraction < 1.0:
        raise SpecError(f"val_fraction: must be in (0, 1), got {fraction!r}")
    y = np.asarray(labels, dtype=np.int64)
    n = len(y)
    classes, counts = np.unique(y, return_counts=True)
    lonely = classes[counts < 2]
    if len(lonely):
        shown = ", ".join(str(c) for c in lonely[:5]) + (", ..." if len(lonely) > 5 else "")
        raise DataError(
            f"{what}: too small for a stratified split: class(es) {shown} have fewer than 2 "
            f"examples"
        )
    held_out = math.ceil(fraction * n)  # scikit-learn's rounding for a float test_size
    if min(held_out, n - held_out) < len(classes):
        raise DataError(
            f"{what}: too small for a stratified split: {fraction:g} of {n} examples gives "
            f"{held_out} held out and {n - held_out} kept, but each part needs at least one of "
            f"each of the {len(classes)} classes"
        )
    try:
        kept, out = train_test_split(
            np.arange(n), test_size=fraction, stratify=y, random_state=SPLIT_SEED
        )
    except ValueError as err:
        raise DataError(f"{what}: cannot split class-stratified: {one_line(err)}") from None
    return np.sort(kept), np.sort(out)
