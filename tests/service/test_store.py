"""The results store's contract, run on SQLite and on PostgreSQL, plus its failure handling.

PostgreSQL tests use a database of their own (`bnsweep_test_<random>`, created from
BNSWEEP_TEST_POSTGRES_URL and dropped afterwards) and never stop the real server: outages are
made by terminating backends and by a TCP proxy in this file that is stopped and started again.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import sqlalchemy as sa

import bnsweep.workers.spec
from bnsweep.store import api, schema
from bnsweep.store.api import Store
from bnsweep.store.columns import EPOCH_COLUMNS, TRIAL_COLUMNS, arm_label
from bnsweep.store.errors import StoreError, normalize_url, redact_url, resolve_url
from bnsweep.store.events import (
    EVENT_TYPES,
    EpochRecorded,
    TrialFailed,
    TrialFinished,
    TrialStarted,
)
from bnsweep.store.models import SPEC_COLUMN_TYPES, VERSION_TABLE, Base
from bnsweep.store.schema import head_revision, script_location
from bnsweep.store.writes import EVENT_WRITERS
from bnsweep.workers.spec import RESULT_FIELD_NAMES, TrialSpec
from tests.service.tcp_proxy import TcpProxy

# The spec's registries (bnsweep.workers.data and friends) may not all exist yet while the workers
# are
# being written; the store only needs a spec's fields and hash, so validation is skipped then.
_REGISTRIES = all(
    importlib.util.find_spec(name)
    for name in ("bnsweep.workers.data", "bnsweep.workers.models", "bnsweep.workers.norm")
)


@pytest.fixture(autouse=True)
def _specs_without_registries(monkeypatch: pytest.MonkeyPatch) -> None:
    if not _REGISTRIES:
        monkeypatch.setattr(bnsweep.workers.spec, "_validate", lambda spec: None)


def make_spec(**changes: object) -> TrialSpec:
    values: dict[str, object] = {"dataset": "digits", "arch": "resnet8", "epochs": 3}
    values.update(changes)
    return TrialSpec(**values)  # type: ignore[arg-type]


def grid(gammas=(1.0, 0.1), lrs=(0.1, 0.01), seeds=range(1, 4)) -> list[TrialSpec]:
    return [make_spec(bn_scale_init=g, lr=lr, seed=s) for g in gammas for lr in lrs for s in seeds]


def epoch(n: int, **changes: object) -> dict[str, object]:
    values: dict[str, object] = {
        "epoch": n,
        "train_loss": 1.0 / n,
        "val_loss": 1.2 / n,
        "val_acc": 0.5 + n / 100,
        "test_acc": 0.5 + n / 200,
        "lr": 0.1,
        "seconds": 2.0,
    }
    values.update(changes)
    return values


def result(**changes: object) -> SimpleNamespace:
    """Duck-typed like bnsweep.workers.results.TrialResult, which the store must not import."""
    values: dict[str, object] = {
        "status": "completed",
        "epochs_run": 3,
        "best_epoch": 2,
        "best_val_acc": 0.8,
        "test_acc": 0.75,
        "final_test_acc": 0.74,
        "seconds": 6.0,
        "images_per_sec": 1234.5,
        "diverged_epoch": None,
        "error": None,
    }
    values.update(changes)
    return SimpleNamespace(**values)


def run_cell(store: Store, spec: TrialSpec, epochs: int = 3, **outcome: object) -> None:
    key = (spec.spec_hash, spec.seed)
    store.apply(
        [
            TrialStarted(*key, host="node-1", device="cpu", package_version="0.1.0"),
            *(EpochRecorded(*key, metrics=epoch(n)) for n in range(1, epochs + 1)),
            TrialFinished.from_result(*key, result(**outcome)),
        ]
    )


# -- PostgreSQL isolation ------------------------------------------------------------------------


@contextlib.contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    """A new, empty PostgreSQL database on the server of `server_url`; dropped on exit."""
    name = f"bnsweep_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(normalize_url(server_url), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        url = sa.make_url(normalize_url(server_url)).set(database=name)
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture(scope="module")
def pg_database(postgres_url: str) -> Iterator[str]:
    with fresh_database(postgres_url) as url:
        yield url


def _empty_tables(url: str) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "TRUNCATE notes, diagnostics, sweep_trials, epochs, trials, sweeps RESTART IDENTITY"
        )
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'results.db'}"
    url = request.getfixturevalue("pg_database")
    Store.open(url).close()  # creates the schema the first time
    _empty_tables(url)
    return url


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    with Store.open(store_url, retry_seconds=20) as opened:
        yield opened


# -- schema --------------------------------------------------------------------------------------


def test_trials_have_a_column_for_every_result_changing_spec_field() -> None:
    assert tuple(SPEC_COLUMN_TYPES) == tuple(n for n in RESULT_FIELD_NAMES if n != "seed")
    for name, kind in SPEC_COLUMN_TYPES.items():
        assert isinstance(getattr(TrialSpec(), name), kind), name


def test_migrations_create_exactly_the_models(store: Store) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    with store._engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"version_table": VERSION_TABLE, "compare_type": True}
        )
        assert compare_metadata(context, Base.metadata) == []
    assert store.schema_revision() == head_revision()


# -- registering sweeps --------------------------------------------------------------------------


def test_register_sweep_is_idempotent_and_shares_trials_between_sweeps(store: Store) -> None:
    specs = grid()
    info = store.register_sweep("demo", "name: demo\n", specs + specs[:3])  # duplicates collapse
    assert (info.name, info.spec_text, info.cells) == ("demo", "name: demo\n", 12)
    ids = store.trials()[["spec_hash", "seed", "trial_id"]]

    again = store.register_sweep("demo", "name: demo\n", specs)
    assert again.cells == 12 and again.created_at == info.created_at
    assert store.trials()[["spec_hash", "seed", "trial_id"]].equals(ids)

    # Another sweep asking for some of the same cells reuses their trials.
    other = store.register_sweep("other", "name: other\n", specs[:6] + grid(gammas=(0.5,)))
    assert other.cells == 12
    frame = store.trials()
    assert len(frame) == 18
    shared = set(store.trials(sweep="demo")["trial_id"]) & set(
        store.trials(sweep="other")["trial_id"]
    )
    assert len(shared) == 6


def test_new_spec_text_replaces_the_text_and_keeps_the_links(store: Store) -> None:
    store.register_sweep("demo", "v1", grid())
    info = store.register_sweep("demo", "v2", grid(gammas=(0.05,)))
    assert info.spec_text == "v2"
    assert info.cells == 18  # the union of both registrations
    assert info.updated_at >= info.created_at
    assert [s.name for s in store.sweeps()] == ["demo"]


def test_registering_thousands_of_cells_takes_few_statements(store: Store) -> None:
    specs = [
        make_spec(bn_scale_init=g, lr=lr, seed=s)
        for g in (1.0, 0.5, 0.2, 0.1)
        for lr in (0.1, 0.05, 0.01, 0.005)
        for s in range(1, 126)
    ]
    statements = []

    def count(*args: object) -> None:
        statements.append(args[2])

    sa.event.listen(store._engine, "before_cursor_execute", count)
    try:
        started = time.monotonic()
        info = store.register_sweep("big", "big", specs)
        elapsed = time.monotonic() - started
    finally:
        sa.event.remove(store._engine, "before_cursor_execute", count)
    assert info.cells == 2000
    assert len(statements) <= 20, len(statements)
    assert elapsed < 15, elapsed
    assert len(store.completed_cells(specs)) == 0


# -- events and status transitions ---------------------------------------------------------------


def test_a_trial_runs_from_pending_to_completed(store: Store) -> None:
    spec = grid()[0]
    store.register_sweep("demo", "x", grid())
    key = (spec.spec_hash, spec.seed)
    row = store.trials(where={"spec_hash": spec.spec_hash, "seed": spec.seed}).iloc[0]
    assert (row.status, row.attempts) == ("pending", 0)

    start = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=timezone(timedelta(hours=2)))
    store.apply([TrialStarted(*key, host="node-1", device="cuda:0", started_at=start)])
    row = store.trials(status="running").iloc[0]
    assert (row.status, row.attempts, row.host, row.device) == ("running", 1, "node-1", "cuda:0")
    assert row.started_at == start  # the same instant, read back in UTC
    assert str(row.started_at.tz) == "UTC"

    run_cell(store, spec)
    row = store.trials(status="completed").iloc[0]
    assert row.best_epoch == 2 and row.epochs_run == 3
    assert (row.best_val_acc, row.test_acc, row.final_test_acc) == (0.8, 0.75, 0.74)
    assert row.images_per_sec == 1234.5 and row.package_version == "0.1.0"
    assert row.attempts == 2  # run_cell started it again with a newer time
    assert row.finished_at >= row.started_at
    epochs = store.epochs(where={"spec_hash": spec.spec_hash})
    assert epochs["epoch"].tolist() == [1, 2, 3]
    assert epochs["epoch_lr"].tolist() == [0.1] * 3
    assert store.completed_cells([spec]) == {key}


def test_replayed_epochs_are_upserted_not_duplicated(store: Store) -> None:
    spec = grid()[0]
    store.register_sweep("demo", "x", [spec])
    key = (spec.spec_hash, spec.seed)
    store.apply([TrialStarted(*key), *(EpochRecorded(*key, metrics=epoch(n)) for n in (1, 2, 3))])
    # Ray restarts the trial from its epoch-1 checkpoint and replays epochs 2 and 3.
    store.apply(
        [
            TrialStarted(*key),
            EpochRecorded(*key, metrics=epoch(2, val_acc=0.9)),
            EpochRecorded(*key, metrics=epoch(3, val_acc=0.91)),
        ]
    )
    frame = store.epochs()
    assert frame["epoch"].tolist() == [1, 2, 3]
    assert frame["val_acc"].tolist() == [0.51, 0.9, 0.91]
    assert store.trials().iloc[0].attempts == 2


def test_non_finite_losses_are_stored(store: Store) -> None:
    spec = grid()[0]
    store.register_sweep("demo", "x", [spec])
    key = (spec.spec_hash, spec.seed)
    store.apply(
        [
            TrialStarted(*key),
            EpochRecorded(*key, metrics=epoch(1, train_loss=math.nan, val_loss=math.inf)),
            EpochRecorded(*key, metrics=epoch(2, train_loss=-math.inf, val_acc=math.nan)),
            TrialFinished.from_result(
                *key, result(status="diverged", diverged_epoch=2, best_val_acc=math.nan)
            ),
        ]
    )
    frame = store.epochs()
    assert math.isnan(frame["train_loss"][0]) and frame["val_loss"][0] == math.inf
    assert frame["train_loss"][1] == -math.inf and math.isnan(frame["val_acc"][1])
    row = store.trials().iloc[0]
    assert row.status == "diverged" and row.diverged_epoch == 2 and math.isnan(row.best_val_acc)


def test_final_results_are_never_overwritten_by_late_events(store: Store) -> None:
    spec = grid()[0]
    store.register_sweep("demo", "x", [spec])
    key = (spec.spec_hash, spec.seed)
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    store.apply(
        [
            TrialStarted(*key, started_at=t0),
            EpochRecorded(*key, metrics=epoch(1)),
            EpochRecorded(*key, metrics=epoch(2)),
            TrialFinished.from_result(*key, result(), finished_at=t0 + timedelta(minutes=5)),
        ]
    )
    before = store.trials()
    # A stale start, failure, second result and replayed epoch from an earlier attempt.
    store.apply(
        [
            TrialStarted(*key, started_at=t0 + timedelta(minutes=6)),
            TrialFailed(*key, error="worker lost", finished_at=t0 + timedelta(minutes=7)),
            TrialFinished.from_result(*key, result(status="diverged", best_val_acc=0.1)),
            EpochRecorded(*key, metrics=epoch(2, val_acc=0.01)),
            EpochRecorded(*key, metrics=epoch(3)),  # a missing epoch may still be filled in
        ]
    )
    assert store.trials().equals(before)
    frame = store.epochs()
    assert frame["epoch"].tolist() == [1, 2, 3]
    assert frame["val_acc"][1] == 0.52


def test_failed_trials_retry_and_replayed_starts_count_once(store: Store) -> None:
    spec = grid()[0]
    store.register_sweep("demo", "x", [spec])
    key = (spec.spec_hash, spec.seed)
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    first = TrialStarted(*key, started_at=t0)
    store.apply([first, TrialFailed(*key, "CUDA error: out of memory", t0 + timedelta(1))])
    store.apply([first])  # the same start delivered twice is the same start
    row = store.trials().iloc[0]
    assert (row.status, row.attempts, row.error) == ("failed", 1, "CUDA error: out of memory")

    retry = TrialStarted(*key, started_at=t0 + timedelta(2))
    store.apply([retry, retry])
    row = store.trials().iloc[0]
    assert (row.status, row.attempts) == ("running", 2)
    assert pd.isna(row.error)
    # The failure of the first attempt arriving now is older than the running attempt.
    store.apply([TrialFailed(*key, "late", t0 + timedelta(1, seconds=1))])
    assert store.trials().iloc[0].status == "running"


def test_applying_a_batch_twice_gives_the_same_rows(store: Store) -> None:
    specs = grid()[:4]
    store.register_sweep("demo", "x", specs)
    batch = []
    for spec in specs:
        key = (spec.spec_hash, spec.seed)
        batch += [
            TrialStarted(*key, started_at=datetime(2026, 1, 1, tzinfo=timezone.utc)),
            *(EpochRecorded(*key, metrics=epoch(n)) for n in (1, 2)),
            TrialFinished.from_result(*key, result(epochs_run=2)),
        ]
    store.apply(batch)
    trials, epochs = store.trials(), store.epochs()
    store.apply(batch)
    assert store.trials().equals(trials) and store.epochs().equals(epochs)


def test_a_batch_naming_an_unknown_cell_writes_nothing(store: Store) -> None:
    spec = grid()[0]
    store.register_sweep("demo", "x", [spec])
    with pytest.raises(StoreError, match="register the sweep first"):
        store.apply([TrialStarted(spec.spec_hash, spec.seed), TrialStarted("0" * 16, 1)])
    assert store.trials().iloc[0].status == "pending"


def test_every_event_type_has_one_writer() -> None:
    """`Store.apply` accepts the event types and dispatches each to its writer by type."""
    assert set(EVENT_WRITERS) == set(EVENT_TYPES)


def test_events_validate_on_construction() -> None:
    with pytest.raises(StoreError, match=r"val_acc: accuracies are fractions in \[0, 1\]"):
        EpochRecorded("abc", 1, metrics=epoch(1, val_acc=85.0))
    with pytest.raises(StoreError, match="status: a finished trial is one of completed"):
        TrialFinished("abc", 1, status="failed")
    with pytest.raises(StoreError, match="epoch: expected an integer"):
        EpochRecorded("abc", 1, metrics=epoch(1, epoch=1.5))
    with pytest.raises(StoreError, match="seed: expected an integer"):
        TrialStarted("abc", "1")  # type: ignore[arg-type]
    event = TrialFinished.from_result("abc", 1, result(best_epoch=2.0))
    assert event.best_epoch == 2 and event.finished_at.tzinfo is timezone.utc


def test_from_result_takes_the_workers_result_type() -> None:
    trial = pytest.importorskip(
        "bnsweep.workers.trial", reason="bnsweep.workers.trial is not written yet"
    )
    outcome = trial.TrialResult(
        status="completed",
        epochs_run=3,
        best_epoch=3,
        best_val_acc=0.9,
        test_acc=0.88,
        final_test_acc=0.88,
        seconds=3.0,
        images_per_sec=100.0,
    )
    event = TrialFinished.from_result("abc", 1, outcome)
    assert (event.status, event.best_epoch, event.test_acc) == ("completed", 3, 0.88)
    metrics = trial.EpochMetrics(1, 2.0, 2.1, 0.3, 0.29, 0.1, 1.5)
    assert EpochRecorded("abc", 1, metrics=metrics).values.val_acc == 0.3


# -- queries -------------------------------------------------------------------------------------


def fill(store: Store) -> Store:
    """Two sweeps: `demo` (the 12-cell grid: 5 completed, 1 diverged, 1 failed, 1 running, 4
    pending) and `solo` (one pending cell)."""
    specs = grid()
    store.register_sweep("demo", "name: demo", specs)
    store.register_sweep("solo", "name: solo", [make_spec(bn_scale_init=0.05, seed=1)])
    for spec in specs[:5]:
        run_cell(store, spec)
    run_cell(store, specs[5], status="diverged", diverged_epoch=2)
    store.apply([TrialFailed(specs[6].spec_hash, specs[6].seed, "boom")])
    store.apply([TrialStarted(specs[7].spec_hash, specs[7].seed)])
    return store


@pytest.fixture
def populated(store: Store) -> Store:
    return fill(store)


def test_trials_frame_has_stable_columns_and_dtypes(populated: Store) -> None:
    full = populated.trials()
    assert list(full.columns) == list(TRIAL_COLUMNS)
    empty = populated.trials(where={"seed": 99})
    assert empty.empty and empty.dtypes.equals(full.dtypes)
    assert {str(full[c].dtype) for c in ("started_at", "finished_at")} == {"datetime64[us, UTC]"}
    epochs = populated.epochs()
    assert list(epochs.columns) == list(EPOCH_COLUMNS)
    assert populated.epochs(where={"epoch": 42}).dtypes.equals(epochs.dtypes)
    assert len(epochs) == 18


def test_where_filters_coerce_strings_and_accept_lists(populated: Store) -> None:
    assert len(populated.trials(where={"lr": "0.1"})) == 7  # six of demo, one of solo
    assert len(populated.trials(where={"lr": 0.1, "bn_scale_init": "1"})) == 3
    assert len(populated.trials(where={"seed": ["1", 2]}, sweep="demo")) == 8
    assert len(populated.trials(status=["completed", "diverged"])) == 6
    assert len(populated.trials(where={"status": "failed"})) == 1
    assert len(populated.trials(sweep="solo")) == 1
    assert len(populated.epochs(sweep="demo", where={"epoch": "3", "lr": "0.1"})) == 3
    assert len(populated.trials(where={"host": None})) == 7  # never started, or no host given


def test_where_rejects_unknown_fields_and_bad_values(populated: Store) -> None:
    with pytest.raises(StoreError, match="unknown field 'gama' in where; valid fields: spec_hash"):
        populated.trials(where={"gama": 0.1})
    with pytest.raises(StoreError, match="where lr: expected a number, got 'fast'"):
        populated.trials(where={"lr": "fast"})
    with pytest.raises(StoreError, match="where seed: expected an integer"):
        populated.trials(where={"seed": "1.5"})
    with pytest.raises(StoreError, match="allowed: pending, running"):
        populated.trials(status="done")
    with pytest.raises(StoreError, match="unknown field 'epoch'"):
        populated.trials(where={"epoch": 1})
    # A value that looks like SQL is only ever a bound value.
    assert populated.trials(where={"arch": "x' OR '1'='1"}).empty


def test_sweeps_and_get_sweep(populated: Store) -> None:
    assert [(s.name, s.cells) for s in populated.sweeps()] == [("demo", 12), ("solo", 1)]
    assert populated.get_sweep("solo").spec_text == "name: solo"
    with pytest.raises(StoreError, match=r"no sweep named 'nope'.*known sweeps: demo, solo"):
        populated.get_sweep("nope")
    with pytest.raises(StoreError, match="known sweeps: demo, solo"):
        populated.trials(sweep="nope")
    with pytest.raises(StoreError, match="known sweeps"):
        populated.sweep_status("nope")


def test_sweep_status_counts_and_missing_seeds(populated: Store) -> None:
    status = populated.sweep_status("demo")
    assert (status.total, status.completed, status.diverged) == (12, 5, 1)
    assert (status.failed, status.running, status.pending) == (1, 1, 4)
    assert status.done == 6
    labels = {arm.label: arm for arm in status.arms}
    assert set(labels) == {
        "γ=0.1 c=100 standard lr=0.01",
        "γ=0.1 c=100 standard lr=0.1",
        "γ=1 c=100 standard lr=0.01",
        "γ=1 c=100 standard lr=0.1",
    }
    assert labels["γ=1 c=100 standard lr=0.1"].missing_seeds == ()
    arm = labels["γ=0.1 c=100 standard lr=0.1"]  # grid()[6:9]: failed, running, pending
    assert (arm.missing_seeds, arm.failed_seeds, arm.running_seeds) == ((1, 2, 3), (1,), (2,))
    assert len(status.incomplete_arms) == 2


def test_completed_cells_takes_specs_or_pairs(populated: Store) -> None:
    specs = grid()
    done = {(s.spec_hash, s.seed) for s in specs[:6]}  # five completed and one diverged
    assert populated.completed_cells(specs) == done
    assert populated.completed_cells([(s.spec_hash, s.seed) for s in specs[4:8]]) == {
        (s.spec_hash, s.seed) for s in specs[4:6]
    }
    assert populated.completed_cells([]) == set()


def test_base_arms_are_labelled() -> None:
    values = {c: getattr(make_spec(), c) for c in SPEC_COLUMN_TYPES}
    base = {**values, "bn_scale_init": 1.0, "bn_lr_divisor": 1.0}
    assert arm_label(base, ["lr"]) == "BASE γ=1 c=1 standard lr=0.1"


# -- opening, URLs and the schema rule -----------------------------------------------------------


def test_urls_are_normalised_and_passwords_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    assert normalize_url("postgres://u:pw@h/db") == "postgresql+psycopg://u:pw@h/db"
    assert normalize_url("postgresql://u@h:5/db") == "postgresql+psycopg://u@h:5/db"
    assert redact_url("postgresql://u:s3cret@h/db") == "postgresql://u:***@h/db"
    assert "s3cret" not in redact_url("postgresql://u@h/db?password=s3cret")
    assert "s3cret" not in redact_url("not a url://u:s3cret@h")
    with pytest.raises(StoreError, match="bad database URL"):
        Store.open("nonsense")
    with pytest.raises(StoreError, match=r"unsupported database URL 'mysql://u:\*\*\*@h/db'"):
        Store.open("mysql://u:s3cret@h/db")
    with pytest.raises(StoreError, match="unsupported"):
        Store.open("postgresql+psycopg2://u@h/db")
    monkeypatch.setenv("BNSWEEP_DB", "sqlite:///from-env.db")
    assert resolve_url(None) == "sqlite:///from-env.db"
    assert resolve_url("sqlite:///arg.db") == "sqlite:///arg.db"
    monkeypatch.delenv("BNSWEEP_DB")
    assert resolve_url(None) == "sqlite:///bnsweep.db"


def test_default_store_is_a_sqlite_file_in_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BNSWEEP_DB", raising=False)
    with Store.open() as store:
        assert store.url == "sqlite:///bnsweep.db"
    assert (tmp_path / "bnsweep.db").exists()


def test_sqlite_gets_wal_busy_timeout_foreign_keys_and_its_folder(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'a' / 'b' / 'results.db'}"
    with Store.open(url) as store, store._engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    assert (tmp_path / "a" / "b" / "results.db").exists()


def test_opening_without_create_never_makes_a_database(tmp_path: Path) -> None:
    path = tmp_path / "absent.db"
    with pytest.raises(StoreError, match=r"no results database at .*bnsweep db upgrade"):
        Store.open(f"sqlite:///{path}", create=False)
    assert not path.exists()
    sqlite3.connect(path).close()  # an empty file: no bnsweep schema
    with pytest.raises(StoreError, match="no bnsweep results in"):
        Store.open(f"sqlite:///{path}", create=False)
    with Store.open(f"sqlite:///{path}") as store:  # create=True fills the empty file
        assert store.schema_revision() == head_revision()


def _migrations_with_a_second_revision(tmp_path: Path) -> Path:
    location = tmp_path / "migrations"
    shutil.copytree(script_location(), location, ignore=shutil.ignore_patterns("__pycache__"))
    (location / "versions" / "9000_test.py").write_text(
        '"""A later revision, for the test of the schema rule."""\n'
        "from alembic import op\n"
        'revision = "9000"\n'
        f'down_revision = "{head_revision()}"\n'
        "branch_labels = None\n"
        "depends_on = None\n\n\n"
        "def upgrade():\n"
        '    op.create_index("ix_trials_dataset", "trials", ["dataset"])\n\n\n'
        "def downgrade():\n"
        '    op.drop_index("ix_trials_dataset", table_name="trials")\n'
    )
    return location


def test_a_database_behind_head_is_upgraded_only_on_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    with Store.open(url) as store:
        store.register_sweep("demo", "x", grid()[:2])
    head = head_revision()
    location = _migrations_with_a_second_revision(tmp_path)
    # Looked up in two places: the head and known revisions (schema), the upgrade's scripts (api).
    monkeypatch.setattr(schema, "script_location", lambda: location)
    monkeypatch.setattr(api, "script_location", lambda: location)
    with pytest.raises(
        StoreError, match=rf"revision {head}, this bnsweep needs 9000: run `bnsweep db upgrade --db"
    ):
        Store.open(url)
    with Store.open(url, check_schema=False) as store:
        assert store.upgrade() == (head, "9000")
        assert store.upgrade() == ("9000", "9000")
    with Store.open(url) as store:
        assert len(store.trials()) == 2  # the data came through the migration


def test_a_database_from_a_newer_bnsweep_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    Store.open(url).close()
    with sqlite3.connect(tmp_path / "new.db") as conn:
        conn.execute(f"UPDATE {VERSION_TABLE} SET version_num = '0999'")
    with pytest.raises(StoreError, match="written by a newer bnsweep; upgrade bnsweep"):
        Store.open(url)


def test_another_applications_tables_are_not_taken_over(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "other.db") as conn:
        conn.execute("CREATE TABLE trials (id INTEGER PRIMARY KEY)")
    with pytest.raises(StoreError, match="holds tables but no bnsweep schema version"):
        Store.open(f"sqlite:///{tmp_path / 'other.db'}")


def test_an_empty_postgresql_database_gets_the_schema(postgres_url: str) -> None:
    with fresh_database(postgres_url) as url:
        with pytest.raises(StoreError, match="no bnsweep results in"):
            Store.open(url, create=False)
        with Store.open(url) as store:
            assert store.schema_revision() == head_revision()
            assert store.dialect == "postgresql"
            assert store.trials().empty


# -- outages -------------------------------------------------------------------------------------


def test_a_sqlite_writer_waits_for_another_writers_lock(tmp_path: Path) -> None:
    path = tmp_path / "busy.db"
    with Store.open(f"sqlite:///{path}") as store:
        spec = grid()[0]
        store.register_sweep("demo", "x", [spec])
        other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        other.execute("BEGIN IMMEDIATE")
        release = threading.Timer(0.7, other.execute, args=("COMMIT",))
        release.start()
        started = time.monotonic()
        store.apply([TrialStarted(spec.spec_hash, spec.seed)])
        assert time.monotonic() - started >= 0.5
        release.join()
        other.close()
        assert store.trials().iloc[0].status == "running"


def _terminate_backends(admin: sa.Engine, database: str, pid: int | None = None) -> None:
    """Kill the bnsweep connections to `database` (or one backend) and wait until they are gone."""
    condition = "pid = :pid" if pid is not None else "datname = :db AND pid <> pg_backend_pid()"
    query = f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE {condition}"
    with admin.connect() as conn:
        conn.execute(sa.text(query), {"pid": pid, "db": database})
        for _ in range(100):
            alive = conn.execute(
                sa.text(f"SELECT count(*) FROM pg_stat_activity WHERE {condition}"),
                {"pid": pid, "db": database},
            ).scalar()
            if not alive:
                return
            time.sleep(0.02)


@pytest.fixture
def pg_store(pg_database: str) -> Iterator[tuple[Store, sa.Engine]]:
    Store.open(pg_database).close()
    _empty_tables(pg_database)
    admin = sa.create_engine(pg_database, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    with Store.open(pg_database, retry_seconds=20) as store:
        yield store, admin
    admin.dispose()


def test_postgresql_connections_killed_between_and_during_writes(
    pg_store: tuple[Store, sa.Engine],
) -> None:
    store, admin = pg_store
    database = store._url.database
    specs = grid()
    store.register_sweep("demo", "x", specs)
    run_cell(store, specs[0])

    _terminate_backends(admin, database)  # between writes: the pool's connection is dead
    run_cell(store, specs[1])

    # During a write: the backend dies just before the epoch upsert of this transaction.
    killed = []

    def kill_mid_transaction(conn, cursor, statement, *args) -> None:  # type: ignore[no-untyped-def]
        if not killed and statement.lstrip().upper().startswith("INSERT INTO EPOCHS"):
            killed.append(conn.connection.dbapi_connection.info.backend_pid)
            _terminate_backends(admin, database, pid=killed[0])

    sa.event.listen(store._engine, "before_cursor_execute", kill_mid_transaction)
    try:
        run_cell(store, specs[2])
    finally:
        sa.event.remove(store._engine, "before_cursor_execute", kill_mid_transaction)
    assert killed, "the write never reached the epoch upsert"

    trials = store.trials(status="completed")
    assert len(trials) == 3 and set(trials["attempts"]) == {1}
    epochs = store.epochs()
    assert len(epochs) == 9
    assert not epochs.duplicated(["trial_id", "epoch"]).any()


@pytest.fixture
def proxy_url(pg_database: str) -> Iterator[tuple[str, TcpProxy]]:
    Store.open(pg_database).close()
    _empty_tables(pg_database)
    proxy = TcpProxy.to_database(pg_database)
    proxy.start()
    # Trust authentication ignores the password; it is here to prove it never leaks.
    yield proxy.url(pg_database, password="s3cret-pw"), proxy
    proxy.stop()


def test_writes_wait_out_a_short_outage(
    proxy_url: tuple[str, TcpProxy], caplog: pytest.LogCaptureFixture
) -> None:
    url, proxy = proxy_url
    specs = grid()
    with Store.open(url, retry_seconds=30) as store:
        store.register_sweep("demo", "x", specs)
        run_cell(store, specs[0])

        proxy.stop()
        threading.Timer(3.0, proxy.start).start()
        started = time.monotonic()
        with caplog.at_level("WARNING", logger="bnsweep.store.api"):
            run_cell(store, specs[1])
            store.register_sweep("demo", "x", specs)
        assert time.monotonic() - started >= 2.5
        assert "retrying" in caplog.text and "s3cret-pw" not in caplog.text

        trials = store.trials(status="completed")
        assert len(trials) == 2 and set(trials["attempts"]) == {1}
        assert len(store.epochs()) == 6
        assert store.get_sweep("demo").cells == 12


def test_an_outage_longer_than_the_retry_budget_is_one_clear_error(
    proxy_url: tuple[str, TcpProxy], caplog: pytest.LogCaptureFixture
) -> None:
    url, proxy = proxy_url
    spec = grid()[0]
    with Store.open(url, retry_seconds=1.0) as store:
        store.register_sweep("demo", "x", [spec])
        proxy.stop()
        with pytest.raises(StoreError, match="unavailable for 1 s") as raised:
            store.apply([TrialStarted(spec.spec_hash, spec.seed)])
        assert "s3cret-pw" not in str(raised.value) and "***" in str(raised.value)
        assert "\n" not in str(raised.value)
        assert "s3cret-pw" not in repr(store) and "s3cret-pw" not in caplog.text
