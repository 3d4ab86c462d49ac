"""The one check of every folder bnsweep writes into, before anything is written."""

from __future__ import annotations

import os
from pathlib import Path

from bnsweep.workers.errors import RuntimeFailure, SpecError


def check_writable_folder(option: str, folder: str | Path, *, create: bool = True) -> Path:
    """`folder` writable (created if need be; with `create=False` only checked to be creatable,
    so that a refused command leaves nothing behind); else one line naming the option and why."""
    path = Path(folder).expanduser()
    if path.exists() and not path.is_dir():
        raise SpecError(f"{option} {path}: is a file, expected a folder")
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise SpecError(f"{option} {path}: a part of this path is a file ({existing})")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RuntimeFailure(f"{option} {path}: permission denied ({existing} is not writable)")
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise RuntimeFailure(
                f"{option} {path}: cannot create it ({err.strerror or err})"
            ) from None
    return path
