"""A schema-driven fuzz of the dashboard (issue 19): every route of the app's own OpenAPI schema,
with its path and query parameters drawn by Hypothesis from their declared types, plus the
table controls the pages read from the query string, against a small store.

Whatever comes in, the answer is never a 5xx and never a traceback; an error is one line, as
JSON `{"error": ...}` under /api/, the bare line for a live section, else a page with one
message; the Content-Type is the route's; every answer has the security headers. Derandomized
and bounded, so CI sees the same examples every run, in a few seconds."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode

import pytest

pytest.importorskip("fastapi", reason="the dashboard extra (FastAPI) is not installed")
pytest.importorskip("hypothesis", reason="hypothesis is not installed (test extra)")
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bnsweep.web.app import SECURITY_HEADERS, create_app
from tests.web.stores import make_store

#: Reproducible (the same examples every run) and bounded (a few seconds).
FUZZ = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

#: Read from the query string by the table's routes (`TableQuery`), so not in the schema.
CONTROLS = {
    "test": ["t", "wilcoxon", "z"],
    "correction": ["none", "holm", "bonferroni"],
    "alpha": ["0.05", "0", "1", "nan", "inf", "-1", "1e-400", "big"],
    "layout": ["gamma", "formulation", "methods", "x"],
    "versus": ["BASE", "standard γ=0.1 c=100", "standard γ=9 c=1"],
}

#: Values worth trying first for a parameter of that name, beside arbitrary text.
KNOWN = {
    "name": ["demo", "demo", "demo", "demo", "nope", "", "..", "demo/cells"],
    "asset": ["bnsweep.js", "bnsweep.css", "x.js", "../app.py"],
    "ext": ["md", "tex", "csv", "html", "pdf", ""],
    "ident": ["0-0-0", "0-1-1", "0-2-1", "9-9-9", "x", "-1-0-0", "0-0-99999999999999999999"],
    "stem": ["curves_0", "difference_0", "accuracy_vs_gamma", "nope"],
    "where": [
        "status=failed",
        "test_acc>0.99",
        "lr=0.1 seed=1",
        "seed=123456789012345678901234567890",
        "epochs_run=1e400",
        "colour=1",
        "status=",
        '"unclosed',
        "seed>=nan",
    ],
    "sort": ["seconds", "seed", "nope", "test_acc"],
    "desc": ["", "1", "no"],
    "fragment": ["progress", "status", "table", "nope", "sweeps"],
}

TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=24)
INTEGER = st.one_of(
    st.integers(min_value=1, max_value=20).map(str),  # the store's trials
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.sampled_from(["0", "-1", "1.0", "1e3", " 1", "0x1", "", "abc", "9" * 40]),
    TEXT,
)

ROUTE = re.compile(r"\{(\w+)\}")


def mostly(known: list[str]) -> st.SearchStrategy[str]:
    """A known value four times in five (so most requests reach a page), else any text."""
    return st.integers(0, 4).flatmap(lambda i: TEXT if i == 0 else st.sampled_from(known))


def value(name: str, schema: dict[str, Any]) -> st.SearchStrategy[str]:
    if schema.get("type") == "integer":
        return INTEGER
    return mostly(KNOWN.get(name, [""]))


def requests(schema: dict[str, Any]) -> st.SearchStrategy[tuple[str, str]]:
    """(route, URL) for every GET of the schema, its parameters drawn from their types."""
    choices = []
    for route, operations in sorted(schema["paths"].items()):
        parameters = operations["get"].get("parameters", [])
        path_params = {
            p["name"]: value(p["name"], p["schema"]) for p in parameters if p["in"] == "path"
        }
        query_params = {
            p["name"]: value(p["name"], p["schema"]) for p in parameters if p["in"] == "query"
        }
        query_params |= {k: mostly(v) for k, v in CONTROLS.items()}

        @st.composite
        def one(
            draw: st.DrawFn,
            route: str = route,
            path_params: dict[str, st.SearchStrategy[str]] = path_params,
            query_params: dict[str, st.SearchStrategy[str]] = query_params,
        ) -> tuple[str, str]:
            values = {k: draw(s) for k, s in path_params.items()}
            path = ROUTE.sub(lambda m: quote(values[m.group(1)], safe=""), route)
            chosen = draw(st.lists(st.sampled_from(sorted(query_params)), unique=True, max_size=4))
            query = urlencode({k: draw(query_params[k]) for k in chosen})
            return route, path + ("?" + query if query else "")

        choices.append(one())
    return st.one_of(choices)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    url = make_store(tmp_path_factory.mktemp("fuzz") / "r.db", "failed")
    # Raised, not turned into a 500: a failing example then shows its traceback.
    with TestClient(create_app(url, hosts={"testserver"}), raise_server_exceptions=True) as c:
        yield c


SCHEMA = create_app("sqlite:///unused.db").openapi()


def media_of(route: str, url: str) -> str:
    """The Content-Type a successful answer of this route has."""
    if route.startswith("/api/"):
        return "application/json"
    if route.startswith("/static/"):
        return "text/css" if url.split("?")[0].endswith(".css") else "text/javascript"
    if route.endswith(".svg"):
        return "image/svg+xml"
    if route.endswith((".csv", ".parquet", "tables.{ext}")):
        return ""  # a download: its own type, checked by test_pages
    if "fragment=" in url:
        return "text/html"
    return "text/html"


def check_error_line(route: str, url: str, response: Any) -> None:
    kind = response.headers["content-type"]
    if route.startswith("/api/"):
        assert kind == "application/json", url
        body = json.loads(response.text)
        assert list(body) == ["error"] and isinstance(body["error"], str), url
        line = body["error"]
    elif kind.startswith("text/plain"):
        line = response.text  # a live section's refresh: the bare line
    else:
        assert kind.startswith("text/html"), url
        lines = re.findall(r'<p class="error-message">(.*?)</p>', response.text, re.S)
        assert len(lines) == 1, url
        line = html.unescape(lines[0])
    assert line.strip() and "\n" not in line, (url, line)


@FUZZ
@given(request=requests(SCHEMA))
def test_any_request_is_answered_in_its_kind_never_with_a_5xx(
    client: TestClient, request: tuple[str, str]
) -> None:
    route, url = request
    response = client.get(url)
    assert response.status_code < 500, (url, response.text[:300])
    assert "Traceback (most recent call last)" not in response.text, url
    for name, expected in SECURITY_HEADERS.items():
        assert response.headers.get(name) == expected, (url, name)
    if 400 <= response.status_code < 500:
        check_error_line(route, url, response)
    elif response.status_code == 200:
        media = media_of(route, url)
        assert response.headers["content-type"].startswith(media), url


@FUZZ
@given(host=st.one_of(st.sampled_from(["evil.example", "testserver.evil", "127.0.0.1"]), TEXT))
def test_any_other_host_is_refused_in_one_line(client: TestClient, host: str) -> None:
    try:
        response = client.get("/api/sweeps", headers={"host": host})
    except (UnicodeEncodeError, ValueError):
        return  # not a header value an HTTP client can send
    name = host.split(":")[0].lower().rstrip(".")
    if name == "testserver":
        assert response.status_code in (200, 400)
        return
    assert response.status_code == 400, host
    check_error_line("/api/sweeps", "/api/sweeps", response)
