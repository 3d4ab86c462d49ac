"""Group trials into experiments and arms, and pair every arm with a reference arm (BASE by
default, any arm with `--versus`) seed by seed.

An *experiment* is everything that changes a result except the arm: dataset, network, α, input
normalisation, epochs, ... (`EXPERIMENT_FIELDS`). An *arm* is (formulation, γ, c)
(`bnsweep.workers.spec.ARM_FIELDS`); BASE is the standard formulation with γ = 1 and c = 1 (Sect.
4.2).

The paper's test is paired over the 15 seeds (Sect. 4.3): run *k* of an arm and run *k* of BASE
share the seed and therefore the data order. Pairs are matched by seed id, never by row
position, and only where both runs have a score. Everything else is dropped with a reason that
the tables and the CSV report.

A run's score is its test accuracy at the epoch of best validation accuracy. A diverged run
has one too: the official code (osu-cvl/revisiting-bn) has no NaN check, so it validated and
tested a diverged network like any other, and such a run was scored (at chance level when its
first epoch diverged) and counted in the published means and tests; bnsweep's worker does the
same (workers/trial.py, training recipe 3). `exclude_diverged` leaves such runs out instead. A
diverged run stored without a test accuracy (older recipes, frames made elsewhere) has no score.

Everything here is vectorised over the whole trials frame (groupby and merges on integer ids),
so 100,000 trials pair in well under a second.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from bnsweep.workers.errors import BnsweepError
from bnsweep.workers.spec import ARM_FIELDS, BASE_ARM, EXPERIMENT_FIELDS, arm_name, is_base_arm

log = logging.getLogger(__name__)

#: Columns the trials frame must have; the experiment fields are optional (absent = constant).
REQUIRED_COLUMNS: tuple[str, ...] = (*ARM_FIELDS, "seed", "status", "test_acc")

COMPLETED = "completed"
DIVERGED = "diverged"


class AnalysisError(BnsweepError):
    """The results cannot be tabulated at all (no trials, no completed trial, missing columns)."""


@dataclass(frozen=True, order=True)
class Arm:
    """One arm of an experiment: BN formulation, γ at initialisation, and c (lr of γ is α/c)."""

    formulation: str
    gamma: float
    c: float

    @property
    def is_base(self) -> bool:
        return is_base_arm(self.formulation, self.gamma, self.c)


BASE = Arm(*BASE_ARM)


def arm_label(arm: Arm) -> str:
    """`BASE`, or `rbn γ=1 c=1`: how `--versus` names an arm (formulation as registered)."""
    return arm_name(arm.formulation, arm.gamma, arm.c)


_ARM_KEYS = {"γ": "gamma", "gamma": "gamma", "c": "c"}


def find_arm(arms: Sequence[Arm], text: str, field: str = "versus") -> Arm:
    """The one arm of `arms` that `text` names: `BASE`, or a formulation followed by any of
    `γ=<value>` (or `gamma=<value>`) and `c=<value>`, e.g. `rbn`, `standard γ=0.1 c=100`.
    Parts left out match anything, so `rbn` names the only RBN arm. Raises `AnalysisError`
    listing the arms present unless exactly one matches."""
    present = sorted(set(arms))
    allowed = ", ".join(arm_label(a) for a in present)
    words = re.sub(r"\s*=\s*", "=", str(text).strip()).replace(",", " ").split()
    if len(words) == 1 and words[0].casefold() == "base":
        matches = [a for a in present if a.is_base]
    else:
        wanted: dict[str, Any] = {}
        for i, word in enumerate(words):
            key, eq, value = word.partition("=")
            if not eq and i == 0:
                wanted["formulation"] = key.casefold().replace("⁻", "_minus")
                continue
            if not eq or key.casefold() not in _ARM_KEYS:
                raise AnalysisError(
                    f"{field}: cannot read {word!r} in {text!r}; name an arm as "
                    f"'<formulation> γ=<value> c=<value>' or BASE; allowed: {allowed}"
                )
            try:
                wanted[_ARM_KEYS[key.casefold()]] = float(value)
            except ValueError:
                raise AnalysisError(
                    f"{field}: {key} must be a number, got {value!r}; allowed: {allowed}"
                ) from None
        matches = [
            a
            for a in present
            if wanted.get("formulation", a.formulation) == a.formulation.casefold()
            and math.isclose(wanted.get("gamma", a.gamma), a.gamma)
            and math.isclose(wanted.get("c", a.c), a.c)
        ]
    if len(matches) != 1:
        how = "no arm in these results matches" if not matches else f"{len(matches)} arms match"
        raise AnalysisError(f"{field}: {how} {text!r}; allowed: {allowed}")
    return matches[0]


@dataclass(frozen=True)
class DroppedSeed:
    seed: int
    reason: str


@dataclass(frozen=True)
class Comparison:
    """One arm against a reference arm of its experiment (BASE unless another was chosen), on
    the seeds where both have a score.

    `arm_scores` and `base_scores` (the reference's) are test accuracies (fractions) aligned
    with `seeds`.
    """

    arm: Arm
    experiment: tuple[tuple[str, Any], ...]
    seeds: tuple[int, ...]
    arm_scores: tuple[float, ...]
    base_scores: tuple[float, ...]
    dropped: tuple[DroppedSeed, ...]
    reference: Arm = BASE

    @property
    def n(self) -> int:
        return len(self.seeds)

    @property
    def experiment_dict(self) -> dict[str, Any]:
        return dict(self.experiment)

    def dropped_text(self) -> str:
        """`3: missing in BASE; 7: diverged, no score`, the CSV's `dropped` column."""
        return "; ".join(f"{d.seed}: {d.reason}" for d in self.dropped)


@dataclass(frozen=True)
class PreparedTrials:
    """The trials frame with integer experiment (`_exp`) and arm (`_arm`) ids and a `_valid` flag.

    `experiments` maps `_exp` to the experiment field values; `arms` maps `_arm` to an `Arm`.
    """

    frame: pd.DataFrame
    experiment_fields: tuple[str, ...]
    experiments: pd.DataFrame
    arms: tuple[Arm, ...]

    experiment_keys: tuple[tuple[tuple[str, Any], ...], ...]
    exclude_diverged: bool = False

    def experiment_key(self, exp_id: int) -> tuple[tuple[str, Any], ...]:
        """((field, value), ...) of experiment `exp_id`, values as plain Python scalars."""
        return self.experiment_keys[exp_id]


def _plain(value: Any) -> Any:
    """numpy scalars → Python scalars, so keys print and compare like the spec's own values."""
    return value.item() if isinstance(value, np.generic) else value


def prepare_trials(trials: pd.DataFrame, exclude_diverged: bool = False) -> PreparedTrials:
    """Validate the trials frame and assign experiment and arm ids.

    A run has a score (`_valid`) when it completed or diverged (unless `exclude_diverged`)
    and its test accuracy is finite. Raises `AnalysisError`
    when there is nothing to tabulate (no rows, no run with a score).
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in trials.columns]
    if missing:
        raise AnalysisError(
            f"trials table lacks column(s) {', '.join(missing)}; "
            f"expected the results store's trial columns ({', '.join(REQUIRED_COLUMNS)}, ...)"
        )
    if trials.empty:
        raise AnalysisError(
            "no trials in the results store for this selection: nothing to tabulate"
        )

    exp_fields = tuple(f for f in EXPERIMENT_FIELDS if f in trials.columns)
    df = trials.loc[:, [*exp_fields, *REQUIRED_COLUMNS]].copy()
    df["formulation"] = df["formulation"].astype(str)
    df["status"] = df["status"].astype(str)
    for name in ("bn_scale_init", "bn_lr_divisor", "test_acc"):
        df[name] = pd.to_numeric(df[name], errors="coerce").astype(float)
    if df["seed"].isna().any():
        raise AnalysisError("trials table has rows without a seed; every trial needs its seed id")
    df["seed"] = df["seed"].astype(np.int64)

    scored = {COMPLETED} if exclude_diverged else {COMPLETED, DIVERGED}
    valid = df["status"].isin(scored) & np.isfinite(df["test_acc"].to_numpy())
    if not valid.any():
        counts = ", ".join(f"{n} {s}" for s, n in df["status"].value_counts().sort_index().items())
        which = "" if exclude_diverged else " (nor a diverged one with a score)"
        raise AnalysisError(
            f"no completed trial{which} with a finite test accuracy among {len(df)} trials "
            f"({counts}): nothing to tabulate yet"
        )
    df["_valid"] = valid

    # The store keys trials by (spec_hash, seed), so duplicates only come from concatenated
    # frames; keep the completed row so a retried run is not counted twice.
    key = [*exp_fields, *ARM_FIELDS, "seed"]
    dup = df.duplicated(key, keep=False)
    if dup.any():
        log.warning(
            "%d duplicate (cell, seed) rows in the trials table; keeping one each", int(dup.sum())
        )
        df = df.sort_values("_valid", ascending=False, kind="stable").drop_duplicates(key)

    if exp_fields:
        grouped = df.groupby(list(exp_fields), sort=True, dropna=False)
        df["_exp"] = grouped.ngroup().astype(np.int64)
        experiments = grouped.size().reset_index()[list(exp_fields)]
    else:
        df["_exp"] = np.int64(0)
        experiments = pd.DataFrame(index=[0])
    arm_grouped = df.groupby(list(ARM_FIELDS), sort=True)
    df["_arm"] = arm_grouped.ngroup().astype(np.int64)
    arm_rows = arm_grouped.size().reset_index()
    arms = tuple(
        Arm(str(f), float(g), float(c))
        for f, g, c in zip(
            arm_rows["formulation"],
            arm_rows["bn_scale_init"],
            arm_rows["bn_lr_divisor"],
            strict=True,
        )
    )
    df["_base"] = np.array([a.is_base for a in arms], dtype=bool)[df["_arm"].to_numpy()]
    experiments = experiments.reset_index(drop=True)
    # Built column-wise once: per-experiment row lookups cost ~0.2 ms each, seconds at 100k trials.
    columns = [[_plain(v) for v in experiments[f].tolist()] for f in exp_fields]
    keys = tuple(
        tuple(zip(exp_fields, values, strict=True))
        for values in (zip(*columns, strict=True) if columns else [()] * len(experiments))
    )
    return PreparedTrials(
        df.reset_index(drop=True), exp_fields, experiments, arms, keys, exclude_diverged
    )


def summarise(prepared: PreparedTrials, scale: float = 100.0) -> pd.DataFrame:
    """One row per (experiment, arm): seeds with a score, mean and sample std (ddof = 1) of
    `scale` × test accuracy over them, and counts of the runs by status. `diverged_seeds` lists
    every diverged run, `diverged_scored` those of them counted with their score."""
    df = prepared.frame
    status = df["status"]
    diverged = status == DIVERGED
    work = pd.DataFrame(
        {
            "_exp": df["_exp"],
            "_arm": df["_arm"],
            "score": df["test_acc"].where(df["_valid"]) * scale,
            "n": df["_valid"].astype(np.int64),
            "n_runs": 1,
            "n_diverged": diverged.astype(np.int64),
            "n_failed": (status == "failed").astype(np.int64),
            "n_unfinished": status.isin(["pending", "running"]).astype(np.int64),
        }
    )
    g = work.groupby(["_exp", "_arm"], sort=True)
    out = g[["n", "n_runs", "n_diverged", "n_failed", "n_unfinished"]].sum()
    out["mean"] = g["score"].mean()
    out["std"] = g["score"].std(ddof=1)
    # Seeds of the runs that diverged, for the note under the table (a short list per cell).
    for name, rows in (("diverged_seeds", diverged), ("diverged_scored", diverged & df["_valid"])):
        div = df.loc[rows, ["_exp", "_arm", "seed"]].sort_values("seed")
        seeds = div.groupby(["_exp", "_arm"])["seed"].agg(tuple)
        out[name] = seeds.reindex(out.index)
    return out.reset_index()


def _reasons(
    present: np.ndarray, status: pd.Series, acc: np.ndarray, who: np.ndarray
) -> np.ndarray:
    """Why one side of each given candidate pair has no score, vectorised. The caller passes
    only the pairs that lack a score: string work over every pair would cost more than the
    pairing itself.

    `who` is "" for the arm's side (`diverged, no score`) and the reference's label for the
    other side (`BASE diverged, no score`), per row. A side that has a score gets a reason
    here too; the caller blanks it by its valid flag."""
    status = np.where(present, status.astype(object).to_numpy(dtype=str), "")
    named = np.char.str_len(who) > 0
    lead = np.where(named, np.char.add(who, " "), "")
    return np.select(
        [
            ~present,
            (status == DIVERGED) & np.isfinite(acc),  # scored, but left out by the option
            status == DIVERGED,
            status != COMPLETED,
        ],
        [
            np.where(named, np.char.add("missing in ", who), "missing in arm"),
            np.char.add(lead, "diverged (excluded)"),
            np.char.add(lead, "diverged, no score"),
            np.char.add(np.char.add(np.char.add(lead, "not completed ("), status), ")"),
        ],
        default=np.where(
            named, np.char.add(lead, "has no finite test accuracy"), "no finite test accuracy"
        ),
    )


def pair_arms(
    prepared: PreparedTrials,
    exp_ids: Sequence[int],
    arm_ids: Sequence[int],
    ref_ids: Sequence[int],
) -> list[Comparison]:
    """Arm `arm_ids[i]` against arm `ref_ids[i]` in experiment `exp_ids[i]`, paired by seed id.

    Every seed either side ran is a candidate pair (an outer merge), so a seed missing on
    either side is named among the dropped ones; comparisons come back in request order.
    """
    df = prepared.frame
    k = len(exp_ids)
    if k == 0:
        return []
    requests = pd.DataFrame(
        {
            "_req": np.arange(k, dtype=np.int64),
            "_exp": np.asarray(exp_ids, dtype=np.int64),
            "_arm": np.asarray(arm_ids, dtype=np.int64),
            "_ref": np.asarray(ref_ids, dtype=np.int64),
        }
    )
    runs = df[["_exp", "_arm", "seed", "status", "test_acc", "_valid"]]
    arm_side = requests.merge(runs, on=["_exp", "_arm"])
    ref_side = requests.merge(
        runs.rename(
            columns={"_arm": "_ref", "status": "r_status", "test_acc": "r_acc", "_valid": "r_ok"}
        ),
        on=["_exp", "_ref"],
    )
    pairs = arm_side[["_req", "seed", "status", "test_acc", "_valid"]].merge(
        ref_side[["_req", "seed", "r_status", "r_acc", "r_ok"]],
        on=["_req", "seed"],
        how="outer",
        indicator=True,
    )
    pairs = pairs.sort_values(["_req", "seed"], kind="stable").reset_index(drop=True)

    req = pairs["_req"].to_numpy(dtype=np.int64)
    in_arm = pairs["_merge"].isin(["both", "left_only"]).to_numpy()
    in_ref = pairs["_merge"].isin(["both", "right_only"]).to_numpy()
    a_acc = pairs["test_acc"].to_numpy(dtype=float)
    r_acc = pairs["r_acc"].to_numpy(dtype=float)
    a_ok = pairs["_valid"].eq(True).to_numpy() & in_arm
    r_ok = pairs["r_ok"].eq(True).to_numpy() & in_ref
    ok = a_ok & r_ok
    # Reasons only for the dropped rows (usually a few percent of them).
    bad = np.flatnonzero(~ok)
    labels = np.array([arm_label(a) for a in prepared.arms])
    a_why = _reasons(
        in_arm[bad], pairs["status"].iloc[bad], a_acc[bad], np.full(bad.size, "", dtype=str)
    )
    r_why = _reasons(
        in_ref[bad],
        pairs["r_status"].iloc[bad],
        r_acc[bad],
        labels[requests["_ref"].to_numpy()[req[bad]]],
    )
    # A side with a score is blank; the valid flag (not the status) says which side is.
    a_why = np.where(a_ok[bad], "", a_why)
    r_why = np.where(r_ok[bad], "", r_why)
    sep = np.where((a_why != "") & (r_why != ""), "; ", "")
    why = np.char.add(np.char.add(a_why, sep), r_why)

    seeds = pairs["seed"].to_numpy(dtype=np.int64)
    # Kept and dropped rows as flat Python lists with per-request bounds: slicing lists is ~10x
    # cheaper than slicing numpy arrays 6,000 times at 100k trials.
    kept_bounds = np.searchsorted(req[ok], np.arange(k + 1)).tolist()
    drop_bounds = np.searchsorted(req[~ok], np.arange(k + 1)).tolist()
    k_seeds, k_arm, k_ref = seeds[ok].tolist(), a_acc[ok].tolist(), r_acc[ok].tolist()
    d_seeds, d_why = seeds[~ok].tolist(), why.tolist()
    out = []
    for i, (exp_id, arm_id, ref_id) in enumerate(
        zip(
            requests["_exp"].tolist(),
            requests["_arm"].tolist(),
            requests["_ref"].tolist(),
            strict=True,
        )
    ):
        k0, k1 = kept_bounds[i], kept_bounds[i + 1]
        d0, d1 = drop_bounds[i], drop_bounds[i + 1]
        out.append(
            Comparison(
                arm=prepared.arms[arm_id],
                experiment=prepared.experiment_key(exp_id),
                seeds=tuple(k_seeds[k0:k1]),
                arm_scores=tuple(k_arm[k0:k1]),
                base_scores=tuple(k_ref[k0:k1]),
                dropped=tuple(map(DroppedSeed, d_seeds[d0:d1], d_why[d0:d1])),
                reference=prepared.arms[ref_id],
            )
        )
    return out


def pair_prepared(
    prepared: PreparedTrials, reference: Arm = BASE
) -> dict[tuple[int, int], Comparison]:
    """Every other (experiment, arm) of an experiment that ran `reference`, paired with it by
    seed. Keys are (`_exp`, `_arm`) ids of `prepared`."""
    if reference not in prepared.arms:
        return {}
    ref_id = prepared.arms.index(reference)
    df = prepared.frame
    keys = df[["_exp", "_arm"]].drop_duplicates()
    with_ref = keys.loc[keys["_arm"] == ref_id, "_exp"].unique()
    keys = keys[(keys["_arm"] != ref_id) & keys["_exp"].isin(with_ref)]
    keys = keys.sort_values(["_exp", "_arm"], kind="stable")
    exp_ids, arm_ids = keys["_exp"].tolist(), keys["_arm"].tolist()
    comps = pair_arms(prepared, exp_ids, arm_ids, [ref_id] * len(exp_ids))
    return dict(zip(zip(exp_ids, arm_ids, strict=True), comps, strict=True))


def pair_with_base(trials: pd.DataFrame, exclude_diverged: bool = False) -> list[Comparison]:
    """All comparisons arm vs BASE in `trials`, ordered by experiment then arm."""
    return list(pair_prepared(prepare_trials(trials, exclude_diverged)).values())
