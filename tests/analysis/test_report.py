"""`bnsweep tables` and `bnsweep plots` end to end on a real SQLite store, through `bnsweep.cli`."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from bnsweep import cli
from bnsweep.store.api import Store
from bnsweep.store.events import EpochRecorded, TrialFinished, TrialStarted
from bnsweep.sweep import expand, parse_sweep_spec
from bnsweep.sweep_tables import render_sweep_tables, tables_text
from bnsweep.workers.errors import SpecError

Run = Callable[..., tuple[int, str, str]]

SPEC = textwrap.dedent(
    """\
    name: small
    defaults: {dataset: digits, arch: resnet8, epochs: 2, batch_size: 64, bn_lr_divisor: 100}
    grids:
      - {bn_scale_init: [0.1, 0.5], lr: [0.1, 0.01]}
    base: true
    seeds: 4
    report: {layout: gamma, title: Digits table}
    """
)
# A second sweep that shares the γ = 0.1 and BASE cells and was never given its own results.
OTHER = textwrap.dedent(
    """\
    name: other
    defaults: {dataset: digits, arch: resnet8, epochs: 2, batch_size: 64, bn_lr_divisor: 100}
    grids:
      - {bn_scale_init: [0.1], lr: [0.1, 0.01]}
    base: true
    seeds: 4
    """
)


def _score(spec) -> float:
    # γ = 0.1 gains 1.5 points at every seed (± noise), γ = 0.5 gains nothing.
    noise = np.random.default_rng(spec.seed).normal(0, 0.3)
    gain = 1.5 if spec.bn_scale_init == 0.1 else 0.0
    return (88.0 + spec.seed * 0.4 + gain + noise * (spec.bn_scale_init != 1.0)) / 100


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('report') / 'results.db'}"
    spec = parse_sweep_spec(SPEC)
    cells = expand(spec)
    with Store.open(url) as store:
        store.register_sweep("small", SPEC, cells)
        store.register_sweep("other", OTHER, expand(parse_sweep_spec(OTHER)))
        # Registered, never run: every trial pending.
        empty = OTHER.replace("name: other", "name: empty").replace("[0.1]", "[0.05]")
        empty = empty.replace("base: true", "base: false")
        store.register_sweep("empty", empty, expand(parse_sweep_spec(empty)))
        events = []
        for cell in cells:
            acc = _score(cell)
            events.append(TrialStarted(cell.spec_hash, cell.seed))
            for e in (1, 2):
                metrics = dict(
                    epoch=e,
                    train_loss=1 / e,
                    val_loss=1 / e,
                    val_acc=acc - 0.02 / e,
                    test_acc=acc,
                    lr=cell.lr,
                    seconds=1.0,
                )
                events.append(EpochRecorded(cell.spec_hash, cell.seed, metrics))
            if (cell.bn_scale_init, cell.lr, cell.seed) == (0.5, 0.01, 4):
                events.append(
                    TrialFinished(cell.spec_hash, cell.seed, "diverged", diverged_epoch=2)
                )
            elif not (cell.bn_scale_init == 1.0 and cell.lr == 0.1 and cell.seed == 1):
                events.append(
                    TrialFinished(
                        cell.spec_hash,
                        cell.seed,
                        "completed",
                        epochs_run=2,
                        best_epoch=2,
                        best_val_acc=acc,
                        test_acc=acc,
                        final_test_acc=acc,
                        seconds=2.0,
                    )
                )
        store.apply(events)
    return url


@pytest.fixture
def bnsweep(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Run:
    """Run `bnsweep ARGS...` in-process with only this command module: (code, stdout, stderr)."""
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("bnsweep.commands.report",))
    monkeypatch.delenv("BNSWEEP_DB", raising=False)

    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            code = cli.main(list(argv))
        except SystemExit as exit_:
            code = int(exit_.code or 0)
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_tables_of_a_sweep_in_markdown(bnsweep: Run, db: str) -> None:
    code, out, err = bnsweep("tables", "--sweep", "small", "--db", db, "--format", "md")
    assert code == 0, err
    assert out.startswith("### Digits table")  # the stored spec's report: section
    lines = {
        line.split(" | ")[0].strip("| "): line for line in out.splitlines() if line.startswith("| ")
    }
    assert lines["0.10"].count("**") == 4  # significant at both α
    assert "**" not in lines["0.50"] and "**" not in lines["BASE"]
    assert "<u>" in lines["0.10"]
    assert "BASE not completed (running)" not in out  # reasons live in the CSV
    assert "Diverged runs" in out and "seed 4" in out


def test_exclude_diverged_is_said_under_the_table(bnsweep: Run, db: str) -> None:
    code, out, err = bnsweep(
        "tables", "--sweep", "small", "--db", db, "--format", "md", "--exclude-diverged"
    )
    assert code == 0, err
    assert "Diverged runs left out of means and pairs (diverged runs excluded)" in out
    assert "seed 4" in out


def test_versus_and_pairwise_from_the_command_line(bnsweep: Run, db: str) -> None:
    code, out, err = bnsweep(
        "tables", "--sweep", "small", "--db", db, "--format", "md", "--versus", "standard γ=0.5"
    )
    assert code == 0, err
    assert "Bold: significantly better than standard γ=0.5 c=100" in out
    assert "the reference arm (standard γ=0.5 c=100)" in out
    code, out, err = bnsweep(
        "tables", "--sweep", "small", "--db", db, "--format", "md", "--pairwise"
    )
    assert code == 0, err
    assert (
        out.count("#### Pairwise: α = ") == 2
        and "| γ (row) vs column | 0.10 | 0.50 | BASE |" in out
    )


def test_tables_csv_to_a_folder(bnsweep: Run, db: str, tmp_path: Path) -> None:
    code, out, _ = bnsweep(
        "tables",
        "--sweep",
        "small",
        "--db",
        db,
        "--format",
        "csv",
        "--out",
        str(tmp_path),
        "--correction",
        "holm",
        "--test",
        "wilcoxon",
    )
    assert code == 0 and out.strip() == str(tmp_path / "small.csv")
    text = (tmp_path / "small.csv").read_text()
    assert "wilcoxon" in text and "1: BASE not completed (running)" in text


def test_spec_file_shows_its_cells_whichever_sweep_ran_them(
    bnsweep: Run, db: str, tmp_path: Path
) -> None:
    spec = tmp_path / "other.yaml"
    spec.write_text(OTHER.replace("name: other", "name: never-launched"))
    code, out, err = bnsweep("tables", "--spec", str(spec), "--db", db, "--format", "md")
    assert code == 0, err
    assert "| 0.10 |" in out and "| 0.50 |" not in out
    code, shared, _ = bnsweep("tables", "--sweep", "other", "--db", db, "--format", "md")
    assert code == 0 and shared.split("\n", 1)[1] == out.split("\n", 1)[1]


def test_terminal_is_the_default_format(bnsweep: Run, db: str) -> None:
    code, out, _ = bnsweep("tables", "--sweep", "small", "--db", db)
    assert code == 0 and "┃ γ" in out and "\x1b[" not in out  # no ANSI codes when not a TTY


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--sweep", "nope"], "no sweep named 'nope'"),
        (["--sweep", "empty"], "no completed trial"),
        (["--sweep", "small", "--level", "2"], r"--level: must be a number in \(0, 1\)"),
        (
            ["--sweep", "small", "--versus", "rbn"],
            r"versus: no arm in these results matches 'rbn'; allowed: standard γ=0.1 c=100, "
            r"standard γ=0.5 c=100, BASE$",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(bnsweep: Run, db: str, argv, message) -> None:
    code, out, err = bnsweep("tables", *argv, "--db", db)
    # An unknown sweep is a runtime failure (1); a bad option a usage error (2).
    assert code == (1 if "nope" in argv else 2) and out == ""
    assert err.startswith("bnsweep: error: ") and len(err.strip().splitlines()) == 1
    import re

    assert re.search(message, err)


def test_render_sweep_tables_for_launch(db: str, tmp_path: Path) -> None:
    text = render_sweep_tables(db, "small", fmt="latex", out=tmp_path, alpha=0.01)
    assert r"\textbf{" in text and (tmp_path / "small.tex").read_text() == text
    assert "p $\\leq$ 0.01" in text
    # At the end of a sweep in which nothing completed, launch gets a line, not an exception.
    assert render_sweep_tables(db, "empty").startswith(
        "sweep empty: no tables yet (no completed trial"
    )
    from bnsweep.analysis.pairing import AnalysisError

    with pytest.raises(AnalysisError):
        render_sweep_tables(db, "empty", empty_ok=False)


def test_the_launch_s_tables_from_its_spec_are_those_of_the_stored_spec(db: str) -> None:
    """What `bnsweep launch` prints from the spec it holds (`tables_text`) is what the stored
    spec's layout gives (`render_sweep_tables`), character for character."""
    from bnsweep.store.results import load_trials

    report = parse_sweep_spec(SPEC).report
    for fmt in ("term", "md"):
        held = tables_text(load_trials(db, "small"), report, "small", fmt=fmt)
        assert held == render_sweep_tables(db, "small", fmt=fmt)
    with pytest.raises(SpecError, match="format"):
        tables_text(load_trials(db, "small"), report, "small", fmt="docx")


def test_plots_write_png_and_pdf(bnsweep: Run, db: str, tmp_path: Path) -> None:
    code, out, err = bnsweep("plots", "--sweep", "small", "--db", db, "--out", str(tmp_path))
    assert code == 0, err
    paths = [Path(p) for p in out.split()]
    assert {p.name for p in paths} == {
        "accuracy_vs_gamma.png",
        "accuracy_vs_gamma.pdf",
        "validation_curves.png",
        "validation_curves.pdf",
    }
    assert all(p.stat().st_size > 1000 for p in paths)
    assert paths[0].read_bytes()[:4] == b"\x89PNG" and paths[1].read_bytes()[:4] == b"%PDF"


def test_several_formats_at_once_and_the_colour_switch(
    bnsweep: Run, db: str, tmp_path: Path
) -> None:
    code, out, err = bnsweep(
        "tables", "--sweep", "small", "--db", db, "--format", "md,latex,latex-fragment",
        "--out", str(tmp_path),
    )  # fmt: skip
    assert code == 0, err
    names = sorted(Path(line).name for line in out.split())
    assert names == ["small.fragment.tex", "small.md", "small.tex"]
    code, plain, _ = bnsweep(
        "tables", "--sweep", "small", "--db", db, "--color", "never", "--pairwise"
    )
    code2, styled, _ = bnsweep("tables", "--sweep", "small", "--db", db, "--color", "always")
    assert code == code2 == 0 and "\x1b[" in styled and "\x1b[" not in plain
    # Without colour the marks and their legend stay, the pairwise matrices' included.
    words = " ".join(plain.split())  # the legend wraps at the terminal's width
    assert "* marks bold: significantly better than BASE" in words
    assert "in the pairwise matrices * marks bold" in words
    code, md_and_csv, _ = bnsweep("tables", "--sweep", "small", "--db", db, "--format", "md,csv")
    assert code == 0 and md_and_csv.count("| ") > 3 and "table,block,row" in md_and_csv


def test_table_is_a_name_of_the_terminal_format(bnsweep: Run, db: str) -> None:
    default = bnsweep("tables", "--sweep", "small", "--db", db)
    assert bnsweep("tables", "--sweep", "small", "--db", db, "--format", "table") == default
