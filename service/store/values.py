"""The frozen values the store's API returns: sweeps, sweep status, forget counts, fingerprints,
notes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import bnsweep.workers.spec


@dataclass(frozen=True)
class SweepInfo:
    """A registered sweep: its name, the spec text it was last registered with, its cell count."""

    name: str
    spec_text: str
    created_at: datetime
    updated_at: datetime
    cells: int


@dataclass(frozen=True)
class ArmStatus:
    """The seeds of one arm (one `spec_hash`) in a sweep, and which of them have no result."""

    spec_hash: str
    label: str
    seeds: tuple[int, ...]
    missing_seeds: tuple[int, ...]  # pending, running or failed: not completed nor diverged
    failed_seeds: tuple[int, ...]
    running_seeds: tuple[int, ...]


@dataclass(frozen=True)
class SweepStatus:
    """Cell counts by status for one sweep, and the missing seeds of each arm."""

    name: str
    total: int
    pending: int
    running: int
    completed: int
    failed: int
    diverged: int
    arms: tuple[ArmStatus, ...]
    #: (recipe, trials) of the sweep's trials of another training recipe: not counted above,
    #: never reused by a launch, left out of the tables (`older_recipe_line`).
    older_recipes: tuple[tuple[int, int], ...] = ()

    @property
    def done(self) -> int:
        """Cells with a final result (completed or diverged): what a relaunch skips."""
        return self.completed + self.diverged

    @property
    def incomplete_arms(self) -> tuple[ArmStatus, ...]:
        return tuple(arm for arm in self.arms if arm.missing_seeds)


@dataclass(frozen=True)
class ForgetCount:
    """What `Store.forget` deleted (or, in a dry run, would delete)."""

    trials: int
    epochs: int  # epoch rows of those trials
    shared: int  # of those trials, how many other sweeps use too (only with a sweep filter)
    running: int = 0  # of those trials, how many are running: a real run refuses them


def older_recipe_line(counts: Mapping[int, int], sweep: str | None = None) -> str | None:
    """One line saying that the store holds trials of another training recipe, which are not
    used, and how to delete them; None when there are none. `counts` is `older_recipes()`."""
    if not counts:
        return None
    current = bnsweep.workers.spec.RECIPE
    total = sum(counts.values())
    kind = "an older" if all(recipe < current for recipe in counts) else "another"
    recipes = ", ".join(f"recipe {recipe}: {n}" for recipe, n in sorted(counts.items()))
    scope = f"sweep {sweep}" if sweep is not None else "the store"
    selector = (f" --sweep {sweep}" if sweep is not None else "") + "".join(
        f" --where recipe={recipe}" for recipe in sorted(counts)
    )
    return (
        f"note: {scope} holds {total} trial(s) of {kind} training recipe ({recipes}); they are "
        f"not used by launches or tables (this bnsweep trains recipe {current}); "
        f"`bnsweep db forget{selector}` deletes them"
    )


@dataclass(frozen=True)
class StoreFingerprint:
    """What changes whenever the store's content does: row counts and the latest update times.

    Every event changes one of them: a start, failure or finish updates `trials.updated_at`, a
    new epoch or diagnostics row adds to a count, registering a sweep adds rows or moves
    `sweeps.updated_at`. Readers (the dashboard) cache what they computed under it.
    """

    sweeps: int
    sweeps_updated: datetime | None
    trials: int
    trials_updated: datetime | None
    links: int
    epochs: int
    diagnostics: int
    notes: int = 0  # notes are only added or go with their trial: the count moves with each


def missing_text(arm: ArmStatus) -> str:
    """An arm's missing seeds, with those failed or running named: "3-5 (failed: 4)"."""
    notes = []
    if arm.failed_seeds:
        notes.append(f"failed: {seed_ranges(arm.failed_seeds)}")
    if arm.running_seeds:
        notes.append(f"running: {seed_ranges(arm.running_seeds)}")
    return seed_ranges(arm.missing_seeds) + (f" ({'; '.join(notes)})" if notes else "")


def seed_ranges(seeds: Sequence[int]) -> str:
    """(1, 2, 3, 5, 7, 8) → "1-3, 5, 7-8": fifteen seeds stay readable."""
    parts: list[str] = []
    ordered = sorted(seeds)
    start = prev = ordered[0] if ordered else 0
    for seed in [*ordered[1:], None]:
        if seed is not None and seed == prev + 1:
            prev = seed
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if seed is not None:
            start = prev = seed
    return ", ".join(parts) if ordered else ""


@dataclass(frozen=True)
class Note:
    """A note on a sweep, a cell (one `spec_hash`) or a trial, as `Store.notes` returns it.

    `sweep` is the sweep it was written in (None for a note on a trial, or on a cell named by its
    hash alone); `seed` is the trial's seed for a note on a trial."""

    id: int
    sweep: str | None
    spec_hash: str | None
    trial_id: int | None
    seed: int | None
    author: str
    text: str
    created_at: datetime

    @property
    def kind(self) -> str:
        """What it is written on: `trial`, `cell` or `sweep`."""
        if self.trial_id is not None:
            return "trial"
        return "cell" if self.spec_hash is not None else "sweep"

    @property
    def target(self) -> str:
        """The target in words: `sweep demo`, `cell 0123abcd in sweep demo`, `trial 7 (seed 3)`."""
        if self.trial_id is not None:
            return f"trial {self.trial_id} (seed {self.seed})"
        if self.spec_hash is not None:
            where = f" in sweep {self.sweep}" if self.sweep is not None else ""
            return f"cell {self.spec_hash}{where}"
        return f"sweep {self.sweep}"
