"""The same filter gives the same trials on every surface: `bnsweep query --where ... --format
json`, the JSON API (`/api/sweeps/NAME/trials?where=`) and the trials page, with the CLI's
one-line message for a bad filter; and a trial's page shows the values `query` prints (a
missing one blank, never "nan").

One store for the module, written through the store's events (no training): text values with
a space and with quotes, failed, diverged and completed trials.
"""

from __future__ import annotations

import html
import json
import re
import shlex

import pytest

pytest.importorskip("fastapi", reason="the dashboard extra (FastAPI) is not installed")
from fastapi.testclient import TestClient

from bnsweep.cli import main
from bnsweep.store.api import Store
from bnsweep.store.events import EpochRecorded, TrialFailed, TrialFinished, TrialStarted
from bnsweep.web import build
from bnsweep.web.app import create_app
from bnsweep.web.frame import Site
from bnsweep.workers.spec import TrialSpec
from tests.service.test_store import epoch, result, run_cell
from tests.web.stores import accuracy, cells, register

#: Hosts the completed trials ran on, in turn: a value with a space, one with both quotes.
HOSTS = ("node 1", 'it\'s "quoted"', "node-1")


def _specs() -> list[TrialSpec]:
    return cells(range(1, 4))


#: A test accuracy one trial has exactly: the boundary of >= and <=, and an equality.
EXACT = accuracy(_specs()[7])


def _fill(store: Store) -> None:
    specs = _specs()
    register(store, "demo", specs, 3)
    failed, no_host, diverged, done = specs[0], specs[1], specs[2], specs[3:]
    for i, spec in enumerate(done):
        key = (spec.spec_hash, spec.seed)
        acc = accuracy(spec)
        store.apply(
            [
                TrialStarted(*key, host=HOSTS[i % len(HOSTS)], device="cpu"),
                *(EpochRecorded(*key, metrics=epoch(n)) for n in (1, 2, 3)),
                TrialFinished.from_result(
                    *key, result(test_acc=acc, best_val_acc=acc, final_test_acc=acc)
                ),
            ]
        )
    store.apply([TrialStarted(failed.spec_hash, failed.seed, host="node 1")])
    store.apply([TrialFailed(failed.spec_hash, failed.seed, "Traceback...\nRuntimeError: OOM")])
    # Failed before the worker said where it ran: no host, and a message.
    store.apply([TrialStarted(no_host.spec_hash, no_host.seed)])
    store.apply([TrialFailed(no_host.spec_hash, no_host.seed, "ValueError: bad batch")])
    run_cell(
        store,
        diverged,
        epochs=2,
        status="diverged",
        diverged_epoch=2,
        test_acc=None,
        best_val_acc=None,
        final_test_acc=None,
    )


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('same') / 'results.db'}"
    with Store.open(url) as store:
        _fill(store)
    return url


@pytest.fixture(scope="module")
def client(url: str):
    with TestClient(create_app(url), raise_server_exceptions=True) as client:
        yield client


#: Filters as `--where` items: each comparison on int, float and text columns, the aliases,
#: nullable columns, several conditions, a repeated field (any of its values), and values
#: with a space and with quotes.
GOOD = [
    [],
    ["seed=2"],
    ["seed!=2"],
    ["seed>1"],
    ["seed>=2"],
    ["seed<2"],
    ["seed<=2"],
    ["attempts=1", "seed=3"],
    ["epochs_run>=3"],
    ["diverged_epoch=2"],
    ["diverged_epoch<5"],
    ["test_acc>0.81"],
    ["test_acc<0.81"],
    [f"test_acc>={EXACT!r}"],
    [f"test_acc<={EXACT!r}"],
    [f"test_acc={EXACT!r}"],
    [f"test_acc!={EXACT!r}"],
    ["lr=0.01"],
    ["alpha=0.1"],
    ["gamma=0.1"],
    ["c=100"],
    ["bn_scale_init!=1"],
    ["lr = 0.1"],
    ["status=failed"],
    ["status!=completed"],
    ["formulation=standard", "lr=0.01"],
    ["host=node 1"],
    ["host!=node 1"],
    ['host=it\'s "quoted"'],
    ["seed=1", "seed=3"],
    ["status=completed", "test_acc>0.81", "lr=0.1"],
    ["test_acc>0.8", "test_acc<0.82"],
    ["gamma=0.1", "seed>=2", "host!=node-1"],
    ["host=node 1", "host=node-1", "seed!=1"],
]

#: Filters the CLI refuses, each in one line (exit 2).
BAD = [
    ["colour=1"],
    ["lr"],
    ["=1"],
    ["test_acc>abc"],
    ["test_acc>nan"],
    ["host>a"],
    ["status=bogus"],
    ["seed=1.5"],
    ["seed>99999999999999999999"],
]


def box_text(items: list[str]) -> str:
    """What a user types in the page's filter box for these `--where` items."""
    return " ".join(shlex.quote(item) for item in items)


def cli(capsys: pytest.CaptureFixture[str], url: str, items: list[str]) -> tuple[int, str, str]:
    argv = ["query", "--db", url, "--sweep", "demo", "--format", "json"]
    for item in items:
        argv += ["--where", item]
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def page_ids(text: str) -> set[int]:
    body = text.split('id="trials"', 1)[1]
    return {int(i) for i in re.findall(r'href="/sweeps/demo/trials/(\d+)"', body)}


def box_value(text: str) -> str:
    found = re.search(r'<input name="where"[^>]* value="([^"]*)"', text)
    assert found is not None, "the trials page has no filter box"
    return html.unescape(found.group(1))


@pytest.mark.parametrize("items", GOOD, ids=lambda items: " ".join(items) or "none")
def test_a_filter_keeps_the_same_trials_everywhere(
    items: list[str], url: str, client: TestClient, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(capsys, url, items)
    assert (code, err) == (0, "")
    expected = {row["trial_id"] for row in json.loads(out)}
    # Worth running: each filter keeps some of the 18 trials and drops others.
    assert 0 < len(expected) < 18 or not items, len(expected)
    text = box_text(items)
    api = client.get("/api/sweeps/demo/trials", params={"where": text})
    assert api.status_code == 200, api.text
    assert {row["trial_id"] for row in api.json()} == expected
    page = client.get("/sweeps/demo/trials", params={"where": text})
    assert page.status_code == 200, page.text
    assert page_ids(page.text) == expected
    assert box_value(page.text) == text  # the user's own words, not the parsed filter


@pytest.mark.parametrize("items", BAD, ids=" ".join)
def test_a_bad_filter_is_the_clis_one_line_everywhere(
    items: list[str], url: str, client: TestClient, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(capsys, url, items)
    assert code == 2 and out == "" and err.startswith("bnsweep: error: ") and err.count("\n") == 1
    message = err.removeprefix("bnsweep: error: ").rstrip("\n")
    text = box_text(items)
    api = client.get("/api/sweeps/demo/trials", params={"where": text})
    assert (api.status_code, api.json()) == (400, {"error": message})
    page = client.get("/sweeps/demo/trials", params={"where": text})
    assert page.status_code == 400
    assert f'<p class="error-message">{html.escape(message)}</p>' in page.text


def test_an_unclosed_quote_in_the_box_is_one_line(client: TestClient) -> None:
    """The one filter the shell itself refuses before `--where` sees it."""
    api = client.get("/api/sweeps/demo/trials", params={"where": 'host="node 1'})
    assert api.status_code == 400
    assert api.json()["error"].startswith("where 'host=\"node 1': no closing quotation; ")
    assert client.get("/sweeps/demo/trials", params={"where": "seed=1 'x"}).status_code == 400


def _shown(text: str) -> dict[str, str]:
    pairs = re.findall(r"<dt>([^<]*)</dt><dd>([^<]*)</dd>", text)
    return {k: html.unescape(v) for k, v in pairs}


def test_a_trial_page_shows_what_query_prints(
    url: str, client: TestClient, capsys: pytest.CaptureFixture[str]
) -> None:
    """Field by field: a value `query` prints as null is blank on the page, and the page has
    an Error section exactly when `query` has an error (not "Error: nan")."""
    code, out, _ = cli(capsys, url, [])
    rows = json.loads(out)
    assert code == 0 and {r["status"] for r in rows} == {"completed", "failed", "diverged"}
    snap = client.app.state.reader.snapshot()
    for row in rows:
        # The route's page less its figure (~0.5 s each to draw; tests/web/test_pages.py
        # crawls the routes).
        page = build.trial(snap, Site(live=True), "demo", row["trial_id"], figure=False)
        shown = _shown(page)
        assert ("<h2>Error</h2>" in page) == (row["error"] is not None), row
        for name, value in row.items():
            if name in ("trial_id", "error"):
                continue
            if value is None:
                assert shown[name] == "", (name, row)
            elif isinstance(value, str) and name not in ("started_at", "finished_at"):
                assert shown[name] == value, (name, row)
            elif isinstance(value, (int, float)):
                assert float(shown[name]) == pytest.approx(value, rel=1e-5), (name, row)
            else:
                assert shown[name], (name, row)
        assert not re.search(r">\s*nan\s*<", page), row


def test_the_failures_show_no_nan(client: TestClient) -> None:
    """A failed trial whose worker never said its host: blank, not "nan", on the sweep page."""
    page = client.get("/sweeps/demo?fragment=status").text
    assert "bad batch" in page and "OOM" in page
    assert not re.search(r">\s*nan\s*<", page), page
