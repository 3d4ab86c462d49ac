"""`bnsweep dashboard` at its edges (issue 19): a wrong type in a URL as the one-line 400 of
every other bad parameter, and every error in the route's own kind."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

pytest.importorskip("fastapi", reason="the dashboard extra (FastAPI) is not installed")
from fastapi.testclient import TestClient

from bnsweep.web.app import create_app
from tests.web.stores import make_store


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_store(tmp_path_factory.mktemp("security") / "r.db", "failed")


@pytest.fixture(scope="module")
def client(url: str) -> Iterator[TestClient]:
    """One app for the tests that read pages, so each page is built once."""
    with TestClient(create_app(url)) as client:
        yield client


# -- a wrong type in a URL -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "status", "line"),
    [
        ("/sweeps/demo/trials/abc", 400, "trial_id: expected an integer, got 'abc'"),
        ("/sweeps/demo/trials?start=x", 400, "start: expected an integer, got 'x'"),
        ("/sweeps/demo/trials/1.5", 400, "trial_id: expected an integer, got '1.5'"),
        ("/no/such/page", 404, "nothing at /no/such/page"),
    ],
)
def test_a_wrong_type_in_a_url_is_a_one_line_400_page(
    client: TestClient, path: str, status: int, line: str
) -> None:
    response = client.get(path)
    assert response.status_code == status
    assert response.headers["content-type"].startswith("text/html")
    [shown] = re.findall(r'<p class="error-message">([^<]*)</p>', response.text)
    assert shown.replace("&#x27;", "'") == line


def test_api_errors_are_json_with_one_line(client: TestClient) -> None:
    missing = client.get("/api/nothing")
    wrong_method = client.post("/api/sweeps")
    assert (missing.status_code, missing.json()) == (404, {"error": "nothing at /api/nothing"})
    assert wrong_method.status_code == 405
    assert wrong_method.json() == {"error": "POST is not allowed here; the dashboard answers GET"}
