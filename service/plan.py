"""What a launch would run: the sweep's cells, and which of them the store has completed.

Free of Ray and torch, so `launch --dry-run` prints its plan in well under two seconds.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bnsweep.sweep import SweepSpec, expand
from bnsweep.workers.spec import TrialSpec, arm_name

if TYPE_CHECKING:
    from bnsweep.store.api import Store

Cell = tuple[str, int]  # (spec_hash, seed): the store's key for one run


def cell_of(spec: TrialSpec) -> Cell:
    return (spec.spec_hash, spec.seed)


@dataclass(frozen=True)
class LaunchPlan:
    sweep: SweepSpec
    cells: tuple[TrialSpec, ...]
    completed: frozenset[Cell]

    @property
    def missing(self) -> tuple[TrialSpec, ...]:
        return tuple(c for c in self.cells if cell_of(c) not in self.completed)

    def describe(self) -> str:
        """What `--dry-run` prints: how many cells exist, how many are done, and what would run."""
        missing = self.missing
        by_arm = Counter(cell_label(c) for c in missing)
        lines = [
            f"sweep {self.sweep.name}: {len(self.cells)} cells "
            f"({len(self.cells) // max(len(self.sweep.seed_list), 1)} trial specs x "
            f"{len(self.sweep.seed_list)} seeds), {len(self.cells) - len(missing)} completed, "
            f"{len(missing)} to run",
        ]
        lines += [f"  {n:4d}  {label}" for label, n in sorted(by_arm.items())]
        return "\n".join(lines)


def plan(sweep: SweepSpec, store: Store) -> LaunchPlan:
    """Read-only: the sweep's cells and which of them the store already has completed."""
    cells = tuple(expand(sweep))
    return LaunchPlan(sweep, cells, frozenset(store.completed_cells(cells)))


def cell_label(spec: TrialSpec) -> str:
    arm = arm_name(spec.formulation, spec.bn_scale_init, spec.bn_lr_divisor)
    return f"{spec.dataset}/{spec.arch} α={spec.lr:g} {spec.input_norm}: {arm}"
