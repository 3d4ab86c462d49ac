"""The write methods of `Store`: registering sweeps, applying events, requeueing stale trials,
adding notes, and forgetting trials on request.

`StoreWrites` is a mixin: `bnsweep.store.api.Store` combines it with `StoreReads` and provides
the transaction loop (`_run`), the `url` and the `dialect` it uses. It builds on `StoreReads`:
a registered sweep is read back, and `forget` selects what `trials()` would return.
"""

from __future__ import annotations

import dataclasses
import hmac
import logging
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect

import bnsweep.workers.spec
from bnsweep.store.columns import SPEC_COLUMNS, cell_of, check_where, chunks, imported_origins
from bnsweep.store.errors import StoreError
from bnsweep.store.events import (
    EVENT_TYPES,
    RESULT_FIELDS,
    DiagnosticsRecorded,
    EpochRecorded,
    Event,
    TrialFailed,
    TrialFinished,
    TrialStarted,
    runtime_text,
    utc_now,
)
from bnsweep.store.models import (
    FINAL_STATUSES,
    NOTE_MAX_CHARS,
    Diagnostic,
    Epoch,
    Note,
    Secret,
    Sweep,
    SweepTrial,
    Trial,
)
from bnsweep.store.reads import StoreReads, note_select, sweep_id_named
from bnsweep.store.values import ForgetCount, SweepInfo, seed_ranges
from bnsweep.store.values import Note as NoteValue
from bnsweep.workers import plugins
from bnsweep.workers.spec import TrialSpec

log = logging.getLogger(__name__)

#: The name of the store's secret that checkpoint signatures derive from (`Store.cell_keys`).
CHECKPOINT_KEY = "checkpoint-key"


@dataclass
class _Cell:
    """A trial's state as seen inside one `apply` transaction."""

    id: int
    status: str
    started_at: datetime | None


@dataclass
class _Batch:
    """What one `apply` transaction writes. Trial rows are updated event by event; epoch and BN
    layer rows are collected by key (the last event for a row wins) and written in bulk at the
    end, as upserts, or as fills that only add missing rows (for a trial that is final)."""

    conn: sa.Connection
    now: datetime
    epoch_upserts: dict[tuple[int, int], dict[str, object]] = field(default_factory=dict)
    epoch_fills: dict[tuple[int, int], dict[str, object]] = field(default_factory=dict)
    layer_upserts: dict[tuple[int, int, str], dict[str, object]] = field(default_factory=dict)
    layer_fills: dict[tuple[int, int, str], dict[str, object]] = field(default_factory=dict)


def _record_epoch(batch: _Batch, cell: _Cell, item: EpochRecorded) -> None:
    row = {"trial_id": cell.id, **vars(item.values)}
    # Once final, a trial's epochs are kept as they are; a gap may still be filled.
    target = batch.epoch_fills if cell.status in FINAL_STATUSES else batch.epoch_upserts
    target[(cell.id, item.values.epoch)] = row


def _record_diagnostics(batch: _Batch, cell: _Cell, item: DiagnosticsRecorded) -> None:
    # The same rule as epochs: a final trial's rows are kept, gaps may be filled.
    target = batch.layer_fills if cell.status in FINAL_STATUSES else batch.layer_upserts
    for layer in item.values:
        target[(cell.id, item.epoch, layer.layer)] = {
            "trial_id": cell.id,
            "epoch": item.epoch,
            **vars(layer),
        }


def _is_final(cell: _Cell, item: TrialStarted | TrialFinished | TrialFailed) -> bool:
    """Whether the trial has its result: its row then ignores starts, finishes and failures."""
    if cell.status in FINAL_STATUSES:
        log.debug("ignoring %s for %s trial %d", type(item).__name__, cell.status, cell.id)
        return True
    return False


def _update_trial(batch: _Batch, cell: _Cell, values: dict[str, object]) -> None:
    trials = Trial.__table__
    batch.conn.execute(
        sa.update(Trial)
        .where(trials.c.id == cell.id, trials.c.status.not_in(FINAL_STATUSES))
        .values(updated_at=batch.now, **values)
    )
    cell.status = str(values["status"])


def _start_trial(batch: _Batch, cell: _Cell, item: TrialStarted) -> None:
    if _is_final(cell, item):
        return
    if cell.started_at is not None and item.started_at <= cell.started_at:
        return  # a replay of this attempt's start, or a stale earlier one
    values = {
        "status": "running",
        "attempts": Trial.__table__.c.attempts + 1,
        "started_at": item.started_at,
        "host": item.host,
        "device": item.device,
        "package_version": item.package_version,
        "git_commit": item.git_commit,
        "threads": item.threads,
        "runtime": runtime_text(item.runtime),
        "finished_at": None,
        "error": None,
    }
    cell.started_at = item.started_at
    _update_trial(batch, cell, values)


def _finish_trial(batch: _Batch, cell: _Cell, item: TrialFinished) -> None:
    if _is_final(cell, item):
        return
    _update_trial(
        batch, cell, {name: getattr(item, name) for name in (*RESULT_FIELDS, "finished_at")}
    )


def _fail_trial(batch: _Batch, cell: _Cell, item: TrialFailed) -> None:
    if _is_final(cell, item):
        return
    if cell.started_at is not None and item.finished_at < cell.started_at:
        return  # the failure of an attempt older than the one now running
    _update_trial(
        batch, cell, {"status": "failed", "error": item.error, "finished_at": item.finished_at}
    )


#: How `Store.apply` writes each kind of event, by its type (`bnsweep.store.events.EVENT_TYPES`).
#: Any: each writer takes its own event type, which a dict's value type cannot say.
EVENT_WRITERS: dict[type, Callable[[_Batch, _Cell, Any], None]] = {
    TrialStarted: _start_trial,
    EpochRecorded: _record_epoch,
    DiagnosticsRecorded: _record_diagnostics,
    TrialFinished: _finish_trial,
    TrialFailed: _fail_trial,
}


def _refresh_plugins(conn: sa.Connection, provenance: Mapping[str, str | None]) -> None:
    """A cell not yet final records the plugin versions of the launch that will train it: the
    same key (recipe) may be trained by a newer version of the plugin than first registered it.
    A final trial keeps the versions that made it."""
    table = Trial.__table__
    for spec_hash, text in sorted(provenance.items()):
        if text is None:
            continue
        conn.execute(
            sa.update(Trial)
            .where(
                table.c.spec_hash == spec_hash,
                table.c.status.not_in(FINAL_STATUSES),
                table.c.plugins.is_distinct_from(text),
            )
            .values(plugins=text)
        )


class StoreWrites(StoreReads):
    """The writes of `Store` (bnsweep.store.api): each one transaction, every one idempotent."""

    if TYPE_CHECKING:
        # Provided by `Store`; declared here for the type checker only.
        @property
        def dialect(self) -> str: ...

    def check_launchable(self, name: str) -> None:
        """Refuse, before a launch writes anything, a sweep name that `bnsweep import` holds."""
        self._run(lambda conn: _refuse_imported(conn, name), f"reading sweep {name!r}")

    def register_sweep(self, name: str, spec_text: str, specs: Sequence[TrialSpec]) -> SweepInfo:
        """Record a sweep and its cells; trials that do not exist yet are added as pending.

        Idempotent. Registering an existing name with different `spec_text` replaces the text
        and keeps every link made before, so a sweep's cells are the union of all the specs
        registered under its name (give a changed experiment a new name to start clean).
        A sweep `bnsweep import` made is refused (`check_launchable`): its text is the record
        of the files imported into it, which a launch must not replace.
        """
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            raise StoreError(f"sweep name: expected 1-200 characters, got {name!r}")
        now = utc_now()
        rows: dict[tuple[str, int], dict[str, object]] = {}
        provenance: dict[str, str | None] = {}
        for spec in specs:
            if not isinstance(spec, TrialSpec):
                raise StoreError(f"register_sweep: expected TrialSpec values, got {spec!r}")
            values = {column: getattr(spec, column) for column in SPEC_COLUMNS}
            rows[(spec.spec_hash, spec.seed)] = {
                "spec_hash": spec.spec_hash,
                "seed": spec.seed,
                **values,
                # The recipe its spec_hash was computed with (read now, like the hash).
                "recipe": bnsweep.workers.spec.RECIPE,
                # The plugins it names, their versions and recipes (None for built-ins only).
                "plugins": provenance.setdefault(
                    spec.spec_hash, plugins.provenance(spec.result_fields())
                ),
                "status": "pending",
                "attempts": 0,
                "created_at": now,
                "updated_at": now,
            }
        insert = self._insert

        def work(conn: sa.Connection) -> SweepInfo:
            _refuse_imported(conn, name)
            sweep_insert = insert(Sweep.__table__).values(
                name=name, spec_text=spec_text, created_at=now, updated_at=now
            )
            conn.execute(
                sweep_insert.on_conflict_do_update(
                    index_elements=["name"],
                    set_={"spec_text": spec_text, "updated_at": now},
                    where=Sweep.__table__.c.spec_text != spec_text,
                )
            )
            sweep_id = conn.scalar(sa.select(Sweep.id).where(Sweep.name == name))
            if rows:
                conn.execute(
                    insert(Trial.__table__).on_conflict_do_nothing(
                        index_elements=["spec_hash", "seed"]
                    ),
                    list(rows.values()),
                )
                _refresh_plugins(conn, provenance)
                ids = self._trial_ids(conn, rows)
                conn.execute(
                    insert(SweepTrial.__table__).on_conflict_do_nothing(
                        index_elements=["sweep_id", "trial_id"]
                    ),
                    [{"sweep_id": sweep_id, "trial_id": ids[cell]} for cell in rows],
                )
            return self._sweep_infos(conn, name)[0]

        info = self._run(work, f"registering sweep {name!r}", write=True)
        log.info("registered sweep %r: %d cells in %s", name, info.cells, self.url)
        return info

    def cell_keys(
        self, cells: Iterable[TrialSpec | tuple[str, int]]
    ) -> dict[tuple[str, int], bytes]:
        """The key that signs each registered cell's files in checkpoint storage
        (service/checkpoints.py): derived from the store's secret, made on first use, and the
        trial's row. Only who can read this database can sign; a trial forgotten and registered
        again gets a new row, so a new key, and its old files no longer verify."""
        wanted = {cell_of(cell) for cell in cells}
        insert = self._insert

        def work(conn: sa.Connection) -> tuple[str, dict[tuple[str, int], str]]:
            conn.execute(
                insert(Secret.__table__)
                .values(name=CHECKPOINT_KEY, value=secrets.token_hex(32))
                .on_conflict_do_nothing(index_elements=["name"])
            )
            secret = conn.scalar(sa.select(Secret.value).where(Secret.name == CHECKPOINT_KEY))
            rows: dict[tuple[str, int], str] = {}
            for chunk in chunks(sorted({spec_hash for spec_hash, _ in wanted})):
                query = sa.select(Trial.spec_hash, Trial.seed, Trial.id, Trial.created_at).where(
                    Trial.spec_hash.in_(chunk)
                )
                for spec_hash, seed, trial_id, created in conn.execute(query):
                    if (spec_hash, seed) in wanted:
                        rows[(spec_hash, seed)] = f"{spec_hash} {seed} {trial_id} {created}"
            return str(secret), rows

        secret, rows = self._run(work, "reading the checkpoint key", write=True)
        key = bytes.fromhex(secret)
        return {cell: hmac.new(key, row.encode(), "sha256").digest() for cell, row in rows.items()}

    @property
    def _insert(self) -> Callable[..., Any]:
        # `INSERT ... ON CONFLICT` is spelled the same on both backends but built per dialect.
        return pg_dialect.insert if self.dialect == "postgresql" else sqlite_dialect.insert

    @staticmethod
    def _trial_ids(
        conn: sa.Connection, cells: Iterable[tuple[str, int]]
    ) -> dict[tuple[str, int], int]:
        wanted = set(cells)
        hashes = sorted({spec_hash for spec_hash, _ in wanted})
        ids: dict[tuple[str, int], int] = {}
        for chunk in chunks(hashes):
            query = sa.select(Trial.id, Trial.spec_hash, Trial.seed).where(
                Trial.spec_hash.in_(chunk)
            )
            for trial_id, spec_hash, seed in conn.execute(query):
                if (spec_hash, seed) in wanted:
                    ids[(spec_hash, seed)] = trial_id
        return ids

    def apply(self, events: Sequence[Event]) -> None:
        """Apply events in order, all in one transaction (retried as a whole when the database
        drops out). Every cell named must have been registered with `register_sweep`."""
        events = list(events)
        for item in events:
            if not isinstance(item, EVENT_TYPES):
                raise TypeError(f"apply: not a store event: {item!r}")
        if not events:
            return
        cells = {(item.spec_hash, item.seed) for item in events}
        self._run(lambda conn: self._apply(conn, events, cells), "recording results", write=True)

    def _apply(
        self, conn: sa.Connection, events: Sequence[Event], cells: set[tuple[str, int]]
    ) -> None:
        state = self._lock_cells(conn, cells)
        unknown = sorted(cells - state.keys())
        if unknown:
            shown = ", ".join(f"{h}/seed {s}" for h, s in unknown[:5])
            raise StoreError(
                f"{len(unknown)} cell(s) not in the store ({shown}); register the sweep first"
            )
        batch = _Batch(conn, utc_now())
        for item in events:
            EVENT_WRITERS[type(item)](batch, state[(item.spec_hash, item.seed)], item)
        epochs = Epoch.__table__
        if batch.epoch_upserts:
            statement = self._insert(epochs)
            metric_names = [c.name for c in epochs.c if c.name not in ("trial_id", "epoch")]
            conn.execute(
                statement.on_conflict_do_update(
                    index_elements=["trial_id", "epoch"],
                    set_={name: statement.excluded[name] for name in metric_names},
                ),
                list(batch.epoch_upserts.values()),
            )
        if batch.epoch_fills:
            conn.execute(
                self._insert(epochs).on_conflict_do_nothing(index_elements=["trial_id", "epoch"]),
                list(batch.epoch_fills.values()),
            )
        self._write_layers(conn, batch.layer_upserts, batch.layer_fills)

    def _write_layers(
        self,
        conn: sa.Connection,
        upserts: Mapping[tuple[int, int, str], dict[str, object]],
        fills: Mapping[tuple[int, int, str], dict[str, object]],
    ) -> None:
        table = Diagnostic.__table__
        key = ["trial_id", "epoch", "layer"]
        if upserts:
            statement = self._insert(table)
            names = [c.name for c in table.c if c.name not in key]
            conn.execute(
                statement.on_conflict_do_update(
                    index_elements=key, set_={name: statement.excluded[name] for name in names}
                ),
                list(upserts.values()),
            )
        if fills:
            conn.execute(
                self._insert(table).on_conflict_do_nothing(index_elements=key),
                list(fills.values()),
            )

    @staticmethod
    def _lock_cells(
        conn: sa.Connection, cells: set[tuple[str, int]]
    ) -> dict[tuple[str, int], _Cell]:
        # FOR UPDATE (PostgreSQL; SQLite's BEGIN IMMEDIATE already locks the file) keeps the
        # statuses read here valid until commit, so the transition rules hold under concurrency.
        hashes = sorted({spec_hash for spec_hash, _ in cells})
        state: dict[tuple[str, int], _Cell] = {}
        for chunk in chunks(hashes):
            query = (
                sa.select(Trial.id, Trial.spec_hash, Trial.seed, Trial.status, Trial.started_at)
                .where(Trial.spec_hash.in_(chunk))
                .order_by(Trial.id)
                .with_for_update()
            )
            for trial_id, spec_hash, seed, status, started_at in conn.execute(query):
                if (spec_hash, seed) in cells:
                    state[(spec_hash, seed)] = _Cell(trial_id, status, started_at)
        return state

    def requeue_running(self, sweep: str) -> int:
        """Set every `running` trial of `sweep` back to `pending`; return how many.

        Called by a launch that holds the sweep's launch lock, at its start and at its end: no
        other launch of the sweep is live, so a row still `running` is one a killed or
        interrupted launch left behind, and no trial trains it any more. Every cell linked to
        the sweep is reset, those no longer in its spec too, which no later launch would
        otherwise touch. (A cell shared with another sweep under launch may be running there:
        its next start or result sets it right again.)"""

        def work(conn: sa.Connection) -> int:
            ids = (
                sa.select(SweepTrial.trial_id)
                .join(Sweep, Sweep.id == SweepTrial.sweep_id)
                .where(Sweep.name == sweep)
            )
            done = conn.execute(
                sa.update(Trial)
                .where(Trial.id.in_(ids), Trial.status == "running")
                .values(status="pending", updated_at=utc_now())
            )
            return int(done.rowcount or 0)

        return self._run(work, f"requeueing the running trials of sweep {sweep!r}", write=True)

    # -- notes ----------------------------------------------------------------------------------

    def add_note(
        self,
        text: str,
        author: str,
        *,
        sweep: str | None = None,
        spec_hash: str | None = None,
        trial_id: int | None = None,
        seed: int | None = None,
        created_at: datetime | None = None,
    ) -> NoteValue:
        """Add a note and return it. The target: a trial (`trial_id`, or `spec_hash` and `seed`),
        a cell (`spec_hash`, with the `sweep` it belongs to or alone) or a sweep (`sweep`).

        A target that does not exist is a StoreError naming what does, and nothing is written.
        Notes are never edited or deleted here. Idempotent under the store's retries: the same
        note (target, author, text, time) is added once.
        """
        text = _note_text(text)
        author = _note_author(author)
        if trial_id is not None and (spec_hash, seed, sweep) != (None, None, None):
            raise StoreError("note: name a trial by its id alone, or by spec_hash and seed")
        if seed is not None and spec_hash is None:
            raise StoreError("note: a seed names a trial together with a spec_hash")
        if (sweep, spec_hash, trial_id) == (None, None, None):
            raise StoreError("note: name a sweep, a cell (spec_hash) or a trial to write it on")
        now = created_at or utc_now()

        def work(conn: sa.Connection) -> NoteValue:
            row = _note_row(conn, sweep, spec_hash, trial_id, seed)
            row.update(author=author, text=text, created_at=now)
            notes = Note.__table__
            same = [notes.c[k].is_(None) if v is None else notes.c[k] == v for k, v in row.items()]
            found = conn.scalar(sa.select(notes.c.id).where(*same))
            if found is None:
                found = conn.scalar(sa.insert(Note).values(**row).returning(notes.c.id))
            return NoteValue(*conn.execute(note_select().where(notes.c.id == found)).one())

        note = self._run(work, "adding a note", write=True)
        log.info("added note %d on %s in %s", note.id, note.target, self.url)
        return note

    # -- deleting, on request only ----------------------------------------------------------------

    def forget(
        self,
        sweep: str | None = None,
        where: Mapping[str, object] | None = None,
        *,
        dry_run: bool = False,
    ) -> ForgetCount:
        """Delete the trials `trials(sweep, where)` would return, with their epochs, diagnostics
        and sweep links; a later launch trains those cells again. `dry_run` only counts.

        A trial belongs to every sweep that registered it, so forgetting it through one sweep
        forgets it for all of them (`ForgetCount.shared` says how many). Running trials are
        refused, since a launch is still writing them: StoreError, nothing deleted (a dry run
        counts them in `ForgetCount.running`). At least one filter is required; the whole store
        is never forgotten by omission.
        """
        checked = check_where(where)
        if sweep is None and not checked:
            raise StoreError(
                "forget: name the trials with a sweep and/or where filters "
                "(e.g. --sweep NAME, --where recipe=1); nothing was deleted"
            )
        trials, links = Trial.__table__, SweepTrial.__table__
        ids_query = self._select([trials.c.id, trials.c.status], sweep, checked)

        def work(conn: sa.Connection) -> ForgetCount:
            # Locked until commit (PostgreSQL), so no start slips in between check and delete.
            query = ids_query if dry_run else ids_query.with_for_update(of=trials)
            found = conn.execute(query).all()
            ids = [row.id for row in found]
            running = sum(row.status == "running" for row in found)
            if running and not dry_run:
                raise StoreError(
                    f"forget: {running} of the {len(ids)} matching trials are running (a launch "
                    "is writing them); wait for it, or leave them out with --where status=... "
                    "naming the other statuses; nothing was deleted"
                )
            count = ForgetCount(trials=len(ids), epochs=0, shared=0, running=running)
            for chunk in chunks(ids):
                epochs = conn.scalar(
                    sa.select(sa.func.count()).where(Epoch.__table__.c.trial_id.in_(chunk))
                )
                shared: int | None = 0
                if sweep is not None:
                    shared = conn.scalar(
                        sa.select(sa.func.count(sa.distinct(links.c.trial_id))).where(
                            links.c.trial_id.in_(chunk),
                            links.c.sweep_id.not_in(sa.select(Sweep.id).where(Sweep.name == sweep)),
                        )
                    )
                count = dataclasses.replace(
                    count,
                    epochs=count.epochs + int(epochs or 0),
                    shared=count.shared + int(shared or 0),
                )
                if not dry_run:
                    # Epochs, diagnostics and sweep links go by ON DELETE CASCADE.
                    conn.execute(sa.delete(Trial).where(trials.c.id.in_(chunk)))
            return count

        what = "counting trials to forget" if dry_run else "forgetting trials"
        result = self._run(work, what, write=not dry_run)
        if not result.trials and sweep is not None:
            self.get_sweep(sweep)  # an unknown sweep is an error, not "0 trials"
        if not dry_run:
            log.info(
                "forgot %d trials (%d epoch rows) in %s", result.trials, result.epochs, self.url
            )
        return result


class ImportedSweep(StoreError):
    """A launch named a sweep that holds imported runs (exit 2: choose another name)."""


def _refuse_imported(conn: sa.Connection, name: str) -> None:
    """ImportedSweep when the sweep called `name` was made by `bnsweep import`: its spec text
    lists the files imported into it, and its trials are runs bnsweep did not train."""
    text = conn.scalar(sa.select(Sweep.spec_text).where(Sweep.name == name))
    if text is not None and imported_origins(text) is not None:
        raise ImportedSweep(
            f"sweep {name!r} holds runs imported by `bnsweep import`; a launch would replace its "
            "record of the imported files: give the spec another `name:`"
        )


def _note_text(text: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise StoreError("note: the text is empty; write what the note should say")
    if len(text) > NOTE_MAX_CHARS:
        raise StoreError(
            f"note: the text has {len(text):,} characters; at most {NOTE_MAX_CHARS:,} are kept"
        )
    return text.strip()


def _note_author(author: str) -> str:
    if not isinstance(author, str) or not author.strip() or len(author) > 200 or "\n" in author:
        raise StoreError(f"note: author: expected one line of 1-200 characters, got {author!r}")
    return author.strip()


def _note_row(
    conn: sa.Connection,
    sweep: str | None,
    spec_hash: str | None,
    trial_id: int | None,
    seed: int | None,
) -> dict[str, object]:
    """The note's target columns, each checked to exist: StoreError naming what does."""
    trials = Trial.__table__.c
    if trial_id is not None:
        if conn.scalar(sa.select(trials.id).where(trials.id == trial_id)) is None:
            low, high, count = conn.execute(
                sa.select(sa.func.min(trials.id), sa.func.max(trials.id), sa.func.count())
            ).one()
            exists = f"ids {low} to {high} ({count} trials)" if count else "no trials"
            raise StoreError(f"note: no trial with id {trial_id}; the store has {exists}")
        return {"sweep_id": None, "spec_hash": None, "trial_id": trial_id}
    sweep_id = None if sweep is None else sweep_id_named(conn, sweep)
    if spec_hash is None:
        return {"sweep_id": sweep_id, "spec_hash": None, "trial_id": None}
    query = sa.select(trials.id, trials.seed).where(trials.spec_hash == spec_hash)
    if sweep_id is not None:
        linked = sa.select(SweepTrial.trial_id).where(SweepTrial.sweep_id == sweep_id)
        query = query.where(trials.id.in_(linked))
    rows = conn.execute(query).all()
    if not rows:
        cells = sa.select(trials.spec_hash).distinct().order_by(trials.spec_hash)
        if sweep_id is not None:
            cells = cells.where(trials.id.in_(linked))
        known = list(conn.scalars(cells.limit(11)))
        shown = ", ".join(known[:10]) + (", ..." if len(known) > 10 else "") or "none"
        where = f" in sweep {sweep!r}" if sweep is not None else ""
        raise StoreError(f"note: no cell with spec_hash {spec_hash!r}{where}; cells: {shown}")
    if seed is None:
        return {"sweep_id": sweep_id, "spec_hash": spec_hash, "trial_id": None}
    by_seed = {int(s): int(i) for i, s in rows}
    if seed not in by_seed:
        raise StoreError(
            f"note: cell {spec_hash} has no trial with seed {seed}; its seeds: "
            + seed_ranges(sorted(by_seed))
        )
    return {"sweep_id": None, "spec_hash": None, "trial_id": by_seed[seed]}
