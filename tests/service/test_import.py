"""`bnsweep import FILE --sweep NAME` through the real `bnsweep.cli.main`, on SQLite and
PostgreSQL: the imported sweep reads on every surface as native runs of the same numbers do,
importing is idempotent, a refusal writes nothing, and no native trial is ever touched."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from bnsweep import cli
from bnsweep.store.api import Store
from bnsweep.store.columns import IMPORTED_HOST
from bnsweep.store.events import TrialFinished, TrialStarted
from bnsweep.store.writes import ImportedSweep
from bnsweep.workers import spec as spec_module
from bnsweep.workers.spec import TrialSpec
from tests.analysis.test_import_frame import MLFLOW_MAPPING, SCORES, mlflow_frame, wandb_csv
from tests.service.test_store import _empty_tables, fresh_database

Run = Callable[..., tuple[int, str, str]]
MAPS = [f"--map={field}={column}" for field, column in MLFLOW_MAPPING.items()]


@pytest.fixture(scope="module")
def pg_database(postgres_url: str) -> Iterator[str]:
    with fresh_database(postgres_url) as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'results.db'}"
    found = request.getfixturevalue("pg_database")
    Store.open(found).close()
    _empty_tables(found)
    return str(found)


@pytest.fixture
def bnsweep(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Run:
    monkeypatch.setenv("COLUMNS", "200")

    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            code = cli.main(list(argv))
        except SystemExit as exit_:
            code = int(exit_.code or 0)
        out, err = capsys.readouterr()
        return code, out, err

    return run


def native_sweep(url: str, name: str = "native") -> None:
    """bnsweep's own runs of SCORES, as a launch records them."""
    specs = [
        TrialSpec(formulation=f, bn_scale_init=g, bn_lr_divisor=c, seed=seed)
        for (f, g, c), values in SCORES.items()
        for seed in range(1, len(values) + 1)
    ]
    with Store.open(url) as store:
        store.register_sweep(name, f"name: {name}\n", specs)
        events = []
        for spec in specs:
            acc = SCORES[(spec.formulation, spec.bn_scale_init, spec.bn_lr_divisor)][spec.seed - 1]
            result = SimpleNamespace(
                status="completed",
                epochs_run=180,
                best_epoch=170,
                best_val_acc=acc / 100,
                test_acc=acc / 100,
                final_test_acc=acc / 100,
                seconds=1.0,
                images_per_sec=1.0,
                diverged_epoch=None,
                error=None,
            )
            key = (spec.spec_hash, spec.seed)
            events += [TrialStarted(*key, host="node-1", device="cpu", package_version="0")]
            events.append(TrialFinished.from_result(*key, result))
        store.apply(events)


def mlflow_csv(path: Path, frame: pd.DataFrame | None = None) -> str:
    (mlflow_frame() if frame is None else frame).to_csv(path, index=False)
    return str(path)


def trials_of(url: str, sweep: str | None = None) -> pd.DataFrame:
    with Store.open(url, read_only=True) as store:
        return store.trials(sweep=sweep)


def test_an_imported_sweep_reads_like_native_runs_everywhere(
    bnsweep: Run, url: str, tmp_path: Path
) -> None:
    native_sweep(url)
    code, out, err = bnsweep("import", mlflow_csv(tmp_path / "runs.csv"), "--sweep", "ext",
                             "--db", url, *MAPS)  # fmt: skip
    assert code == 0, err
    assert "15 runs of 17 rows" in out and "15 new, 0 unchanged, 0 replaced" in out
    assert "skipped 2 unfinished runs: 1 FAILED, 1 RUNNING" in out
    assert "epochs          = 180 (default: no column, no --set)" in out

    tables = {}
    for sweep in ("native", "ext"):
        code, tables[sweep], err = bnsweep(
            "tables", "--sweep", sweep, "--db", url, "--format", "md"
        )
        assert code == 0, err
    assert tables["ext"] == tables["native"] and "**" in tables["ext"] and "<u>" in tables["ext"]

    code, out, _ = bnsweep("status", "--sweep", "ext", "--db", url, "--format", "json")
    assert code == 0 and json.loads(out)[0]["completed"] == 15

    code, out, _ = bnsweep("query", "--db", url, "--where", f"host={IMPORTED_HOST}", "--format",
                           "csv")  # fmt: skip
    imported = pd.read_csv(io.StringIO(out))
    assert len(imported) == 15 and set(imported["device"]) == {"mlflow"}
    origins = [json.loads(text)["import"] for text in imported["runtime"]]
    assert {(o["file"], len(o["sha256"])) for o in origins} == {("runs.csv", 64)}
    assert sorted(o["row"] for o in origins) == list(range(2, 17))
    assert all(o["run"].isdigit() for o in origins)
    # Keys apart from the native cells of the same arms and seeds, current recipe, nothing shared.
    native = trials_of(url, "native")
    assert not set(imported["spec_hash"]) & set(native["spec_hash"])
    assert len(trials_of(url)) == 30

    code, _, err = bnsweep("report", "--db", url, "--out", str(tmp_path / "site"))
    assert code == 0, err
    page = (tmp_path / "site" / "sweeps" / "ext" / "tables.md").read_text()
    assert page == (tmp_path / "site" / "sweeps" / "native" / "tables.md").read_text()

    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from bnsweep.web.app import create_app

    with TestClient(create_app(url, hosts={"testserver"})) as client:
        answers = {s: client.get(f"/sweeps/{s}/tables.md") for s in ("ext", "native")}
        assert answers["ext"].status_code == 200 and answers["ext"].text == answers["native"].text
        assert client.get("/sweeps/ext").status_code == 200


def test_importing_twice_writes_nothing_new(bnsweep: Run, url: str, tmp_path: Path) -> None:
    path = mlflow_csv(tmp_path / "runs.csv")
    assert bnsweep("import", path, "--sweep", "ext", "--db", url, *MAPS)[0] == 0
    before = trials_of(url)
    code, out, _ = bnsweep("import", path, "--sweep", "ext", "--db", url, *MAPS)
    assert code == 0 and "0 new, 15 unchanged, 0 replaced" in out
    pd.testing.assert_frame_equal(trials_of(url), before)


def test_a_newer_bnsweep_recipe_never_hides_imported_runs(
    bnsweep: Run, url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bnsweep's training recipe is about bnsweep's own training code: after an upgrade that
    bumps it, the native cells are of an older recipe, the imported ones still count, and a
    second import of the same file still writes nothing."""
    native_sweep(url)
    path = mlflow_csv(tmp_path / "runs.csv")
    assert bnsweep("import", path, "--sweep", "ext", "--db", url, *MAPS)[0] == 0
    code, before, _ = bnsweep("tables", "--sweep", "ext", "--db", url, "--format", "md")
    assert code == 0

    monkeypatch.setattr(spec_module, "RECIPE", spec_module.RECIPE + 1)
    code, after, err = bnsweep("tables", "--sweep", "ext", "--db", url, "--format", "md")
    assert code == 0 and after == before, err
    code, out, _ = bnsweep("status", "--sweep", "ext", "--db", url, "--format", "json")
    assert code == 0 and json.loads(out)[0]["completed"] == 15
    code, out, err = bnsweep("status", "--sweep", "native", "--db", url, "--format", "json")
    assert code == 0 and json.loads(out)[0]["completed"] == 0, err
    code, out, _ = bnsweep("import", path, "--sweep", "ext", "--db", url, *MAPS)
    assert code == 0 and "0 new, 15 unchanged, 0 replaced" in out
    assert len(trials_of(url)) == 30


def test_a_changed_result_is_refused_unless_replace(bnsweep: Run, url: str, tmp_path: Path) -> None:
    native_sweep(url)
    assert bnsweep("import", mlflow_csv(tmp_path / "a.csv"), "--sweep", "ext", "--db", url,
                   *MAPS)[0] == 0  # fmt: skip
    changed = mlflow_frame()
    changed.loc[4, "metrics.test_accuracy"] = 0.95
    path = mlflow_csv(tmp_path / "b.csv", changed)
    before = trials_of(url)
    code, out, err = bnsweep("import", path, "--sweep", "ext", "--db", url, *MAPS)
    assert code == 2 and out == ""
    assert err.startswith("bnsweep: error: row 6: seed 5 of arm BASE") and err.count("\n") == 1
    assert "--replace" in err
    pd.testing.assert_frame_equal(trials_of(url), before)

    code, out, err = bnsweep("import", path, "--sweep", "ext", "--db", url, *MAPS, "--replace")
    assert code == 0 and "0 new, 14 unchanged, 1 replaced" in out, err
    after = trials_of(url)
    assert after.loc[after["test_acc"] == 0.95, "host"].tolist() == [IMPORTED_HOST]
    native_columns = [c for c in before.columns if c != "updated_at"]
    pd.testing.assert_frame_equal(
        after[after["host"] != IMPORTED_HOST][native_columns].reset_index(drop=True),
        before[before["host"] != IMPORTED_HOST][native_columns].reset_index(drop=True),
    )


def test_a_launched_sweep_is_never_imported_into(bnsweep: Run, url: str, tmp_path: Path) -> None:
    native_sweep(url)
    before = trials_of(url)
    code, _, err = bnsweep("import", mlflow_csv(tmp_path / "a.csv"), "--sweep", "native",
                           "--db", url, *MAPS)  # fmt: skip
    assert code == 2 and "registered by `bnsweep launch`" in err
    pd.testing.assert_frame_equal(trials_of(url), before)


def test_a_launch_never_replaces_an_imported_sweep(bnsweep: Run, url: str, tmp_path: Path) -> None:
    """The other direction: a spec named like an imported sweep is refused before the launch
    writes or starts anything, and the import's record of its files stays as it was."""
    assert bnsweep("import", mlflow_csv(tmp_path / "a.csv"), "--sweep", "ext", "--db", url,
                   *MAPS)[0] == 0  # fmt: skip
    with Store.open(url, read_only=True) as store:
        record = store.get_sweep("ext")
    before = trials_of(url)
    spec = tmp_path / "ext.yaml"
    spec.write_text(
        "name: ext\ndefaults: {dataset: digits, arch: resnet8, epochs: 1, device: cpu}\n"
        "grids: [{bn_scale_init: [0.1]}]\nbase: true\nseeds: 2\n"
    )
    code, _, err = bnsweep("launch", str(spec), "--db", url)
    assert code == 2 and "holds runs imported by `bnsweep import`" in err
    assert len(err.strip().splitlines()) == 1
    with Store.open(url) as store:
        assert store.get_sweep("ext") == record
        with pytest.raises(ImportedSweep):
            store.register_sweep("ext", "name: ext\n", [TrialSpec(seed=1)])
    pd.testing.assert_frame_equal(trials_of(url), before)


def test_a_wandb_export_imports(bnsweep: Run, url: str, tmp_path: Path) -> None:
    path = wandb_csv(tmp_path / "wandb.csv")
    code, out, err = bnsweep(
        "import", str(path), "--sweep", "w", "--db", url, "--map", "test_acc=test/acc",
        "--set", "dataset=imagenet-subset",
    )  # fmt: skip
    assert code == 0, err
    assert "(wandb," in out and "read as percents" in out and "1 crashed" in out
    trials = trials_of(url, "w")
    assert set(trials["dataset"]) == {"imagenet-subset"} and trials["test_acc"].max() < 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.assign(**{"params.seed": "1"}), "twice in arm"),
        (lambda f: f.drop(index=[6]), "lacks seed(s) 2 that BASE ran"),
        (lambda f: f.assign(**{"params.gamma": "x"}), "'x' is not a number"),
        (lambda f: f.drop(columns=["params.seed"]), "no column for seed"),
    ],
)
def test_refusals_exit_2_in_one_line_and_write_nothing(
    bnsweep: Run, tmp_path: Path, change: Callable[[pd.DataFrame], pd.DataFrame], message: str
) -> None:
    url = f"sqlite:///{tmp_path / 'results.db'}"
    path = mlflow_csv(tmp_path / "runs.csv", change(mlflow_frame()))
    code, out, err = bnsweep("import", path, "--sweep", "ext", "--db", url, *MAPS)
    assert (code, out) == (2, "") and message in err and err.count("\n") == 1
    assert not (tmp_path / "results.db").exists()


def test_a_file_that_is_not_csv_nor_parquet_is_refused(bnsweep: Run, tmp_path: Path) -> None:
    path = tmp_path / "runs.bin"
    path.write_bytes(b"\x00\x01\x02")
    code, _, err = bnsweep("import", str(path), "--sweep", "ext", "--db",
                           f"sqlite:///{tmp_path / 'r.db'}")  # fmt: skip
    assert code == 2 and "neither CSV nor Parquet" in err and err.count("\n") == 1


def test_a_dry_run_writes_nothing(bnsweep: Run, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'results.db'}"
    path = mlflow_csv(tmp_path / "runs.csv")
    code, out, err = bnsweep("import", path, "--sweep", "ext", "--db", url, *MAPS, "--dry-run")
    assert code == 0 and out.startswith("would import runs.csv") and "15 new" in out, err
    assert not (tmp_path / "results.db").exists()
    assert bnsweep("import", path, "--sweep", "ext", "--db", url, *MAPS)[0] == 0
    size = (tmp_path / "results.db").read_bytes()
    code, out, _ = bnsweep("import", path, "--sweep", "ext", "--db", url, *MAPS, "--dry-run")
    assert code == 0 and "0 new, 15 unchanged" in out
    assert (tmp_path / "results.db").read_bytes() == size
