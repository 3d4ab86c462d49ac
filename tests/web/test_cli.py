"""`bnsweep dashboard`'s refusals, each one line: the extra missing, a binding without a token,
a store of another schema revision; and both commands in `bnsweep --help`."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from bnsweep.cli import build_parser, main
from bnsweep.commands import web as web_command
from bnsweep.commands.web import INSTALL_HINT, is_loopback
from tests.web.stores import make_old_schema, make_store


def one_error_line(capsys: pytest.CaptureFixture[str], expected: str) -> None:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("bnsweep: error: "), err
    assert expected in err, err


@pytest.mark.parametrize("module", ["fastapi", "uvicorn"])
def test_without_the_extra_the_dashboard_says_how_to_install_it(
    module: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    url = make_store(tmp_path / "r.db", "finished")
    monkeypatch.setitem(sys.modules, module, None)  # `import <module>` now raises ImportError
    monkeypatch.delitem(sys.modules, "bnsweep.web.app", raising=False)
    assert main(["dashboard", "--db", url]) == 2
    one_error_line(capsys, f"needs {module}, which is not installed: {INSTALL_HINT}")


def test_binding_beyond_loopback_needs_a_token(capsys, monkeypatch) -> None:
    monkeypatch.delenv("BNSWEEP_DASHBOARD_TOKEN", raising=False)
    assert main(["dashboard", "--host", "0.0.0.0"]) == 2
    one_error_line(capsys, "--host 0.0.0.0: serving beyond this machine needs a token")
    assert main(["dashboard", "--host", "0.0.0.0", "--token", "short"]) == 2
    one_error_line(capsys, "--token: use at least 16 characters")
    assert main(["dashboard", "--port", "70000"]) == 2
    one_error_line(capsys, "--port: expected 1-65535, got 70000")


def test_a_short_token_is_named_by_where_it_came_from(tmp_path, capsys, monkeypatch) -> None:
    short = tmp_path / "token"
    short.write_text("short\n")
    short.chmod(0o600)
    assert main(["dashboard", "--host", "0.0.0.0", "--token-file", str(short)]) == 2
    one_error_line(capsys, f"--token-file {short}: use at least 16 characters")
    monkeypatch.setenv("BNSWEEP_DASHBOARD_TOKEN", "short")
    assert main(["dashboard", "--host", "0.0.0.0"]) == 2
    one_error_line(capsys, "$BNSWEEP_DASHBOARD_TOKEN: use at least 16 characters")


@pytest.mark.parametrize(
    "name", ["", ".", "http://lab.example", "lab.example:8080", "*.example", "lab example", "a/b"]
)
def test_an_allowed_name_no_host_header_can_carry_is_refused(
    tmp_path, capsys, monkeypatch, name
) -> None:
    url = make_store(tmp_path / "r.db", "finished")
    # Refused before anything is bound: were it let through, the test fails instead of serving.
    monkeypatch.setattr(web_command, "listen", lambda *a: pytest.fail("--allow-host not checked"))
    args = ["dashboard", "--db", url, "--allow-host", "lab.example", "--allow-host", name]
    assert main(args) == 2
    one_error_line(capsys, f"--allow-host {name!r}: not a host name")


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("localhost", True),
        ("::1", True),
        ("127.0.0.2", True),
        ("0.0.0.0", False),
        ("10.1.2.3", False),
        ("example.org", False),
    ],
)
def test_what_counts_as_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_the_dashboard_refuses_an_older_schema_at_start(tmp_path: Path, capsys) -> None:
    url = make_old_schema(tmp_path / "old.db")
    assert main(["dashboard", "--db", url]) != 0  # 2, or 1 where store failures have their own
    one_error_line(capsys, "bnsweep db upgrade")


def test_help_lists_report_and_dashboard() -> None:
    text = build_parser().format_help()
    assert "report" in text and "dashboard" in text


def test_report_every_needs_report_and_a_positive_interval(tmp_path: Path, capsys) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: x\n", encoding="utf-8")
    assert main(["launch", str(spec), "--report-every", "5"]) == 2
    one_error_line(capsys, "--report-every: minutes from 0 to 1440, with --report DIR; got 5")
    assert main(["launch", str(spec), "--report", "r", "--report-every", "-1"]) == 2
    one_error_line(capsys, "--report-every: minutes from 0 to 1440, with --report DIR; got -1")
