"""Subcommands of `bnsweep`, one module each; every module exposes `register(subparsers)`."""

from __future__ import annotations

import os

# The one check of an output folder, for every command that writes one (service/outputs.py).
from bnsweep.outputs import check_writable_folder as check_writable_folder

DEFAULT_DB = "sqlite:///bnsweep.db"


def database_url(cli_value: str | None, spec_value: str | None = None) -> str:
    """`--db`, then BNSWEEP_DB, then the spec's `database`, then a SQLite file here."""
    return cli_value or os.environ.get("BNSWEEP_DB") or spec_value or DEFAULT_DB
