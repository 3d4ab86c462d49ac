"""Notes written with `bnsweep note` on the dashboard's pages and in the static report: each on
the page of what it is written on, newest first, escaped; the dashboard has no route that
writes one."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the dashboard extra (FastAPI) is not installed")

from fastapi.testclient import TestClient

from bnsweep.store.api import Store
from bnsweep.web.app import create_app
from bnsweep.web.report import write_report
from tests.web.stores import make_store

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=timezone.utc)
SCRIPT = "<script>alert('x')</script> & γ"


def notes_of(html: str) -> list[str]:
    """The text of every note shown on a page, in page order."""
    return re.findall(r'<p class="note-text">(.*?)</p>', html, flags=re.S)


@pytest.fixture
def noted(tmp_path: Path) -> tuple[str, dict[str, int]]:
    """The finished demo store with a note on the sweep (two, at different times), on a cell
    (γ = 0.1 at lr 0.1) and on one of that cell's trials."""
    url = make_store(tmp_path / "r.db", "finished")
    with Store.open(url) as store:
        trials = store.trials(sweep="demo")
        cell = trials[(trials["bn_scale_init"] == 0.1) & (trials["lr"] == 0.1)]
        spec_hash = str(cell["spec_hash"].iloc[0])
        trial_id = int(cell["trial_id"].iloc[0])
        store.add_note("older sweep note", "ann", sweep="demo", created_at=T0)
        store.add_note(SCRIPT, "bob", sweep="demo", created_at=T0 + timedelta(hours=1))
        store.add_note(
            "cell note", "ann", sweep="demo", spec_hash=spec_hash, created_at=T0 + timedelta(1)
        )
        store.add_note("trial note", "cy", trial_id=trial_id, created_at=T0 + timedelta(2))
    return url, {"trial": trial_id}


def client_for(url: str) -> TestClient:
    return TestClient(create_app(url), raise_server_exceptions=True)


def cell_pages(client: TestClient) -> dict[str, str]:
    """Every cell page the sweep page links to, by link."""
    sweep = client.get("/sweeps/demo").text
    links = sorted(set(re.findall(r'href="(/sweeps/demo/cells/[^"?]+)', sweep)))
    assert links
    return {link: client.get(link).text for link in links}


def test_each_page_shows_its_notes_newest_first_and_escaped(noted) -> None:
    url, ids = noted
    escaped = "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; γ"
    with client_for(url) as client:
        sweep = client.get("/sweeps/demo").text
        assert notes_of(sweep) == ["cell note", escaped, "older sweep note"]
        assert "<script>alert" not in sweep
        assert "bob · 2026-12-01 10:00:00 UTC · on sweep demo" in sweep
        with_note = {k: v for k, v in cell_pages(client).items() if notes_of(v)}
        assert len(with_note) == 1
        (page,) = with_note.values()
        assert notes_of(page) == ["cell note"]
        trial = client.get(f"/sweeps/demo/trials/{ids['trial']}").text
        assert notes_of(trial) == ["trial note"]
        assert f"on trial {ids['trial']} (seed " in trial
        other = client.get(f"/sweeps/demo/trials/{ids['trial'] + 1}").text
        assert notes_of(other) == []


def test_a_new_note_shows_without_restarting_the_dashboard(noted) -> None:
    url, _ = noted
    with client_for(url) as client:
        assert len(notes_of(client.get("/sweeps/demo").text)) == 3
        with Store.open(url) as store:
            store.add_note("just now", "dee", sweep="demo")
        assert notes_of(client.get("/sweeps/demo").text)[0] == "just now"


def test_the_dashboard_has_no_route_that_writes_a_note(noted) -> None:
    url, _ = noted
    app = create_app(url)
    methods = {m for route in app.routes for m in getattr(route, "methods", ())}
    assert methods <= {"GET", "HEAD"}
    with client_for(url) as client:
        assert client.post("/sweeps/demo", data={"text": "x"}).status_code >= 400
    with Store.open(url) as store:
        assert len(store.notes()) == 4


def test_the_report_shows_the_same_notes(noted, tmp_path: Path) -> None:
    url, ids = noted
    out = write_report(url, "demo", tmp_path / "report")
    sweep = next(out.glob("sweeps/*.html")).read_text()
    assert notes_of(sweep)[0] == "cell note" and len(notes_of(sweep)) == 3
    trial = next(out.glob(f"sweeps/*/trials/{ids['trial']}.html")).read_text()
    assert notes_of(trial) == ["trial note"]
    cells = [p for p in out.glob("sweeps/*/cells/*.html") if notes_of(p.read_text())]
    assert len(cells) == 1
