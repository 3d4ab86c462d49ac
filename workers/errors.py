"""User-facing errors: each carries one line that names what is wrong and what is allowed.

Every layer raises a subclass of `BnsweepError`; the CLI prints its message on one line and
exits with code 2. Anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations


class BnsweepError(ValueError):
    """A problem with the user's input, configuration or data, explained in one line."""


class SpecError(BnsweepError):
    """A trial or sweep spec field has a value outside what is allowed."""


class DataError(BnsweepError):
    """A dataset is missing, in the wrong layout, corrupt, or too small."""


def choice_error(field: str, value: object, allowed: object) -> SpecError:
    """The standard message for a value that is not one of a fixed set of names."""
    names = ", ".join(sorted(allowed)) if not isinstance(allowed, str) else allowed
    return SpecError(f"{field}: unknown value {value!r}; allowed: {names}")
