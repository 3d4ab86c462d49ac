"""`bnsweep dashboard` at its edges (issue 19): the token from a file or the environment, never
needed on the command line; the Host header checked against the bound address (DNS
rebinding); the security headers on every answer; a bind that fails in one line before the
banner; a wrong type in a URL as the one-line 400 of every other bad parameter.

Served through a stand-in for uvicorn that records the app and the socket it was handed, so
the command's own wiring is what is tested, without a server process."""

from __future__ import annotations

import logging
import re
import socket
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the dashboard extra (FastAPI) is not installed")
from fastapi import FastAPI
from fastapi.testclient import TestClient

import bnsweep.commands.web as web_command
from bnsweep.cli import build_parser, main
from bnsweep.commands.web import TOKEN_ENV, allowed_hosts, read_token
from bnsweep.web.app import SECURITY_HEADERS, create_app, host_name
from tests.web.stores import make_store

TOKEN = "a-token-of-twenty-chars"


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_store(tmp_path_factory.mktemp("security") / "r.db", "failed")


@pytest.fixture(scope="module")
def client(url: str) -> Iterator[TestClient]:
    """One app for the tests that read pages, so each page is built once."""
    with TestClient(create_app(url, hosts={"testserver"})) as client:
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


def dashboard_args(*argv: str) -> object:
    return build_parser().parse_args(["dashboard", *argv])


# -- the token ------------------------------------------------------------------------------


def test_the_token_comes_from_a_file_or_the_environment_without_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "token"
    path.write_text(f"{TOKEN}\n", encoding="utf-8")
    path.chmod(0o600)
    monkeypatch.setenv(TOKEN_ENV, "from-the-environment-0000")
    with caplog.at_level(logging.WARNING):
        assert read_token(dashboard_args("--token-file", str(path))) == TOKEN
        assert read_token(dashboard_args()) == "from-the-environment-0000"
    assert caplog.records == []


def test_a_token_on_the_command_line_still_works_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        assert read_token(dashboard_args("--token", TOKEN)) == TOKEN
    [record] = caplog.records
    assert "process list" in record.getMessage() and "--token-file" in record.getMessage()
    assert TOKEN not in record.getMessage()


def test_a_token_file_readable_by_others_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "token"
    path.write_text(TOKEN, encoding="utf-8")
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        assert read_token(dashboard_args("--token-file", str(path))) == TOKEN
    assert "readable by other users" in caplog.text


@pytest.mark.parametrize(
    ("content", "expected"),
    [(None, "no such file"), ("\n\n", "empty"), (b"\xff\xfe\x00", "not a text file")],
)
def test_a_bad_token_file_is_one_line(
    content: str | bytes | None,
    expected: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    served: list[object],
) -> None:
    path = tmp_path / "token"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content, encoding="utf-8")
    assert main(["dashboard", "--token-file", str(path)]) == 2
    assert expected in one_error_line(capsys, "--token-file", str(path)).lower()
    assert served == []


def test_token_and_token_file_exclude_each_other(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        dashboard_args("--token", TOKEN, "--token-file", str(tmp_path / "t"))


# -- Host (DNS rebinding) and the headers ----------------------------------------------------


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("127.0.0.1:8080", "127.0.0.1"),
        ("LOCALHOST:8080", "localhost"),
        ("localhost.", "localhost"),
        ("[::1]:8080", "::1"),
        ("[::1]", "::1"),
        ("evil.example", "evil.example"),
        ("evil.example:80x", None),
        ("[::1", None),
        ("a:b:c", None),
        ("", None),
    ],
)
def test_a_host_header_is_read_as_its_name(header: str, name: str | None) -> None:
    assert host_name(header) == name


def test_the_allowed_names_follow_the_bind() -> None:
    names, any_ip = allowed_hosts("127.0.0.1", "127.0.0.1", [])
    assert names == {"127.0.0.1", "localhost", "::1"} and not any_ip
    names, any_ip = allowed_hosts("10.1.2.3", "10.1.2.3", ["Dash.Example."])
    assert names == {"10.1.2.3", "dash.example"} and not any_ip
    names, any_ip = allowed_hosts("0.0.0.0", "0.0.0.0", [])
    assert socket.gethostname().lower() in names and "localhost" in names and any_ip


def test_the_served_dashboard_answers_only_its_own_names(
    url: str, served: list[tuple[FastAPI, socket.socket]], capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    code = main(["dashboard", "--db", url, "--port", str(port), "--allow-host", "lab.example"])
    assert code == 0
    assert f"http://127.0.0.1:{port}/" in capsys.readouterr().err
    [(app, sock)] = served
    assert sock.fileno() == -1  # closed once the server stopped
    client = TestClient(app)
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost:9000", "lab.example"):
        assert client.get("/api/sweeps", headers={"host": host}).status_code == 200, host
    for host in ("evil.example:8080", "127.0.0.1.evil.example", "10.0.0.1", "lab.example.evil"):
        for path in ("/", "/api/sweeps", "/static/bnsweep.js", "/sweeps/demo/trials/1"):
            response = client.get(path, headers={"host": host})
            assert response.status_code == 400, (host, path)
            assert "is not a name of this dashboard" in response.text
            assert "demo" not in response.text.replace("/sweeps/demo", "")
    refused = client.get("/api/sweeps", headers={"host": "evil.example:8080"}).json()
    assert refused == {
        "error": "Host 'evil.example:8080' is not a name of this dashboard; "
        "to allow it, start the dashboard with --allow-host evil.example"
    }


def test_every_kind_of_answer_carries_the_security_headers(url: str, client: TestClient) -> None:
    paths = [
        "/",
        "/sweeps/demo",
        "/sweeps/demo/curves",
        "/sweeps/demo/trials/1",
        "/sweeps/demo/tables.csv",
        "/sweeps/demo/trials.parquet",
        "/static/bnsweep.js",
        "/static/bnsweep.css",
        "/api/sweeps",
        "/api/sweeps/nope/status",
        "/sweeps/demo?fragment=progress",
        "/sweeps/demo/trials/abc",
        "/nothing/here",
    ]
    figures = re.findall(r'src="(/sweeps/demo/figures/[^"]+)"', client.get(paths[2]).text)
    answers = [client.get(path) for path in [*paths, *figures[:1]]]
    answers.append(client.get("/", headers={"host": "evil.example"}))
    with TestClient(create_app(url, token=TOKEN)) as guarded:
        answers.append(guarded.get("/api/sweeps"))
        answers.append(guarded.get(f"/api/sweeps?token={TOKEN}"))
    assert [a.status_code for a in answers[-3:]] == [400, 401, 200]
    for answer in answers:
        for name, value in SECURITY_HEADERS.items():
            assert answer.headers.get(name) == value, (answer.url, name)
    csp = SECURITY_HEADERS["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in csp and "script-src 'self';" in csp


_INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>", re.I)
_HANDLER = re.compile(r"<[^>]*\son[a-z]+\s*=", re.I)


def test_no_page_needs_inline_script(client: TestClient) -> None:
    """The CSP allows scripts from the dashboard's own files only: a page with an inline
    <script> or an on* handler would break under it."""
    sweep = client.get("/sweeps/demo").text
    cell = re.search(r'href="(/sweeps/demo/cells/[^"]+)"', sweep)
    assert cell is not None
    paths = ["/", "/sweeps/demo/curves", "/sweeps/demo/trials", "/sweeps/demo/trials/1"]
    for text in [sweep, *(client.get(path).text for path in [*paths, cell.group(1)])]:
        assert "<script" in text and not _INLINE_SCRIPT.search(text)
        assert not _HANDLER.search(text)


# -- a wrong type in a URL -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "status", "line"),
    [
        ("/sweeps/demo/trials/abc", 400, "trial_id: expected an integer, got 'abc'"),
        ("/sweeps/demo/trials?page=x", 400, "page: expected an integer, got 'x'"),
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
