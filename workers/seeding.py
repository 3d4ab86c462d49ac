"""Seeds as the paper makes them: sequential ids made "complex" with MD5 (Sect. 4.3, [13, 23])."""

from __future__ import annotations

import hashlib
import random

import numpy as np
import torch


def complex_seed(seed: int) -> int:
    """The last 8 hex digits of the MD5 of the decimal string, as an integer.

    >>> complex_seed(1), complex_seed(0)
    (1869972635, 4186399962)
    """
    return int(hashlib.md5(str(int(seed)).encode("ascii")).hexdigest()[-8:], 16)


def seed_everything(seed: int) -> int:
    """Seed Python, NumPy and torch (CPU and every CUDA device) with the complex seed of `seed`."""
    value = complex_seed(seed)
    random.seed(value)
    np.random.seed(value)  # NumPy's legacy seeding takes 32 bits, which the complex seed fits
    torch.manual_seed(value)
    return value
