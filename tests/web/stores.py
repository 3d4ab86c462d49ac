"""Stores in every state the pages must handle, filled through the store's own events (fast:
no training), with the helpers of tests/service/test_store.py."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa

from bnsweep.store.api import Store
from bnsweep.store.events import TrialFailed, TrialStarted
from bnsweep.store.models import VERSION_TABLE
from bnsweep.workers.spec import TrialSpec
from tests.service.test_store import make_spec, run_cell

#: γ of the arms (c = 100) besides BASE; γ = 0.1 is the one made better than BASE.
GAMMAS = (0.5, 0.1)
LRS = (0.1, 0.01)
#: An arm's gain over BASE in accuracy, by γ; with seeds sharing an offset, the paired test
#: finds 0.1 better and 0.5 not.
GAIN = {1.0: 0.0, 0.5: -0.001, 0.1: 0.02}

SPEC_TEXT = """name: {name}
defaults: {{dataset: digits, arch: resnet8, epochs: 3}}
grids:
  - bn_scale_init: [0.5, 0.1]
    lr: [0.1, 0.01]
base: true
seeds: {seeds}
storage: runs
report: {{layout: gamma}}
"""


def cells(seeds: range, base: bool = True) -> list[TrialSpec]:
    specs = [make_spec(bn_scale_init=g, lr=lr, seed=s) for g in GAMMAS for lr in LRS for s in seeds]
    if base:
        specs += [
            make_spec(bn_scale_init=1.0, bn_lr_divisor=1.0, lr=lr, seed=s)
            for lr in LRS
            for s in seeds
        ]
    return specs


def accuracy(spec: TrialSpec) -> float:
    """A deterministic score: a per-seed offset shared by every arm, the arm's gain, and a
    little noise of the run's own (so the differences to BASE are not constant)."""
    shared = ((spec.seed * 7919) % 13) / 1000.0
    own = ((spec.seed * 31 + int(spec.bn_scale_init * 100) + int(spec.lr * 1000)) % 7) / 2000.0
    return round(0.8 + shared + GAIN[spec.bn_scale_init] + own, 6)


def register(store: Store, name: str, specs: list[TrialSpec], seeds: int) -> None:
    store.register_sweep(name, SPEC_TEXT.format(name=name, seeds=seeds), specs)


def complete(store: Store, specs: list[TrialSpec]) -> None:
    for spec in specs:
        acc = accuracy(spec)
        run_cell(store, spec, test_acc=acc, best_val_acc=acc, final_test_acc=acc)


def finished(store: Store) -> None:
    """`demo`: every cell completed, 3 seeds."""
    specs = cells(range(1, 4))
    register(store, "demo", specs, 3)
    complete(store, specs)


def running(store: Store) -> None:
    """`demo`: most cells completed, two running, one pending."""
    specs = cells(range(1, 4))
    register(store, "demo", specs, 3)
    complete(store, specs[:-3])
    store.apply([TrialStarted(s.spec_hash, s.seed, host="node-2") for s in specs[-3:-1]])


def failed(store: Store) -> None:
    """`demo`: completed but for two failed cells (one a Python traceback's last line)."""
    specs = cells(range(1, 4))
    register(store, "demo", specs, 3)
    complete(store, specs[2:])
    store.apply([TrialStarted(s.spec_hash, s.seed, host="node-1") for s in specs[:2]])
    store.apply(
        [
            TrialFailed(specs[0].spec_hash, specs[0].seed, "Traceback...\nRuntimeError: CUDA OOM"),
            TrialFailed(specs[1].spec_hash, specs[1].seed, "boom <script>alert(1)</script>"),
        ]
    )


def diverged(store: Store) -> None:
    """`demo`: two seeds of γ = 0.5 diverged."""
    specs = cells(range(1, 4))
    register(store, "demo", specs, 3)
    complete(store, specs[2:])
    for spec in specs[:2]:
        run_cell(
            store,
            spec,
            epochs=2,
            status="diverged",
            diverged_epoch=2,
            test_acc=None,
            best_val_acc=None,
            final_test_acc=None,
        )


def no_base(store: Store) -> None:
    """`demo`: arms only, no BASE to compare with."""
    specs = cells(range(1, 4), base=False)
    register(store, "demo", specs, 3)
    complete(store, specs)


def one_seed(store: Store) -> None:
    """`demo`: one seed per arm: means without std, nothing tested."""
    specs = cells(range(1, 2))
    register(store, "demo", specs, 1)
    complete(store, specs)


def pending(store: Store) -> None:
    """`demo`: registered, nothing run yet."""
    register(store, "demo", cells(range(1, 3)), 2)


def empty(store: Store) -> None:
    """A schema and no sweep."""


STATES: dict[str, Callable[[Store], None]] = {
    "empty": empty,
    "pending": pending,
    "running": running,
    "failed": failed,
    "diverged": diverged,
    "no_base": no_base,
    "one_seed": one_seed,
    "finished": finished,
}


def make_store(path: Path, state: str) -> str:
    """A SQLite store at `path` in `state`; returns its URL."""
    url = f"sqlite:///{path}"
    with Store.open(url) as store:
        STATES[state](store)
    return url


def make_old_schema(path: Path) -> str:
    """A store whose schema is one revision behind this bnsweep's."""
    url = make_store(path, "finished")
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text(f"UPDATE {VERSION_TABLE} SET version_num = '0001'"))
    engine.dispose()
    return url
