"""`bnsweep`: the command line. Each subcommand lives in its own module under `service/commands/`.

A command module exposes `register(subparsers)`, which adds its parser and sets `func` to a
handler `(args) -> int`. Every problem surfaces as a `BnsweepError`, printed here as one line;
the exit code is the error's (`bnsweep.workers.errors`: 2 for usage and spec errors, 1 for runtime
failures); argparse's own usage errors exit 2 as well, an interrupt 130.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from bnsweep.workers.errors import EXIT_INTERRUPTED, EXIT_RUNTIME, BnsweepError, SpecError

#: Subcommand modules, in the order `bnsweep --help` lists them.
COMMAND_MODULES = (
    "bnsweep.commands.train",
    "bnsweep.commands.launch",
    "bnsweep.commands.store",
    "bnsweep.commands.importing",
    "bnsweep.commands.report",
    "bnsweep.commands.web",
    "bnsweep.commands.note",
    "bnsweep.commands.completion",
)


class _Parser(argparse.ArgumentParser):
    """argparse that answers a usage mistake with one line (and exit 2), like every other error;
    `bnsweep COMMAND --help` still shows the usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


class _Version(argparse.Action):
    """`--version`: the installed distribution's version (as `bnsweep.__version__`), looked up
    only when asked for, so no other command pays for reading the package metadata."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_args: object) -> NoReturn:
        print(f"bnsweep {importlib.metadata.version('bnsweep')}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="bnsweep",
        description="Revisiting Batch Normalization: train, sweep over seeds, test significance.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    parser.add_argument("--version", action=_Version, help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    _share_options(sub)
    return parser


def _share_options(sub: argparse._SubParsersAction) -> None:
    """`-v` after the subcommand too (`bnsweep status -v`), in every leaf command.

    SUPPRESS as the default leaves the value set before the subcommand in place."""
    for command in sub.choices.values():
        nested = [a for a in command._actions if isinstance(a, argparse._SubParsersAction)]
        if nested:
            _share_options(nested[0])
            continue
        if "--verbose" not in command._option_string_actions:
            command.add_argument(
                "-v",
                "--verbose",
                action="store_true",
                default=argparse.SUPPRESS,
                help="log at INFO level",
            )


def _check_shared(args: argparse.Namespace) -> None:
    # `--db ''` would silently fall back to BNSWEEP_DB or ./bnsweep.db: another store.
    if getattr(args, "db", None) is not None and not args.db.strip():
        raise SpecError("--db: empty; give a URL such as sqlite:///bnsweep.db")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        _check_shared(args)
        return int(args.func(args) or 0)
    except BnsweepError as err:
        print(f"bnsweep: error: {err}", file=sys.stderr)
        return err.exit_code
    except BrokenPipeError:
        return _reader_went_away()
    except OSError as err:
        # A file or folder the command had to read or write: named, with what went wrong. An
        # OSError without a file name is not the user's to fix and keeps its traceback.
        if err.filename is None:
            raise
        print(f"bnsweep: error: {os_error_line(err)}", file=sys.stderr)
        return EXIT_RUNTIME
    except KeyboardInterrupt:
        print("bnsweep: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


#: `bnsweep query | head`: the reader closed the pipe. A Unix tool then ends quietly with the
#: status of a process killed by SIGPIPE (128 + 13), as `yes | head` does.
EXIT_BROKEN_PIPE = 128 + 13


def _reader_went_away() -> int:
    # Python flushes stdout again at exit and would print "Exception ignored ... BrokenPipeError":
    # point the descriptor at /dev/null so that last flush has nowhere to fail.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_BROKEN_PIPE


#: How a filesystem error reads, by its type: "a folder where a file is expected" and
#: "permission denied" are named as such, whatever the platform's wording.
_OS_ERRORS: dict[type[OSError], str] = {
    IsADirectoryError: "is a folder, expected a file",
    NotADirectoryError: "a part of this path is a file, expected a folder",
    PermissionError: "permission denied",
    FileNotFoundError: "no such file or folder",
    FileExistsError: "already exists",
}


def os_error_line(err: OSError) -> str:
    """One line for a filesystem error: the path, then what is wrong with it."""
    what = next(
        (text for kind, text in _OS_ERRORS.items() if isinstance(err, kind)),
        err.strerror or type(err).__name__,
    )
    return f"{err.filename}: {what}"


if __name__ == "__main__":
    sys.exit(main())
