"""`bnsweep dashboard`: the report's pages served live, plus a JSON API (FastAPI).

Read-only: the store is opened with `create=False` (never created, never migrated) and only
read. Every request reads the store's fingerprint once; pages, downloads and API answers are
cached under it, so they are recomputed only after the store changed. With a token (required
when binding to anything but the loopback interface) every page, asset and API call checks it:
`Authorization: Bearer TOKEN`, or `?token=TOKEN` once, which sets a same-site cookie for the
pages' own links and refreshes. `bnsweep dashboard` also names the hosts a request may be
addressed to (against DNS rebinding), and every answer carries the security headers below.

Routes mirror the static report's files without `.html`: `/`, `/sweeps/NAME`,
`/sweeps/NAME/cells/B-R-C`, `/sweeps/NAME/curves`, `/sweeps/NAME/trials`, ...; the API is under
`/api` (docs/dashboard.md lists it).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from collections.abc import Awaitable, Callable, Collection
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException

from bnsweep.web import build
from bnsweep.web.frame import Site
from bnsweep.web.pages import error_page
from bnsweep.web.report import ASSETS
from bnsweep.web.view import NotFound, Reader, TableQuery
from bnsweep.workers.errors import BnsweepError

log = logging.getLogger(__name__)

TOKEN_COOKIE = "bnsweep_token"

#: Sent with every answer. Scripts come only from the dashboard's own files: no page has an
#: inline <script> or on* handler, so an injected one never runs. Styles may also be inline,
#: because the progress bars set their widths in `style` attributes and a trial page inlines
#: matplotlib's SVG, whose every path is styled by a `style` attribute under a `<style>`
#: element; CSS runs no script, and with nothing loadable from anywhere but this server
#: (`default-src 'none'`, images, fetches and forms 'self') injected CSS cannot send anything
#: away either. No page may be framed (clickjacking) or leak its URL, which may hold
#: `?token=`, as a Referer.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}

#: How a parameter that failed FastAPI's validation reads, by pydantic's error type.
_EXPECTED = {
    "int_parsing": "expected an integer",
    "int_from_float": "expected an integer",
    "missing": "required",
}


def _status_of(err: BnsweepError) -> int:
    """404 for a missing sweep, cell or trial; 503 for an unreachable or wrong-schema store
    (the message says which, and what to run); 400 for a bad control value."""
    from bnsweep.store.errors import StoreError

    if isinstance(err, NotFound):
        return 404
    if isinstance(err, StoreError):
        return 503
    return 400


def host_name(header: str) -> str | None:
    """The name in a Host header, without its port, lower case; None when malformed."""
    if header.startswith("["):
        end = header.find("]")
        if end < 0:
            return None
        name, rest = header[1:end], header[end + 1 :]
    else:
        name, colon, port = header.partition(":")
        rest = colon + port
    if rest and not (rest.startswith(":") and rest[1:].isdigit()):
        return None
    return name.lower().rstrip(".") or None


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _invalid_line(err: RequestValidationError) -> str:
    """FastAPI's validation errors (a wrong type in a path or query) as one line."""
    parts = []
    for item in err.errors():
        name = str(item["loc"][-1]) if item.get("loc") else "request"
        what = _EXPECTED.get(item.get("type", ""), str(item.get("msg", "invalid")))
        shown = repr(item["input"])[:60] if item.get("input") is not None else ""
        parts.append(f"{name}: {what}" + (f", got {shown}" if shown else ""))
    return "; ".join(parts) or "invalid request"


def create_app(
    url: str | None = None,
    *,
    token: str | None = None,
    reader: Reader | None = None,
    hosts: Collection[str] | None = None,
    any_ip_host: bool = False,
) -> FastAPI:
    """The dashboard for the store at `url` (else BNSWEEP_DB, else sqlite:///bnsweep.db).

    `hosts`: the names (lower case, no port) a request's Host header may carry, and with
    `any_ip_host` any IP address too; others get 400. None checks nothing, for an app behind
    a server that checks Host itself; `bnsweep dashboard` always passes them."""
    reader = reader or Reader(url)
    # The table model pulls in scipy and pandas (~2 s); at start, not in the first request.
    import bnsweep.analysis.tables  # noqa: F401

    app = FastAPI(title="bnsweep dashboard", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.reader = reader
    site = Site(live=True)

    def refusal(request: Request, status: int, message: str) -> Response:
        """One line for every error, in the route's own kind: JSON under /api/, the bare line
        for a live section's refresh, else a page."""
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": message}, status_code=status)
        if request.query_params.get("fragment"):
            return PlainTextResponse(message, status_code=status)
        title = {
            401: "Token needed",
            404: "Not found",
            503: "Store unavailable",
        }.get(status, "Error" if status >= 500 else "Bad request")
        return HTMLResponse(error_page(site, title, message), status_code=status)

    def wrong_host(request: Request) -> Response | None:
        if hosts is None:
            return None
        header = request.headers.get("host", "")
        name = host_name(header)
        if name is not None and (name in hosts or (any_ip_host and _is_ip(name))):
            return None
        hint = f"; to allow it, start the dashboard with --allow-host {name}" if name else ""
        return refusal(request, 400, f"Host {header!r} is not a name of this dashboard{hint}")

    def wrong_token(request: Request) -> Response | None:
        if token is None:
            return None
        given = _presented_token(request)
        if given is not None and hmac.compare_digest(given.encode(), token.encode()):
            return None
        message = "this dashboard needs its token: ?token=TOKEN or Authorization: Bearer TOKEN"
        return refusal(request, 401, message)

    @app.middleware("http")
    async def guard(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        refused = wrong_host(request) or wrong_token(request)
        response = refused or await call_next(request)
        if refused is None and token is not None and request.query_params.get("token"):
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
        response.headers.update(SECURITY_HEADERS)
        return response

    @app.exception_handler(BnsweepError)
    async def bnsweep_error(request: Request, err: BnsweepError) -> Response:
        return refusal(request, _status_of(err), str(err))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> Response:
        # FastAPI answers a wrong type with 422 and its own JSON, on pages too: the one-line
        # 400 of every other bad parameter instead.
        return refusal(request, 400, _invalid_line(err))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> Response:
        if err.status_code == 404:
            message = f"nothing at {request.url.path}"
        elif err.status_code == 405:
            message = f"{request.method} is not allowed here; the dashboard answers GET"
        else:
            message = str(err.detail)
        return refusal(request, err.status_code, message)

    @app.exception_handler(Exception)
    async def internal(request: Request, err: Exception) -> Response:
        # Starlette logs the traceback; the answer is one line and keeps the headers, which
        # the middleware above cannot add to an answer made outside it.
        response = refusal(request, 500, "internal error; the dashboard's log has the details")
        response.headers.update(SECURITY_HEADERS)
        return response

    def html(text: str) -> HTMLResponse:
        return HTMLResponse(text, headers={"Cache-Control": "no-cache"})

    def params(request: Request) -> dict[str, str]:
        return dict(request.query_params)

    @app.get("/", response_class=HTMLResponse)
    def index(request: Request, fragment: str | None = None) -> HTMLResponse:
        snap = reader.snapshot()
        return html(snap.page(("index", fragment), lambda: build.index(snap, site, fragment)))

    @app.get("/static/{asset}")
    def static(asset: str) -> Response:
        if asset not in ASSETS:
            raise NotFound(f"no asset {asset!r}")
        text = (resources.files("bnsweep.web") / "static" / asset).read_text(encoding="utf-8")
        media = "text/css" if asset.endswith(".css") else "text/javascript"
        return Response(text, media_type=f"{media}; charset=utf-8")

    @app.get("/sweeps/{name}/tables.{ext}")
    def tables_download(name: str, ext: str, request: Request) -> Response:
        query = TableQuery.from_params(params(request))
        snap = reader.snapshot()
        text, media = snap.page(
            ("tables", name, query, ext), lambda: build.table_download(snap, name, query, ext)
        )
        return Response(text, media_type=media, headers=_attachment(name, f"tables.{ext}"))

    @app.get("/sweeps/{name}/trials.csv")
    def trials_csv(name: str) -> Response:
        snap = reader.snapshot()
        text = snap.page(("trials.csv", name), lambda: build.trials_csv(snap, name))
        return Response(
            text, media_type="text/csv; charset=utf-8", headers=_attachment(name, "trials.csv")
        )

    @app.get("/sweeps/{name}/trials.parquet")
    def trials_parquet(name: str) -> Response:
        snap = reader.snapshot()
        data = snap.page(("trials.parquet", name), lambda: build.trials_parquet(snap, name))
        return Response(
            data,
            media_type="application/vnd.apache.parquet",
            headers=_attachment(name, "trials.parquet"),
        )

    @app.get("/sweeps/{name}", response_class=HTMLResponse)
    def sweep(name: str, request: Request, fragment: str | None = None) -> HTMLResponse:
        query = TableQuery.from_params(params(request))
        snap = reader.snapshot()
        return html(
            snap.page(
                ("sweep", name, query, fragment),
                lambda: build.sweep(snap, site, name, query, fragment),
            )
        )

    @app.get("/sweeps/{name}/cells/{ident}", response_class=HTMLResponse)
    def cell(name: str, ident: str, request: Request) -> HTMLResponse:
        query = TableQuery.from_params(params(request))
        snap = reader.snapshot()
        return html(
            snap.page(
                ("cell", name, ident, query), lambda: build.cell(snap, site, name, ident, query)
            )
        )

    @app.get("/sweeps/{name}/curves", response_class=HTMLResponse)
    def curves(name: str) -> HTMLResponse:
        snap = reader.snapshot()
        return html(snap.page(("curves", name), lambda: build.curves(snap, site, name, False)))

    @app.get("/sweeps/{name}/curves_seeds", response_class=HTMLResponse)
    def curves_seeds(name: str) -> HTMLResponse:
        snap = reader.snapshot()
        return html(snap.page(("curves_seeds", name), lambda: build.curves(snap, site, name, True)))

    @app.get("/sweeps/{name}/figures/{stem}.svg")
    def figure(name: str, stem: str) -> Response:
        snap = reader.snapshot()
        found = build.figures(snap, name)
        if stem not in found:
            raise NotFound(f"no figure {stem!r} for sweep {name!r}")
        return Response(found[stem].svg, media_type="image/svg+xml")

    @app.get("/sweeps/{name}/trials", response_class=HTMLResponse)
    def trials(
        name: str,
        request: Request,
        where: str = "",
        sort: str = "",
        desc: str = "",
        page: int = 1,
        per_page: int = build.TRIALS_PER_PAGE,
    ) -> HTMLResponse:
        filters = build.parse_where(where)
        columns = build.split_columns(request.query_params.getlist("columns"))
        snap = reader.snapshot()
        key = ("trials", name, where, sort, desc, page, per_page, columns)
        return html(
            snap.page(
                key,
                lambda: build.trials(
                    snap, site, name, filters, sort or None, bool(desc), page, per_page, columns
                ),
            )
        )

    @app.get("/sweeps/{name}/trials/{trial_id}", response_class=HTMLResponse)
    def trial(name: str, trial_id: int, fragment: str | None = None) -> HTMLResponse:
        snap = reader.snapshot()
        return html(
            snap.page(
                ("trial", name, trial_id, fragment),
                lambda: build.trial(snap, site, name, trial_id, fragment=fragment),
            )
        )

    # -- the JSON API ------------------------------------------------------------------------

    def json(value: Any) -> Response:
        return Response(
            value if isinstance(value, str) else build.json_text(value),
            media_type="application/json",
            headers={"Cache-Control": "no-cache"},
        )

    @app.get("/api/sweeps")
    def api_sweeps() -> Response:
        snap = reader.snapshot()
        return json(snap.page(("api", "sweeps"), lambda: build.api_sweeps(snap)))

    @app.get("/api/sweeps/{name}/status")
    def api_status(name: str) -> Response:
        snap = reader.snapshot()
        return json(snap.page(("api", "status", name), lambda: build.api_status(snap, name)))

    @app.get("/api/sweeps/{name}/trials")
    def api_trials(name: str, where: str = "") -> Response:
        filters = build.parse_where(where)
        snap = reader.snapshot()
        return json(
            snap.page(("api", "trials", name, where), lambda: build.api_trials(snap, name, filters))
        )

    @app.get("/api/sweeps/{name}/tables")
    def api_tables(name: str, request: Request) -> Response:
        query = TableQuery.from_params(params(request))
        snap = reader.snapshot()
        return json(
            snap.page(("api", "tables", name, query), lambda: build.api_tables(snap, name, query))
        )

    return app


def _attachment(name: str, file: str) -> dict[str, str]:
    from bnsweep.sweep_tables import safe_name

    return {
        "Content-Disposition": f'attachment; filename="{safe_name(name, "sweep")}-{file}"',
        "Cache-Control": "no-cache",
    }


def _presented_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return request.query_params.get("token") or request.cookies.get(TOKEN_COOKIE)
