"""The trend figure: each arm's mean paired difference to BASE against `epochs`, with the CI the
tables compute, on fabricated frames and through `bnsweep plots --kind trend`."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from bnsweep import cli
from bnsweep.analysis.pairing import AnalysisError
from bnsweep.analysis.plots import PLOT_KINDS, _trend_figure, plot_trend, trend_points
from bnsweep.analysis.stats import AnalysisOptions, paired_test
from bnsweep.store.api import Store
from bnsweep.store.events import TrialFinished, TrialStarted
from bnsweep.sweep import expand, parse_sweep_spec
from tests.analysis.data import BASE, frame, rows

SMALL = ("standard", 0.1, 100.0)
HALF = ("standard", 0.5, 100.0)

# Test accuracy (%) by seed: at 6 epochs γ = 0.1 trails BASE by about 20 points, at 20 by about 1.
SCORES = {
    (6, BASE): [96.0, 95.5, 97.0, 96.5, 95.0],
    (6, SMALL): [75.0, 78.0, 74.5, 77.0, 73.0],
    (6, HALF): [94.0, 95.0, 96.0, 95.5, 93.5],
    (20, BASE): [98.0, 97.5, 98.5, 98.0, 97.0],
    (20, SMALL): [97.0, 96.0, 98.0, 97.5, 96.5],
    (20, HALF): [98.5, 97.0, 98.0, 98.5, 97.5],
}


def _trials(lrs: tuple[float, ...] = (0.01,)) -> pd.DataFrame:
    return frame(
        *(
            rows(arm, scores, epochs=epochs, lr=lr)
            for lr in lrs
            for (epochs, arm), scores in SCORES.items()
        )
    )


def _point(points: pd.DataFrame, epochs: int, gamma: float, lr: float = 0.01) -> pd.Series:
    match = points[
        (points["epochs"] == epochs) & (points["bn_scale_init"] == gamma) & (points["lr"] == lr)
    ]
    assert len(match) == 1
    return match.iloc[0]


@pytest.mark.parametrize(("epochs", "arm"), [(6, SMALL), (6, HALF), (20, SMALL), (20, HALF)])
def test_each_point_is_the_paired_mean_with_the_tables_ci(epochs: int, arm: tuple) -> None:
    points = trend_points(_trials())
    got = _point(points, epochs, arm[1])
    diffs = np.subtract(SCORES[(epochs, arm)], SCORES[(epochs, BASE)])
    assert got["n"] == 5
    assert got["mean_diff"] == pytest.approx(diffs.mean(), abs=1e-9)
    # The CI is the tables' statistics code (paired t, 95 %), and that is the textbook interval.
    cell = paired_test(SCORES[(epochs, arm)], SCORES[(epochs, BASE)])
    assert (got["ci_low"], got["ci_high"]) == pytest.approx((cell.ci_low, cell.ci_high), abs=1e-9)
    half = scipy_stats.t.ppf(0.975, 4) * diffs.std(ddof=1) / math.sqrt(5)
    assert got["ci_low"] == pytest.approx(diffs.mean() - half, abs=1e-9)
    assert got["ci_high"] == pytest.approx(diffs.mean() + half, abs=1e-9)


def test_pairs_are_matched_by_seed_and_a_missing_base_seed_is_left_out() -> None:
    trials = _trials()
    lost = (trials["epochs"] == 20) & (trials["bn_scale_init"] == 1.0) & (trials["seed"] == 3)
    points = trend_points(trials[~lost])
    got = _point(points, 20, 0.1)
    keep = [0, 1, 3, 4]  # seeds 1, 2, 4, 5
    diffs = np.subtract(SCORES[(20, SMALL)], SCORES[(20, BASE)])[keep]
    assert got["n"] == 4 and got["mean_diff"] == pytest.approx(diffs.mean(), abs=1e-9)
    assert _point(points, 6, 0.1)["n"] == 5


def test_the_confidence_level_is_the_options_one() -> None:
    wide = _point(trend_points(_trials(), AnalysisOptions(confidence=0.99)), 6, 0.1)
    narrow = _point(trend_points(_trials()), 6, 0.1)
    assert wide["ci_high"] - wide["ci_low"] > narrow["ci_high"] - narrow["ci_low"]


@pytest.mark.parametrize(
    ("keep", "found"),
    [
        (lambda t: t["epochs"] == 6, "only epochs=6"),
        (lambda t: t["bn_scale_init"] != 1.0, "no arm"),
    ],
)
def test_one_training_length_is_refused_in_one_line(keep, found: str) -> None:
    trials = _trials()
    with pytest.raises(AnalysisError, match=found) as info:
        trend_points(trials[keep(trials)])
    assert "\n" not in str(info.value) and "two or more `epochs` values" in str(info.value)


def test_one_figure_a_panel_per_lr_a_line_per_arm(tmp_path: Path) -> None:
    trials = _trials(lrs=(0.1, 0.01))
    paths = plot_trend(trials, tmp_path)
    assert sorted(p.name for p in paths) == ["trend.pdf", "trend.png"]
    assert paths[0].read_bytes()[:4] == b"\x89PNG" and paths[0].stat().st_size > 1000
    points = trend_points(trials)
    fig = _trend_figure(points, "lr", [0.1, 0.01], 0.95, "")
    for ax, lr in zip(fig.axes, (0.1, 0.01), strict=True):
        assert ax.get_title() == f"α = {lr:g}"
        (base,) = (line for line in ax.get_lines() if line.get_label() == "BASE")
        assert list(base.get_ydata()) == [0.0, 0.0]
        bars = {bar.get_label(): bar for bar in ax.containers}
        assert set(bars) == {"γ=0.1", "γ=0.5"}
        for gamma in (0.1, 0.5):
            expected = [_point(points, e, gamma, lr) for e in (6, 20)]
            line, _, (spans,) = bars[f"γ={gamma:g}"].lines
            assert list(line.get_ydata()) == pytest.approx([p["mean_diff"] for p in expected])
            # Each bar spans the CI: its ends are ci_low and ci_high.
            ends = [end for seg in spans.get_segments() for end in sorted(seg[:, 1])]
            assert ends == pytest.approx([x for p in expected for x in (p["ci_low"], p["ci_high"])])


def test_two_datasets_make_two_figures(tmp_path: Path) -> None:
    trials = pd.concat([_trials(), _trials().assign(dataset="cifar100")], ignore_index=True)
    trials["spec_hash"] = trials["spec_hash"] + trials["dataset"]
    names = sorted(p.name for p in plot_trend(trials, tmp_path, formats=("svg",)))
    assert names == ["trend_dataset-cifar10.svg", "trend_dataset-cifar100.svg"]


SPEC = textwrap.dedent(
    """\
    name: long
    defaults: {dataset: digits, arch: resnet8, batch_size: 64, lr: 0.01, bn_lr_divisor: 100}
    grids:
      - {bn_scale_init: [0.1], epochs: [2, 4]}
    base: true
    seeds: 3
    """
)


@pytest.fixture
def db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'results.db'}"
    spec = parse_sweep_spec(SPEC)
    cells = expand(spec)
    short = SPEC.replace("name: long", "name: short").replace("[2, 4]", "[2]")
    with Store.open(url) as store:
        store.register_sweep("long", SPEC, cells)
        store.register_sweep("short", short, expand(parse_sweep_spec(short)))
        events = []
        for cell in cells:
            # γ = 0.1 trails BASE by 10 points at 2 epochs and by 1 at 4, whatever the seed.
            gap = 0.0 if cell.bn_scale_init == 1.0 else (0.10 if cell.epochs == 2 else 0.01)
            acc = 0.9 + 0.01 * cell.seed - gap
            events.append(TrialStarted(cell.spec_hash, cell.seed))
            events.append(
                TrialFinished(
                    cell.spec_hash,
                    cell.seed,
                    "completed",
                    epochs_run=cell.epochs,
                    best_epoch=cell.epochs,
                    best_val_acc=acc,
                    test_acc=acc,
                    final_test_acc=acc,
                    seconds=1.0,
                )
            )
        store.apply(events)
    return url


def _plots(monkeypatch: pytest.MonkeyPatch, capsys, *argv: str) -> tuple[int, str, str]:
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("bnsweep.commands.report",))
    monkeypatch.delenv("BNSWEEP_DB", raising=False)
    capsys.readouterr()
    try:
        code = cli.main(["plots", *argv])
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_plots_kind_trend_from_the_store(monkeypatch, capsys, db: str, tmp_path: Path) -> None:
    out_dir = tmp_path / "figs"
    code, out, err = _plots(
        monkeypatch, capsys, "--sweep", "long", "--kind", "trend", "--db", db, "--out", str(out_dir)
    )
    assert code == 0, err
    assert sorted(Path(p).name for p in out.split()) == ["trend.pdf", "trend.png"]


def test_plots_kind_trend_of_one_length_is_one_line_exit_2(
    monkeypatch, capsys, db: str, tmp_path: Path
) -> None:
    out_dir = tmp_path / "figs"
    code, out, err = _plots(
        monkeypatch,
        capsys,
        "--sweep",
        "short",
        "--kind",
        "trend",
        "--db",
        db,
        "--out",
        str(out_dir),
    )
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "only epochs=2" in err
    assert not any(out_dir.glob("trend*"))


def test_the_cli_offers_the_registered_kinds() -> None:
    from bnsweep.commands import report

    assert set(report.PLOT_KINDS) == set(PLOT_KINDS)


#: What each registered kind writes, by file-name prefix, from trials and per-epoch rows alone.
KIND_PREFIXES = {
    "all": {"accuracy_vs_gamma", "validation_curves"},
    "gamma": {"accuracy_vs_gamma"},
    "curves": {"validation_curves"},
    "diagnostics": set(),  # no diagnostics frame: nothing to draw, no error
    "trend": {"trend"},
}


@pytest.mark.parametrize("kind", sorted(PLOT_KINDS))
def test_every_registered_kind_draws_its_figures(kind: str, tmp_path: Path) -> None:
    from bnsweep.analysis.plots import PlotInputs

    trials = _trials()
    epochs = pd.concat(
        [trials.assign(epoch=e, val_acc=trials["test_acc"] - 0.01 * (3 - e)) for e in (1, 2, 3)],
        ignore_index=True,
    )
    paths = PLOT_KINDS[kind](PlotInputs(trials, epochs), tmp_path, ("svg",))
    prefixes = {"accuracy_vs_gamma", "validation_curves", "trend", "bn_", "gradient_factor"}
    assert {x for p in paths for x in prefixes if p.name.startswith(x)} == KIND_PREFIXES[kind]
    assert all(p.stat().st_size > 1000 for p in paths)
