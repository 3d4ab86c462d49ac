"""`bnsweep db upgrade`, `bnsweep status` and `bnsweep query`, through the real `bnsweep.cli.main`.

`bnsweep.cli` imports every command module; while some are still being written, these tests give
it only `bnsweep.commands.store`. The end-to-end test runs the real `bnsweep` in a subprocess
once every command module exists.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from bnsweep import cli
from bnsweep.store.api import Store
from bnsweep.store.columns import TRIAL_COLUMNS, parse_where
from bnsweep.store.errors import StoreError
from bnsweep.store.schema import head_revision
from bnsweep.store.values import seed_ranges
from bnsweep.workers import spec as worker_spec
from tests.service.test_store import (
    _REGISTRIES,
    _specs_without_registries,  # noqa: F401 (autouse fixture)
    fill,
    fresh_database,
    make_spec,
    run_cell,
)

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def bnsweep(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Run:
    """Run `bnsweep ARGS...` in this process; returns (exit code, stdout, stderr)."""
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("bnsweep.commands.store",))
    monkeypatch.setenv("COLUMNS", "200")

    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            code = cli.main(list(argv))
        except SystemExit as exit_:  # argparse usage errors
            code = int(exit_.code or 0)
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A populated store shared by the tests of this module, which only read it."""
    url = f"sqlite:///{tmp_path_factory.mktemp('cli') / 'results.db'}"
    with pytest.MonkeyPatch.context() as patch:
        if not _REGISTRIES:
            patch.setattr(worker_spec, "_validate", lambda spec: None)
        with Store.open(url) as store:
            fill(store)
    return url


def _digest(url: str) -> str:
    return hashlib.sha256(Path(url.removeprefix("sqlite:///")).read_bytes()).hexdigest()


# -- query ---------------------------------------------------------------------------------------


def test_query_prints_a_table_of_trials(bnsweep: Run, db: str) -> None:
    code, out, err = bnsweep("query", "--db", db, "--sweep", "demo", "--where", "lr=0.1")
    assert code == 0, err
    assert "6 trials" in out and "completed" in out and "failed" in out
    assert "γ" in out and "best val" in out


def test_query_csv_has_every_column_and_honours_filters(bnsweep: Run, db: str) -> None:
    code, out, _ = bnsweep(
        "query", "--db", db, "--where", "lr=0.1", "--where", "seed=1", "--where", "seed=2",
        "--format", "csv",
    )  # fmt: skip
    assert code == 0
    frame = pd.read_csv(io.StringIO(out))
    assert list(frame.columns) == list(TRIAL_COLUMNS)
    assert len(frame) == 5  # seeds 1 and 2 of two demo arms, and solo's seed 1
    assert set(frame["seed"]) == {1, 2} and set(frame["lr"]) == {0.1}


def test_query_json_of_epochs(bnsweep: Run, db: str) -> None:
    code, out, _ = bnsweep(
        "query", "--db", db, "--epochs", "--where", "epoch=2", "--where", "status=completed",
        "--format", "json",
    )  # fmt: skip
    assert code == 0
    rows = json.loads(out)
    assert len(rows) == 5 and {row["epoch"] for row in rows} == {2}
    assert {"epoch_lr", "epoch_seconds", "val_acc", "spec_hash", "seed"} <= set(rows[0])


def test_query_of_an_empty_result_still_has_the_header(bnsweep: Run, db: str) -> None:
    code, out, _ = bnsweep("query", "--db", db, "--where", "seed=99", "--format", "csv")
    assert code == 0 and out.strip() == ",".join(TRIAL_COLUMNS)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--where", "gama=0.1"], "unknown field 'gama' in where; valid fields: spec_hash"),
        (["--where", "lr"], "--where 'lr': expected FIELD=VALUE"),
        (["--where", "=3"], "expected FIELD=VALUE"),
        (["--where", "lr=fast"], "where lr: expected a number, got 'fast'"),
        (["--where", "seed=1.5"], "where seed: expected an integer"),
        (["--where", "status=done"], "where status='done': allowed: pending"),
        (["--epochs", "--where", "attempt=1"], "unknown field 'attempt'"),
        (["--sweep", "nope"], "no sweep named 'nope'"),
    ],
)
def test_bad_queries_are_one_line_and_exit_2_leaving_the_database_alone(
    bnsweep: Run, db: str, argv: list[str], message: str
) -> None:
    before = _digest(db)
    code, out, err = bnsweep("query", "--db", db, *argv)
    # A typo is a usage error (2); a sweep the store does not hold is a runtime failure (1).
    assert code == (1 if "no sweep named" in message else 2) and out == ""
    assert err.startswith("bnsweep: error: ") and message in err
    assert err.count("\n") == 1
    assert _digest(db) == before


def test_query_of_a_missing_sqlite_file_does_not_create_it(bnsweep: Run, tmp_path: Path) -> None:
    path = tmp_path / "nothing-here.db"
    code, _, err = bnsweep("query", "--db", f"sqlite:///{path}")
    assert code == 1 and "no results database at" in err
    assert not path.exists()


def test_query_reads_bnsweep_db_when_no_db_is_given(
    bnsweep: Run, db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BNSWEEP_DB", db)
    code, out, _ = bnsweep("query", "--sweep", "solo", "--format", "json")
    assert code == 0 and len(json.loads(out)) == 1


def test_parse_where_groups_repeated_fields() -> None:
    assert parse_where(["lr=0.1", "seed=1", "seed=2", "arch = resnet8"]) == {
        "lr": ["0.1"],
        "seed": ["1", "2"],
        "arch": ["resnet8"],
    }
    with pytest.raises(StoreError):
        parse_where(["lr"])


# -- status and db upgrade -----------------------------------------------------------------------


def test_status_shows_counts_and_missing_seeds_per_arm(bnsweep: Run, db: str) -> None:
    code, out, err = bnsweep("status", "--db", db)
    assert code == 0, err
    assert "demo" in out and "solo" in out
    demo_row = next(line for line in out.splitlines() if "│ demo" in line)
    assert demo_row.split("│")[2:8] == [f" {n:>{w}} " for n, w in zip(
        (12, 5, 1, 1, 1, 4), (5, 9, 7, 6, 8, 7), strict=True
    )]  # fmt: skip
    arm_line = next(line for line in out.splitlines() if "γ=0.1 c=100 standard lr=0.1 " in line)
    assert "1-3 (failed: 1; running: 2)" in arm_line and "0/3" in arm_line
    assert "γ=1 c=100 standard lr=0.1 " not in out  # complete arms are not listed


def test_status_of_one_sweep_and_of_a_finished_sweep(bnsweep: Run, db: str, tmp_path: Path) -> None:
    code, out, _ = bnsweep("status", "--db", db, "--sweep", "solo")
    assert code == 0 and "solo" in out and "demo" not in out
    url = f"sqlite:///{tmp_path / 'done.db'}"
    with Store.open(url) as store:
        spec = make_spec(seed=1)
        store.register_sweep("done", "x", [spec])
        run_cell(store, spec)
    code, out, _ = bnsweep("status", "--db", url)
    assert code == 0 and "done: all 1 cells done" in out
    code, _, err = bnsweep("status", "--db", db, "--sweep", "nope")
    assert code == 1 and "known sweeps: demo, solo" in err


def test_db_upgrade_creates_then_reports_the_current_revision(bnsweep: Run, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh' / 'results.db'}"
    head = head_revision()
    code, out, _ = bnsweep("db", "upgrade", "--db", url)
    assert code == 0 and f"upgraded from revision none to {head}" in out
    code, out, _ = bnsweep("db", "upgrade", "--db", url)
    assert code == 0 and f"already at revision {head}" in out
    code, out, _ = bnsweep("status", "--db", url)
    assert code == 0 and "no sweeps in" in out


# -- db forget and older recipes -----------------------------------------------------------------


@pytest.fixture
def own_db(tmp_path: Path) -> str:
    """A filled store of this test's own, for the commands that change it."""
    url = f"sqlite:///{tmp_path / 'own.db'}"
    with Store.open(url) as store:
        fill(store)
    return url


def _count(url: str, **where: object) -> int:
    with Store.open(url, create=False) as store:
        return len(store.trials(where=where or None))


def test_forget_dry_run_prints_the_count_and_leaves_the_file_alone(
    bnsweep: Run, own_db: str
) -> None:
    digest = _digest(own_db)
    code, out, err = bnsweep(
        "db", "forget", "--db", own_db, "--sweep", "demo", "--where", "status=completed",
        "--dry-run",
    )  # fmt: skip
    assert code == 0, err
    assert "5 trials (15 epoch rows)" in out and "nothing deleted (dry run)" in out
    assert _digest(own_db) == digest


def test_forget_off_a_terminal_needs_yes(bnsweep: Run, own_db: str) -> None:
    args = ("db", "forget", "--db", own_db, "--where", "status=completed")
    code, _, err = bnsweep(*args)
    assert code == 2 and err.count("\n") == 1
    assert "5 trials match; not deleting without confirmation: add --yes" in err
    assert _count(own_db) == 13
    code, out, err = bnsweep(*args, "--yes")
    assert code == 0, err
    assert out.startswith("forgot 5 trials (15 epoch rows) in sqlite:///")
    assert _count(own_db) == 8 and _count(own_db, status="completed") == 0


@pytest.mark.parametrize("answer,code,left", [("n", 1, 13), ("", 1, 13), ("yes", 0, 12)])
def test_forget_on_a_terminal_asks(
    bnsweep: Run, own_db: str, monkeypatch: pytest.MonkeyPatch, answer: str, code: int, left: int
) -> None:
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    asked: list[str] = []
    monkeypatch.setattr("builtins.input", lambda prompt: asked.append(prompt) or answer)
    got, _, err = bnsweep("db", "forget", "--db", own_db, "--where", "status=diverged")
    assert got == code, err
    assert asked == [f"1 trial (3 epoch rows) in {own_db} match. Delete them? [y/N] "]
    assert _count(own_db) == left


@pytest.mark.parametrize(
    "argv,message,expected",
    [
        ((), "db forget: name the trials to forget with --sweep NAME and/or --where", 2),
        (("--where", "gama=1"), "unknown field 'gama' in where", 2),
        (("--sweep", "demo", "--yes"), "db forget: 1 of the 12 matching trials are running", 2),
        (("--sweep", "nope", "--dry-run"), "no sweep named 'nope'", 1),  # a runtime failure
    ],
)
def test_bad_forgets_are_one_line_and_delete_nothing(
    bnsweep: Run, own_db: str, argv: tuple[str, ...], message: str, expected: int
) -> None:
    code, _, err = bnsweep("db", "forget", "--db", own_db, *argv)
    assert code == expected and err.count("\n") == 1 and message in err, err
    assert _count(own_db) == 13


def test_status_and_tables_say_when_older_recipes_are_stored(
    bnsweep: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        cli, "COMMAND_MODULES", ("bnsweep.commands.store", "bnsweep.commands.report")
    )
    url = f"sqlite:///{tmp_path / 'recipes.db'}"
    specs = [make_spec(bn_scale_init=g, bn_lr_divisor=c, seed=s)
             for g, c in ((1.0, 1.0), (0.1, 100.0)) for s in (1, 2, 3)]  # fmt: skip
    with Store.open(url) as store:
        with monkeypatch.context() as old:
            old.setattr(worker_spec, "RECIPE", worker_spec.RECIPE - 1)
            store.register_sweep("demo", "name: demo", specs)
            for spec in specs:
                run_cell(store, spec, test_acc=0.1)
        store.register_sweep("demo", "name: demo", specs)
        for spec in specs:
            run_cell(store, spec, test_acc=0.6 if spec.is_base else 0.7)
    note = (
        f"note: sweep demo holds 6 trial(s) of an older training recipe "
        f"(recipe {worker_spec.RECIPE - 1}: 6); they are not used"
    )
    code, out, err = bnsweep("status", "--db", url)
    assert code == 0, err
    assert note in out and "demo: all 6 cells done" in out
    code, out, err = bnsweep("tables", "--db", url, "--sweep", "demo", "--format", "csv")
    assert code == 0, err
    assert note in err and err.count("\n") == 1
    assert "70" in out and "10.0" not in out  # the current recipe's accuracies only


def test_seed_ranges() -> None:
    assert seed_ranges([1, 2, 3, 5, 7, 8, 15]) == "1-3, 5, 7-8, 15"
    assert seed_ranges([4]) == "4" and seed_ranges([]) == ""


# -- passwords -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["status"],
        ["query"],
        ["query", "--format", "json"],
        ["db", "upgrade"],
    ],
)
def test_a_password_never_appears_even_when_the_server_is_unreachable(
    bnsweep: Run, caplog: pytest.LogCaptureFixture, argv: list[str]
) -> None:
    url = "postgresql://bnsweep:pa55-w0rd@127.0.0.1:1/results"
    code, out, err = bnsweep("-v", *argv, "--db", url)
    assert code == 1  # the server is down: a runtime failure
    assert "bnsweep:***@127.0.0.1:1" in err and err.count("\n") == 1
    assert "pa55-w0rd" not in out + err + caplog.text


def test_postgresql_through_the_command_line(bnsweep: Run, postgres_url: str) -> None:
    with fresh_database(postgres_url) as plain:
        from sqlalchemy import make_url

        # Trust authentication ignores the password; it is here to prove it never leaks.
        url = make_url(plain).set(password="pa55-w0rd").render_as_string(hide_password=False)
        code, out, _ = bnsweep("db", "upgrade", "--db", url)
        assert code == 0 and "***" in out
        with Store.open(url) as store:
            fill(store)
        results = [bnsweep("status", "--db", url)]
        results.append(bnsweep("query", "--db", url, "--where", "lr=0.1", "--format", "csv"))
        results.append(bnsweep("query", "--db", url, "--where", "nope=1"))
        assert [code for code, _, _ in results] == [0, 0, 2]
        assert len(pd.read_csv(io.StringIO(results[1][1]))) == 7
        assert all("pa55-w0rd" not in out + err for _, out, err in results)


# -- end to end ----------------------------------------------------------------------------------

_OTHER_COMMANDS = [name for name in cli.COMMAND_MODULES if importlib.util.find_spec(name) is None]


@pytest.mark.skipif(
    bool(_OTHER_COMMANDS), reason=f"command modules not written yet: {_OTHER_COMMANDS}"
)
def test_bnsweep_query_and_status_as_a_user_runs_them(db: str, tmp_path: Path) -> None:
    def bnsweep(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "bnsweep.cli", *argv],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )

    done = bnsweep("query", "--db", db, "--sweep", "demo", "--format", "csv")
    assert done.returncode == 0, done.stderr
    assert len(pd.read_csv(io.StringIO(done.stdout))) == 12
    done = bnsweep("status", "--db", db)
    assert done.returncode == 0 and "missing seeds" in done.stdout
    done = bnsweep("query", "--db", db, "--where", "gama=1")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("bnsweep: error: unknown field 'gama'")


def test_a_reader_that_closes_the_pipe_ends_the_query_quietly(db: str, tmp_path: Path) -> None:
    """`bnsweep query --format csv | head`: no traceback, and the status of a tool killed by
    SIGPIPE, as `yes | head` gives (the read end is closed before the command writes a byte)."""
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "bnsweep.cli",
                "query",
                "--db",
                db,
                "--epochs",
                "--format",
                "csv",
            ],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )
    finally:
        os.close(write)
    assert (done.returncode, done.stderr) == (141, "")


def test_status_check_exits_1_while_cells_are_missing(
    bnsweep: Run, db: str, tmp_path: Path
) -> None:
    code, out, _ = bnsweep("status", "--db", db, "--check")
    assert code == 1 and "missing seeds" in out
    code, _, _ = bnsweep("status", "--db", db)  # without --check: a report, exit 0
    assert code == 0
    url = f"sqlite:///{tmp_path / 'done.db'}"
    with Store.open(url) as store:
        spec = make_spec(seed=1)
        store.register_sweep("done", "x", [spec])
        run_cell(store, spec)
    code, out, _ = bnsweep("status", "--db", url, "--check")
    assert code == 0 and "done: all 1 cells done" in out


def test_status_as_json_and_csv(bnsweep: Run, db: str) -> None:
    code, out, _ = bnsweep("status", "--db", db, "--format", "json", "--sweep", "demo")
    assert code == 0
    (demo,) = json.loads(out)
    assert (demo["sweep"], demo["total"], demo["completed"], demo["pending"]) == ("demo", 12, 5, 4)
    assert demo["missing"] == demo["total"] - demo["completed"] - demo["diverged"]
    arm = next(a for a in demo["incomplete_arms"] if a["failed_seeds"])
    assert arm["failed_seeds"] == [1] and arm["running_seeds"] == [2]
    code, out, _ = bnsweep("status", "--db", db, "--format", "csv")
    frame = pd.read_csv(io.StringIO(out))
    assert code == 0 and list(frame["sweep"]) == ["demo", "solo"]
    assert frame.set_index("sweep").loc["demo", "total"] == 12


def _json_rows(bnsweep: Run, *argv: str) -> list[dict]:
    code, out, err = bnsweep("query", *argv, "--format", "json")
    assert code == 0, err
    return json.loads(out)


def test_query_aliases_comparisons_and_limit(bnsweep: Run, db: str) -> None:
    rows = _json_rows(bnsweep, "--db", db)
    by_alias = _json_rows(bnsweep, "--db", db, "--where", "gamma=1", "--where", "alpha=0.1")
    assert by_alias == [r for r in rows if r["bn_scale_init"] == 1 and r["lr"] == 0.1]
    assert by_alias and _json_rows(bnsweep, "--db", db, "--where", "c=100") == [
        r for r in rows if r["bn_lr_divisor"] == 100
    ]
    done = [r for r in rows if r["test_acc"] is not None]
    low, high = min(r["test_acc"] for r in done), max(r["test_acc"] for r in done)
    assert _json_rows(bnsweep, "--db", db, "--where", f"test_acc>={low}") == done
    assert _json_rows(bnsweep, "--db", db, "--where", f"test_acc>{high}") == []
    assert _json_rows(bnsweep, "--db", db, "--where", f"test_acc<{low}") == []
    band = _json_rows(bnsweep, "--db", db, "--where", f"test_acc<={high}", "--where", "seed<2")
    assert band and band == [r for r in done if r["seed"] < 2]
    assert _json_rows(bnsweep, "--db", db, "--where", "seed>=2", "--where", "seed<3") == [
        r for r in rows if r["seed"] == 2
    ]
    assert _json_rows(bnsweep, "--db", db, "--where", "status!=pending") == [
        r for r in rows if r["status"] != "pending"
    ]
    assert _json_rows(bnsweep, "--db", db, "--limit", "3") == rows[:3]
    code, _, err = bnsweep("query", "--db", db, "--where", "arch>resnet8")
    assert code == 2 and "arch is text; only = and != apply to it" in err


def test_query_table_shows_errors_and_stays_fast_when_long(
    bnsweep: Run, db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, _ = bnsweep("query", "--db", db, "--sweep", "demo")
    assert code == 0 and "error" in out and "boom" in out
    import bnsweep.commands.store as store_command

    monkeypatch.setattr(store_command, "_RICH_ROWS", 2)  # the plain path of long results
    code, out, _ = bnsweep("query", "--db", db, "--sweep", "demo")
    lines = out.splitlines()
    assert code == 0 and lines[0] == "12 trials" and len(lines) == 3 + 12
    assert lines[1].split()[:2] == ["hash", "seed"] and set(lines[2]) == {"-", " "}
    assert any(line.rstrip().endswith("boom") for line in lines)


def test_query_writes_parquet(bnsweep: Run, db: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bnsweep.cli", "query", "--db", db, "--format", "parquet"],
        capture_output=True,
        timeout=120,
        env={**__import__("os").environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )
    assert done.returncode == 0, done.stderr
    path = tmp_path / "rows.parquet"
    path.write_bytes(done.stdout)
    frame = pd.read_parquet(path)
    _, out, _ = bnsweep("query", "--db", db, "--format", "csv")
    assert len(frame) == len(pd.read_csv(io.StringIO(out))) and "test_acc" in frame


def test_the_terminal_format_has_one_name_for_every_command(bnsweep: Run, db: str) -> None:
    assert (
        bnsweep("status", "--db", db, "--format", "term")[:2] == bnsweep("status", "--db", db)[:2]
    )
    code, out, _ = bnsweep("query", "--db", db, "--format", "term", "--sweep", "solo")
    assert code == 0 and out == bnsweep("query", "--db", db, "--sweep", "solo")[1]
