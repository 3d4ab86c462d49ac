"""Database passwords (issue 19, "Secrets and trust"): never in a message, whatever characters
they hold.

Every secret here is made of words that appear nowhere else ("Alpha", "Bravo", "Charlie"), so a
half-redacted password is caught by any of its pieces."""

from __future__ import annotations

from pathlib import Path

import pytest

from bnsweep.cli import main
from bnsweep.store.errors import StoreError, parse_url, redact_text, redact_url

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
    spec.write_text("name: s\ngrids: [{lr: [0.1]}]\ndefaults: {dataset: digits}\n")
    assert main([arg.format(spec=spec) for arg in command] + ["--db", url]) in (1, 2)
    out, err = capsys.readouterr()
    assert_hidden(out + err)
    assert err.startswith("bnsweep: error:") and len(err.strip().splitlines()) == 1
