"""`bnsweep dashboard` at its edges (issue 19): a bind that fails in one line before the
banner; a wrong type in a URL as the one-line 400 of every other bad parameter, and every
error in the route's own kind.

Served through a stand-in for uvicorn that records the app and the socket it was handed, so
the command's own wiring is what is tested, without a server process."""

from __future__ import annotations

import re
import socket
import types
from collections.abc import Iterator

import pytest

pytest.importorskip("fastapi", reason="the dashboard extra (FastAPI) is not installed")
from fastapi import FastAPI
from fastapi.testclient import TestClient

import bnsweep.commands.web as web_command
from bnsweep.cli import main
from bnsweep.commands.web import TOKEN_ENV
from bnsweep.web.app import create_app
from tests.web.stores import make_store

TOKEN = "a-token-of-twenty-chars"


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_store(tmp_path_factory.mktemp("security") / "r.db", "failed")


@pytest.fixture(scope="module")
def client(url: str) -> Iterator[TestClient]:
    """One app for the tests that read pages, so each page is built once."""
    with TestClient(create_app(url)) as client:
        yield client


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[FastAPI, socket.socket]]]:
    """What `bnsweep dashboard` hands uvicorn: the app and the socket it bound."""
    runs: list[tuple[FastAPI, socket.socket]] = []

    class Server:
        def __init__(self, config: types.SimpleNamespace) -> None:
            self.config, self.started = config, False

        def run(self, sockets: list[socket.socket]) -> None:
            assert len(sockets) == 1 and sockets[0].fileno() >= 0  # bound, still open
            runs.append((self.config.app, sockets[0]))
            self.started = True

    uvicorn = types.SimpleNamespace(
        Server=Server, Config=lambda app, **kw: types.SimpleNamespace(app=app, **kw)
    )
    monkeypatch.setattr(web_command, "load_server", lambda: (create_app, uvicorn))
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    yield runs


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def one_error_line(capsys: pytest.CaptureFixture[str], *expected: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("bnsweep: error: "), err
    assert "bnsweep dashboard: http" not in err  # no banner before the refusal
    for part in expected:
        assert part in err, err
    return err


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


# -- binding ---------------------------------------------------------------------------------


def test_a_port_in_use_is_one_line_before_the_banner(
    url: str, served: list[object], capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert main(["dashboard", "--db", url, "--port", str(port)]) == 1
    one_error_line(capsys, f"cannot serve on 127.0.0.1:{port}: port {port} is in use")
    assert served == []


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("nosuch.invalid", "--host nosuch.invalid: cannot resolve this name"),
        ("192.0.2.1", "this machine has no address 192.0.2.1"),
    ],
)
def test_a_host_that_cannot_be_bound_is_one_line_before_the_banner(
    host: str,
    expected: str,
    url: str,
    served: list[object],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    assert main(["dashboard", "--db", url, "--host", host, "--port", str(free_port())]) == 1
    one_error_line(capsys, expected)
    assert served == []
