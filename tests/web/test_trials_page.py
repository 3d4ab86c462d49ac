"""The trials page leads with results: the spec fields that vary and the results first, the
fields with one value in one line above the table, a column chooser the URL keeps, the store's
`--where` filter (numeric comparisons included), and server-side pages."""

from __future__ import annotations

import html
import re

import pytest

pytest.importorskip("fastapi", reason="the dashboard extra (FastAPI) is not installed")
from fastapi.testclient import TestClient

from bnsweep.store.api import Store
from bnsweep.store.columns import parse_where
from bnsweep.web.app import create_app
from tests.web.stores import make_store


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_store(tmp_path_factory.mktemp("trials") / "demo.db", "finished")


@pytest.fixture(scope="module")
def client(url: str):
    with TestClient(create_app(url)) as client:
        yield client


def heads(text: str) -> list[str]:
    thead = re.search(r'id="trials"><thead>(.*?)</thead>', text)
    assert thead is not None
    return re.findall(r"<th>([^<]*)</th>", thead.group(1))


def ids(text: str) -> list[int]:
    body = text.split('id="trials"', 1)[1]
    return [int(i) for i in re.findall(r'href="/sweeps/demo/trials/(\d+)"', body)]


def test_the_default_columns_lead_with_what_varies_and_the_results(client: TestClient) -> None:
    text = client.get("/sweeps/demo/trials").text
    columns = heads(text)
    assert columns[:5] == ["trial_id", "bn_scale_init", "bn_lr_divisor", "lr", "seed"]
    assert columns.index("test_acc") < 8
    # One value in every trial: above the table once, not a column repeating it.
    constant = re.search(r'<p class="constant">(.*?)</p>', text)
    assert constant is not None
    for field, value in (("dataset", "digits"), ("arch", "resnet8"), ("status", "completed")):
        assert f"{field} <strong>{value}</strong>" in constant.group(1)
        assert field not in columns
    assert len(columns) < 15


def test_the_column_chooser_is_kept_in_the_url(client: TestClient) -> None:
    # The chooser's checkboxes send `columns` once per box; a link sends one list.
    boxes = client.get("/sweeps/demo/trials", params=[("columns", "test_acc"), ("columns", "host")])
    listed = client.get("/sweeps/demo/trials", params={"columns": "host,test_acc"})
    assert heads(boxes.text) == heads(listed.text) == ["trial_id", "test_acc", "host"]
    assert re.search(r'value="host" checked', listed.text)
    assert not re.search(r'value="dataset" checked', listed.text)
    paged = client.get("/sweeps/demo/trials", params={"columns": "test_acc", "per_page": 5})
    following = re.search(r'<a rel="next" href="([^"]+)"', paged.text)
    assert following is not None
    link = html.unescape(following.group(1))
    assert "columns=test_acc" in link and "page=2" in link and "per_page=5" in link
    assert heads(client.get(link).text) == ["trial_id", "test_acc"]
    bad = client.get("/sweeps/demo/trials", params={"columns": "test_acc,colour"})
    assert bad.status_code == 400
    assert "columns: unknown column &#x27;colour&#x27;; allowed: trial_id" in bad.text


def test_a_numeric_filter_is_the_stores_query(client: TestClient, url: str) -> None:
    with Store.open(url) as store:
        every = store.trials(sweep="demo")
        kept = store.trials(sweep="demo", where=parse_where(["test_acc>0.81"]))
    assert 0 < len(kept) < len(every)
    text = client.get("/sweeps/demo/trials", params={"where": "test_acc>0.81"}).text
    assert sorted(ids(text)) == sorted(kept["trial_id"].tolist())
    bad = client.get("/sweeps/demo/trials", params={"where": "test_acc>high"})
    assert bad.status_code == 400 and "where test_acc: expected a number" in bad.text
    assert "Traceback" not in bad.text
    api = client.get("/api/sweeps/demo/trials", params={"where": "test_acc>high"})
    assert api.status_code == 400 and list(api.json()) == ["error"]


def test_pages_split_the_rows_and_their_size_is_bounded(client: TestClient) -> None:
    pages = [
        ids(client.get("/sweeps/demo/trials", params={"per_page": 5, "page": p}).text)
        for p in (1, 2, 3, 4)
    ]
    assert [len(p) for p in pages] == [5, 5, 5, 3]
    assert len({i for p in pages for i in p}) == 18
    beyond = client.get("/sweeps/demo/trials", params={"per_page": 5, "page": 9}).text
    assert ids(beyond) == pages[-1] and "page 4 of 4" in beyond  # the last page
    for params, line in (
        ({"page": 0}, "page: expected an integer &gt;= 1, got 0"),
        ({"per_page": 1001}, "per_page: expected an integer from 1 to 1000, got 1001"),
        ({"per_page": "many"}, "per_page: expected an integer, got &#x27;many&#x27;"),
    ):
        answer = client.get("/sweeps/demo/trials", params=params)
        assert answer.status_code == 400 and line in answer.text
