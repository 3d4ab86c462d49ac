"""The read API that hands `analysis` its DataFrames: trials, epochs, diagnostics, by sweep or cell.

`analysis` takes DataFrames and never imports the store, so tables and plots can be built from
any frame with the store's columns: a notebook, a CSV export, a fabricated benchmark set. The
commands and pages that make tables call these functions and hand the frames on.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import pandas as pd

from bnsweep.store.columns import CURRENT

log = logging.getLogger(__name__)

#: Only trials of this bnsweep's training recipe are analysed, on every surface (the CLI, the
#: notebook, the dashboard, the report): a cell trained by an older recipe is a different
#: result (docs/store.md, "Training recipes") and is never mixed in. The same holds for a
#: plugin's recipe: a trial naming a plugin counts only at the newest recipe the store holds for
#: that plugin (docs/extending.md), which is read from the trials, never from the plugin.
CURRENT_RECIPE = {"recipe": CURRENT}


def trials(url: str | None = None, sweep: str | None = None) -> pd.DataFrame:
    """The trials of `sweep` (every trial when None) in the store at `url`, one row per trial
    with every stored column, of the current training recipe only: what `bnsweep.tables` takes.

    `url` None means `BNSWEEP_DB`, then `sqlite:///bnsweep.db`; the store is opened read-only.
    """
    from bnsweep.store.api import Store

    with Store.open(url, read_only=True) as store:
        return store.trials(sweep=sweep, where=CURRENT_RECIPE)


def load_results(url: str | None, sweep: str | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(trials, epochs) of every trial linked to `sweep` (all trials when None).

    The epochs frame keeps the store's column names: the epoch's own learning rate and wall
    time are `epoch_lr` and `epoch_seconds`, apart from the spec's `lr` (α).

    A trial belongs to every sweep that registered its cell, so the frames include results
    of earlier launches and of other sweeps that share the cells. Trial-level rows come from one
    query (`Store.trials`), not one per trial.
    """
    from bnsweep.store.api import Store

    with Store.open(url, read_only=True) as store:
        trials = store.trials(sweep=sweep, where=CURRENT_RECIPE)
        epochs = store.epochs(sweep=sweep, where=CURRENT_RECIPE)
    log.info("loaded %d trials and %d epoch rows", len(trials), len(epochs))
    return trials, epochs


def load_diagnostics(url: str | None, sweep: str | None) -> pd.DataFrame:
    """The BN diagnostics of every trial linked to `sweep` (all when None): one row per
    (trial, epoch, BN layer), epoch 0 being initialisation (docs/diagnostics.md)."""
    from bnsweep.store.api import Store

    with Store.open(url, read_only=True) as store:
        return store.diagnostics(sweep=sweep, where=CURRENT_RECIPE)


def load_trials(url: str | None, sweep: str | None) -> pd.DataFrame:
    """Only the trials frame, and only what the tables need (epochs are for the curves)."""
    from bnsweep.store.api import Store
    from bnsweep.store.columns import RESULT_COLUMNS

    with Store.open(url, read_only=True) as store:
        return store.trials(sweep=sweep, where=CURRENT_RECIPE, columns=RESULT_COLUMNS)


def older_recipe_note(url: str | None, sweep: str | None) -> str | None:
    """One line when the store holds trials of another training recipe linked to `sweep` (all
    trials when None), which the tables leave out, and one when it holds trials of an older
    plugin recipe; None when there are none."""
    from bnsweep.store.api import Store
    from bnsweep.store.values import older_recipe_line

    with Store.open(url, read_only=True) as store:
        lines = [older_recipe_line(store.older_recipes(sweep), sweep)]
        plugin_trials = store.older_plugin_trials(sweep)
    if plugin_trials:
        scope = f"sweep {sweep}" if sweep is not None else "the store"
        lines.append(
            f"note: {scope} holds {plugin_trials} trial(s) of an older plugin recipe (a newer "
            "one is in the store); they are not used by tables (their `plugins` column in "
            "`bnsweep query` says which)"
        )
    found = [line for line in lines if line is not None]
    return "\n".join(found) if found else None


def load_cells(url: str | None, cells: Iterable[tuple[str, int]]) -> pd.DataFrame:
    """The trials of the given (spec_hash, seed) cells, whichever sweeps they were run by."""
    from bnsweep.store.api import Store

    wanted = set(cells)
    hashes = sorted({h for h, _ in wanted})
    with Store.open(url, read_only=True) as store:
        trials = store.trials(where={"spec_hash": hashes}) if hashes else store.trials()
    if trials.empty:
        return trials
    keep = [(h, int(s)) in wanted for h, s in zip(trials["spec_hash"], trials["seed"], strict=True)]
    return trials.loc[keep].reset_index(drop=True)


def sweep_report(url: str | None, sweep: str) -> dict[str, Any] | None:
    """The `report:` mapping of the spec text the sweep was registered with (None if absent)."""
    import yaml

    from bnsweep.store.api import Store

    with Store.open(url, read_only=True) as store:
        text = store.get_sweep(sweep).spec_text
    try:
        data = yaml.safe_load(text) if text else None
    except yaml.YAMLError:
        log.warning(
            "the stored spec of sweep %r is not valid YAML; using the default layout", sweep
        )
        return None
    report = data.get("report") if isinstance(data, dict) else None
    if report is not None and not isinstance(report, dict):
        log.warning(
            "the stored spec of sweep %r has a report: that is not a mapping; ignored", sweep
        )
        return None
    return report
