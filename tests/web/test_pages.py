"""Every route of the dashboard, through FastAPI's test client, against stores in every state:
empty, pending, running, failed cells, diverged seeds, no BASE, one seed, finished; an older
schema revision and a store that is not there (one clear message); a password in the URL
(never shown); the token; the cache."""

from __future__ import annotations

import csv
import hashlib
import html
import io
import re
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the dashboard extra (FastAPI) is not installed")
from fastapi.testclient import TestClient

from bnsweep.analysis.render.csv_rows import CSV_COLUMNS
from bnsweep.store.api import Store
from bnsweep.store.events import TrialStarted
from bnsweep.web.app import TOKEN_COOKIE, create_app
from tests.web.stores import STATES, cells, make_old_schema, make_store

#: States with at least one completed trial, so with a table and its downloads.
WITH_TABLES = {"running", "failed", "diverged", "no_base", "one_seed", "finished"}


@pytest.fixture(scope="module", params=list(STATES))
def state_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp(request.param) / "results.db"
    return request.param, make_store(path, request.param)


def client_for(url: str, **kwargs: object) -> TestClient:
    return TestClient(create_app(url, **kwargs), raise_server_exceptions=True)


def links(html: str) -> list[str]:
    return [m.replace("&amp;", "&") for m in re.findall(r'(?:href|src)="([^"]+)"', html)]


def crawl(client: TestClient) -> dict[str, int]:
    """Every same-site link reachable from the index (and the API), with its status code."""
    seen: dict[str, int] = {}
    todo = ["/", "/api/sweeps"]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        response = client.get(path)
        seen[path] = response.status_code
        if response.headers.get("content-type", "").startswith("text/html"):
            for link in links(response.text):
                assert not re.match(r"^[a-z]+://", link), f"{path} links outside: {link}"
                if link.startswith("/") and link not in seen:
                    todo.append(link)
    return seen


def test_every_route_answers_in_every_state(state_url: tuple[str, str]) -> None:
    state, url = state_url
    with client_for(url) as client:
        seen = crawl(client)
        if state == "empty":
            assert "No sweeps in this store" in client.get("/").text
            assert client.get("/api/sweeps").json() == []
            return
        extra = [
            "/sweeps/demo?fragment=progress",
            "/sweeps/demo?fragment=table",
            "/sweeps/demo?fragment=status",
            "/?fragment=sweeps",
            "/sweeps/demo?test=wilcoxon&correction=holm&alpha=0.1&layout=gamma",
            "/sweeps/demo/trials?where=status%3Dcompleted&sort=seed&desc=1",
            "/sweeps/demo/trials?page=2&per_page=5&columns=seed,test_acc",
            "/api/sweeps/demo/status",
            "/api/sweeps/demo/trials?where=seed%3D1",
        ]
        for path in extra:
            seen[path] = client.get(path).status_code
        seen["/api/sweeps/demo/tables"] = client.get("/api/sweeps/demo/tables").status_code
        for ext in ("md", "tex", "csv", "html"):
            seen[f"/sweeps/demo/tables.{ext}"] = client.get(
                f"/sweeps/demo/tables.{ext}"
            ).status_code
        tables = [p for p in seen if "/tables" in p]
        bad = {p: s for p, s in seen.items() if s != 200 and p not in tables}
        assert not bad, bad
        expected = 200 if state in WITH_TABLES else 404
        assert {seen[p] for p in tables} == {expected}, {p: seen[p] for p in tables}
        # Pages seen: index, sweep, curves (both), trials, a trial page, and figures.
        assert any(p.startswith("/sweeps/demo/trials/") for p in seen)
        assert any(p.endswith(".svg") for p in seen) or state == "pending"
        if state in WITH_TABLES:
            assert any("/cells/" in p for p in seen)


def _csv_rows(client: TestClient, query: str = "") -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(client.get(f"/sweeps/demo/tables.csv{query}").text)))


def _page_cells(html: str) -> list[dict[str, str]]:
    cells = []
    for match in re.finditer(r"<td class=\"num\" (data-block[^>]*)>(.*?)</td>", html):
        attrs = dict(re.findall(r'data-([a-z]+)="([^"]*)"', match.group(1)))
        attrs["strong"] = "<strong>" in match.group(2)
        attrs["u"] = "<u>" in match.group(2)
        attrs["href"] = re.search(r'href="([^"]+)"', match.group(2)).group(1).replace("&amp;", "&")
        cells.append(attrs)
    return cells


@pytest.mark.parametrize("query", ["", "?correction=holm", "?test=wilcoxon&alpha=0.2"])
def test_bold_and_underline_are_the_csvs_significant_and_best(tmp_path: Path, query: str) -> None:
    url = make_store(tmp_path / "r.db", "finished")
    with client_for(url) as client:
        rows = _csv_rows(client, query)
        cells = _page_cells(client.get(f"/sweeps/demo{query}").text)
        assert len(cells) == len(rows) > 0
        by_key = {(r["block"], r["row"], r["column"]): r for r in rows}
        for cell in cells:
            row = by_key[(cell["block"], cell["row"], cell["column"])]
            assert cell["strong"] == (row["significant"] == "true")
            assert cell["u"] == (row["best"] == "true")
            assert cell["significant"] == row["significant"]
        assert any(c["strong"] for c in cells) or query  # γ = 0.1 beats BASE by construction
        # A cell's page gives the CSV's p and adjusted p.
        tested = [c for c in cells if by_key[(c["block"], c["row"], c["column"])]["p"]]
        for cell in tested[:2]:
            row = by_key[(cell["block"], cell["row"], cell["column"])]
            page = client.get(cell["href"]).text
            shown = re.search(r'data-stat="p">([^<]+)<', page).group(1)
            assert float(shown) == pytest.approx(float(row["p"]), rel=1e-5)
            assert "Pairs (matched by seed)" in page and "minimum detectable effect" in page


def test_the_json_tables_have_the_csvs_columns(tmp_path: Path) -> None:
    url = make_store(tmp_path / "r.db", "finished")
    with client_for(url) as client:
        rows = client.get("/api/sweeps/demo/tables").json()
        assert rows and all(list(r) == list(CSV_COLUMNS) for r in rows)
        assert {type(r["significant"]) for r in rows} == {bool}
        sweeps = client.get("/api/sweeps").json()
        assert [(s["name"], s["total"], s["completed"]) for s in sweeps] == [("demo", 18, 18)]
        assert len(client.get("/api/sweeps/demo/trials").json()) == 18
        status = client.get("/api/sweeps/demo/status").json()
        assert status["total"] == 18 and status["failures"] == []


def test_each_state_says_what_it_is(state_url: tuple[str, str]) -> None:
    state, url = state_url
    with client_for(url) as client:
        if state == "empty":
            return
        page = client.get("/sweeps/demo").text
        expected = {
            "pending": "No table yet",
            "running": "estimating…",  # no epoch of this launch stored yet: no rate (test_live)
            "failed": "RuntimeError: CUDA OOM",
            "diverged": "Diverged runs",  # counted or left out, the note says where
            "no_base": "No BASE arm",
            "one_seed": "a single seed",
            "finished": "All 18 cells done",
        }[state]
        assert expected in page
        if state == "failed":
            assert "<script>alert" not in page and "&lt;script&gt;" in page
            assert "/error.txt" in page  # where the whole traceback is kept
        if state == "running":
            assert '<span data-count="running">2</span>' in page


def test_an_older_schema_is_one_clear_message_on_every_route(tmp_path: Path) -> None:
    url = make_old_schema(tmp_path / "old.db")
    with client_for(url) as client:
        for path in ("/", "/sweeps/demo", "/api/sweeps", "/sweeps/demo/tables.csv"):
            response = client.get(path)
            assert response.status_code == 503
            assert "schema revision 0001" in response.text
            assert "bnsweep db upgrade" in response.text


def test_a_missing_store_is_reported_and_not_created(tmp_path: Path) -> None:
    path = tmp_path / "nothing.db"
    with client_for(f"sqlite:///{path}") as client:
        response = client.get("/")
        assert response.status_code == 503 and "no results database" in response.text
    assert not path.exists()


def test_a_password_in_the_url_is_never_shown(tmp_path: Path) -> None:
    # Nothing listens on port 9: the error page must name the store without its password.
    url = "postgresql://bnsweep:s3cret-pw@127.0.0.1:9/results"
    with client_for(url) as client:
        for path in ("/", "/api/sweeps", "/sweeps/demo"):
            response = client.get(path)
            assert response.status_code == 503
            assert "s3cret-pw" not in response.text and "***" in response.text


def test_a_password_in_a_postgres_url_is_never_shown(postgres_url: str) -> None:
    import sqlalchemy as sa

    from tests.service.test_store import fresh_database

    with fresh_database(postgres_url) as db:
        with Store.open(db) as store:
            STATES["failed"](store)
        # Trust authentication ignores the password; it is here to prove it never leaks.
        secret = sa.make_url(db).set(password="s3cret-pw").render_as_string(hide_password=False)
        with client_for(secret) as client:
            seen = crawl(client)
            assert set(seen.values()) == {200}
            for path in seen:
                assert "s3cret-pw" not in client.get(path).text


def test_reads_leave_the_sqlite_file_byte_identical(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    url = make_store(path, "failed")
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    with client_for(url) as client:
        crawl(client)
    client.app.state.reader.close()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def test_pages_are_cached_until_the_store_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = make_store(tmp_path / "r.db", "running")
    calls: list[str] = []
    original = Store.trials

    def counting(self: Store, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        calls.append("trials")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Store, "trials", counting)
    with client_for(url) as client:
        first = client.get("/sweeps/demo").text
        loads = len(calls)
        assert client.get("/sweeps/demo").text == first
        assert len(calls) == loads  # served from the cache: the store was not read again
        with Store.open(url) as store:
            spec = cells(range(1, 4))[-1]  # the pending cell starts
            store.apply([TrialStarted(spec.spec_hash, spec.seed, host="node-3")])
        changed = client.get("/sweeps/demo").text
        assert len(calls) > loads
        assert '<span data-count="running">3</span>' in changed


def test_the_token_guards_every_page_and_api_call(tmp_path: Path) -> None:
    url = make_store(tmp_path / "r.db", "finished")
    token = "t0ken-of-sixteen-chars"
    with client_for(url, token=token) as client:
        for path in ("/", "/sweeps/demo", "/api/sweeps", "/static/bnsweep.js"):
            assert client.get(path).status_code == 401
        assert (
            client.get("/api/sweeps", headers={"Authorization": "Bearer nope"}).status_code == 401
        )
        ok = client.get("/api/sweeps", headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200
        first = client.get(f"/?token={token}")
        assert first.status_code == 200 and TOKEN_COOKIE in first.headers["set-cookie"]
        assert client.get("/sweeps/demo").status_code == 200  # the cookie from then on


def test_bad_controls_and_unknown_things_are_one_line_each(tmp_path: Path) -> None:
    url = make_store(tmp_path / "r.db", "finished")
    with client_for(url) as client:
        cases = {
            "/sweeps/nope": (404, "no sweep named 'nope'"),
            "/sweeps/demo?alpha=big": (400, "alpha: expected a number in (0, 1)"),
            "/sweeps/demo?test=z": (400, "test: unknown value 'z'"),
            "/sweeps/demo/cells/9-9-9": (404, "no cell '9-9-9'"),
            "/sweeps/demo/trials/99999": (404, "no trial 99999"),
            "/sweeps/demo/trials?where=colour%3D1": (400, "unknown field 'colour'"),
            "/api/sweeps/nope/status": (404, "no sweep named 'nope'"),
            "/sweeps/demo?fragment=nope": (404, "no section 'nope'"),
        }
        for path, (status, text) in cases.items():
            response = client.get(path)
            shown = html.unescape(response.text)
            assert (response.status_code, text in shown) == (status, True), path


def test_the_pages_status_is_the_stores(state_url: tuple[str, str]) -> None:
    from bnsweep.web.view import status_of

    state, url = state_url
    with Store.open(url, create=False) as store:
        for info in store.sweeps():
            expected = store.sweep_status(info.name)
            assert status_of(info.name, store.trials(sweep=info.name)) == expected, state


def test_the_fingerprint_moves_with_every_kind_of_write(tmp_path: Path) -> None:
    from bnsweep.store.events import EpochRecorded, TrialFinished
    from bnsweep.store.reads import store_fingerprint
    from tests.service.test_store import epoch, result

    url = make_store(tmp_path / "r.db", "pending")
    spec = cells(range(1, 3))[0]
    key = (spec.spec_hash, spec.seed)
    writes = [
        lambda s: s.register_sweep("other", "name: other", [spec]),
        lambda s: s.apply([TrialStarted(*key)]),
        lambda s: s.apply([EpochRecorded(*key, metrics=epoch(1))]),
        lambda s: s.apply([TrialFinished.from_result(*key, result())]),
    ]
    with Store.open(url) as store:
        seen = [store_fingerprint(store)]
        assert store_fingerprint(store) == seen[0]  # reads alone change nothing
        for write in writes:
            write(store)
            seen.append(store_fingerprint(store))
    assert len(set(seen)) == len(seen)


def _has_versus() -> bool:
    import inspect

    from bnsweep.sweep_tables import tables_for

    return "versus" in inspect.signature(tables_for).parameters


@pytest.mark.skipif(
    not _has_versus(), reason="needs `bnsweep tables --versus` in the table model (analysis)"
)
def test_the_arm_compared_against_is_a_control_like_versus(tmp_path: Path) -> None:
    url = make_store(tmp_path / "r.db", "finished")
    query = "?versus=standard%20%CE%B3%3D0.5%20c%3D100"
    with client_for(url) as client:
        rows = _csv_rows(client, query)
        page = client.get(f"/sweeps/demo{query}").text
        assert 'value="standard γ=0.5 c=100"' in page
        cells = _page_cells(page)
        by_key = {(r["block"], r["row"], r["column"]): r for r in rows}
        for cell in cells:
            row = by_key[(cell["block"], cell["row"], cell["column"])]
            assert cell["strong"] == (row["significant"] == "true")
        tested = next(c for c in cells if by_key[(c["block"], c["row"], c["column"])]["p"])
        assert "standard γ=0.5 c=100 (%)" in client.get(tested["href"]).text
        bad = client.get("/sweeps/demo?versus=nope")
        assert bad.status_code == 400 and "versus" in bad.text
