"""What the pages show, read from the store and cached until the store changes.

A `Reader` opens the store read-only (`Store.open(create=False)`: it never creates a schema
nor migrates one) and answers every question through the store's public read API. Each
request takes one `Snapshot`: the store's fingerprint (one short statement) fixes which cached
values are still valid, so a page of a store that has not changed is served from memory, and a
running sweep on SQLite is never blocked (reads are single short transactions in WAL mode).
"""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, TypeVar

import yaml

from bnsweep.workers.errors import BnsweepError, SpecError, choice_error

if TYPE_CHECKING:
    import pandas as pd

    from bnsweep.analysis.table_model import Block, Cell, Row, Table
    from bnsweep.store.api import Store
    from bnsweep.store.values import Note, StoreFingerprint, SweepStatus

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Statuses in the order the pages list them (`bnsweep status` uses the same).
COUNT_ORDER = ("completed", "running", "failed", "diverged", "pending")
#: How many cached values a reader keeps (pages, frames, tables); the oldest go first.
CACHE_ENTRIES = 256


class NotFound(BnsweepError):
    """A page or API path names a sweep, cell or trial the store does not have."""


class BadRequest(BnsweepError):
    """A control or filter of a page has a value outside what is allowed."""


# -- the table controls ----------------------------------------------------------------------


@dataclass(frozen=True)
class TableQuery:
    """The controls above a sweep's table, as `bnsweep tables` takes them: the paired test, the
    correction, the significance level, the layout (None: the sweep's `report:`, else
    inferred from the arms) and the arm compared against (None: BASE; `bnsweep tables
    --versus`, whose table model checks the name)."""

    test: str = "t"
    correction: str = "none"
    alpha: float = 0.05
    layout: str | None = None
    versus: str | None = None

    def __post_init__(self) -> None:
        from bnsweep.analysis.planning import LAYOUTS
        from bnsweep.analysis.stats import AnalysisOptions

        AnalysisOptions(alpha=self.alpha, correction=self.correction, test=self.test)
        if self.layout is not None and self.layout not in LAYOUTS:
            raise choice_error("layout", self.layout, LAYOUTS)

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> TableQuery:
        """From a page's query string; an empty value means the default."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = (params.get(f.name) or "").strip()
            if not raw:
                continue
            if f.name == "alpha":
                try:
                    values["alpha"] = float(raw)
                except ValueError:
                    raise SpecError(f"alpha: expected a number in (0, 1), got {raw!r}") from None
            else:
                values[f.name] = raw
        return cls(**values)

    def params(self) -> dict[str, str]:
        """The values that differ from the defaults, for links that keep the controls."""
        default = TableQuery()
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value != getattr(default, f.name):
                out[f.name] = f"{value:g}" if isinstance(value, float) else str(value)
        return out


@dataclass(frozen=True)
class TrialFilter:
    """The trials page's and the API's `where`: the user's text, kept to show it back as typed,
    and its `--where` items (`bnsweep.store.columns.split_where`). The store applies them, as
    it does for `bnsweep query --where`: one filter language, one implementation."""

    text: str = ""
    items: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> TrialFilter:
        """Checked before the store is read, as the CLI checks: a bad filter is a BadRequest
        with the CLI's message."""
        from bnsweep.store.columns import check_where, parse_where, split_where
        from bnsweep.store.errors import StoreError

        try:
            items = tuple(split_where(text))
            check_where(parse_where(items))
        except StoreError as err:
            raise BadRequest(str(err)) from None
        return cls(text, items)

    def where(self) -> dict[str, list[object]]:
        from bnsweep.store.columns import parse_where

        return parse_where(self.items)


# -- values the pages show ---------------------------------------------------------------------


@dataclass(frozen=True)
class Progress:
    """Cells of a sweep by status, and an estimate of when the running ones will be done."""

    total: int
    completed: int
    running: int
    failed: int
    diverged: int
    pending: int
    eta_seconds: float | None
    eta_text: str
    last_update: datetime | None

    @property
    def done(self) -> int:
        return self.completed + self.diverged

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0

    def counts(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in ("total", *COUNT_ORDER)}


@dataclass(frozen=True)
class SweepOverview:
    """One sweep as the index and its own page head show it."""

    name: str
    spec_text: str
    created_at: datetime
    updated_at: datetime
    progress: Progress
    recipe: tuple[tuple[str, str], ...]  # spec fields with one value across the sweep
    varying: tuple[tuple[str, str], ...]  # fields with several, their values listed
    storage: str  # where the launch keeps Ray's trial folders (tracebacks: error.txt)


@dataclass(frozen=True)
class Failure:
    """A failed cell: its one-line error and where the whole traceback is."""

    trial_id: int
    spec_hash: str
    seed: int
    arm: str
    attempts: int
    host: str
    finished_at: datetime | None
    error: str
    traceback_at: str


@dataclass(frozen=True)
class RunningTrial:
    """A running cell and its last stored epoch (epoch 0: none stored yet)."""

    trial_id: int
    arm: str
    seed: int
    host: str
    started_at: datetime | None
    epoch: int
    epochs: int  # the epochs it runs to
    val_acc: float | None
    test_acc: float | None
    train_loss: float | None


def estimate_eta(
    trials: pd.DataFrame,
    now: datetime | None = None,
    reached: Mapping[int, int] | None = None,
) -> tuple[float | None, str]:
    """Seconds until the pending and running cells are done, from the store alone, by the rule
    of the launch's own progress line (`bnsweep.progress.eta_from_rate`): the epochs still to
    train over the epochs trained per second so far, so there is an ETA from the first epoch.

    "So far" is the launch now running: the running trials and those that finished since the
    first of them started, timed from the earliest start among them. A finished one trained
    its `epochs_run`, a running one its last stored epoch (`reached`, by trial id). Left: every
    epoch of a pending cell, the rest of a running one's. No running cell: no estimate
    (nothing is being worked on).
    """
    from bnsweep.progress import eta_from_rate

    now = now or datetime.now(timezone.utc)
    reached = reached or {}
    status = trials["status"].astype(str)
    running = trials[status == "running"]
    left_cells = int((status == "pending").sum() + len(running))
    if left_cells == 0:
        return 0.0, "done"
    if running.empty:
        return None, f"not running ({left_cells} cells left)"
    starts = running["started_at"].dropna()
    if starts.empty:
        return None, "estimating…"
    finished = trials[trials["finished_at"] >= starts.min()]
    since = min(starts.min(), finished["started_at"].min()) if len(finished) else starts.min()
    ran = [reached.get(int(t), 0) for t in running["trial_id"]]
    trained = int(finished["epochs_run"].fillna(0).sum()) + sum(ran)
    planned = running["epochs"].astype(int)
    left = int(trials.loc[status == "pending", "epochs"].sum())
    left += sum(max(n - k, 0) for n, k in zip(planned, ran, strict=True))
    eta = eta_from_rate(left, trained, (now - since.to_pydatetime()).total_seconds())
    if eta is None or not math.isfinite(eta):
        return None, "estimating…"
    return eta, f"about {duration_text(eta)} left"


def duration_text(seconds: float) -> str:
    """3 s, 4 min, 2.5 h, 3.1 d: one unit, enough digits to act on."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def progress_of(
    trials: pd.DataFrame, now: datetime | None = None, reached: Mapping[int, int] | None = None
) -> Progress:
    status = trials["status"].astype(str)
    counts = {name: int((status == name).sum()) for name in COUNT_ORDER}
    eta, text = estimate_eta(trials, now, reached)
    stamps = [trials[c].dropna() for c in ("started_at", "finished_at")]
    latest = [s.max().to_pydatetime() for s in stamps if not s.empty]
    return Progress(
        total=len(trials),
        eta_seconds=eta,
        eta_text=text,
        last_update=max(latest) if latest else None,
        **counts,
    )


def _value_text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def recipe_of(
    trials: pd.DataFrame,
) -> tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]:
    """(fields with one value, fields with several and their values), over the spec columns."""
    from bnsweep.store.columns import SPEC_COLUMNS

    fixed, varying = [], []
    for name in SPEC_COLUMNS:
        values = sorted(trials[name].dropna().unique().tolist(), key=str)
        if len(values) == 1:
            fixed.append((name, _value_text(values[0])))
        elif values:
            varying.append((name, ", ".join(_value_text(v) for v in values)))
    return tuple(fixed), tuple(varying)


def storage_of(spec_text: str) -> str:
    """The `storage:` folder of a stored spec (bnsweep's default `runs` when absent)."""
    try:
        data = yaml.safe_load(spec_text) if spec_text else None
    except yaml.YAMLError:
        data = None
    value = data.get("storage") if isinstance(data, dict) else None
    return str(value) if value else "runs"


def report_of(spec_text: str) -> dict[str, Any] | None:
    """The `report:` mapping of a stored spec (the table layout), None if absent or invalid."""
    try:
        data = yaml.safe_load(spec_text) if spec_text else None
    except yaml.YAMLError:
        return None
    report = data.get("report") if isinstance(data, dict) else None
    return report if isinstance(report, dict) else None


# -- the reader and its cache ----------------------------------------------------------------


class Reader:
    """Read-only access to one store, with values cached under the store's fingerprint.

    Opened lazily and again after a failure, so a dashboard started before the first launch
    (or across a database restart) answers with the store's one-line error meanwhile.
    """

    def __init__(
        self, url: str | None = None, *, store: Store | None = None, retry_seconds: float = 5.0
    ) -> None:
        self._url = url
        self._store = store
        self._owns_store = store is None
        self._retry_seconds = retry_seconds
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[Any, ...], Any] = OrderedDict()

    def store(self) -> Store:
        from bnsweep.store.api import Store

        with self._lock:
            if self._store is None:
                self._store = Store.open(
                    self._url, create=False, retry_seconds=self._retry_seconds, **read_only()
                )
            return self._store

    @property
    def url(self) -> str:
        """The store's URL with any password redacted: the only form a page shows."""
        from bnsweep.store.errors import redact_url, resolve_url

        return self._store.url if self._store is not None else redact_url(resolve_url(self._url))

    def close(self) -> None:
        with self._lock:
            if self._store is not None and self._owns_store:
                self._store.close()
            self._store = None if self._owns_store else self._store

    def snapshot(self) -> Snapshot:
        """The current state: one fingerprint read; every value asked of it is cached."""
        from bnsweep.store.errors import StoreError
        from bnsweep.store.reads import store_fingerprint

        store = self.store()
        try:
            fingerprint = store_fingerprint(store)
        except StoreError:
            if self._owns_store:
                self.close()  # open afresh next time: the schema may have been upgraded
            raise
        return Snapshot(self, store, fingerprint)

    def cached(self, key: tuple[Any, ...], build: Callable[[], T]) -> T:
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        value = build()  # outside the lock: two requests may build the same value once each
        with self._lock:
            self._cache[key] = value
            while len(self._cache) > CACHE_ENTRIES:
                self._cache.popitem(last=False)
        return value


def read_only() -> dict[str, bool]:
    """`read_only=True` where `Store.open` has it (SQLite opened with mode=ro, never switched to
    WAL); otherwise `create=False` alone keeps the reads from creating or migrating anything."""
    import inspect

    from bnsweep.store.api import Store

    return {"read_only": True} if "read_only" in inspect.signature(Store.open).parameters else {}


@dataclass(frozen=True)
class Snapshot:
    """The store as of one fingerprint; every method's answer is cached under it."""

    reader: Reader
    store: Store
    fingerprint: StoreFingerprint

    def _cached(self, key: tuple[Any, ...], build: Callable[[], T]) -> T:
        return self.reader.cached((self.fingerprint, *key), build)

    def page(self, key: tuple[Any, ...], build: Callable[[], T]) -> T:
        """A rendered page or download, cached until the store changes."""
        return self._cached(("page", *key), build)

    def sweep_names(self) -> list[str]:
        return [o.name for o in self.overviews()]

    def overviews(self) -> list[SweepOverview]:
        return self._cached(("overviews",), lambda: [self.overview(i.name) for i in self._infos()])

    def _infos(self) -> list[Any]:
        return self._cached(("infos",), self.store.sweeps)

    def overview(self, name: str) -> SweepOverview:
        def build() -> SweepOverview:
            info = self._info(name)
            trials = self.results(name)  # counted as `bnsweep status` counts
            fixed, varying = recipe_of(trials)
            reached = {r.trial_id: r.epoch for r in self.running(name)}
            return SweepOverview(
                name=info.name,
                spec_text=info.spec_text,
                created_at=info.created_at,
                updated_at=info.updated_at,
                progress=progress_of(trials, reached=reached),
                recipe=fixed,
                varying=varying,
                storage=storage_of(info.spec_text),
            )

        return self._cached(("overview", name), build)

    def _info(self, name: str) -> Any:
        for info in self._infos():
            if info.name == name:
                return info
        known = ", ".join(i.name for i in self._infos()) or "none"
        raise NotFound(f"no sweep named {name!r} in {self.store.url}; known sweeps: {known}")

    def trials(self, name: str, where: TrialFilter | None = None) -> pd.DataFrame:
        """The sweep's trials, those `where` keeps when given (the store's query, as `bnsweep
        query --where` runs it)."""
        self._info(name)
        if where is None or not where.items:
            return self._cached(("trials", name), lambda: self.store.trials(sweep=name))
        return self._cached(
            ("trials", name, where.items),
            lambda: self.store.trials(sweep=name, where=where.where()),
        )

    def notes(
        self, name: str, *, spec_hashes: Iterable[str] | None = None, trial_id: int | None = None
    ) -> list[Note]:
        """The notes of the sweep (on it, its cells and its trials), newest first; only those on
        the cells `spec_hashes` or on the trial `trial_id` when given (`Store.notes`)."""
        self._info(name)
        hashes = None if spec_hashes is None else tuple(sorted(set(spec_hashes)))
        return self._cached(
            ("notes", name, hashes, trial_id),
            lambda: self.store.notes(name, spec_hashes=hashes, trial_id=trial_id),
        )

    def results(self, name: str) -> pd.DataFrame:
        """The trials the tables and figures count: this bnsweep's training recipe only, as
        `bnsweep tables`, `bnsweep plots` and `bnsweep.trials` read them (the trials page and
        its downloads list every trial, as `bnsweep query` does)."""
        from bnsweep.store.results import CURRENT_RECIPE

        self._info(name)
        return self._cached(
            ("results", name), lambda: self.store.trials(sweep=name, where=CURRENT_RECIPE)
        )

    def epochs(self, name: str, results: bool = False) -> pd.DataFrame:
        """Every epoch of the sweep's trials; with `results`, of those `results()` counts."""
        from bnsweep.store.results import CURRENT_RECIPE

        self._info(name)
        where = CURRENT_RECIPE if results else None
        return self._cached(
            ("epochs", name, results), lambda: self.store.epochs(sweep=name, where=where)
        )

    def diagnostics(self, name: str, results: bool = False) -> pd.DataFrame:
        """The BN diagnostics of the sweep's trials; with `results`, of those `results()`
        counts."""
        from bnsweep.store.results import CURRENT_RECIPE

        self._info(name)
        where = CURRENT_RECIPE if results else None
        return self._cached(
            ("diagnostics", name, results),
            lambda: self.store.diagnostics(sweep=name, where=where),
        )

    def running(self, name: str) -> list[RunningTrial]:
        """The running cells of those `results()` counts, each with its last stored epoch: the
        epochs of running trials only, so a large sweep's history is not read."""

        def build() -> list[RunningTrial]:
            from bnsweep.store.columns import SPEC_COLUMNS, arm_label

            trials = self.results(name)
            running = trials[trials["status"].astype(str) == "running"]
            if running.empty:
                return []
            epochs = self.store.epochs(sweep=name, where={"status": "running"})
            last = {r["trial_id"]: r for r in records(epochs.groupby("trial_id").tail(1))}
            varying = [n for n, _ in recipe_of(trials)[1]]
            out = []
            for row in records(running):
                epoch = last.get(row["trial_id"], {})
                out.append(
                    RunningTrial(
                        trial_id=row["trial_id"],
                        arm=arm_label({c: row[c] for c in SPEC_COLUMNS}, varying),
                        seed=row["seed"],
                        host=row["host"] or "",
                        started_at=row["started_at"],
                        epoch=epoch.get("epoch") or 0,
                        epochs=row["epochs"],
                        val_acc=epoch.get("val_acc"),
                        test_acc=epoch.get("test_acc"),
                        train_loss=epoch.get("train_loss"),
                    )
                )
            return out

        return self._cached(("running", name), build)

    def status(self, name: str) -> SweepStatus:
        """What `Store.sweep_status` answers, computed from the trials frame already read (a
        second query of every trial costs seconds at 100,000 trials); a test keeps them equal."""
        return self._cached(
            ("status", name),
            lambda: status_of(name, self.trials(name), self.store.stale_plugin_records()),
        )

    def tables(self, name: str, query: TableQuery) -> list[Table]:
        """The sweep's tables under `query`; `AnalysisError` when nothing can be tabulated yet
        (no completed trial), which the pages show as a line instead of a table."""

        def build() -> list[Table]:
            from bnsweep.sweep_tables import tables_for

            # Only a chosen arm is passed, so a table model without `versus` answers BASE tables.
            versus: dict[str, Any] = {"versus": query.versus} if query.versus else {}
            return tables_for(
                self.results(name),
                report_of(self._info(name).spec_text),
                query.layout,
                test=query.test,
                correction=query.correction,
                alpha=query.alpha,
                **versus,
            )

        return self._cached(("tables", name, query), build)

    def failures(self, name: str) -> list[Failure]:
        def build() -> list[Failure]:
            from bnsweep.store.columns import SPEC_COLUMNS, arm_label

            trials = self.results(name)
            failed = trials[trials["status"].astype(str) == "failed"]
            storage = self.overview(name).storage
            varying = [n for n, _ in self.overview(name).varying]
            out = []
            for row in records(failed):
                values = {c: row[c] for c in SPEC_COLUMNS}
                error = (row["error"] or "").strip()
                out.append(
                    Failure(
                        trial_id=row["trial_id"],
                        spec_hash=row["spec_hash"],
                        seed=row["seed"],
                        arm=arm_label(values, varying),
                        attempts=row["attempts"],
                        host=row["host"] or "",
                        finished_at=row["finished_at"],
                        error=error.splitlines()[-1] if error else "(no message recorded)",
                        traceback_at=f"{storage}/{name}/*/{row['spec_hash']}-seed{row['seed']}-*"
                        "/error.txt",
                    )
                )
            return out

        return self._cached(("failures", name), build)


def status_of(
    name: str, trials: pd.DataFrame, stale_plugins: frozenset[str] = frozenset()
) -> SweepStatus:
    """A sweep's `SweepStatus` from its trials frame: counts by status, and per arm (spec_hash)
    its seeds and which of them are missing, failed or running, arms in spec-column order; the
    trials of other training recipes only in `older_recipes`, as `Store.sweep_status` counts.
    `stale_plugins` is the store's `stale_plugin_records()`: trials of an older plugin recipe,
    left out as `Store.sweep_status` leaves them out."""
    import bnsweep.workers.spec
    from bnsweep.store.columns import IMPORTED_HOST, SPEC_COLUMNS, arm_label
    from bnsweep.store.models import FINAL_STATUSES, STATUSES
    from bnsweep.store.values import ArmStatus, SweepStatus

    # As `Store.sweep_status`: an imported trial has no bnsweep recipe to be older than.
    current = (trials["recipe"] == bnsweep.workers.spec.RECIPE) | (
        trials["host"].astype(object) == IMPORTED_HOST
    )
    older = trials.loc[~current, "recipe"].value_counts()
    older_recipes = tuple(sorted((int(r), int(n)) for r, n in older.items()))
    if stale_plugins and "plugins" in trials.columns:
        current &= ~trials["plugins"].isin(stale_plugins)
    trials = trials[current]
    status = trials["status"].astype(str)
    counts: dict[str, Any] = {s: int((status == s).sum()) for s in STATUSES}
    frame = trials.assign(_status=status).sort_values([*SPEC_COLUMNS, "seed"], kind="stable")
    specs = frame.drop_duplicates("spec_hash")
    varying = [c for c in SPEC_COLUMNS if specs[c].nunique(dropna=False) > 1]

    def seeds(mask: pd.Series | None = None) -> dict[str, tuple[int, ...]]:
        part = frame if mask is None else frame[mask]
        grouped = part.groupby("spec_hash", sort=False)["seed"]
        return {h: tuple(sorted(int(x) for x in v)) for h, v in grouped.agg(tuple).items()}

    every = seeds()
    missing = seeds(~frame["_status"].isin(FINAL_STATUSES))
    failed = seeds(frame["_status"] == "failed")
    running = seeds(frame["_status"] == "running")
    values = {c: specs[c].tolist() for c in SPEC_COLUMNS}
    arms = []
    for i, spec_hash in enumerate(specs["spec_hash"].astype(str)):
        arms.append(
            ArmStatus(
                spec_hash=spec_hash,
                label=arm_label({c: values[c][i] for c in SPEC_COLUMNS}, varying),
                seeds=every[spec_hash],
                missing_seeds=missing.get(spec_hash, ()),
                failed_seeds=failed.get(spec_hash, ()),
                running_seeds=running.get(spec_hash, ()),
            )
        )
    return SweepStatus(
        name=name, total=len(trials), arms=tuple(arms), older_recipes=older_recipes, **counts
    )


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """The rows of a store frame as plain Python values, for pages and their tests: a missing
    value is None, whatever pandas holds it as (NaN in a `str` or float column, pd.NA in an
    Int64 one, NaT), since NaN is truthy and `str(nan)` is "nan"; numbers are int or float,
    times datetime."""
    import pandas as pd

    out = []
    for row in frame.to_dict("records"):
        out.append({k: _plain(v, pd) for k, v in row.items()})
    return out


def _plain(value: Any, pd: Any) -> Any:
    if value is None or (not isinstance(value, (str, bytes)) and pd.isna(value)):
        return None
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    return value.item() if hasattr(value, "item") else value  # numpy scalars


# -- cells of a table ------------------------------------------------------------------------


def cell_id(block: int, row: int, column: int) -> str:
    """The address of a cell in a page's path: block-row-column, 0-based."""
    return f"{block}-{row}-{column}"


def find_cell(table: Table, ident: str) -> tuple[Block, Row, int, Cell]:
    """The cell at `ident` (see `cell_id`); NotFound when the table has none there."""
    try:
        b, r, j = (int(x) for x in ident.split("-"))
        block = table.blocks[b]
        row = block.rows[r]
        cell = row.cells[j]
    except (ValueError, IndexError):
        cell = None
    if cell is None or min(b, r, j) < 0:
        raise NotFound(f"no cell {ident!r} in this table: a cell is BLOCK-ROW-COLUMN, 0-based")
    return block, row, j, cell


def cell_trials(
    trials: pd.DataFrame, cell: Cell, block: Block, column_field: str, column_value: Any
) -> pd.DataFrame:
    """The trials behind one cell: its arm, in its block's experiment and its column."""
    mask = (
        (trials["formulation"].astype(str) == cell.arm.formulation)
        & (trials["bn_scale_init"].astype(float) == cell.arm.gamma)
        & (trials["bn_lr_divisor"].astype(float) == cell.arm.c)
    )
    keys = dict(block.key)
    if cell.comparison is not None:
        keys.update(cell.comparison.experiment)
    elif column_value is not None:
        keys[column_field] = column_value
    for name, value in keys.items():
        if name in trials.columns:
            mask &= trials[name] == value
    return trials[mask]


def with_query(query: TableQuery, **changes: Any) -> TableQuery:
    return replace(query, **changes)
