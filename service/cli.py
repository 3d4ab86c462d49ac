"""`bnsweep`: the command line. Each subcommand lives in its own module under `service/commands/`.

A command module exposes `register(subparsers)`, which adds its parser and sets `func` to a
handler `(args) -> int`. Bad input anywhere surfaces as a `BnsweepError`, printed here as one
line with exit code 2; argparse's own usage errors exit 2 as well.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import NoReturn

from workers.errors import BnsweepError

#: Subcommand modules, in the order `bnsweep --help` lists them.
COMMAND_MODULES = (
    "service.commands.train",
    "service.commands.launch",
    "service.commands.store",
    "service.commands.report",
    "service.commands.web",
)


class _Parser(argparse.ArgumentParser):
    """argparse that answers a usage mistake with one line (and exit 2), like every other error;
    `bnsweep COMMAND --help` still shows the usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="bnsweep",
        description="Revisiting Batch Normalization: train, sweep over seeds, test significance.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except BnsweepError as err:
        print(f"bnsweep: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bnsweep: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
