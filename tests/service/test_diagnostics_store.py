"""BN diagnostics in the results store: idempotent per (trial, epoch, layer), on SQLite and
PostgreSQL; the 0001 → 0002 migration; `bnsweep query --diagnostics`; the driver's callback."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import sqlalchemy as sa

from bnsweep.store.api import Store
from bnsweep.store.columns import DIAGNOSTIC_COLUMNS, SPEC_COLUMNS
from bnsweep.store.errors import StoreError
from bnsweep.store.events import DiagnosticsRecorded, EpochRecorded, TrialFinished, TrialStarted
from bnsweep.store.schema import alembic_config, head_revision, script_location
from tests.service.test_store import (
    _specs_without_registries,  # noqa: F401 (autouse fixture)
    epoch,
    fresh_database,
    make_spec,
    result,
)

LAYERS = ("input_norm", "body.stem.1", "body.stages.0.bn1")


def layer(name: str, depth: int, **changes: object) -> dict[str, object]:
    """Keys as `bnsweep.workers.results.LayerDiagnostics.to_dict()` gives them."""
    values: dict[str, object] = {
        "layer": name,
        "depth": depth,
        "module": "InputBatchNorm2d" if depth == 0 else "BatchNorm2d",
        "channels": 16,
        "gamma_mean": 0.1,
        "gamma_std": 0.0,
        "beta_mean": 0.0,
        "beta_std": 0.0,
        "gamma_drift": 0.0,
        "beta_drift": 0.0,
        "outlier_fraction": 1e-4,
        "gradient_factor": 1.2,
    }
    values.update(changes)
    return values


def diagnostics(spec, epoch_: int, **changes: object) -> DiagnosticsRecorded:
    layers = tuple(layer(name, depth, **changes) for depth, name in enumerate(LAYERS))
    return DiagnosticsRecorded(spec.spec_hash, spec.seed, epoch_, layers)


@pytest.fixture(scope="module")
def pg_database(postgres_url: str) -> Iterator[str]:
    with fresh_database(postgres_url) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'results.db'}"
    else:
        url = request.getfixturevalue("pg_database")
        Store.open(url).close()
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "TRUNCATE notes, diagnostics, sweep_trials, epochs, trials, sweeps RESTART IDENTITY"
            )
        engine.dispose()
    with Store.open(url, retry_seconds=20) as opened:
        yield opened


def test_diagnostics_are_upserted_per_trial_epoch_and_layer(store: Store) -> None:
    spec, other = make_spec(seed=1), make_spec(seed=2, bn_scale_init=1.0)
    store.register_sweep("demo", "name: demo\n", [spec, other])
    key = (spec.spec_hash, spec.seed)
    batch = [
        TrialStarted(*key),
        diagnostics(spec, 0),
        EpochRecorded(*key, metrics=epoch(1)),
        diagnostics(spec, 1, gamma_drift=0.01),
    ]
    store.apply(batch)
    store.apply(batch)  # a lost acknowledgement: the same batch again
    # A Ray retry replays epoch 1 with other values: they replace the first ones.
    store.apply([diagnostics(spec, 1, gamma_drift=0.02)])
    frame = store.diagnostics()
    assert list(frame.columns) == list(DIAGNOSTIC_COLUMNS)
    assert len(frame) == 2 * len(LAYERS)
    assert frame[["epoch", "depth"]].values.tolist() == [[e, d] for e in (0, 1) for d in range(3)]
    assert set(frame.loc[frame["epoch"] == 1, "gamma_drift"]) == {0.02}
    assert frame["layer"].tolist()[:3] == list(LAYERS)
    assert (frame["spec_hash"] == spec.spec_hash).all() and (frame["bn_scale_init"] == 0.1).all()


def test_a_final_trials_diagnostics_are_kept_but_gaps_filled(store: Store) -> None:
    spec = make_spec()
    store.register_sweep("demo", "x", [spec])
    key = (spec.spec_hash, spec.seed)
    store.apply(
        [
            TrialStarted(*key),
            diagnostics(spec, 3, beta_drift=0.5),
            TrialFinished.from_result(*key, result()),
        ]
    )
    store.apply([diagnostics(spec, 3, beta_drift=0.9), diagnostics(spec, 0)])
    frame = store.diagnostics()
    assert set(frame.loc[frame["epoch"] == 3, "beta_drift"]) == {0.5}
    assert sorted(set(frame["epoch"])) == [0, 3]


def test_filters_sweeps_and_missing_values(store: Store) -> None:
    a, b = make_spec(seed=1), make_spec(seed=1, bn_scale_init=0.5)
    store.register_sweep("one", "x", [a])
    store.register_sweep("two", "x", [b])
    store.apply(
        [
            TrialStarted(a.spec_hash, 1),
            diagnostics(a, 0, gradient_factor=math.nan),
            TrialStarted(b.spec_hash, 1),
            diagnostics(b, 0),
            diagnostics(b, 2),
        ]
    )
    assert math.isnan(store.diagnostics(sweep="one")["gradient_factor"].iloc[0])
    assert set(store.diagnostics(sweep="two")["bn_scale_init"]) == {0.5}
    picked = store.diagnostics(where={"epoch": "2", "layer": "body.stem.1", "depth": [1, 2]})
    assert picked[["spec_hash", "epoch", "layer"]].values.tolist() == [
        [b.spec_hash, 2, "body.stem.1"]
    ]
    assert len(store.diagnostics(where={"module": "InputBatchNorm2d"})) == 3
    empty = store.diagnostics(where={"bn_scale_init": 0.9})
    assert empty.empty and list(empty.columns) == list(DIAGNOSTIC_COLUMNS)
    with pytest.raises(StoreError, match=r"unknown field 'gama'.*valid fields:.*layer"):
        store.diagnostics(where={"gama": 1})
    with pytest.raises(StoreError, match="no sweep named"):
        store.diagnostics(sweep="nope")


def test_events_check_their_values() -> None:
    spec = make_spec()
    with pytest.raises(StoreError, match="outlier_fraction"):
        diagnostics(spec, 1, outlier_fraction=3.0)
    with pytest.raises(StoreError, match="epoch"):
        diagnostics(spec, -1)
    with pytest.raises(StoreError, match="repeated"):
        DiagnosticsRecorded(spec.spec_hash, 1, 0, (layer("a", 0), layer("a", 1)))
    with pytest.raises(StoreError, match="depth"):
        DiagnosticsRecorded(spec.spec_hash, 1, 0, (layer("a", -1),))
    # The worker's own value type is accepted as it is.
    from bnsweep.workers.results import LayerDiagnostics

    event = DiagnosticsRecorded(spec.spec_hash, 1, 0, (LayerDiagnostics(**layer("x", 1)),))
    assert event.values[0].layer == "x" and event.values[0].gradient_factor == 1.2


def test_a_0001_database_is_upgraded_to_diagnostics_with_its_data(tmp_path: Path) -> None:
    from alembic import command

    url = f"sqlite:///{tmp_path / 'old.db'}"
    with Store.open(url, check_schema=False) as store:
        config = alembic_config(script_location())
        with store._engine.begin() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "0001")
            # A trial as bnsweep at revision 0001 wrote it (today's API writes later columns).
            spec = make_spec()
            now = datetime.now(timezone.utc)
            trials = sa.Table("trials", sa.MetaData(), autoload_with=conn)
            conn.execute(
                trials.insert().values(
                    spec_hash=spec.spec_hash, seed=1, status="pending", attempts=0,
                    created_at=now, updated_at=now, **{c: getattr(spec, c) for c in SPEC_COLUMNS},
                )
            )  # fmt: skip
    with pytest.raises(StoreError, match="run `bnsweep db upgrade"):
        Store.open(url)
    with Store.open(url, check_schema=False) as store:
        assert store.upgrade() == ("0001", head_revision())
    with Store.open(url) as store:
        store.apply([TrialStarted(spec.spec_hash, 1), diagnostics(spec, 0)])
        assert len(store.trials()) == 1 and len(store.diagnostics()) == len(LAYERS)


# -- the CLI ---------------------------------------------------------------------------------


def test_query_diagnostics_as_table_csv_and_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bnsweep.cli import main

    url = f"sqlite:///{tmp_path / 'cli.db'}"
    spec = make_spec()
    with Store.open(url) as store:
        store.register_sweep("demo", "x", [spec])
        store.apply([TrialStarted(spec.spec_hash, 1), diagnostics(spec, 0), diagnostics(spec, 1)])
    assert main(["query", "--db", url, "--diagnostics", "--sweep", "demo"]) == 0
    out = capsys.readouterr().out
    assert "6 diagnostic rows" in out and "body.stem.1" in out and "grad factor" in out
    args = ["query", "--db", url, "--diagnostics", "--where", "epoch=1", "--format"]
    assert main([*args, "csv"]) == 0
    frame = pd.read_csv(__import__("io").StringIO(capsys.readouterr().out))
    assert list(frame.columns) == list(DIAGNOSTIC_COLUMNS) and set(frame["epoch"]) == {1}
    assert main([*args, "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["layer"] for r in rows] == list(LAYERS)
    # A field only the other views know is refused before the database is opened.
    assert main(["query", "--db", url, "--diagnostics", "--where", "val_acc=1"]) == 2
    assert "unknown field 'val_acc'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:  # argparse: one view at a time
        main(["query", "--db", url, "--diagnostics", "--epochs"])
    assert exited.value.code == 2


# -- the driver's callback -------------------------------------------------------------------


def test_the_store_callback_writes_the_queued_diagnostics(tmp_path: Path) -> None:
    from bnsweep.callback import LaunchSummary, StoreCallback
    from bnsweep.progress import Progress

    spec = make_spec()
    url = f"sqlite:///{tmp_path / 'driver.db'}"
    with Store.open(url) as store:
        store.register_sweep("demo", "x", [spec])
        progress = Progress(1, 0, stream=open(tmp_path / "progress.log", "w"))  # noqa: SIM115
        payload = [
            {"epoch": e, "layers": [layer(n, d) for d, n in enumerate(LAYERS)]} for e in (0, 1)
        ]
        # What trials put on the launch's queue: the diagnostics travel beside Tune's results.
        queued = [[((spec.spec_hash, spec.seed), "diagnostics", payload)]]
        callback = StoreCallback(
            store, LaunchSummary(), progress, events=lambda: queued.pop() if queued else []
        )
        trial = SimpleNamespace(config={"cell": spec.to_dict()})
        callback.on_trial_result(0, [], trial, {"kind": "started", "host": "h", "device": "cpu"})
        callback.on_trial_result(1, [], trial, {"kind": "epoch", **epoch(1)})
        callback.drain()
        callback.flush()
        frame = store.diagnostics()
        progress.stream.close()
    assert sorted(set(frame["epoch"])) == [0, 1] and len(frame) == 2 * len(LAYERS)


# -- a real launch ----------------------------------------------------------------------------


@pytest.mark.timeout(600)
def test_a_launch_stores_the_diagnostics_the_sweep_asks_for(tmp_path: Path) -> None:
    """One cell on a local Ray: initialisation, every 2nd epoch and the last one are stored."""
    import io
    import logging

    import ray
    import yaml

    from bnsweep.driver import launch
    from bnsweep.sweep import parse_sweep_spec

    text = yaml.safe_dump(
        {
            "name": "diag",
            "defaults": {"dataset": "digits", "arch": "resnet8", "epochs": 3, "device": "cpu"},
            "grids": [{"bn_scale_init": [0.5]}],
            "base": False,
            "seeds": 1,
            "resources": {"cpus": 1},
            "retries": 0,
            "storage": str(tmp_path / "runs"),
            "diagnostics": {"every": 2, "probe_size": 64},
        }
    )
    url = f"sqlite:///{tmp_path / 'diag.db'}"
    ray.init(num_cpus=1, include_dashboard=False, logging_level=logging.WARNING)
    try:
        with Store.open(url) as store:
            summary = launch(parse_sweep_spec(text), store, text, progress_stream=io.StringIO())
            frame = store.diagnostics(sweep="diag")
    finally:
        ray.shutdown()
    assert summary.completed == 1
    assert sorted(set(frame["epoch"])) == [0, 2, 3]
    per_epoch = frame.groupby("epoch")["layer"].count()
    assert per_epoch.nunique() == 1 and per_epoch.iloc[0] == 10  # input BN + resnet8's nine
    at_init = frame[frame["epoch"] == 0]
    assert (at_init["gamma_drift"] == 0).all() and (at_init["beta_drift"] == 0).all()
    assert (frame.loc[frame["epoch"] == 3, "gamma_drift"] > 0).any()
