"""Database passwords (issue 19, "Secrets and trust"): never in a message, whatever characters
they hold, and never in the spec text the store keeps, whatever YAML feature put them there.

Every secret here is made of words that appear nowhere else ("Alpha", "Bravo", "Charlie"), so a
half-redacted password is caught by any of its pieces."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

import bnsweep.driver
import bnsweep.sweep
from bnsweep.callback import LaunchSummary
from bnsweep.cli import main
from bnsweep.commands import launch as launch_command
from bnsweep.store.api import Store
from bnsweep.store.errors import StoreError, parse_url, redact_text, redact_url
from bnsweep.sweep import expand, parse_sweep_spec, redacted_spec_text

PIECES = ("Alpha", "Bravo", "Charlie")
#: Passwords as a user types them into a URL: unencoded '@', ':', '/', and encoded ones.
PASSWORDS = ["Alpha@Bravo", "Alpha:Bravo/Charlie", "Alpha%40Bravo", "Alpha@Bravo:Charlie/x@y"]


def assert_hidden(text: str) -> None:
    for piece in PIECES:
        assert piece not in text, f"{piece!r} shown in {text!r}"


# -- URLs in messages -----------------------------------------------------------------------------
@pytest.mark.parametrize("password", PASSWORDS)
@pytest.mark.parametrize(
    "template",
    [
        "postgresql://u:{pw}@db.example:5432/results",
        "postgresql+psycopg://u:{pw}@db.example/results?sslmode=require",
        "postgresql://u@db.example/results?password={pw}&sslmode=require",
        "postgresql://u@db.example/results?sslpassword={pw}",
        "mysql://u:{pw}@db.example/results",
        "postgresql://u:{pw}@db.example:notaport/results",
    ],
)
def test_redact_url_hides_every_piece_of_the_password(template: str, password: str) -> None:
    url = template.format(pw=password)
    shown = redact_url(url)
    assert_hidden(shown)
    assert "db.example" in shown and "***" in shown
    assert_hidden(redact_text(f"could not reach {url}: refused"))


def test_the_host_after_the_last_at_is_kept() -> None:
    assert redact_url("postgresql://u:p@ss@host/db") == "postgresql://u:***@host/db"
    assert redact_url("postgresql://u:a@b/c@host/db?x=1") == "postgresql://u:***@host/db?x=1"
    # A SQLite path with ':' and '@' holds no password.
    assert redact_url("sqlite:///runs/a:b@c.db") == "sqlite:///runs/a:b@c.db"


@pytest.mark.parametrize("password", ["Alpha@Bravo", "Alpha@Bravo:Charlie/x@y"])
def test_an_unencoded_at_is_refused_naming_the_remedy(password: str) -> None:
    with pytest.raises(StoreError, match="must be written %40") as err:
        parse_url(f"postgresql://u:{password}@db.example/results")
    assert_hidden(str(err.value))


@pytest.mark.parametrize("password", PASSWORDS)
@pytest.mark.parametrize(
    "template",
    [
        "postgresql://u:{pw}@127.0.0.1:1/results",  # nothing listens: the driver's own message
        "postgresql://u:{pw}@127.0.0.1:notaport/results",  # bad URL
        "mysql://u:{pw}@127.0.0.1/results",  # unsupported
        "postgresql://u@127.0.0.1:1/results?password={pw}",
    ],
)
@pytest.mark.parametrize(
    "command", [["status"], ["query"], ["db", "upgrade"], ["launch", "{spec}", "--dry-run"]]
)
def test_no_message_of_the_command_line_shows_the_password(
    template: str,
    password: str,
    command: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = template.format(pw=password)
    spec = tmp_path / "s.yaml"
    spec.write_text(BASE, encoding="utf-8")
    assert main([arg.format(spec=spec) for arg in command] + ["--db", url]) in (1, 2)
    out, err = capsys.readouterr()
    assert_hidden(out + err)
    assert err.startswith("bnsweep: error:") and len(err.strip().splitlines()) == 1


# -- the spec text the store keeps ----------------------------------------------------------------
BASE = "name: s\ngrids: [{lr: [0.1]}]\ndefaults: {dataset: digits}\n"
URL = "postgresql+psycopg://u:Alpha@db.example/results"
#: One spec per way YAML can put the password into the parsed `database:` (or another string).
FORMS = {
    "merge key": f"<<: {{database: '{URL}'}}\n{BASE}",
    "anchor and alias": f"description: &url {URL}\n{BASE}database: *url\n",
    "merged anchor": f"defaults: &d {{dataset: digits}}\n<<: {{database: '{URL}'}}\n"
    "name: s\ngrids: [{lr: [0.1]}]\n",
    "flow": "{name: s, grids: [{lr: [0.1]}], defaults: {dataset: digits}, "
    f'database: "{URL}"}}',
    "escaped": BASE + 'database: "' + URL.replace("Alpha", "Al\\x70ha") + '"\n',
    "folded across lines": BASE + 'database: "' + URL.replace("Alpha", "Al\\\n  pha") + '"\n',
    "block scalar": f"{BASE}database: >-\n  {URL}\n# the end\n",
    "single-quoted": BASE + "database: '" + URL.replace("Alpha", "Al''pha") + "'\n",
    "unencoded @": f"{BASE}database: postgresql://u:Alpha@Bravo@db.example/results  # c\n",
    "query": f"{BASE}database: 'postgresql://u@db.example/results?password=Alpha@Bravo&x=1'\n",
    "in the description": f"{BASE}description: was at {URL} until May\n",
    "in a comment": f"{BASE}# the old store: {URL}\ndatabase: sqlite:///r.db\n",
}


def _without_secrets(spec: bnsweep.sweep.SweepSpec) -> dict:
    data = spec.model_dump()
    return {k: redact_text(v) if isinstance(v, str) else v for k, v in data.items()}


@pytest.mark.parametrize("form", FORMS)
def test_the_stored_spec_holds_no_password_and_is_the_same_spec(form: str) -> None:
    text = FORMS[form]
    stored = redacted_spec_text(text)
    assert_hidden(stored)
    original, kept = parse_sweep_spec(text), parse_sweep_spec(stored)
    assert _without_secrets(kept) == _without_secrets(original)
    if original.database and "Alpha" in original.database:
        assert kept.database == redact_url(original.database)
    # Comments survive the in-place rewrite where they hold no secret.
    if "# the end" in text or "# c" in text:
        assert "# the end" in stored or "# c" in stored


def test_a_spec_without_secrets_is_stored_byte_for_byte() -> None:
    text = f"# a: b@c\n{BASE}database: postgresql://u@db.example/results  # trust auth\n"
    assert redacted_spec_text(text) == text


def test_when_the_rewrite_cannot_be_verified_the_parsed_document_is_stored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(bnsweep.sweep, "_rewrite_scalars", lambda text, _redact: text + "\n: [")
    text = FORMS["merge key"]
    stored = redacted_spec_text(text)
    assert_hidden(stored)
    assert stored.startswith("# The spec as bnsweep parsed it")
    assert parse_sweep_spec(stored).database == redact_url(URL)
    assert parse_sweep_spec(stored).grids == parse_sweep_spec(text).grids


def test_dashboard_and_report_show_the_stored_spec_without_the_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastapi.testclient import TestClient

    from bnsweep.web.app import create_app
    from bnsweep.web.report import write_report

    url = f"sqlite:///{tmp_path / 'r.db'}"
    path = tmp_path / "s.yaml"
    text = (
        "<<: {database: 'postgresql+psycopg://u:Alpha@Bravo@db.example/results'}\n"
        "name: merged\ndefaults: {dataset: digits, arch: resnet8, epochs: 1, device: cpu}\n"
        "grids: [{bn_scale_init: [0.5], lr: [0.1]}]\nseeds: 1\n"
    )
    path.write_text(text, encoding="utf-8")

    def fake_launch(sweep, store, spec_text, **_kwargs):  # what the driver stores of the spec
        store.register_sweep(sweep.name, spec_text, expand(sweep))
        return LaunchSummary()

    monkeypatch.setattr(bnsweep.driver, "launch", fake_launch)
    args = argparse.Namespace(
        spec=str(path), db=url, address=None, dry_run=False, num_cpus=None, no_tables=True
    )
    assert launch_command.run(args) == 0
    with Store.open(url, read_only=True) as store:
        stored = store.get_sweep("merged").spec_text
    assert_hidden(stored)
    assert parse_sweep_spec(stored).database == "postgresql+psycopg://u:***@db.example/results"
    with TestClient(create_app(url)) as client:
        page = client.get("/sweeps/merged").text
    assert "u:***@db.example" in page
    out = write_report(url, "merged", tmp_path / "report")
    shown = "".join(p.read_text(encoding="utf-8") for p in out.rglob("*.html"))
    assert "u:***@db.example" in shown
    assert_hidden(page + shown)
