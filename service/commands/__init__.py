"""Subcommands of `bnsweep`, one module each; every module exposes `register(subparsers)`."""

from __future__ import annotations

import os
from pathlib import Path

from workers.errors import RuntimeFailure, SpecError


def check_writable_folder(option: str, folder: str | Path) -> Path:
    """`folder` created if need be, and writable; else one line naming the option and why."""
    path = Path(folder).expanduser()
    if path.exists() and not path.is_dir():
        raise SpecError(f"{option} {path}: is a file, expected a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except NotADirectoryError:
        raise SpecError(f"{option} {path}: a part of this path is a file") from None
    except OSError as err:
        raise RuntimeFailure(f"{option} {path}: cannot create it ({err.strerror or err})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise RuntimeFailure(f"{option} {path}: permission denied (not writable)")
    return path
