"""The statistics against published values, not values our code produced."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bnsweep.analysis.layout import TableLayout
from bnsweep.analysis.stats import (
    ALL_ZERO,
    CONSTANT,
    FEWER_THAN_TWO,
    AnalysisOptions,
    holm,
    minimum_detectable_effect,
    paired_test,
)
from bnsweep.analysis.tables import build_tables
from bnsweep.workers.errors import BnsweepError
from tests.analysis.data import BASE, frame, rows

# R's `sleep` data (Cushny & Peebles 1905), extra hours of sleep of ten patients under drug 1
# (group 1) and drug 2 (group 2); patient i is the same person in both groups.
SLEEP_1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
SLEEP_2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]


def _sleep_cell(shuffle: bool = False):
    arm = ("standard", 0.1, 100.0)
    df = frame(rows(arm, SLEEP_1), rows(BASE, SLEEP_2))
    if shuffle:
        df = df.sample(frac=1.0, random_state=7).reset_index(drop=True)
    table = build_tables(df, TableLayout(kind="gamma"))[0]
    (row,) = [r for r in table.blocks[0].rows if not r.is_base]
    return row.cells[0]


def test_sleep_paired_t_matches_r_documentation():
    """R, ?t.test / example(sleep): `t.test(extra ~ group, data = sleep, paired = TRUE)` prints

        t = -4.0621, df = 9, p-value = 0.002833
        95 percent confidence interval: -2.4598858 -0.7001142
        mean difference -1.58

    Reproduced through the tables' own path: a trials frame with group 1 as an arm and group 2
    as BASE, patients as seed ids, test accuracy = value / 100 (the tables report percent).
    The two-sided p is derived from the one-sided (arm > BASE) p the tables use.
    """
    cell = _sleep_cell()
    s = cell.stats
    assert s is not None and s.tested and s.n == 10
    assert round(s.statistic, 4) == -4.0621
    assert s.df == 9
    assert f"{s.p_two_sided:.4g}" == "0.002833"
    assert f"{2 * min(s.p, 1 - s.p):.4g}" == "0.002833"
    assert round(s.ci_low, 7) == -2.4598858
    assert round(s.ci_high, 7) == -0.7001142
    assert round(s.mean_diff, 2) == -1.58
    # One-sided "greater": drug 1 is *not* better, so p is the upper tail and far from significant.
    assert s.p > 0.99 and not s.significant and not cell.significant


def test_sleep_same_p_in_shuffled_row_order():
    assert _sleep_cell(shuffle=True).stats == _sleep_cell().stats


def test_holm_matches_pingouin_documentation():
    """pingouin.holm docs (https://pingouin-stats.org/generated/pingouin.holm.html), Examples:

    >>> pvals = [.50, .003, .32, .054, .0003]
    >>> reject, pvals_corr = holm(pvals, alpha=.05)
    [False  True False False  True] [0.64   0.012  0.64   0.162  0.0015]
    """
    adjusted = holm([0.50, 0.003, 0.32, 0.054, 0.0003])
    np.testing.assert_allclose(adjusted, [0.64, 0.012, 0.64, 0.162, 0.0015], rtol=1e-12)
    assert (adjusted <= 0.05).tolist() == [False, True, False, False, True]


def test_holm_matches_wikipedia_example():
    """Wikipedia, "Holm–Bonferroni method", Example: four hypotheses with p1 = 0.01, p2 = 0.04,
    p3 = 0.03, p4 = 0.005 at α = 0.05: "reject H4 and H1 ... not H2 and H3" (thresholds
    0.0125, 0.0167, 0.025). Adjusted values from the definition in Holm (1979):
    p̃(i) = max_{j≤i} (m − j + 1) p(j) → 0.03, 0.06, 0.06, 0.02."""
    adjusted = holm([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02], rtol=1e-12)
    assert (adjusted <= 0.05).tolist() == [True, False, False, True]


def test_holm_ignores_untested_comparisons():
    adjusted = holm([0.01, math.nan, 0.04])
    assert math.isnan(adjusted[1])
    np.testing.assert_allclose(adjusted[[0, 2]], [0.02, 0.04])


def test_holm_option_changes_significance_in_a_table():
    base = [89.0, 89.5, 89.2, 89.8, 89.1]
    # Three arms with small, noisy gains: p ≈ 0.02-0.04 each, none survives Holm over three.
    gains = {
        0.05: [0.3, 0.1, 0.5, -0.05, 0.2],
        0.1: [0.25, 0.05, 0.45, 0.0, 0.3],
        0.5: [0.4, 0.0, 0.3, 0.05, 0.2],
    }
    df = frame(
        rows(BASE, base),
        *(
            rows(("standard", g, 100.0), [b + d for b, d in zip(base, ds, strict=True)])
            for g, ds in gains.items()
        ),
    )
    plain = build_tables(df, options=AnalysisOptions())[0]
    corrected = build_tables(df, options=AnalysisOptions(correction="holm"))[0]
    raw = [c.stats.p for _, r, _, c in plain.cells() if not r.is_base]
    adj = [c.stats.p_adjusted for _, r, _, c in corrected.cells() if not r.is_base]
    np.testing.assert_allclose(adj, holm(raw))
    assert any(c.significant for _, _, _, c in plain.cells())
    assert not any(c.significant for _, _, _, c in corrected.cells())
    assert "Holm-adjusted across the table's 3 tests" in corrected.caption


def test_constant_differences_are_reported_not_tested():
    # scipy would return t ≈ 6e15 and p ≈ 0 for these (floating-point noise in a constant shift).
    base = np.array([0.7, -1.6, -0.2, -1.2, -0.1])
    s = paired_test(base + 0.1, base)
    assert s.degenerate == CONSTANT and not s.tested and not s.significant
    assert math.isnan(s.p) and math.isnan(s.statistic)
    assert s.mean_diff == pytest.approx(0.1)


def test_fewer_than_two_pairs_are_reported_not_tested():
    s = paired_test([0.9], [0.8])
    assert s.degenerate == FEWER_THAN_TWO and math.isnan(s.p) and not s.significant


def test_wilcoxon_option():
    # Exact signed-rank distribution: all ten differences positive → p = 1 / 2**10.
    base = np.arange(10, dtype=float)
    arm = base + np.arange(1, 11) / 10
    s = paired_test(arm, base, AnalysisOptions(test="wilcoxon"))
    assert s.test == "wilcoxon" and s.statistic == 55.0 and math.isnan(s.df)
    assert s.p == pytest.approx(1 / 2**10)
    # A constant positive shift is an extreme but valid case for the signed-rank test ...
    assert paired_test(base + 1, base, AnalysisOptions(test="wilcoxon")).tested
    # ... and all-zero differences are not.
    assert paired_test(base, base, AnalysisOptions(test="wilcoxon")).degenerate == ALL_ZERO


def test_minimum_detectable_effect_has_the_requested_power():
    """At d_z = MDE the one-sided paired t-test rejects in 80 % of simulated experiments
    (checked by simulation, independently of the noncentral-t solution)."""
    n, alpha = 15, 0.05
    d = minimum_detectable_effect(n, alpha, 0.8)
    assert 0.6 < d < 0.75
    rng = np.random.default_rng(0)
    diffs = rng.normal(d, 1.0, size=(40_000, n))
    t = diffs.mean(1) / (diffs.std(1, ddof=1) / math.sqrt(n))
    from scipy import stats

    power = float(np.mean(t > stats.t.ppf(1 - alpha, n - 1)))
    assert power == pytest.approx(0.8, abs=0.01)
    assert minimum_detectable_effect(30) < d < minimum_detectable_effect(10)
    assert math.isnan(minimum_detectable_effect(1))


def test_options_validate_with_one_line_errors():
    with pytest.raises(BnsweepError, match="correction: unknown value 'bonferroni'"):
        AnalysisOptions(correction="bonferroni")
    with pytest.raises(BnsweepError, match="test: unknown value"):
        AnalysisOptions(test="z")
    with pytest.raises(BnsweepError, match=r"alpha: must be a number in \(0, 1\)"):
        AnalysisOptions(alpha=1.5)
