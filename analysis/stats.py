"""Paired tests of an arm against BASE (or any reference arm), multiple-comparison correction,
and power.

The paper's verdict (Sect. 4.3): an arm is significantly better than BASE when a one-sided
paired t-test over the seeds gives p ≤ 0.05. `scipy.stats.ttest_rel` pairs by position, so the
inputs here are already aligned by seed (`bnsweep.analysis.pairing.Comparison`).

Degenerate data are reported, not tested: fewer than two pairs (scipy returns NaN), and
numerically constant differences, where scipy returns t = ±inf and p = 0 although the data
say nothing about variability (R refuses such data as "essentially constant").

Every comparison also reports the mean difference with its two-sided t-based confidence
interval and the standardised effect d_z = mean(d) / sd(d) (ddof = 1). `minimum_detectable_effect`
gives the smallest d_z the one-sided paired t-test detects with the requested power.

Comparisons with the same number of pairs are tested in one vectorised call (axis = 1), so a
table of thousands of cells costs a handful of calls.

The t-test and the power use the t and noncentral t distributions of `scipy.special` (the
functions `scipy.stats.ttest_rel`, `t` and `nct` call themselves): importing `scipy.stats`
takes about a second, most of what `bnsweep tables` spends before it reads a row.
tests/analysis/test_light_stats.py holds them equal to `scipy.stats`; the Wilcoxon test imports
`scipy.stats` when it is chosen.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import special

from bnsweep.analysis.pairing import Comparison
from bnsweep.workers.errors import choice_error

#: Relative size below which the spread of the differences counts as zero (floating-point
#: noise of subtracting equal-spaced accuracies is ~1e-16 relative).
CONSTANT_RTOL = 1e-9

FEWER_THAN_TWO = "fewer than two pairs"
NO_COMMON_SEEDS = "no seed in common"
CONSTANT = "constant differences"
ALL_ZERO = "all differences zero"


@dataclass(frozen=True)
class AnalysisOptions:
    """How comparisons are tested and reported; validated on construction."""

    alpha: float = 0.05  # significant when the (adjusted) one-sided p ≤ alpha (Sect. 4.3)
    correction: str = "none"  # across the comparisons of one table
    test: str = "t"  # paired t (the paper's) or Wilcoxon signed-rank
    confidence: float = 0.95  # of the two-sided CI for the mean difference
    power: float = 0.8  # for the minimum detectable effect under each table
    # Diverged runs keep their score by default, as in the official code (analysis/pairing.py).
    exclude_diverged: bool = False

    def __post_init__(self) -> None:
        from bnsweep.analysis.pairing import AnalysisError

        if not isinstance(self.exclude_diverged, bool):
            raise AnalysisError(
                f"exclude_diverged: must be true or false, got {self.exclude_diverged!r}"
            )

        if self.test not in TESTS:
            raise choice_error("test", self.test, TESTS)
        if self.correction not in CORRECTIONS:
            raise choice_error("correction", self.correction, CORRECTIONS)
        for name in ("alpha", "confidence", "power"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0.0 < value < 1.0):
                raise AnalysisError(f"{name}: must be a number in (0, 1), got {value!r}")


@dataclass(frozen=True)
class CellStats:
    """One comparison of an arm with its reference (BASE, or another arm). Differences are
    arm − reference in the units given (the tables use percentage points). `degenerate` names
    why the comparison was not tested, else None."""

    test: str
    n: int
    mean_diff: float
    ci_low: float
    ci_high: float
    effect: float  # d_z = mean(d) / sd(d), ddof = 1
    statistic: float  # t for the t-test, W+ (sum of positive ranks) for Wilcoxon
    df: float  # n − 1 for the t-test; NaN for Wilcoxon
    p: float  # one-sided: arm better than its reference
    p_adjusted: float  # after the table's correction (= p without one)
    significant: bool
    degenerate: str | None = None

    @property
    def tested(self) -> bool:
        return self.degenerate is None

    @property
    def p_two_sided(self) -> float:
        """The two-sided p of the same t statistic: 2·min(p, 1 − p) (symmetric null)."""
        return 2.0 * min(self.p, 1.0 - self.p) if self.tested else math.nan


# -- tests: name → vectorised function (arm[k, n], base[k, n]) → (statistic[k], p[k], df[k]) ---
def _t(arm: np.ndarray, base: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`scipy.stats.ttest_rel(arm, base, axis=1, alternative="greater")`, step for step: the
    mean difference over its standard error (variance about the mean, ddof = 1), and
    p = P(T > t) with n − 1 degrees of freedom (`stdtr`, scipy's own t-test's sf)."""
    d = arm - base
    n = d.shape[1]
    mean = d.mean(axis=1)
    var = ((d - d.mean(axis=1, keepdims=True)) ** 2).mean(axis=1) * (float(n) / (n - 1.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        t = mean / np.sqrt(var / float(n))
    df = np.full(t.shape, n - 1.0)
    return t, t_sf(t, df), df


def t_sf(t: np.ndarray | float, df: np.ndarray | float) -> np.ndarray:
    """P(T > t) for Student's t with `df` degrees of freedom (`scipy.stats.t.sf`)."""
    return np.asarray(special.stdtr(df, -np.asarray(t, dtype=float)), dtype=float)


def t_ppf(q: float, df: np.ndarray | float) -> np.ndarray:
    """The q-quantile of Student's t with `df` degrees of freedom (`scipy.stats.t.ppf`)."""
    return np.asarray(special.stdtrit(df, q), dtype=float)


def _wilcoxon(arm: np.ndarray, base: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from scipy import stats  # only for this test: see the module's docstring

    res = stats.wilcoxon(arm, base, axis=1, alternative="greater")
    stat = np.asarray(res.statistic, float)
    return stat, np.asarray(res.pvalue, float), np.full(stat.shape, np.nan)


TESTS: dict[str, Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]] = {
    "t": _t,
    "wilcoxon": _wilcoxon,
}


# -- corrections: name → p values (NaN = untested, left NaN) → adjusted p values ---------------
def holm(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm's (1979) step-down adjusted p-values; NaN entries are not counted among the tests.

    p̃_(i) = max_{j ≤ i} min(1, (m − j + 1) · p_(j)) over the m finite p-values sorted ascending.
    """
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    m = finite.size
    if m == 0:
        return out
    order = finite[np.argsort(p[finite], kind="stable")]
    scaled = (m - np.arange(m)) * p[order]
    out[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
    return out


def _no_correction(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    return np.asarray(pvalues, dtype=float).copy()


CORRECTIONS: dict[str, Callable[[Sequence[float] | np.ndarray], np.ndarray]] = {
    "none": _no_correction,
    "holm": holm,
}


def _degenerate(diffs: np.ndarray, scale: np.ndarray, test: str) -> np.ndarray:
    """Per row: the reason the comparison is not tested, or ""."""
    n = diffs.shape[1]
    if n == 0:
        return np.full(diffs.shape[0], NO_COMMON_SEEDS, dtype=object)
    if n < 2:
        return np.full(diffs.shape[0], FEWER_THAN_TWO, dtype=object)
    spread = np.ptp(diffs, axis=1)
    if test == "wilcoxon":
        # Constant non-zero differences are a valid (extreme) case for the signed-rank test.
        zero = np.all(np.abs(diffs) <= CONSTANT_RTOL * scale[:, None], axis=1)
        return np.where(zero, ALL_ZERO, "").astype(object)
    return np.where(spread <= CONSTANT_RTOL * scale, CONSTANT, "").astype(object)


_COLUMNS = ("mean_diff", "ci_low", "ci_high", "effect", "statistic", "df", "p")


def _test_block(
    arm: np.ndarray, base: np.ndarray, options: AnalysisOptions
) -> dict[str, np.ndarray]:
    """Test k comparisons of n pairs each: arm and base are [k, n], aligned by seed.

    Returns one array of k values per `_COLUMNS` name, plus `why` (degenerate reason or "")."""
    k, n = arm.shape
    diffs = arm - base
    scale = np.maximum(
        np.max(np.abs(np.concatenate([arm, base], axis=1)), axis=1, initial=0.0), 1e-300
    )
    why = _degenerate(diffs, scale, options.test)
    mean = diffs.mean(axis=1) if n else np.full(k, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        sd = diffs.std(axis=1, ddof=1) if n > 1 else np.full(k, np.nan)
        effect = np.where(why == CONSTANT, np.nan, mean / sd)
        half = t_ppf(0.5 + options.confidence / 2.0, n - 1) * sd / math.sqrt(n) if n > 1 else sd
    statistic = np.full(k, np.nan)
    p = np.full(k, np.nan)
    df = np.full(k, np.nan)
    ok = why == ""
    if ok.any():
        statistic[ok], p[ok], df[ok] = TESTS[options.test](arm[ok], base[ok])
    return {
        "mean_diff": mean,
        "ci_low": mean - half,
        "ci_high": mean + half,
        "effect": effect,
        "statistic": statistic,
        "df": df,
        "p": p,
        "n": np.full(k, n),
        "why": why,
    }


def _results(columns: dict[str, np.ndarray], options: AnalysisOptions) -> list[CellStats]:
    """CellStats from column arrays, with p adjusted across all of them (one family)."""
    adjusted = CORRECTIONS[options.correction](columns["p"])
    tested = columns["why"] == ""
    significant = tested & np.isfinite(adjusted) & (adjusted <= options.alpha)
    values = [columns[c].tolist() for c in _COLUMNS]
    return [
        CellStats(options.test, n, md, lo, hi, eff, stat, df, p, adj, sig, str(why) or None)
        for n, md, lo, hi, eff, stat, df, p, adj, sig, why in zip(
            columns["n"].tolist(),
            *values,
            adjusted.tolist(),
            significant.tolist(),
            columns["why"].tolist(),
            strict=True,
        )
    ]


def evaluate_comparisons(
    comparisons: Sequence[Comparison], options: AnalysisOptions | None = None, scale: float = 100.0
) -> list[CellStats]:
    """Test each comparison (arm better than BASE) and correct across all of them together
    (they are one family: the comparisons of one table).

    `scale` multiplies the scores first: 100 reports differences in percentage points.
    """
    options = options or AnalysisOptions()
    total = len(comparisons)
    columns: dict[str, np.ndarray] = {c: np.full(total, np.nan) for c in _COLUMNS}
    columns["n"] = np.zeros(total, dtype=np.int64)
    columns["why"] = np.full(total, "", dtype=object)
    by_n: dict[int, list[int]] = {}
    for i, comp in enumerate(comparisons):
        by_n.setdefault(comp.n, []).append(i)
    for n, idx in by_n.items():
        arm = np.array([comparisons[i].arm_scores for i in idx], dtype=float).reshape(len(idx), n)
        base = np.array([comparisons[i].base_scores for i in idx], dtype=float).reshape(len(idx), n)
        block = _test_block(arm * scale, base * scale, options)
        for name, values in block.items():
            columns[name][idx] = values
    return _results(columns, options)


def correct(results: Sequence[CellStats], options: AnalysisOptions) -> list[CellStats]:
    """Adjust p across `results` (one table's family) and decide significance: p̃ ≤ alpha."""
    adjusted = CORRECTIONS[options.correction]([r.p for r in results])
    return [
        dataclasses.replace(
            r,
            p_adjusted=float(a),
            significant=bool(r.tested and math.isfinite(a) and a <= options.alpha),
        )
        for r, a in zip(results, adjusted, strict=True)
    ]


def paired_test(
    arm: Sequence[float] | np.ndarray,
    base: Sequence[float] | np.ndarray,
    options: AnalysisOptions | None = None,
) -> CellStats:
    """One comparison of two score sequences already aligned by seed (no scaling, no correction)."""
    a = np.asarray(arm, dtype=float).reshape(1, -1)
    b = np.asarray(base, dtype=float).reshape(1, -1)
    if a.shape != b.shape:
        from bnsweep.analysis.pairing import AnalysisError

        raise AnalysisError(
            f"paired test needs equally many scores, got {a.shape[1]} and {b.shape[1]}"
        )
    options = options or AnalysisOptions()
    return _results(_test_block(a, b, options), dataclasses.replace(options, correction="none"))[0]


@functools.lru_cache(maxsize=256)
def minimum_detectable_effect(n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest standardised effect d_z = mean(d)/sd(d) that a one-sided paired t-test on n pairs
    detects at level alpha with the given power; NaN for n < 2.

    Under the alternative t follows a noncentral t with df = n − 1 and noncentrality d_z·√n;
    power = P(T > t_{1−alpha, n−1}). Power rises with d_z, so bisection on [0, 100] finds it
    to 1e-12 (what `scipy.optimize.brentq` did, without importing scipy.optimize); inf when
    even d_z = 100 falls short.
    """
    if n < 2:
        return math.nan
    df = n - 1
    crit = float(t_ppf(1.0 - alpha, df))

    def power_at(d: float) -> float:
        return 1.0 - float(special.nctdtr(df, d * math.sqrt(n), crit))

    lo, hi = 0.0, 100.0
    if power_at(hi) < power:
        return math.inf
    while hi - lo > 1e-12:
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if power_at(mid) < power else (lo, mid)
    return 0.5 * (lo + hi)
