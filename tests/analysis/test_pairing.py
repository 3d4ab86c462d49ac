"""Pairing by seed id: experiments, arms, dropped seeds and their reasons."""

from __future__ import annotations

import pandas as pd
import pytest

from bnsweep.analysis.pairing import (
    AnalysisError,
    Arm,
    DroppedSeed,
    pair_with_base,
)
from bnsweep.analysis.stats import evaluate_comparisons
from bnsweep.workers.errors import BnsweepError
from bnsweep.workers.spec import ARM_FIELDS, EXPERIMENT_FIELDS, RESULT_FIELD_NAMES
from tests.analysis.data import BASE, frame, rows

ARM = ("standard", 0.1, 100.0)
BASE_SCORES = [90.0, 90.5, 89.5, 91.0, 90.2, 89.9]
ARM_SCORES = [91.0, 91.2, 90.4, 91.3, 91.5, 90.6]


def test_experiment_is_every_result_field_but_the_arm():
    assert set(EXPERIMENT_FIELDS) | set(ARM_FIELDS) == set(RESULT_FIELD_NAMES)
    assert not set(EXPERIMENT_FIELDS) & set(ARM_FIELDS)


def test_pairs_by_seed_id_not_position():
    df = frame(rows(ARM, ARM_SCORES), rows(BASE, BASE_SCORES))
    (comp,) = pair_with_base(df)
    assert comp.arm == Arm(*ARM) and comp.seeds == (1, 2, 3, 4, 5, 6) and comp.dropped == ()
    assert comp.experiment_dict["dataset"] == "cifar10" and comp.experiment_dict["lr"] == 0.1
    p = evaluate_comparisons([comp])[0].p

    # Reversed and shuffled rows: same pairs, same p.
    shuffled = df.iloc[::-1].sample(frac=1.0, random_state=3).reset_index(drop=True)
    (again,) = pair_with_base(shuffled)
    assert again.seeds == comp.seeds and again.arm_scores == comp.arm_scores
    assert evaluate_comparisons([again])[0].p == p


def test_missing_seed_drops_only_that_pair():
    full = frame(rows(ARM, ARM_SCORES), rows(BASE, BASE_SCORES))
    no_base_3 = full[~((full["bn_scale_init"] == 1.0) & (full["seed"] == 3))]
    (comp,) = pair_with_base(no_base_3)
    assert comp.seeds == (1, 2, 4, 5, 6)
    assert comp.dropped == (DroppedSeed(3, "missing in BASE"),)
    assert comp.arm_scores == tuple(s / 100 for i, s in enumerate(ARM_SCORES, 1) if i != 3)
    assert comp.base_scores == tuple(s / 100 for i, s in enumerate(BASE_SCORES, 1) if i != 3)
    # The same result as testing the five remaining pairs by hand.
    from scipy import stats

    a = [s for i, s in enumerate(ARM_SCORES, 1) if i != 3]
    b = [s for i, s in enumerate(BASE_SCORES, 1) if i != 3]
    expected = stats.ttest_rel(a, b, alternative="greater").pvalue
    assert evaluate_comparisons([comp])[0].p == pytest.approx(expected, rel=1e-9)


def test_dropped_seeds_name_their_reason():
    arm = {1: 91.0, 2: "diverged", 3: "failed", 4: 91.3, 5: 91.4, 6: 90.9, 8: 90.0}
    base = {1: 90.0, 2: 90.1, 3: 90.2, 4: "running", 5: "diverged", 6: 90.3, 7: 90.4}
    df = frame(rows(ARM, arm), rows(BASE, base))
    df.loc[(df["seed"] == 6) & (df["bn_scale_init"] == 1.0), "test_acc"] = float("inf")
    (comp,) = pair_with_base(df)
    assert comp.seeds == (1,)
    assert dict((d.seed, d.reason) for d in comp.dropped) == {
        2: "diverged, no score",
        3: "not completed (failed)",
        4: "BASE not completed (running)",
        5: "BASE diverged, no score",
        6: "BASE has no finite test accuracy",
        7: "missing in arm",
        8: "missing in BASE",
    }
    assert comp.dropped_text().startswith("2: diverged, no score; 3: not completed (failed)")


def test_experiments_pair_with_their_own_base():
    df = frame(
        rows(ARM, ARM_SCORES, lr=0.1),
        rows(BASE, BASE_SCORES, lr=0.1),
        rows(ARM, BASE_SCORES, lr=0.01),
        rows(BASE, ARM_SCORES, lr=0.01),
        rows(ARM, ARM_SCORES, dataset="cifar100"),  # no BASE in this experiment: no comparison
    )
    comps = pair_with_base(df)
    assert [c.experiment_dict["lr"] for c in comps] == [0.01, 0.1]
    assert all(c.experiment_dict["dataset"] == "cifar10" for c in comps)
    assert comps[0].arm_scores == comps[1].base_scores


def test_string_dtype_columns_from_pandas_3():
    df = frame(rows(ARM, ARM_SCORES), rows(BASE, BASE_SCORES))
    df = df.astype({c: "str" for c in ("dataset", "arch", "formulation", "status")})
    (comp,) = pair_with_base(df)
    assert comp.n == 6 and isinstance(comp.experiment_dict["dataset"], str)


@pytest.mark.parametrize(
    ("df", "message"),
    [
        (
            pd.DataFrame(
                columns=[
                    "formulation",
                    "bn_scale_init",
                    "bn_lr_divisor",
                    "seed",
                    "status",
                    "test_acc",
                ]
            ),
            "no trials",
        ),
        (
            frame(rows(ARM, ["running", "diverged"]), rows(BASE, ["failed", "pending"])),
            r"no completed trial .* among 4 trials \(1 diverged, 1 failed, 1 pending, 1 running\)",
        ),
        (pd.DataFrame({"seed": [1]}), "lacks column"),
    ],
)
def test_nothing_to_pair_is_one_clear_error(df, message):
    with pytest.raises(AnalysisError, match=message) as info:
        pair_with_base(df)
    assert isinstance(info.value, BnsweepError) and "\n" not in str(info.value)


def test_a_diverged_run_keeps_its_score():
    # The official loop has no NaN check: a run that diverged is scored by its best validation
    # epoch. One stored without a test accuracy (an older recipe) has no score.
    arm = {1: 91.0, 2: ("diverged", 90.8), 3: "diverged", 4: 91.3}
    base = {1: 90.0, 2: 90.1, 3: 90.2, 4: ("diverged", 89.9)}
    df = frame(rows(ARM, arm), rows(BASE, base))
    (comp,) = pair_with_base(df)
    assert comp.seeds == (1, 2, 4)
    assert comp.arm_scores == pytest.approx((0.91, 0.908, 0.913))
    assert comp.base_scores == pytest.approx((0.9, 0.901, 0.899))
    assert comp.dropped == (DroppedSeed(3, "diverged, no score"),)

    (excluded,) = pair_with_base(df, exclude_diverged=True)
    assert excluded.seeds == (1,)
    assert dict((d.seed, d.reason) for d in excluded.dropped) == {
        2: "diverged (excluded)",
        3: "diverged, no score",
        4: "BASE diverged (excluded)",
    }


def test_only_diverged_runs_with_a_score_are_something_to_tabulate():
    df = frame(rows(ARM, [("diverged", 91.0)]), rows(BASE, ["diverged"]))
    (comp,) = pair_with_base(df)
    assert comp.n == 0 and comp.dropped == (DroppedSeed(1, "BASE diverged, no score"),)
    with pytest.raises(AnalysisError, match=r"no completed trial with a finite test accuracy"):
        pair_with_base(df, exclude_diverged=True)
