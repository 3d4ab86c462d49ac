"""The store's errors, and the database URLs they name: resolving, normalising, redacting.

A URL's password never appears in a message, a log line or a repr: every URL shown goes
through `redact_url`, every driver message through `db_message`.
"""

from __future__ import annotations

import os
import re

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from bnsweep.workers.errors import BnsweepError, RuntimeFailure

#: Where the store lives when neither an argument nor BNSWEEP_DB says otherwise.
DEFAULT_URL = "sqlite:///bnsweep.db"
ENV_VAR = "BNSWEEP_DB"


class StoreError(BnsweepError):
    """The results database is unreachable, misconfigured, at the wrong schema, or was asked
    something it does not know (an unknown sweep or field)."""


class StoreFailure(StoreError, RuntimeFailure):
    """The URL and request were well formed, but the database behind them is down, missing,
    another program's, at another schema, or holds no such sweep: exit code 1, not 2."""


class NoStoreYet(StoreFailure):
    """Nothing bnsweep wrote is there yet: no SQLite file, or a database without any tables.
    A launch would create the schema; a read-only command has nothing to read."""


# -- URLs --------------------------------------------------------------------------------------


def resolve_url(url: str | None = None) -> str:
    """The URL to use: the argument, else BNSWEEP_DB, else `sqlite:///bnsweep.db`."""
    return url or os.environ.get(ENV_VAR) or DEFAULT_URL


def parse_url(url: str) -> sa.URL:
    """Parse and normalise a store URL: PostgreSQL always goes through psycopg 3."""
    try:
        parsed = sa.make_url(url.strip())
    except (sa_exc.ArgumentError, ValueError):
        raise StoreError(
            f"bad database URL {redact_url(url)!r}: expected sqlite:///PATH or "
            f"postgresql://USER@HOST[:PORT]/DATABASE{_encoding_hint(url)}"
        ) from None
    # Split by hand: SQLAlchemy's get_driver_name() loads the dialect, which fails for postgres://.
    backend, _, driver = parsed.drivername.partition("+")
    if backend in ("postgresql", "postgres") and driver in ("", "psycopg"):
        if url.count("@") > 1:
            # SQLAlchemy splits at the first '@' (or takes one in the query for the host): the
            # rest of the password would become the host, printed in every connection error,
            # and the server would get half a password.
            raise StoreError(f"bad database URL {redact_url(url)!r}{_ENCODING_HINT}")
        return parsed.set(drivername="postgresql+psycopg")
    if backend == "sqlite" and driver in ("", "pysqlite"):
        return parsed
    raise StoreError(
        f"unsupported database URL {redact_url(url)!r}: use sqlite:///PATH or "
        "postgresql://USER@HOST[:PORT]/DATABASE (driver psycopg 3)"
    )


def _encoding_hint(url: str) -> str:
    """What to do when the URL holds an '@' a URL reserves for the user information, else ''."""
    return _ENCODING_HINT if url.count("@") > 1 else ""


_ENCODING_HINT = (
    ": only the '@' before the host may be written as is; an '@' in the password, the "
    "database name or a query value must be written %40 (and ':' as %3A, '/' as %2F)"
)


def normalize_url(url: str) -> str:
    """The URL SQLAlchemy is given (password included): `postgres://` and `postgresql://` become
    `postgresql+psycopg://`. Raises StoreError for anything that is not SQLite or PostgreSQL."""
    return parse_url(url).render_as_string(hide_password=False)


#: `scheme://` and what follows it up to the next whitespace: one URL inside a message.
_URL_IN_TEXT = re.compile(r"[a-z][a-z0-9+.\-]*://\S*", re.I)
_SCHEME = re.compile(r"\s*[a-z][a-z0-9+.\-]*://", re.I)
#: A query parameter that holds a secret: password=, sslpassword=, ...
_SECRET_PARAM = re.compile(r"(?P<head>[?&;]?\b[a-z_]*(?:password|passwd|secret|token)=)", re.I)
REDACTED = "***"


def redact_url(url: str | sa.URL) -> str:
    """The URL with any password replaced by `***`: the only form of a URL we print or log.

    Works on the text, not on SQLAlchemy's parse: SQLAlchemy splits the user information at the
    first '@', so a password with an unencoded '@' would show its second half as the host."""
    text = url.render_as_string(hide_password=False) if isinstance(url, sa.URL) else str(url)
    if _SCHEME.match(text) is None:
        return redact_text(text)  # not a URL: whatever in it looks like one
    return _redact_one_url(text.strip(), value_ends="&")


def redact_text(text: str) -> str:
    """`text` (a message, a spec's string) with the password of every URL in it replaced by ***.

    A URL in free text ends at whitespace, and a secret query value at a quote; within it, the
    user information ends at its last '@' (see `redact_url`). A text that is one URL alone is
    redacted as `redact_url` does it, whatever its query values hold."""
    if _URL_IN_TEXT.fullmatch(text.strip()):
        stripped = text.strip()
        return text.replace(stripped, _redact_one_url(stripped, value_ends="&"))
    return _URL_IN_TEXT.sub(lambda m: _redact_one_url(m.group(0), value_ends="&\\s\"'"), text)


def _redact_one_url(text: str, value_ends: str) -> str:
    # Query secrets first, each up to the next '&': their value may hold an '@' of its own.
    text = re.sub(
        _SECRET_PARAM.pattern + f"[^{value_ends}]*",
        lambda m: m.group("head") + REDACTED,
        text,
        flags=re.I,
    )
    scheme = _SCHEME.match(text)
    if scheme is None:
        return text
    rest = text[scheme.end() :]
    # The user information ends at the LAST '@': a host never holds one, a password may.
    at = rest.rfind("@")
    user, colon, _password = rest[: max(at, 0)].partition(":")
    if at < 0 or not colon or "/" in user:
        return text  # no password (a '/' before the ':' is a path: sqlite:///a:b@c.db)
    return f"{text[: scheme.end()]}{user}:{REDACTED}{rest[at:]}"


def _scrub(text: str, url: sa.URL) -> str:
    """One line of a driver's message, with the URL's password removed wherever it appears."""
    text = redact_text(" ".join(text.split()))
    secrets = [url.password] + [
        value
        for name, value in url.query.items()
        if _SECRET_PARAM.fullmatch(f"{name}=") and isinstance(value, str)
    ]
    for secret in secrets:
        if isinstance(secret, str) and secret:
            text = text.replace(secret, "***")
    return text


def db_message(err: BaseException, url: sa.URL) -> str:
    """The driver's own words for a database error, on one line, without SQLAlchemy's trailer."""
    orig = getattr(err, "orig", None)
    text = str(orig) if orig is not None else str(err)
    text = text.split("(Background on this error")[0]
    return _scrub(text, url) or type(err).__name__
