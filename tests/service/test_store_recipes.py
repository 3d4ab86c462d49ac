"""Results tied to the code that made them: recipes, provenance, and forgetting cells.

Run on SQLite and PostgreSQL through the fixtures of `test_store.py` (PostgreSQL databases are
`bnsweep_test_<random>`, dropped afterwards).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

import bnsweep.workers.spec
from bnsweep.store import events
from bnsweep.store.api import Store
from bnsweep.store.columns import SPEC_COLUMNS
from bnsweep.store.errors import StoreError, normalize_url
from bnsweep.store.events import TrialStarted, source_commit
from bnsweep.store.models import VERSION_TABLE
from bnsweep.store.schema import alembic_config, head_revision, script_location
from bnsweep.store.values import ForgetCount, older_recipe_line
from bnsweep.workers.spec import RECIPE, TrialSpec
from tests.service import test_store as base
from tests.service.test_store import (
    _specs_without_registries,  # noqa: F401 (autouse fixture)
    fill,
    fresh_database,
    grid,
    make_spec,
    run_cell,
)

# The store fixtures of test_store.py: every test below runs on SQLite and on PostgreSQL.
pg_database = base.pg_database
store_url = base.store_url
store = base.store

# -- provenance ----------------------------------------------------------------------------------


def test_a_start_records_commit_threads_and_runtime(store: Store) -> None:
    spec = make_spec(seed=1)
    store.register_sweep("demo", "x", [spec, spec.replace(seed=2)])
    runtime = {"compile": False, "cudnn_benchmark": False, "eval_batch_size": 512}
    store.apply(
        [
            TrialStarted(
                spec.spec_hash, 1, git_commit="a" * 40, threads=8, runtime=runtime, host="n1"
            )
        ]
    )
    frame = store.trials().set_index("seed")
    assert frame.loc[1, "git_commit"] == "a" * 40 and frame.loc[1, "threads"] == 8
    assert json.loads(frame.loc[1, "runtime"]) == runtime
    assert (frame["recipe"] == RECIPE).all()
    # Never started: nothing recorded, and the dtypes hold with missing values.
    assert pd.isna(frame.loc[2, "threads"]) and pd.isna(frame.loc[2, "runtime"])
    assert str(frame["threads"].dtype) == "Int64" and str(frame["recipe"].dtype) == "int64"
    assert len(store.trials(where={"threads": "8", "recipe": RECIPE})) == 1


def test_the_git_commit_defaults_to_the_source_checkout() -> None:
    assert TrialStarted("abc", 1).git_commit == source_commit()
    assert TrialStarted("abc", 1, git_commit=None).git_commit is None


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"threads": 0}, "threads: expected an integer >= 1"),
        ({"threads": 1.5}, "threads: expected an integer"),
        ({"runtime": {"compile": object()}}, "runtime: every value must be JSON"),
        ({"runtime": {"x": float("nan")}}, "runtime: every value must be JSON"),
        ({"runtime": ["compile"]}, "runtime: expected a mapping"),
        ({"git_commit": ""}, "git_commit: expected a commit id"),
    ],
)
def test_bad_provenance_is_one_clear_error(changes: dict, message: str) -> None:
    with pytest.raises(StoreError, match=f"^{message}"):
        TrialStarted("abc", 1, **changes)


@pytest.fixture
def fresh_commit_cache() -> Iterator[None]:
    source_commit.cache_clear()
    yield
    source_commit.cache_clear()


def _git(folder: Path, *args: str) -> str:
    command = ["git", "-C", str(folder), "-c", "user.name=t", "-c", "user.email=t@t", *args]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()


def test_source_commit_is_the_checkouts_head_or_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_commit_cache: None
) -> None:
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    _git(checkout, "init", "-q")
    _git(checkout, "commit", "-q", "--allow-empty", "-m", "one")
    monkeypatch.setattr(events, "_source_root", lambda: checkout.resolve())
    assert source_commit() == _git(checkout, "rev-parse", "HEAD")

    # Installed into site-packages inside some other repository: not bnsweep's checkout.
    nested = checkout / "venv" / "site-packages"
    nested.mkdir(parents=True)
    source_commit.cache_clear()
    monkeypatch.setattr(events, "_source_root", lambda: nested.resolve())
    assert source_commit() is None

    plain = tmp_path / "wheel"
    plain.mkdir()
    source_commit.cache_clear()
    monkeypatch.setattr(events, "_source_root", lambda: plain.resolve())
    assert source_commit() is None


# -- the migration -------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
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


def test_rows_from_before_0003_become_recipe_1(empty_url: str) -> None:
    _migrate(empty_url, "0002")
    engine = sa.create_engine(normalize_url(empty_url))
    now = pd.Timestamp.now(tz="UTC").to_pydatetime()
    old = make_spec(seed=3)
    with engine.begin() as conn:
        trials = sa.Table("trials", sa.MetaData(), autoload_with=conn)
        values = {c: getattr(old, c) for c in SPEC_COLUMNS}
        conn.execute(
            trials.insert().values(
                spec_hash="0123456789abcdef",
                seed=3,
                status="completed",
                attempts=1,
                created_at=now,
                updated_at=now,
                **values,
            )
        )
        assert conn.scalar(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")) == "0002"
    engine.dispose()
    with pytest.raises(StoreError, match="run `bnsweep db upgrade"):
        Store.open(empty_url)
    with Store.open(empty_url, check_schema=False) as store:
        assert store.upgrade() == ("0002", head_revision())
    with Store.open(empty_url) as store:
        row = store.trials().iloc[0]
        assert row.recipe == 1 and pd.isna(row.git_commit) and pd.isna(row.threads)
        assert store.older_recipes() == {1: 1}
    # And back: the downgrade drops exactly the four columns, keeping the row.
    _migrate(empty_url, "0002", down=True)
    engine = sa.create_engine(normalize_url(empty_url))
    with engine.connect() as conn:
        names = {c["name"] for c in sa.inspect(conn).get_columns("trials")}
        assert not names & {"recipe", "git_commit", "threads", "runtime"}
        assert conn.scalar(sa.text("SELECT count(*) FROM trials")) == 1
    engine.dispose()


# -- older recipes: reported, never reused -------------------------------------------------------

DEMO = """
name: demo
defaults: {dataset: digits, arch: resnet8, epochs: 3, device: cpu}
grids:
  - {bn_scale_init: [0.1], bn_lr_divisor: [100], lr: [0.1]}
base: true
seeds: 2
"""


def _register(store: Store, text: str = DEMO) -> list[TrialSpec]:
    from bnsweep.sweep import expand, parse_sweep_spec

    sweep = parse_sweep_spec(text)
    cells = expand(sweep)
    store.register_sweep(sweep.name, text, cells)
    return cells


def _missing(store: Store, text: str = DEMO) -> set[tuple[str, int]]:
    from bnsweep.plan import plan
    from bnsweep.sweep import parse_sweep_spec

    return {(c.spec_hash, c.seed) for c in plan(parse_sweep_spec(text), store).missing}


def test_cells_of_an_older_recipe_are_reported_and_not_reused(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bnsweep.workers.spec, "RECIPE", RECIPE - 1)
    old = _register(store)
    for spec in old:
        run_cell(store, spec)
    old_hashes = {c.spec_hash for c in old}  # a hash reads RECIPE when it is computed
    assert _missing(store) == set()  # finished, under the recipe that trained them
    monkeypatch.setattr(bnsweep.workers.spec, "RECIPE", RECIPE)

    # This bnsweep's cells have new hashes: every one is missing for a launch.
    new = _register(store)
    assert {c.spec_hash for c in new}.isdisjoint(old_hashes)
    assert _missing(store) == {(c.spec_hash, c.seed) for c in new}
    assert store.completed_cells(new) == set()

    status = store.sweep_status("demo")
    assert (status.total, status.completed, status.pending) == (4, 0, 4)
    assert status.older_recipes == ((RECIPE - 1, 4),)
    assert store.older_recipes("demo") == {RECIPE - 1: 4} == store.older_recipes()
    line = older_recipe_line(store.older_recipes("demo"), "demo")
    assert line is not None and "\n" not in line
    assert "4 trial(s) of an older training recipe" in line and "not used" in line
    assert f"bnsweep db forget --sweep demo --where recipe={RECIPE - 1}" in line
    assert older_recipe_line({}) is None

    # What the tables read: the current recipe only.
    from bnsweep.store.results import load_results, load_trials

    url = store._url.render_as_string(hide_password=False)
    assert len(load_trials(url, "demo")) == 4
    assert (load_trials(url, "demo")["recipe"] == RECIPE).all()
    trials, epochs = load_results(url, "demo")
    assert len(trials) == 4 and epochs.empty  # the 12 old epoch rows stay out


# -- forget --------------------------------------------------------------------------------------


def test_a_dry_run_counts_and_changes_nothing(store: Store) -> None:
    fill(store)
    before = store.trials().drop(columns=["git_commit"])
    counted = store.forget(sweep="demo", where={"lr": 0.1}, dry_run=True)
    assert counted == ForgetCount(trials=6, epochs=9, shared=0, running=1)
    pd.testing.assert_frame_equal(store.trials().drop(columns=["git_commit"]), before)
    assert len(store.epochs()) == 18


def test_forget_deletes_exactly_the_matching_cells_and_a_launch_retrains_them(
    store: Store,
) -> None:
    cells = _register(store)
    for spec in cells:
        run_cell(store, spec)
    forgotten = {(c.spec_hash, c.seed) for c in cells if c.is_base}
    assert _missing(store) == set()

    count = store.forget(sweep="demo", where={"bn_scale_init": 1.0, "bn_lr_divisor": 1})
    assert count == ForgetCount(trials=2, epochs=6, shared=0, running=0)
    left = store.trials(sweep="demo")
    assert set(zip(left["spec_hash"], left["seed"], strict=True)).isdisjoint(forgotten)
    assert len(left) == 2 and len(store.epochs()) == 6  # the epochs went with their trials
    assert store.sweep_status("demo").total == 2  # and the sweep's links
    # The next launch trains exactly those cells again.
    assert _missing(store) == forgotten
    _register(store)
    assert store.sweep_status("demo").pending == 2


def test_forget_through_one_sweep_says_which_trials_others_share(store: Store) -> None:
    specs = grid()
    store.register_sweep("demo", "a", specs)
    store.register_sweep("other", "b", specs[:2])
    assert store.forget(sweep="demo", where={"seed": 1}).shared == 1
    assert len(store.trials(sweep="other")) == 1


def test_forget_refuses_running_trials_and_an_empty_filter(store: Store) -> None:
    fill(store)
    before = len(store.trials())
    with pytest.raises(StoreError, match=r"^forget: 1 of the 12 matching trials are running"):
        store.forget(sweep="demo")
    with pytest.raises(StoreError, match=r"^forget: name the trials"):
        store.forget()
    with pytest.raises(StoreError, match="no sweep named 'nope'"):
        store.forget(sweep="nope", dry_run=True)
    with pytest.raises(StoreError, match="unknown field 'gama'"):
        store.forget(where={"gama": 1})
    assert len(store.trials()) == before
    done = store.forget(sweep="demo", where={"status": ["completed", "diverged", "failed"]})
    assert done.trials == 7 and len(store.trials(sweep="demo")) == 5
