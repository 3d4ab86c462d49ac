"""Malformed sweep specs and command lines (issue 3, reliability point 5; issue 2's bad inputs of
`bnsweep train`): each is one line on stderr, `bnsweep: error: ...`, exit code 2, and the
results database is left exactly as it was. Also: which store a launch uses.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from bnsweep.cli import main
from bnsweep.store.api import Store
from bnsweep.sweep import expand, parse_sweep_spec
from tests.workers import fixtures

REPO = Path(__file__).resolve().parents[2]

GOOD: dict[str, Any] = {
    "name": "good",
    "defaults": {"dataset": "digits", "arch": "resnet8", "epochs": 1, "device": "cpu"},
    "grids": [{"bn_scale_init": [0.5], "bn_lr_divisor": [100]}],
    "seeds": 2,
}


def spec_with(**changes: Any) -> dict[str, Any]:
    """GOOD with top-level keys replaced (a value of None removes the key)."""
    spec = {**GOOD, **changes}
    return {k: v for k, v in spec.items() if v is not None}


def with_defaults(**changes: Any) -> dict[str, Any]:
    return spec_with(defaults={**GOOD["defaults"], **changes})


#: name → (the spec file's text, what the error line must say)
BAD_SPECS: dict[str, tuple[str, str]] = {
    "not yaml": ("name: [unclosed\n", "is not valid YAML"),
    "a list": (yaml.safe_dump([GOOD]), "a sweep spec is a mapping"),
    "unknown key": (yaml.safe_dump(spec_with(epochz=3)), "epochz: unknown key; allowed: name"),
    "no name": (yaml.safe_dump(spec_with(name=None)), "name: Field required"),
    "bad name": (yaml.safe_dump(spec_with(name="my sweep")), "name: use letters, digits"),
    "no grids": (yaml.safe_dump(spec_with(grids=[])), "grids:"),
    "empty axis": (yaml.safe_dump(spec_with(grids=[{"lr": []}])), "grids[0].lr is an empty list"),
    "unknown field in defaults": (
        yaml.safe_dump(with_defaults(optimizer="adam")),
        "unknown trial field(s) optimizer in defaults",
    ),
    "unknown field in a grid": (
        yaml.safe_dump(spec_with(grids=[{"gamma": [0.1]}])),
        "unknown trial field(s) gamma in grids[0]",
    ),
    "seed in a grid": (
        yaml.safe_dump(spec_with(grids=[{"seed": [1, 2]}])),
        "unknown trial field(s) seed in grids[0]",
    ),
    "gamma 0": (
        yaml.safe_dump(spec_with(grids=[{"bn_scale_init": [0.1, 0.0]}])),
        "bn_scale_init (γ): must be a finite number > 0",
    ),
    "c below 1": (
        yaml.safe_dump(spec_with(grids=[{"bn_lr_divisor": [0.5]}])),
        "bn_lr_divisor (c): must be >= 1",
    ),
    "unknown dataset": (yaml.safe_dump(with_defaults(dataset="imagenet")), "dataset: "),
    "unknown arch": (yaml.safe_dump(with_defaults(arch="vgg16")), "arch: "),
    "epochs 0": (yaml.safe_dump(with_defaults(epochs=0)), "epochs: must be >= 1"),
    "lr a word": (yaml.safe_dump(with_defaults(lr="fast")), "lr: "),
    "seeds 0": (yaml.safe_dump(spec_with(seeds=0)), "seeds: a count must be >= 1"),
    "repeated seeds": (yaml.safe_dump(spec_with(seeds=[1, 2, 2])), "seeds: an explicit list"),
    "gpus 1.5": (
        yaml.safe_dump(spec_with(resources={"gpus": 1.5})),
        "resources.gpus: must be a fraction in (0, 1] or a whole number",
    ),
    "cpus 0": (yaml.safe_dump(spec_with(resources={"cpus": 0})), "resources.cpus: "),
    "unknown resource": (
        yaml.safe_dump(spec_with(resources={"memory": "8G"})),
        "resources.memory: unknown key; allowed: cpus, gpus",
    ),
    "cap 0": (yaml.safe_dump(spec_with(max_concurrent=0)), "max_concurrent: "),
    "retries -1": (yaml.safe_dump(spec_with(retries=-1)), "retries: "),
}


@pytest.fixture
def db(tmp_path: Path) -> tuple[str, Callable[[], str]]:
    """A store holding one registered sweep, and a digest of its file to compare afterwards."""
    path = tmp_path / "store.db"
    with Store.open(f"sqlite:///{path}") as store:
        store.register_sweep(
            "good", yaml.safe_dump(GOOD), expand(parse_sweep_spec(yaml.safe_dump(GOOD)))
        )

    def digest() -> str:
        # The file and any WAL content; not the -shm index, which a read-only connection to
        # a WAL file creates (SQLite's shared memory, no data).
        return "".join(
            hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(tmp_path.glob("store.db*"))
            if p.stat().st_size and not p.name.endswith("-shm")
        )

    return f"sqlite:///{path}", digest


def one_error_line(capsys: pytest.CaptureFixture[str], *parts: str) -> str:
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("bnsweep: error: "), err
    for part in parts:
        assert part in lines[0], f"{part!r} not in {lines[0]!r}"
    assert out == ""
    return lines[0]


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_a_malformed_spec_is_one_line_and_leaves_the_store_alone(
    case: str,
    tmp_path: Path,
    db: tuple[str, Callable[[], str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    text, expected = BAD_SPECS[case]
    url, digest = db
    before = digest()
    spec = tmp_path / "bad.yaml"
    spec.write_text(text, encoding="utf-8")
    for argv in (
        ["launch", str(spec), "--db", url],
        ["launch", str(spec), "--db", url, "--dry-run"],
    ):
        assert main(argv) == 2
        one_error_line(capsys, str(spec), expected)
    assert digest() == before


def test_a_missing_spec_file_is_named(
    tmp_path: Path, db: tuple[str, Callable[[], str]], capsys: pytest.CaptureFixture[str]
) -> None:
    url, digest = db
    before = digest()
    assert main(["launch", str(tmp_path / "nope.yaml"), "--db", url]) == 2
    one_error_line(capsys, "sweep spec not found", "nope.yaml")
    assert digest() == before


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mysql://root@localhost/db", "unsupported database URL"),
        ("postgresql+asyncpg://u@h/db", "unsupported database URL"),
        ("not a url", "bad database URL"),
    ],
)
def test_a_bad_database_url_is_one_line(
    url: str,
    expected: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("BNSWEEP_DB", raising=False)
    spec = tmp_path / "good.yaml"
    spec.write_text(yaml.safe_dump(GOOD), encoding="utf-8")
    in_spec = tmp_path / "in-spec.yaml"  # the same URL as the spec's `database`
    in_spec.write_text(yaml.safe_dump(spec_with(database=url)), encoding="utf-8")
    for argv in (
        ["launch", str(spec), "--db", url],
        ["launch", str(spec), "--db", url, "--dry-run"],
        ["launch", str(in_spec)],
        ["launch", str(in_spec), "--dry-run"],
    ):
        assert main(argv) == 2
        one_error_line(capsys, expected)
    assert sorted(tmp_path.iterdir()) == [spec, in_spec]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["query", "--where", "lr"], "FIELD=VALUE"),
        (["query", "--where", "optimizer=adam"], "optimizer"),
        (["query", "--sweep", "nosuch"], "no sweep named 'nosuch'"),
        (["status", "--sweep", "nosuch"], "no sweep named 'nosuch'"),
    ],
)
def test_bad_queries_are_one_line_and_leave_the_store_alone(
    argv: list[str],
    expected: str,
    db: tuple[str, Callable[[], str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    url, digest = db
    before = digest()
    # A typo is a usage error (2); a sweep the store does not hold is a runtime failure (1).
    assert main([*argv, "--db", url]) == (1 if "no sweep named" in expected else 2)
    one_error_line(capsys, expected)
    assert digest() == before


def test_a_local_ray_of_no_cpus_is_refused(
    tmp_path: Path, db: tuple[str, Callable[[], str]], capsys: pytest.CaptureFixture[str]
) -> None:
    url, digest = db
    before = digest()
    spec = tmp_path / "good.yaml"
    spec.write_text(yaml.safe_dump(GOOD), encoding="utf-8")
    assert main(["launch", str(spec), "--db", url, "--num-cpus", "0"]) == 2
    one_error_line(capsys, "--num-cpus: must be >= 1, got 0")
    assert digest() == before


def test_a_ray_client_address_is_refused_before_anything_runs(
    tmp_path: Path, db: tuple[str, Callable[[], str]], capsys: pytest.CaptureFixture[str]
) -> None:
    url, _ = db
    spec = tmp_path / "good.yaml"
    spec.write_text(yaml.safe_dump(GOOD), encoding="utf-8")
    assert main(["launch", str(spec), "--db", url, "--address", "ray://head:10001"]) == 2
    one_error_line(capsys, "ray://head:10001", "ray job submit")
    assert not (tmp_path / "runs").exists()


def test_an_argparse_mistake_exits_2_naming_the_argument(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # argparse's own format: usage lines, then one error line.
    with pytest.raises(SystemExit) as exited:
        main(["launch", "spec.yaml", "--num-cpus", "two"])
    assert exited.value.code == 2
    assert "argument --num-cpus: invalid int value: 'two'" in capsys.readouterr().err


# -- bnsweep train (issue 2's bad inputs) -------------------------------------------------------
BAD_TRAINING: dict[str, tuple[list[str], str]] = {
    "unknown dataset": (["--dataset", "imagenet"], "dataset: "),
    "unknown arch": (["--arch", "vgg16"], "arch: "),
    "unknown formulation": (["--formulation", "layernorm"], "formulation: "),
    "unknown input norm": (["--input-norm", "zca"], "input_norm: "),
    "gamma 0": (["--gamma", "0"], "bn_scale_init (γ): must be a finite number > 0"),
    "gamma negative": (["--gamma", "-0.5"], "bn_scale_init (γ): must be a finite number > 0"),
    "c below 1": (["--c", "0.5"], "bn_lr_divisor (c): must be >= 1"),
    "alpha 0": (["--alpha", "0"], "lr (α): must be > 0"),
    "epochs 0": (["--epochs", "0"], "epochs: must be >= 1"),
    "batch 0": (["--batch-size", "0"], "batch_size: must be >= 1"),
    "epochs a word": (["--epochs", "many"], "epochs: expected an integer"),
    "eval batch 0": (["--eval-batch-size", "0"], "eval_batch_size: must be >= 1"),
    "unknown compile mode": (["--compile-mode", "fast"], "compile_mode: unknown value 'fast'"),
    "no data root": (["--dataset", "cifar10"], "data_root is not set"),
    "too small to split": (
        ["--dataset", "digits", "--val-fraction", "0.001"],
        "too small for a stratified split",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_TRAINING))
def test_bad_training_input_is_one_line(case: str, capsys: pytest.CaptureFixture[str]) -> None:
    args, expected = BAD_TRAINING[case]
    assert main(["train", "--device", "cpu", "--epochs", "1", *args]) == 2
    one_error_line(capsys, expected)


def test_runtime_fields_are_train_flags(capsys: pytest.CaptureFixture[str]) -> None:
    # true/false fields are flags (--cudnn-benchmark, --no-compile), numbers are parsed.
    args = ["--dataset", "digits", "--arch", "resnet8", "--batch-size", "64"]
    flags = ["--cudnn-benchmark", "--no-compile", "--eval-batch-size", "7", "--precision", "tf32"]
    assert main(["train", "--device", "cpu", "--epochs", "1", *args, *flags]) == 0
    assert capsys.readouterr().out.startswith("completed: spec ")


def test_missing_misplaced_and_corrupt_data_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fixtures.bypass_cifar_md5(monkeypatch)  # fabricated CIFAR files cannot match the MD5s
    train = ["train", "--device", "cpu", "--epochs", "1", "--arch", "resnet8"]

    assert main([*train, "--dataset", "cifar10", "--data-root", str(tmp_path / "nowhere")]) == 2
    one_error_line(capsys, "does not exist", "cifar-10-batches-py")

    (tmp_path / "empty").mkdir()
    assert main([*train, "--dataset", "cub200", "--data-root", str(tmp_path / "empty")]) == 2
    one_error_line(capsys, "not in the expected layout")

    cifar = fixtures.write_cifar10(tmp_path / "cifar")
    fixtures.truncate(cifar.folder / "data_batch_3")
    assert main([*train, "--dataset", "cifar10", "--data-root", str(cifar.data_root)]) == 2
    one_error_line(capsys, "data_batch_3", "unreadable pickle")

    cub = fixtures.write_cub200(tmp_path / "cub")
    labels = cub.folder / "image_class_labels.txt"
    labels.write_text(labels.read_text().replace("\n", "\nnot-an-id here\n", 1))
    assert main([*train, "--dataset", "cub200", "--data-root", str(cub.data_root)]) == 2
    one_error_line(capsys, "image_class_labels.txt")


# -- the real processes -------------------------------------------------------------------------
def bnsweep(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).with_name("bnsweep")), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={k: v for k, v in os.environ.items() if k != "BNSWEEP_DB"},
    )


def test_the_real_command_exits_2_with_one_line(
    tmp_path: Path, db: tuple[str, Callable[[], str]]
) -> None:
    url, digest = db
    before = digest()
    spec = tmp_path / "bad.yaml"
    spec.write_text(BAD_SPECS["unknown key"][0], encoding="utf-8")
    calls = [
        ["launch", str(spec), "--db", url],
        ["train", "--gamma", "0", "--epochs", "1"],
        ["query", "--where", "lr", "--db", url],
    ]
    for argv in calls:
        done = bnsweep(*argv, cwd=tmp_path)
        assert done.returncode == 2, (argv, done.stderr)
        lines = done.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("bnsweep: error: "), (argv, done.stderr)
        assert done.stdout == ""
    assert digest() == before
    # Nothing else was created: no default bnsweep.db, no runs/ folder.
    assert {p.name for p in tmp_path.iterdir()} <= {
        "bad.yaml",
        "store.db",
        "store.db-wal",
        "store.db-shm",
    }


# -- which store a launch uses ------------------------------------------------------------------
def test_the_store_url_comes_from_db_then_env_then_spec_then_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BNSWEEP_DB", raising=False)
    spec = tmp_path / "s.yaml"

    def store_line(*extra: str, database: str | None = None) -> str:
        spec.write_text(yaml.safe_dump(spec_with(database=database)), encoding="utf-8")
        assert main(["launch", str(spec), "--dry-run", *extra]) == 0
        return capsys.readouterr().out.strip().splitlines()[-1]

    assert store_line() == "store: sqlite:///bnsweep.db (none yet; a launch creates it)"
    assert store_line(database="sqlite:///spec.db").startswith("store: sqlite:///spec.db ")
    monkeypatch.setenv("BNSWEEP_DB", "sqlite:///env.db")
    assert store_line(database="sqlite:///spec.db").startswith("store: sqlite:///env.db ")
    line = store_line("--db", "sqlite:///flag.db", database="sqlite:///spec.db")
    assert line.startswith("store: sqlite:///flag.db ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]  # a dry run creates nothing


#: What `launch --dry-run` must not import to print its plan in under 2 s (issue 13): torch and
#: torchvision (~4 s here), Ray (~1.3 s), and the analysis stack (pandas' siblings scipy and
#: matplotlib). bench/cli_latency.py times the whole command.
HEAVY_MODULES = ("torch", "torchvision", "ray", "scipy", "matplotlib")


@pytest.mark.parametrize("store", ["none yet", "existing"])
def test_a_dry_run_imports_neither_torch_nor_ray(tmp_path: Path, store: str) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    if store == "existing":
        Store.open(url).close()
    probe = (
        "import sys\n"
        "from bnsweep.cli import main\n"
        f"code = main(['launch', {str(REPO / 'configs/paper/table1.yaml')!r}, '--db', {url!r},"
        " '--dry-run'])\n"
        f"heavy = sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules)\n"
        "print('heavy:', heavy)\n"
        "sys.exit(code)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "sweep paper-table1:" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "heavy: []"


# -- for people and scripts (issue 13) ------------------------------------------------------------
def test_train_compile_is_a_flag() -> None:
    from bnsweep.cli import build_parser

    parse = build_parser().parse_args
    assert parse(["train", "--compile"]).compile is True
    assert parse(["train", "--no-compile"]).compile is False
    assert parse(["train"]).compile is None  # unset: the TrialSpec default


def test_train_help_lists_the_registries_allowed_values() -> None:
    from bnsweep.commands.train import ALLOWED
    from bnsweep.workers.data import DATASETS
    from bnsweep.workers.models import MODELS
    from bnsweep.workers.norm import FORMULATIONS, INPUT_NORMS

    registries = {
        "dataset": DATASETS,
        "arch": MODELS,
        "formulation": FORMULATIONS,
        "input_norm": INPUT_NORMS,
    }
    for name, registry in registries.items():
        assert ALLOWED[name] == tuple(registry), name
    done = bnsweep("train", "--help", cwd=Path.cwd())
    help_text = " ".join(done.stdout.split())
    assert "--compile, --no-compile" in help_text or "--compile | --no-compile" in help_text
    assert "resnet8, resnet18, resnet34" in help_text and "one of fp32, tf32, bf16" in help_text


def test_train_off_a_terminal_prints_one_line_per_epoch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["train", "--dataset", "digits", "--arch", "resnet8", "--epochs", "2", "--device", "cpu"]
    assert main([*argv, "--no-compile", "--checkpoint-dir", str(tmp_path / "ck")]) == 0
    _, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in lines] == ["1/2", "2/2"]
    assert all("val " in line and "test " in line for line in lines)
    assert any((tmp_path / "ck").iterdir())


def test_shared_options_after_the_subcommand(
    db: tuple[str, Callable[[], str]], capsys: pytest.CaptureFixture[str]
) -> None:
    url, _ = db
    assert main(["status", "--db", url, "-v"]) == 0
    assert main(["-v", "status", "--db", url]) == 0
    assert main(["db", "upgrade", "--db", url, "--verbose"]) == 0
    assert "already at revision" in capsys.readouterr().out
