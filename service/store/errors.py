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
            "postgresql://USER@HOST[:PORT]/DATABASE"
        ) from None
    # Split by hand: SQLAlchemy's get_driver_name() loads the dialect, which fails for postgres://.
    backend, _, driver = parsed.drivername.partition("+")
    if backend in ("postgresql", "postgres") and driver in ("", "psycopg"):
        return parsed.set(drivername="postgresql+psycopg")
    if backend == "sqlite" and driver in ("", "pysqlite"):
        return parsed
    raise StoreError(
        f"unsupported database URL {redact_url(url)!r}: use sqlite:///PATH or "
        "postgresql://USER@HOST[:PORT]/DATABASE (driver psycopg 3)"
    )


def normalize_url(url: str) -> str:
    """The URL SQLAlchemy is given (password included): `postgres://` and `postgresql://` become
    `postgresql+psycopg://`. Raises StoreError for anything that is not SQLite or PostgreSQL."""
    return parse_url(url).render_as_string(hide_password=False)


_USERINFO = re.compile(r"(?P<head>[a-z][a-z0-9+.\-]*://[^:/@\s]*:)(?P<secret>[^\s]*)@", re.I)
_PASSWORD_PARAM = re.compile(r"(?P<head>\bpassword=)(?P<secret>[^&\s]*)", re.I)


def redact_url(url: str | sa.URL) -> str:
    """The URL with any password replaced by `***`: the only form of a URL we print or log."""
    if isinstance(url, sa.URL):
        parsed = url
    else:
        try:
            parsed = sa.make_url(str(url).strip())
        except (sa_exc.ArgumentError, ValueError):
            return _redact_text(str(url))
    if "password" in parsed.query:
        parsed = parsed.update_query_dict({"password": "***"})
    return parsed.render_as_string(hide_password=True)


def _redact_text(text: str) -> str:
    text = _USERINFO.sub(lambda m: m.group("head") + "***@", text)
    return _PASSWORD_PARAM.sub(lambda m: m.group("head") + "***", text)


def _scrub(text: str, url: sa.URL) -> str:
    """One line of a driver's message, with the URL's password removed wherever it appears."""
    text = _redact_text(" ".join(text.split()))
    secrets = [url.password, url.query.get("password")]
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
