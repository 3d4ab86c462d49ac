"""Read-only commands leave a SQLite file byte for byte as it was (issue 13, item 11): they
never switch it to WAL mode, never migrate it, and never checkpoint into it."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest
import yaml

from bnsweep.cli import main
from bnsweep.store.api import Store
from bnsweep.sweep import expand, parse_sweep_spec
from tests.service.bad_inputs import GOOD_SPEC

READ_ONLY = (
    ("status",),
    ("status", "--sweep", "good"),
    ("query",),
    ("query", "--epochs"),
    ("tables", "--sweep", "good"),
    ("plots", "--sweep", "good", "--out", "{tmp}/plots"),
    ("launch", "{tmp}/good.yaml", "--dry-run"),
)


@pytest.fixture(params=["wal", "delete"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """A bnsweep store in WAL mode (as bnsweep leaves it) or switched back to a rollback
    journal by someone else; either way a read must not change it."""
    text = yaml.safe_dump(GOOD_SPEC)
    (tmp_path / "good.yaml").write_text(text, encoding="utf-8")
    path = tmp_path / "store.db"
    with Store.open(f"sqlite:///{path}") as opened:
        opened.register_sweep("good", text, expand(parse_sweep_spec(text)))
    if request.param == "delete":
        conn = sqlite3.connect(path)
        assert conn.execute("PRAGMA journal_mode=DELETE").fetchone() == ("delete",)
        conn.close()
    return path


def _journal_mode(path: Path) -> str:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute("PRAGMA journal_mode").fetchone()[0]
    finally:
        conn.close()


@pytest.mark.parametrize("argv", READ_ONLY, ids=" ".join)
def test_a_read_only_command_leaves_the_file_byte_identical(
    argv: tuple[str, ...], store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mode = _journal_mode(store)
    before = hashlib.sha256(store.read_bytes()).hexdigest()
    args = [a.format(tmp=store.parent) for a in argv]
    code = main([*args, "--db", f"sqlite:///{store}"])
    _, err = capsys.readouterr()
    assert code in (0, 2), err  # 2: no completed trials to tabulate or plot
    assert hashlib.sha256(store.read_bytes()).hexdigest() == before
    assert _journal_mode(store) == mode


def test_a_dry_run_on_an_empty_file_says_none_yet_and_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "good.yaml").write_text(yaml.safe_dump(GOOD_SPEC), encoding="utf-8")
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    assert (
        main(["launch", str(tmp_path / "good.yaml"), "--dry-run", "--db", f"sqlite:///{empty}"])
        == 0
    )
    assert "(none yet; a launch creates it)" in capsys.readouterr().out
    assert empty.read_bytes() == b""
