"""Plugins in the results store: each trial records its plugins' distributions, versions and
recipes (revision 0005); a plugin's newer recipe retrains its cells, and every read surface
counts only the newest, as it does for bnsweep's own `RECIPE`.

Run on SQLite and PostgreSQL through the fixtures of `test_store.py`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from bnsweep.store.api import Store
from bnsweep.store.columns import SPEC_COLUMNS
from bnsweep.store.errors import normalize_url
from bnsweep.store.results import CURRENT_RECIPE
from bnsweep.store.schema import head_revision
from bnsweep.workers.spec import TrialSpec
from tests.service import test_store as base
from tests.service.test_store import fresh_database, run_cell
from tests.service.test_store_recipes import _migrate
from tests.workers import test_plugins
from tests.workers.test_plugins import MakePlugin

pg_database = base.pg_database
store_url = base.store_url
store = base.store
make_plugin = test_plugins.make_plugin


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'old.db'}"
        return
    with fresh_database(request.getfixturevalue("postgres_url")) as url:
        yield url


def test_rows_from_before_0005_name_no_plugin(empty_url: str) -> None:
    _migrate(empty_url, "0004")
    engine = sa.create_engine(normalize_url(empty_url))
    now = pd.Timestamp.now(tz="UTC").to_pydatetime()
    old = TrialSpec(dataset="digits", arch="resnet8", seed=2)
    with engine.begin() as conn:
        trials = sa.Table("trials", sa.MetaData(), autoload_with=conn)
        conn.execute(
            trials.insert().values(
                spec_hash=old.spec_hash,
                seed=2,
                status="completed",
                attempts=1,
                recipe=3,
                created_at=now,
                updated_at=now,
                **{c: getattr(old, c) for c in SPEC_COLUMNS},
            )
        )
    engine.dispose()
    with Store.open(empty_url, check_schema=False) as store:
        assert store.upgrade() == ("0004", head_revision())
    with Store.open(empty_url, read_only=True) as store:
        frame = store.trials(where=CURRENT_RECIPE)
        assert len(frame) == 1 and pd.isna(frame.loc[0, "plugins"])
    _migrate(empty_url, "0004", down=True)
    engine = sa.create_engine(normalize_url(empty_url))
    with engine.connect() as conn:
        assert "plugins" not in {c["name"] for c in sa.inspect(conn).get_columns("trials")}
        assert conn.scalar(sa.text("SELECT count(*) FROM trials")) == 1
    engine.dispose()


def _cells(arch: str, seeds: int = 2) -> list[TrialSpec]:
    spec = TrialSpec(dataset="digits", arch=arch, epochs=3, bn_scale_init=0.1)
    return [spec.replace(seed=s) for s in range(1, seeds + 1)]


def _surfaces(store: Store, sweep: str) -> dict[str, set[str]]:
    """Which spec hashes each read surface counts for `sweep`."""
    from bnsweep.store.results import load_trials, trials
    from bnsweep.web.view import status_of

    status = store.sweep_status(sweep)
    view = status_of(sweep, store.trials(sweep=sweep), store.stale_plugin_records())
    assert view == status
    return {
        "notebook": set(trials(store.url, sweep)["spec_hash"]),
        "tables": set(load_trials(store.url, sweep)["spec_hash"]),
        "epochs": set(store.epochs(sweep=sweep, where=CURRENT_RECIPE)["spec_hash"]),
        "status": {arm.spec_hash for arm in status.arms},
    }


def test_a_plugins_newer_recipe_retrains_and_is_never_mixed(
    store: Store, make_plugin: MakePlugin
) -> None:
    make_plugin("recipe-plugin", recipe=1)
    builtin, old = _cells("resnet8"), _cells("tinynet")
    old_hash = old[0].spec_hash  # a property: it reads the plugin's recipe when asked
    store.register_sweep("demo", "name: demo", builtin + old)
    for spec in builtin + old:
        run_cell(store, spec)
    record = json.loads(store.trials(where={"arch": "tinynet"})["plugins"].iloc[0])
    assert record == {
        "arch": {
            "name": "tinynet",
            "distribution": "recipe-plugin",
            "version": "0.1.0",
            "recipe": 1,
        }
    }
    assert set(store.trials(where={"arch": "resnet8"})["plugins"].isna()) == {True}
    assert all(s == {builtin[0].spec_hash, old_hash} for s in _surfaces(store, "demo").values())

    # The plugin's next release declares recipe 2: its cells get new keys and train again.
    sys.modules.pop("recipe_plugin", None)
    make_plugin("recipe-plugin", recipe=2, version="0.2.0")
    new = _cells("tinynet")
    assert new[0].spec_hash != old_hash
    assert store.completed_cells(new) == set()
    assert store.completed_cells(builtin) == {(s.spec_hash, s.seed) for s in builtin}
    store.register_sweep("demo", "name: demo", builtin + new)
    # Registered, not yet trained: the old recipe's results are already left out everywhere.
    counted = _surfaces(store, "demo")
    assert counted["status"] == {builtin[0].spec_hash, new[0].spec_hash}
    assert counted["tables"] == {builtin[0].spec_hash, new[0].spec_hash}
    assert counted["epochs"] == {builtin[0].spec_hash}
    run_cell(store, new[0])
    counted = _surfaces(store, "demo")
    assert all(old_hash not in hashes for hashes in counted.values())
    assert counted["epochs"] == {builtin[0].spec_hash, new[0].spec_hash}
    # Nothing was deleted: the old rows are still there for `bnsweep query`, and said so.
    assert len(store.trials(sweep="demo")) == 6
    assert store.older_plugin_trials("demo") == 2 and store.older_plugin_trials() == 2
    from bnsweep.store.results import older_recipe_note

    note = older_recipe_note(store.url, "demo") or ""
    assert "sweep demo holds 2 trial(s) of an older plugin recipe" in note


def test_a_pending_cell_records_the_version_that_will_train_it(
    store: Store, make_plugin: MakePlugin
) -> None:
    make_plugin("version-plugin")
    cells = _cells("tinynet")
    store.register_sweep("demo", "name: demo", cells)
    run_cell(store, cells[0])
    sys.modules.pop("version_plugin", None)
    make_plugin("version-plugin", version="0.1.1")  # same recipe: same cells
    assert _cells("tinynet")[0].spec_hash == cells[0].spec_hash
    store.register_sweep("demo", "name: demo", _cells("tinynet"))
    versions = {
        int(row.seed): json.loads(row.plugins)["arch"]["version"]
        for row in store.trials().itertuples()
    }
    assert versions == {1: "0.1.0", 2: "0.1.1"}  # the completed trial keeps what made it
