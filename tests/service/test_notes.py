"""`bnsweep note` and `bnsweep note --list` on SQLite and PostgreSQL: a note on a sweep, a cell
(by arm or spec hash) and a trial (by id, or spec hash and seed); every refusal is one line,
exit 2, nothing written; `db forget` takes a trial's notes with it; migration 0006 up and down."""

from __future__ import annotations

import getpass
import hashlib
import io
from collections.abc import Iterator
from datetime import datetime, timezone

import pytest
import sqlalchemy as sa

from bnsweep.cli import main
from bnsweep.store.api import Store
from bnsweep.store.errors import StoreError, normalize_url
from bnsweep.store.models import NOTE_MAX_CHARS
from bnsweep.store.schema import alembic_config, head_revision, script_location
from tests.service.test_store import fresh_database, pg_database, store_url  # noqa: F401
from tests.web.stores import finished


@pytest.fixture
def demo(store_url: str) -> Iterator[str]:  # noqa: F811
    """The finished demo sweep: BASE and γ ∈ {0.5, 0.1} (c = 100) at lr 0.1 and 0.01, 3 seeds."""
    with Store.open(store_url) as store:
        finished(store)
    yield store_url


def note(url: str, *args: str, stdin: str | None = None, monkeypatch=None) -> int:
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    return main(["note", "--db", url, *args])


def all_notes(url: str) -> list:
    with Store.open(url, read_only=True) as store:
        return store.notes()


def cell(url: str, gamma: float, lr: float) -> tuple[str, dict[int, int]]:
    """(spec_hash, {seed: trial_id}) of one demo cell."""
    with Store.open(url, read_only=True) as store:
        trials = store.trials(sweep="demo")
    rows = trials[(trials["bn_scale_init"] == gamma) & (trials["lr"] == lr)]
    return str(rows["spec_hash"].iloc[0]), dict(zip(rows["seed"], rows["trial_id"], strict=True))


def test_a_note_on_each_kind_of_target(demo: str, capsys, monkeypatch) -> None:
    spec_hash, trials = cell(demo, 0.1, 0.01)
    assert note(demo, "--sweep", "demo", "data fixed; rerun", "--author", "ann") == 0
    assert "added note #1 on sweep demo" in capsys.readouterr().out
    assert note(demo, "--sweep", "demo", "--arm", "BASE lr=0.01", "x") == 2  # not an arm key
    capsys.readouterr()
    # `--arm` as `--versus` names it, made unique by the sweep's cell of that arm at lr 0.01:
    # the demo has the arm at two lrs, so the arm alone is refused, naming both cells.
    assert note(demo, "--sweep", "demo", "--arm", "standard γ=0.1 c=100", "diverges") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{spec_hash} (lr=0.01)" in err and "--spec-hash" in err
    assert note(demo, "--sweep", "demo", "--spec-hash", spec_hash, "cell note") == 0
    assert (
        note(
            demo, "--trial", str(trials[2]), "-", stdin="line 1\nline 2\n", monkeypatch=monkeypatch
        )
        == 0
    )
    assert note(demo, "--spec-hash", spec_hash, "--seed", "3", "by seed") == 0
    notes = all_notes(demo)
    assert [(n.kind, n.text) for n in notes] == [
        ("trial", "by seed"),
        ("trial", "line 1\nline 2"),
        ("cell", "cell note"),
        ("sweep", "data fixed; rerun"),
    ]
    assert notes[0].trial_id == trials[3] and notes[1].trial_id == trials[2]
    assert notes[2].spec_hash == spec_hash and notes[2].sweep == "demo"
    assert notes[3].author == "ann" and notes[1].author == getpass.getuser()
    assert all(n.created_at.tzinfo == timezone.utc for n in notes)
    capsys.readouterr()
    assert note(demo, "--list", "--sweep", "demo") == 0
    out = capsys.readouterr().out
    assert out.index("by seed") < out.index("cell note") < out.index("data fixed")
    assert f"on cell {spec_hash} in sweep demo" in out and "    line 2" in out


def test_an_arm_that_names_one_cell(tmp_path, capsys) -> None:
    url = f"sqlite:///{tmp_path / 'one.db'}"
    with Store.open(url) as store:
        finished(store)
        store.forget("demo", {"lr": 0.1})  # one lr left: each arm is one cell
    spec_hash, _ = cell(url, 0.5, 0.01)
    assert note(url, "--sweep", "demo", "--arm", "standard gamma=0.5", "γ 0.5 is flat") == 0
    assert all_notes(url)[0].spec_hash == spec_hash


BAD = {
    "unknown sweep": (["--sweep", "nope", "x"], "no sweep named 'nope'; known sweeps: demo"),
    "unknown arm": (["--sweep", "demo", "--arm", "rbn", "x"], "allowed: "),
    "arm, unknown sweep": (["--sweep", "nope", "--arm", "BASE", "x"], "known sweeps: demo"),
    "unknown trial": (["--trial", "999", "x"], "no trial with id 999; the store has ids 1 to 18"),
    "unknown cell": (["--spec-hash", "feedfeedfeedfeed", "x"], "no cell with spec_hash"),
    "unknown seed": (["--spec-hash", "{h}", "--seed", "9", "x"], "its seeds: 1-3"),
    "empty text": (["--sweep", "demo", "  \n"], "the text is empty"),
    "too long": (["--sweep", "demo", "x" * (NOTE_MAX_CHARS + 1)], "at most 10,000"),
    "no target": (["x"], "say what it is on"),
    "no text": (["--sweep", "demo"], "give the text"),
    "two targets": (["--trial", "1", "--sweep", "demo", "x"], "--trial names a trial"),
    "seed alone": (["--sweep", "demo", "--seed", "1", "x"], "--spec-hash HASH --seed N"),
    "arm without sweep": (["--arm", "BASE", "x"], "add --sweep NAME"),
    "author of two lines": (["--sweep", "demo", "--author", "a\nb", "x"], "author"),
    "list with text": (["--list", "x"], "note --list: takes --sweep and --db only"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_refusals_are_one_line_exit_2_and_write_nothing(demo: str, case: str, capsys) -> None:
    args, message = BAD[case]
    spec_hash, _ = cell(demo, 0.1, 0.1)
    args = [a.replace("{h}", spec_hash) for a in args]
    assert note(demo, *args) == 2
    err = capsys.readouterr().err
    assert err.startswith("bnsweep: error: ") and err.count("\n") == 1, err
    assert message in err
    assert all_notes(demo) == []


def test_list_of_an_unknown_sweep_is_refused(demo: str, capsys) -> None:
    assert note(demo, "--list", "--sweep", "nope") == 2
    assert "known sweeps: demo" in capsys.readouterr().err


def test_the_same_note_retried_is_kept_once(demo: str) -> None:
    """What the store's retry after a lost COMMIT acknowledgement does: the same call again."""
    when = datetime(2026, 12, 1, tzinfo=timezone.utc)
    with Store.open(demo) as store:
        first = store.add_note("once", "ann", sweep="demo", created_at=when)
        assert store.add_note("once", "ann", sweep="demo", created_at=when) == first
        store.add_note("once", "ann", sweep="demo")  # a later note with the same words is new
        assert len(store.notes("demo")) == 2


def test_forgetting_a_trial_takes_its_notes_and_keeps_the_cells(demo: str) -> None:
    spec_hash, trials = cell(demo, 0.1, 0.1)
    with Store.open(demo) as store:
        store.add_note("on the trial", "ann", trial_id=trials[1])
        store.add_note("on the cell", "ann", sweep="demo", spec_hash=spec_hash)
        store.add_note("on the sweep", "ann", sweep="demo")
        store.forget("demo", {"spec_hash": spec_hash})
        assert [n.text for n in store.notes()] == ["on the sweep", "on the cell"]


# -- the migration -------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'old.db'}"
        return
    with fresh_database(request.getfixturevalue("postgres_url")) as url:
        yield url


def _migrate(url: str, target: str, *, down: bool = False) -> None:
    from alembic import command

    engine = sa.create_engine(normalize_url(url))
    try:
        with engine.begin() as conn:
            config = alembic_config(script_location())
            config.attributes["connection"] = conn
            (command.downgrade if down else command.upgrade)(config, target)
    finally:
        engine.dispose()


def _tables(url: str) -> set[str]:
    engine = sa.create_engine(normalize_url(url))
    try:
        with engine.connect() as conn:
            return set(sa.inspect(conn).get_table_names())
    finally:
        engine.dispose()


def test_migration_0006_adds_and_drops_the_notes_table(empty_url: str) -> None:
    assert head_revision() == "0006"
    _migrate(empty_url, "0005")
    assert "notes" not in _tables(empty_url)
    with pytest.raises(StoreError, match="run `bnsweep db upgrade"):
        Store.open(empty_url)
    with Store.open(empty_url, check_schema=False) as store:
        assert store.upgrade() == ("0005", "0006")
    with Store.open(empty_url) as store:
        finished(store)
        store.add_note("kept until the downgrade", "ann", sweep="demo")
    _migrate(empty_url, "0005", down=True)
    assert "notes" not in _tables(empty_url)
    with Store.open(empty_url, check_schema=False) as store:
        assert len(store.trials()) == 18  # the results stay
    _migrate(empty_url, "head")
    with Store.open(empty_url) as store:
        assert store.notes() == []


def test_listing_leaves_the_sqlite_file_byte_identical(tmp_path, capsys) -> None:
    path = tmp_path / "r.db"
    url = f"sqlite:///{path}"
    with Store.open(url) as store:
        finished(store)
        store.add_note("a note", "ann", sweep="demo")
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    assert note(url, "--list") == 0 and note(url, "--list", "--sweep", "demo") == 0
    assert capsys.readouterr().out.count("a note") == 2
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def test_a_note_on_a_store_that_is_not_there_makes_none(tmp_path, capsys) -> None:
    path = tmp_path / "missing.db"
    assert note(f"sqlite:///{path}", "--sweep", "demo", "x") == 1
    assert capsys.readouterr().err.count("\n") == 1
    assert not path.exists()
