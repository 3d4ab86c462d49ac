"""`bnsweep report` and `bnsweep dashboard`: a sweep's pages as a static site, or served live.

Both show the same pages (service/web): progress and ETA, the paper table with each cell's
test, missing seeds and failures, curves and figures, every trial. The dashboard needs the
`dashboard` extra (FastAPI, uvicorn); the report needs nothing beyond bnsweep itself.
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import logging
import os
import re
import socket
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

log = logging.getLogger(__name__)

#: The loopback names a dashboard may bind to without a token.
LOOPBACK_NAMES = ("localhost",)
#: Addresses that mean "every interface of this machine".
WILDCARDS = ("0.0.0.0", "::", "")
TOKEN_ENV = "BNSWEEP_DASHBOARD_TOKEN"
INSTALL_HINT = "pip install 'bnsweep[dashboard]'"


def register(subparsers: argparse._SubParsersAction) -> None:
    report = subparsers.add_parser(
        "report",
        help="write a sweep's pages as a static site (tables, cells, curves, trials)",
        description="Write the pages `bnsweep dashboard` serves as plain files: an index, one "
        "page per sweep with its table, a page per cell, curves as SVG, every trial, and the "
        "tables and trials as downloads. Written beside OUT and renamed into place, so a "
        "reader never sees half a report.",
    )
    report.add_argument(
        "--sweep",
        action="append",
        metavar="NAME",
        help="a sweep to include (repeatable; default: every sweep in the store)",
    )
    report.add_argument("--out", required=True, metavar="DIR", help="the report's folder")
    report.add_argument(
        "--db",
        metavar="URL",
        help="results store URL (default: BNSWEEP_DB or sqlite:///bnsweep.db)",
    )
    report.set_defaults(func=run_report)

    dashboard = subparsers.add_parser(
        "dashboard",
        help="serve the sweeps' pages and a JSON API, live and read-only",
        description="Serve the report's pages from the store as it changes (running sweeps "
        "refresh in place) and a JSON API for notebooks. Read-only: the store is never "
        "created or migrated. Binds to 127.0.0.1; another address needs --token. "
        f"Needs the dashboard extra: {INSTALL_HINT}.",
    )
    dashboard.add_argument(
        "--db",
        metavar="URL",
        help="results store URL (default: BNSWEEP_DB or sqlite:///bnsweep.db)",
    )
    dashboard.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)"
    )
    dashboard.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    given = dashboard.add_mutually_exclusive_group()
    given.add_argument(
        "--token-file",
        metavar="PATH",
        help="a file holding the token that every page and API call then needs (its first "
        f"line); default: ${TOKEN_ENV}. Needed to bind beyond the loopback interface",
    )
    given.add_argument(
        "--token",
        default=None,
        help="the token itself: every local user can read it in the process list; prefer "
        f"--token-file or ${TOKEN_ENV}",
    )
    dashboard.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a name the browser may use for this dashboard besides the bound address (and "
        "localhost on loopback), e.g. behind a proxy (repeatable); any other Host is refused",
    )
    dashboard.set_defaults(func=run_dashboard)


def run_report(args: argparse.Namespace) -> int:
    from bnsweep.web.report import write_report

    print(write_report(args.db, args.sweep, args.out))
    return 0


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_binding(host: str, port: int, token: str | None, source: str = "--token") -> None:
    """Refuse, in one line, a binding the dashboard must not make; `source` names where the
    token came from (`token_source`)."""
    from bnsweep.workers.errors import SpecError

    if not 0 < port < 65536:
        raise SpecError(f"--port: expected 1-65535, got {port}")
    if not is_loopback(host) and not token:
        raise SpecError(
            f"--host {host}: serving beyond this machine needs a token "
            f"(--token-file PATH or ${TOKEN_ENV}); every page and API call then checks it"
        )
    if token is not None and len(token) < 16:
        raise SpecError(f"{source}: use at least 16 characters (e.g. `openssl rand -hex 16`)")


def token_source(args: argparse.Namespace) -> str:
    """Where `read_token` takes the token from, as a message names it."""
    if args.token_file is not None:
        return f"--token-file {args.token_file}"
    return "--token" if args.token is not None else f"${TOKEN_ENV}"


#: One DNS label; a name is labels joined by dots (RFC 1123).
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOST_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")


def check_allowed_names(names: Iterable[str]) -> None:
    """Refuse, in one line, an --allow-host that no browser's Host header can ever match (an
    empty name, a URL, a port, a wildcard): accepted silently, it would leave the user
    wondering why the proxy's name is still refused."""
    from bnsweep.workers.errors import SpecError

    for name in names:
        plain = name.lower().rstrip(".")
        if _HOST_NAME.fullmatch(plain) and len(plain) <= 253:
            continue
        try:
            ipaddress.ip_address(plain)
        except ValueError:
            raise SpecError(
                f"--allow-host {name!r}: not a host name; give the name the browser uses, "
                "e.g. dashboard.example.org or 10.1.2.3 (no scheme, port, path or wildcard)"
            ) from None


def read_token(args: argparse.Namespace) -> str | None:
    """The token from --token-file, else --token (with a warning), else $BNSWEEP_DASHBOARD_TOKEN.

    A command line is public: every local user reads it in /proc/PID/cmdline or `ps`, so the
    documented ways are a file and the environment, which only this user (and root) can read."""
    from bnsweep.workers.errors import SpecError

    if args.token_file is not None:
        from bnsweep.cli import os_error_line

        path = Path(args.token_file)
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise SpecError(f"--token-file {path}: not a text file") from None
        except OSError as err:
            raise SpecError(f"--token-file {os_error_line(err)}") from None
        token = text.strip().splitlines()[0].strip() if text.strip() else ""
        if not token:
            raise SpecError(f"--token-file {path}: empty; write the token on its first line")
        if path.stat().st_mode & 0o077:
            log.warning("--token-file %s is readable by other users; chmod 600 it", path)
        return token
    if args.token is not None:
        log.warning(
            "--token is visible to every user of this machine in the process list; "
            "use --token-file PATH or $%s",
            TOKEN_ENV,
        )
        return args.token
    return os.environ.get(TOKEN_ENV) or None


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port) and listening, or one line saying why not (exit 1).

    Bound here, before the banner, rather than by uvicorn, which prints the banner's promise
    first and then its own multi-line error and exits 3."""
    from bnsweep.workers.errors import RuntimeFailure

    try:
        found = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as err:
        raise RuntimeFailure(
            f"--host {host}: cannot resolve this name ({err.strerror}); give an address of "
            "this machine, e.g. 127.0.0.1"
        ) from None
    # One address, IPv4 first, as uvicorn bound a name such as `localhost`: falling back to
    # ::1 when 127.0.0.1's port is taken would serve beside another program under one name.
    family, kind, proto, _, address = min(found, key=lambda info: info[0] != socket.AF_INET)
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as err:
        sock.close()
        where = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
        why = {
            errno.EADDRINUSE: f"port {port} is in use (another dashboard?); choose another --port",
            errno.EADDRNOTAVAIL: f"this machine has no address {host}; give one of its own "
            "addresses, 0.0.0.0 for all of them, or 127.0.0.1",
            errno.EACCES: "permission denied (ports below 1024 need privileges); choose a "
            "--port above 1023",
        }.get(err.errno or 0, err.strerror or str(err))
        raise RuntimeFailure(f"cannot serve on {where}: {why}") from None
    return sock


def allowed_hosts(bind: str, bound: str, allow: Iterable[str]) -> tuple[frozenset[str], bool]:
    """The names a request's Host header may carry, and whether any IP address may be one:
    the address bound (as given and as resolved), the `localhost` forms on loopback, every
    name of this machine behind a wildcard bind, and the names the user allows.

    A page on another site can point its own DNS name at this machine (DNS rebinding) and
    then read every page through the user's browser; its requests carry that name as Host.
    An IP address cannot be rebound, so behind a wildcard bind any IP address is fine."""
    names = {bind.lower(), bound.lower(), *allow}
    wildcard = bind in WILDCARDS
    if wildcard or is_loopback(bind) or is_loopback(bound):
        names |= {"localhost", "127.0.0.1", "::1"}
    if wildcard:
        names |= {socket.gethostname(), socket.getfqdn()}
    return frozenset(n.lower().rstrip(".") for n in names if n), wildcard


def load_server() -> tuple[Callable[..., Any], ModuleType]:
    """(create_app, uvicorn), or one line saying how to install the dashboard extra."""
    from bnsweep.workers.errors import missing_extra

    try:
        import uvicorn

        from bnsweep.web.app import create_app
    except ImportError as err:
        raise missing_extra("bnsweep dashboard", "dashboard", err) from None
    return create_app, uvicorn


def run_dashboard(args: argparse.Namespace) -> int:
    from bnsweep.store.api import Store
    from bnsweep.store.errors import redact_url, resolve_url
    from bnsweep.workers.errors import RuntimeFailure

    token = read_token(args)
    check_binding(args.host, args.port, token, token_source(args))
    check_allowed_names(args.allow_host)
    create_app, uvicorn = load_server()
    # Fail now, in one line, for a wrong URL or a store of another schema revision.
    from bnsweep.web.view import read_only

    Store.open(args.db, create=False, **read_only()).close()
    sock = listen(args.host, args.port)
    try:
        names, any_ip = allowed_hosts(args.host, sock.getsockname()[0], args.allow_host)
        app = create_app(args.db, token=token, hosts=names, any_ip_host=any_ip)
        shown = f"[{args.host}]" if ":" in args.host else args.host
        store = redact_url(resolve_url(args.db))
        print(
            f"bnsweep dashboard: http://{shown}:{args.port}/ "
            f"(store {store}, read-only; Ctrl-C stops)",
            file=sys.stderr,
            flush=True,
        )
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        try:
            server.run(sockets=[sock])
        finally:
            app.state.reader.close()
    finally:
        sock.close()
    if not server.started:
        raise RuntimeFailure("the dashboard stopped before it served; the lines above say why")
    return 0
