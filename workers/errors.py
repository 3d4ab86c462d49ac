"""User-facing errors: each carries one line that names what is wrong and what is allowed.

Every layer raises a subclass of `BnsweepError`; the CLI prints its message on one line and
exits with the error's `exit_code`. Anything else that escapes is a bug and keeps its traceback.

Exit codes (README, "Exit codes"): 2 when what was typed is wrong (a flag, a spec, a URL, a
field name: running it again cannot help), 1 when the world did not cooperate (the database is
down or missing, the sweep is unknown to it, a folder cannot be written), 130 when interrupted.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

#: `bnsweep` exits with these; scripts may rely on them.
EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class BnsweepError(ValueError):
    """A problem with the user's input, configuration or data, explained in one line."""

    exit_code: ClassVar[int] = EXIT_USAGE


class RuntimeFailure(BnsweepError):
    """The input was fine but something it relies on failed: the database is unreachable or
    holds no such sweep, a file cannot be written, a launch ended with failed cells."""

    exit_code: ClassVar[int] = EXIT_RUNTIME


class SpecError(BnsweepError):
    """A trial or sweep spec field has a value outside what is allowed."""


class DataError(BnsweepError):
    """A dataset is missing, in the wrong layout, corrupt, or too small."""


def choice_error(field: str, value: object, allowed: str | Iterable[str]) -> SpecError:
    """The standard message for a value that is not one of a fixed set of names."""
    names = ", ".join(sorted(allowed)) if not isinstance(allowed, str) else allowed
    return SpecError(f"{field}: unknown value {value!r}; allowed: {names}")


def one_line(err: BaseException) -> str:
    """`err` as one line: its type, then its message with each run of whitespace one space."""
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


class MissingExtra(BnsweepError):
    """A feature needs an optional dependency (an extra of pyproject.toml) that is not installed:
    exit 2, like any other request this installation cannot serve as it stands."""


def missing_extra(feature: str, extra: str, err: ImportError) -> MissingExtra:
    """The one line for `feature` failing to import what the `extra` installs."""
    # A module that is absent names itself; one that is there but broken (psycopg without a
    # libpq) has only its message.
    cause = (
        f"needs {err.name}, which is not installed"
        if err.name
        else f"cannot import what it needs ({one_line(err)})"
    )
    return MissingExtra(f"{feature} {cause}: pip install 'bnsweep[{extra}]'")
