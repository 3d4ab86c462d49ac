"""The read methods of `Store`: sweeps, completed cells, sweep status, notes, and the trials,
epochs and diagnostics DataFrames with their fixed columns and dtypes; also the store's
fingerprint.

`StoreReads` is a mixin: `bnsweep.store.api.Store` combines it with `StoreWrites` and provides
the transaction loop (`_run`) and the redacted `url` it uses.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa

import bnsweep.workers.spec
from bnsweep.store.columns import (
    CURRENT,
    DIAGNOSTIC_COLUMNS,
    EPOCH_COLUMNS,
    IMPORTED_HOST,
    SPEC_COLUMNS,
    TRIAL_COLUMNS,
    arm_label,
    cell_of,
    check_where,
    chunks,
    stale_plugin_records,
    where_clauses,
)
from bnsweep.store.errors import StoreError, StoreFailure
from bnsweep.store.models import (
    FINAL_STATUSES,
    STATUSES,
    Diagnostic,
    Epoch,
    Note,
    Sweep,
    SweepTrial,
    Trial,
)
from bnsweep.store.values import ArmStatus, StoreFingerprint, SweepInfo, SweepStatus
from bnsweep.store.values import Note as NoteValue
from bnsweep.workers.spec import TrialSpec

if TYPE_CHECKING:
    import pandas as pd

T = TypeVar("T")


def _diagnostic_select_columns() -> list[sa.ColumnElement[Any]]:
    trial, diag = Trial.__table__.c, Diagnostic.__table__.c
    return [
        trial.id.label("trial_id"),
        trial.spec_hash,
        trial.seed,
        *(trial[name] for name in SPEC_COLUMNS),
        *(diag[name] for name in list(DIAGNOSTIC_COLUMNS)[3 + len(SPEC_COLUMNS) :]),
    ]


def _trial_select_columns(names: Sequence[str] = tuple(TRIAL_COLUMNS)) -> list[Any]:
    table = Trial.__table__.c
    return [table.id.label("trial_id") if n == "trial_id" else table[n] for n in names]


def _epoch_select_columns() -> list[sa.ColumnElement[Any]]:
    trial, epoch = Trial.__table__.c, Epoch.__table__.c
    return [
        trial.id.label("trial_id"),
        trial.spec_hash,
        trial.seed,
        *(trial[name] for name in SPEC_COLUMNS),
        epoch.epoch,
        epoch.train_loss,
        epoch.val_loss,
        epoch.val_acc,
        epoch.test_acc,
        epoch.lr.label("epoch_lr"),
        epoch.seconds.label("epoch_seconds"),
    ]


def _status_values(status: str | Sequence[str] | None) -> tuple[str, ...]:
    if status is None:
        return ()
    values = (status,) if isinstance(status, str) else tuple(status)
    unknown = [s for s in values if s not in STATUSES]
    if unknown:
        raise StoreError(f"status {unknown[0]!r}: allowed: {', '.join(STATUSES)}")
    return values


def _frame(rows: Sequence[Sequence[object]], dtypes: Mapping[str, str]) -> pd.DataFrame:
    import pandas as pd

    # Column by column, each built once in its final dtype: a frame of objects converted
    # afterwards costs twice as long for a store of 100,000 trials.
    columns = list(zip(*rows, strict=True)) if rows else [()] * len(dtypes)
    data = {}
    for (name, dtype), values in zip(dtypes.items(), columns, strict=True):
        if dtype.startswith("datetime64"):
            data[name] = pd.to_datetime(pd.Series(values, dtype=object), utc=True).astype(dtype)
        else:
            data[name] = pd.Series(values, dtype=dtype)
    return pd.DataFrame(data, columns=list(dtypes))


class StoreReads:
    """The reads of `Store` (bnsweep.store.api), which runs each one in a transaction."""

    if TYPE_CHECKING:
        # Provided by `Store`; declared here for the type checker only.
        @property
        def url(self) -> str: ...

        def _run(
            self,
            work: Callable[[sa.Connection], T],
            what: str,
            *,
            write: bool = False,
            retry: bool = True,
        ) -> T: ...

    def completed_cells(self, cells: Iterable[TrialSpec | tuple[str, int]]) -> set[tuple[str, int]]:
        """Those of `cells` (specs or (spec_hash, seed) pairs) that have a final result.

        Final means completed or diverged: a diverged seed is a result of its arm (training it
        again would diverge again), so a relaunch must not run it either.
        """
        wanted = {cell_of(cell) for cell in cells}
        if not wanted:
            return set()
        hashes = sorted({spec_hash for spec_hash, _ in wanted})

        def work(conn: sa.Connection) -> set[tuple[str, int]]:
            done: set[tuple[str, int]] = set()
            for chunk in chunks(hashes):
                query = sa.select(Trial.spec_hash, Trial.seed).where(
                    Trial.spec_hash.in_(chunk), Trial.status.in_(FINAL_STATUSES)
                )
                done.update((spec_hash, seed) for spec_hash, seed in conn.execute(query))
            return done & wanted

        return self._run(work, "reading completed cells")

    def _sweep_infos(self, conn: sa.Connection, name: str | None = None) -> list[SweepInfo]:
        cells = sa.func.count(SweepTrial.trial_id)
        query = (
            sa.select(Sweep.name, Sweep.spec_text, Sweep.created_at, Sweep.updated_at, cells)
            .outerjoin(SweepTrial, SweepTrial.sweep_id == Sweep.id)
            .group_by(Sweep.id, Sweep.name, Sweep.spec_text, Sweep.created_at, Sweep.updated_at)
            .order_by(Sweep.name)
        )
        if name is not None:
            query = query.where(Sweep.name == name)
        return [SweepInfo(*row) for row in conn.execute(query)]

    def sweeps(self) -> list[SweepInfo]:
        """Every registered sweep, by name."""
        return self._run(self._sweep_infos, "listing sweeps")

    def get_sweep(self, name: str) -> SweepInfo:
        """The sweep called `name`; StoreError naming the known sweeps when there is none."""
        infos = self._run(lambda conn: self._sweep_infos(conn, name), f"reading sweep {name!r}")
        if infos:
            return infos[0]
        known = [info.name for info in self.sweeps()]
        raise StoreFailure(
            f"no sweep named {name!r} in {self.url}; known sweeps: "
            + (", ".join(known) if known else "none")
        )

    def _select(
        self,
        columns: Sequence[sa.ColumnElement[Any]],
        sweep: str | None,
        checked: Mapping[str, tuple[object, ...]],
        statuses: tuple[str, ...] = (),
        from_: sa.FromClause | None = None,
        diagnostics: bool = False,
    ) -> sa.Select[Any]:
        query = sa.select(*columns)
        if from_ is not None:
            query = query.select_from(from_)
        if sweep is not None:
            query = (
                query.join(SweepTrial, SweepTrial.trial_id == Trial.id)
                .join(Sweep, Sweep.id == SweepTrial.sweep_id)
                .where(Sweep.name == sweep)
            )
        current = any(value is CURRENT for value in checked.get("recipe", ()))
        stale = self.stale_plugin_records() if current else frozenset()
        query = query.where(*where_clauses(checked, diagnostics, stale))
        if statuses:
            query = query.where(Trial.status.in_(statuses))
        return query

    def stale_plugin_records(self) -> frozenset[str]:
        """The `trials.plugins` values of an older plugin recipe than the newest this store
        holds for that plugin (`stale_plugin_records`): one short query, no plugin imported."""
        plugins = Trial.__table__.c.plugins
        query = sa.select(plugins).where(plugins.is_not(None)).distinct()
        texts = self._run(lambda conn: conn.scalars(query).all(), "reading plugin recipes")
        return stale_plugin_records(texts)

    def older_plugin_trials(self, sweep: str | None = None) -> int:
        """How many trials linked to `sweep` (the whole store when None) are of an older plugin
        recipe than the newest the store holds for that plugin: left out as older recipes are."""
        stale = self.stale_plugin_records()
        if not stale:
            return 0
        table = Trial.__table__
        query = self._select([sa.func.count(Trial.id)], sweep, {}).where(
            table.c.plugins.in_(sorted(stale))
        )
        return int(self._run(lambda conn: conn.scalar(query), "counting older plugin recipes"))

    def trials(
        self,
        sweep: str | None = None,
        where: Mapping[str, object] | None = None,
        status: str | Sequence[str] | None = None,
        columns: Sequence[str] | None = None,
    ) -> pd.DataFrame:
        """One row per trial (columns and dtypes: `TRIAL_COLUMNS`), in spec then seed order.

        `where` maps a field (`TRIAL_FILTER_FIELDS`) to a value or a list of values; values are
        coerced to the column's type, so strings from a command line work. `columns` reads only
        those of `TRIAL_COLUMNS` (e.g. `RESULT_COLUMNS`, what the tables need).
        """
        names = tuple(TRIAL_COLUMNS) if columns is None else tuple(columns)
        unknown = sorted(set(names) - set(TRIAL_COLUMNS))
        if unknown:
            raise StoreError(
                f"unknown trial column(s) {', '.join(unknown)}; allowed: {', '.join(TRIAL_COLUMNS)}"
            )
        checked = check_where(where)
        statuses = _status_values(status)
        # Sorted here rather than by the database: an ORDER BY over the 14 spec columns is most
        # of a large read on SQLite, and the order is then the same on every backend (byte
        # order for strings, whatever the server's collation).
        query = self._select(_trial_select_columns(names), sweep, checked, statuses)
        rows = self._run(lambda conn: conn.execute(query).all(), "querying trials")
        if not rows and sweep is not None:
            self.get_sweep(sweep)  # an unknown sweep is an error, not an empty result
        frame = _frame(rows, {name: TRIAL_COLUMNS[name] for name in names})
        order = [n for n in (*SPEC_COLUMNS, "seed", "trial_id") if n in frame.columns]
        return frame.sort_values(order, kind="stable", ignore_index=True)

    def epochs(
        self, sweep: str | None = None, where: Mapping[str, object] | None = None
    ) -> pd.DataFrame:
        """One row per (trial, epoch) with the trial's spec_hash, seed and spec columns
        (columns and dtypes: `EPOCH_COLUMNS`); `where` also accepts `epoch`."""
        checked = check_where(where, epochs=True)
        trial_table, epoch_table = Trial.__table__, Epoch.__table__
        columns = _epoch_select_columns()
        query = self._select(
            columns,
            sweep,
            checked,
            from_=epoch_table.join(trial_table, trial_table.c.id == epoch_table.c.trial_id),
        ).order_by(
            *(trial_table.c[name] for name in SPEC_COLUMNS),
            trial_table.c.seed,
            epoch_table.c.epoch,
        )
        rows = self._run(lambda conn: conn.execute(query).all(), "querying epochs")
        if not rows and sweep is not None:
            self.get_sweep(sweep)
        return _frame(rows, EPOCH_COLUMNS)

    def diagnostics(
        self, sweep: str | None = None, where: Mapping[str, object] | None = None
    ) -> pd.DataFrame:
        """One row per (trial, epoch, BN layer) with the trial's spec_hash, seed and spec
        columns (columns and dtypes: `DIAGNOSTIC_COLUMNS`), in spec, seed, epoch, depth order.
        `where` also accepts `epoch`, `layer`, `depth` and `module`."""
        checked = check_where(where, diagnostics=True)
        trial_table, diag_table = Trial.__table__, Diagnostic.__table__
        query = self._select(
            _diagnostic_select_columns(),
            sweep,
            checked,
            from_=diag_table.join(trial_table, trial_table.c.id == diag_table.c.trial_id),
            diagnostics=True,
        ).order_by(
            *(trial_table.c[name] for name in SPEC_COLUMNS),
            trial_table.c.seed,
            diag_table.c.epoch,
            diag_table.c.depth,
            diag_table.c.layer,
        )
        rows = self._run(lambda conn: conn.execute(query).all(), "querying diagnostics")
        if not rows and sweep is not None:
            self.get_sweep(sweep)
        return _frame(rows, DIAGNOSTIC_COLUMNS)

    def sweep_status(self, name: str) -> SweepStatus:
        """Counts by status and the seeds each arm still lacks, for the sweep called `name`.

        Only trials of the current training recipe count; those of other recipes are in
        `older_recipes` (a launch trains their cells again under new hashes).
        """
        table = Trial.__table__
        columns = [
            table.c.spec_hash,
            table.c.seed,
            table.c.status,
            table.c.recipe,
            table.c.plugins,
            table.c.host,
        ] + [table.c[column] for column in SPEC_COLUMNS]
        query = self._select(columns, name, {})
        every = self._run(lambda conn: conn.execute(query).all(), f"reading sweep {name!r}")
        if not every:
            self.get_sweep(name)
        current = bnsweep.workers.spec.RECIPE
        stale = self.stale_plugin_records()
        # A trial of an older plugin recipe is left out as one of an older bnsweep recipe is.
        # An imported trial has no bnsweep recipe to be older than (IMPORTED_HOST).
        present = [row for row in every if row.recipe == current or row.host == IMPORTED_HOST]
        rows = [row for row in present if row.plugins not in stale]
        others: dict[int, int] = {}
        for row in every:
            if row.recipe != current and row.host != IMPORTED_HOST:
                others[row.recipe] = others.get(row.recipe, 0) + 1
        counts = dict.fromkeys(STATUSES, 0)
        arms: dict[str, dict[str, Any]] = {}
        for row in rows:
            counts[row.status] += 1
            arm = arms.setdefault(
                row.spec_hash,
                {"values": {c: getattr(row, c) for c in SPEC_COLUMNS}, "seeds": {}},
            )
            arm["seeds"][row.seed] = row.status
        varying = [
            column
            for column in SPEC_COLUMNS
            if len({arm["values"][column] for arm in arms.values()}) > 1
        ]
        ordered = sorted(
            arms.items(), key=lambda item: tuple(item[1]["values"][c] for c in SPEC_COLUMNS)
        )
        arm_statuses = tuple(
            ArmStatus(
                spec_hash=spec_hash,
                label=arm_label(arm["values"], varying),
                seeds=tuple(sorted(arm["seeds"])),
                missing_seeds=tuple(
                    sorted(s for s, st in arm["seeds"].items() if st not in FINAL_STATUSES)
                ),
                failed_seeds=tuple(sorted(s for s, st in arm["seeds"].items() if st == "failed")),
                running_seeds=tuple(sorted(s for s, st in arm["seeds"].items() if st == "running")),
            )
            for spec_hash, arm in ordered
        )
        return SweepStatus(
            name=name,
            total=len(rows),
            arms=arm_statuses,
            older_recipes=tuple(sorted(others.items())),
            **counts,
        )

    def older_recipes(self, sweep: str | None = None) -> dict[int, int]:
        """{recipe: trials} of the trials of another training recipe than this bnsweep's
        (`bnsweep.workers.spec.RECIPE`), linked to `sweep` (the whole store when None); imported
        trials have no bnsweep recipe and are never counted here."""
        table = Trial.__table__
        query = (
            self._select([table.c.recipe, sa.func.count()], sweep, {})
            .where(table.c.recipe != bnsweep.workers.spec.RECIPE)
            .where(sa.or_(table.c.host.is_(None), table.c.host != IMPORTED_HOST))
            .group_by(table.c.recipe)
            .order_by(table.c.recipe)
        )
        rows = self._run(lambda conn: conn.execute(query).all(), "counting older recipes")
        if sweep is not None and not rows:
            self.get_sweep(sweep)
        return {int(recipe): int(count) for recipe, count in rows}

    def notes(
        self,
        sweep: str | None = None,
        *,
        spec_hashes: Iterable[str] | None = None,
        trial_id: int | None = None,
    ) -> list[NoteValue]:
        """Notes, newest first. `sweep`: those written on the sweep, on its cells (in it, or by
        hash alone) and on its trials; `spec_hashes`: on those cells; `trial_id`: on that trial.
        Filters combine; none lists every note. An unknown sweep is a StoreError naming the
        known ones."""
        query = note_select()
        notes = Note.__table__.c
        if spec_hashes is not None:
            query = query.where(notes.spec_hash.in_(sorted(set(spec_hashes))))
        if trial_id is not None:
            query = query.where(notes.trial_id == trial_id)

        def work(conn: sa.Connection) -> list[NoteValue]:
            selected = query
            if sweep is not None:
                selected = selected.where(_in_sweep(sweep_id_named(conn, sweep)))
            return [NoteValue(*row) for row in conn.execute(selected)]

        return self._run(work, "reading notes")


def note_select() -> sa.Select[Any]:
    notes = Note.__table__.c
    return (
        sa.select(
            notes.id,
            Sweep.__table__.c.name,
            notes.spec_hash,
            notes.trial_id,
            Trial.__table__.c.seed,
            notes.author,
            notes.text,
            notes.created_at,
        )
        .select_from(Note.__table__)
        .outerjoin(Sweep, Sweep.id == notes.sweep_id)
        .outerjoin(Trial, Trial.id == notes.trial_id)
        .order_by(notes.created_at.desc(), notes.id.desc())
    )


def sweep_id_named(conn: sa.Connection, name: str) -> int:
    """The id of the sweep called `name`; StoreError (exit 2) naming the known sweeps."""
    found = conn.scalar(sa.select(Sweep.id).where(Sweep.name == name))
    if found is None:
        known = sorted(conn.scalars(sa.select(Sweep.name)))
        raise StoreError(
            f"no sweep named {name!r}; known sweeps: " + (", ".join(known) if known else "none")
        )
    return int(found)


def _in_sweep(sweep_id: int) -> sa.ColumnElement[bool]:
    """Notes on the sweep, on its cells (written in it or by hash alone) and on its trials."""
    notes = Note.__table__.c
    linked = sa.select(SweepTrial.trial_id).where(SweepTrial.sweep_id == sweep_id)
    hashes = sa.select(Trial.spec_hash).where(Trial.id.in_(linked))
    return sa.or_(
        notes.sweep_id == sweep_id,
        sa.and_(notes.sweep_id.is_(None), notes.spec_hash.in_(hashes)),
        notes.trial_id.in_(linked),
    )


def store_fingerprint(store: StoreReads) -> StoreFingerprint:
    """The store's fingerprint, read in one statement (aggregate subqueries)."""
    sweeps, trials = Sweep.__table__, Trial.__table__

    def count(table: sa.FromClause) -> sa.ScalarSelect[Any]:
        return sa.select(sa.func.count()).select_from(table).scalar_subquery()

    query = sa.select(
        count(sweeps),
        sa.select(sa.func.max(sweeps.c.updated_at)).scalar_subquery(),
        count(trials),
        sa.select(sa.func.max(trials.c.updated_at)).scalar_subquery(),
        count(SweepTrial.__table__),
        count(Epoch.__table__),
        count(Diagnostic.__table__),
        count(Note.__table__),
    )
    row = store._run(lambda conn: conn.execute(query).one(), "reading the store's fingerprint")
    return StoreFingerprint(*row)
