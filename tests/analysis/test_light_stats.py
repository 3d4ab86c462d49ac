"""The t-test and the power of analysis/stats.py without `scipy.stats`: the same numbers as
`scipy.stats.ttest_rel`, `t.sf`, `t.ppf` and a Brent's-method solve of `nct.sf`, and a table
that does not import `scipy.stats` at all."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from scipy import optimize, stats

from bnsweep.analysis.stats import (
    AnalysisOptions,
    _t,
    minimum_detectable_effect,
    paired_test,
    t_ppf,
    t_sf,
)


@pytest.mark.parametrize("df", [1, 2, 3, 4, 5, 7, 9, 14, 19, 29, 49, 99, 199, 1000, 1e6])
def test_the_p_of_t_is_scipy_stats(df: float) -> None:
    t = np.concatenate([np.linspace(-60.0, 60.0, 2401), [0.0, 1e-9, -1e-9, 1e3, -1e3]])
    assert np.allclose(t_sf(t, df), stats.t.sf(t, df), rtol=0.0, atol=1e-12)
    q = np.array([0.5, 0.8, 0.9, 0.95, 0.975, 0.99, 0.995, 0.999])
    assert np.allclose(t_ppf(q, df), stats.t.ppf(q, df), rtol=1e-12, atol=0.0)


@pytest.mark.parametrize("n", [2, 3, 5, 10, 15, 40])
def test_the_paired_t_test_is_scipy_stats(n: int) -> None:
    rng = np.random.default_rng(n)
    base = rng.normal(90.0, 0.5, size=(200, n))
    arm = base + rng.normal(rng.normal(0.0, 0.4, size=(200, 1)), 0.3, size=(200, n))
    statistic, p, df = _t(arm, base)
    expected = stats.ttest_rel(arm, base, axis=1, alternative="greater")
    assert np.allclose(statistic, expected.statistic, rtol=1e-12, atol=0.0)
    assert np.allclose(p, expected.pvalue, rtol=0.0, atol=1e-12)
    assert np.array_equal(df, np.asarray(expected.df, float))


def test_the_confidence_interval_is_scipy_stats() -> None:
    rng = np.random.default_rng(3)
    arm, base = rng.normal(91.0, 0.5, 8), rng.normal(90.0, 0.5, 8)
    cell = paired_test(arm, base, AnalysisOptions(confidence=0.9))
    d = arm - base
    half = stats.t.ppf(0.95, 7) * d.std(ddof=1) / math.sqrt(8)
    assert cell.ci_low == pytest.approx(d.mean() - half, abs=1e-12)
    assert cell.ci_high == pytest.approx(d.mean() + half, abs=1e-12)


def _mde_by_brent(n: int, alpha: float, power: float) -> float:
    crit = stats.t.ppf(1.0 - alpha, n - 1)
    return optimize.brentq(
        lambda d: stats.nct.sf(crit, n - 1, d * math.sqrt(n)) - power, 0.0, 100.0, xtol=1e-10
    )


@pytest.mark.parametrize("alpha", [0.1, 0.05, 0.01])
@pytest.mark.parametrize("power", [0.5, 0.8, 0.9])
def test_the_minimum_detectable_effect_is_the_brent_solution(alpha: float, power: float) -> None:
    for n in (*range(2, 31), 50, 100, 200):
        ours = minimum_detectable_effect(n, alpha, power)
        assert ours == pytest.approx(_mde_by_brent(n, alpha, power), abs=1e-9), n
    assert math.isnan(minimum_detectable_effect(1, alpha, power))


def test_an_effect_beyond_reach_is_infinite() -> None:
    with pytest.raises(ValueError):
        _mde_by_brent(2, 0.001, 0.99)  # what scipy's solve says: no root in [0, 100]
    assert minimum_detectable_effect(2, 0.001, 0.99) == math.inf


def test_a_table_imports_neither_scipy_stats_nor_scipy_optimize() -> None:
    code = (
        "import sys\n"
        "from bnsweep.sweep_tables import tables_for, render_tables\n"
        "from tests.analysis.data import golden_trials\n"
        "render_tables(tables_for(golden_trials()), 'term', for_terminal=False)\n"
        "print(sorted(m for m in ('scipy.stats', 'scipy.optimize') if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == "[]"
