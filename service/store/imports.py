"""Writing runs made elsewhere into a sweep of the store (`bnsweep import`, docs/import.md).

The rows come normalised (`bnsweep.analysis.import_frame`); this module keys them, compares
them with what the store holds, and writes them in one transaction.

- Key: an imported cell's `spec_hash` covers the result fields a native cell's does
  (`bnsweep.workers.spec.spec_hash`) plus `imported: <sweep>`, and not bnsweep's training
  recipe, which did not make the run. So an imported cell never shares a key with a cell
  bnsweep trains, nor with the same arm imported into another sweep (two files may hold
  different code's runs of one arm); the read paths' current-recipe filter keeps every
  imported trial (`IMPORTED_HOST`), whatever `RECIPE` the bnsweep reading it has.
- Origin: `host` is `imported`, `device` the file's format, `runtime` JSON names the file, its
  SHA-256, the row and the run, so `bnsweep query --where host=imported` lists imported trials.
- Idempotent: a row equal to the stored one is left as it is. A row whose result differs is a
  conflict, refused unless `replace`; even then only trials `bnsweep import` wrote are updated.
  Nothing is deleted.
- The sweep's spec text is YAML naming the files imported into it; a sweep registered by
  `bnsweep launch` is never imported into (its spec text is not ours to replace).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
import yaml

import bnsweep.workers.spec
from bnsweep.store.columns import IMPORTED_HOST, SPEC_COLUMNS, chunks, imported_origins
from bnsweep.store.errors import StoreError
from bnsweep.store.events import utc_now
from bnsweep.store.models import Sweep, SweepTrial, Trial
from bnsweep.workers.errors import SpecError
from bnsweep.workers.spec import arm_name

if TYPE_CHECKING:
    from bnsweep.store.api import Store

#: The result columns an import writes and compares.
RESULT_VALUES = ("test_acc", "best_val_acc", "final_test_acc", "best_epoch")
#: Rows per INSERT statement, and how often progress is reported.
_BATCH = 5000


class ImportConflict(SpecError):
    """The file disagrees with a trial the store holds, or names a sweep bnsweep launched."""


@dataclass(frozen=True)
class ImportOrigin:
    """Where imported rows came from: the file's name, its SHA-256, its format."""

    file: str
    sha256: str
    format: str

    def as_dict(self) -> dict[str, str]:
        return {"file": self.file, "sha256": self.sha256, "format": self.format}


@dataclass(frozen=True)
class ImportCount:
    """What an import wrote (or, in a dry run, would write)."""

    new: int
    unchanged: int
    replaced: int
    sweep_created: bool


def imported_hash(values: Mapping[str, Any], sweep: str) -> str:
    """An imported cell's key: `spec_hash`'s encoding of the result fields plus the sweep it
    was imported into, so it can never equal a native cell's hash. bnsweep's training recipe is
    not part of it: bnsweep did not train the run, so a newer `RECIPE` neither hides an imported
    trial nor makes a second import of the same file add its runs again."""
    payload: dict[str, Any] = {
        name: (repr(float(values[name])) if isinstance(values[name], float) else values[name])
        for name in SPEC_COLUMNS
    }
    payload["imported"] = sweep
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def import_spec_text(name: str, origins: Sequence[Mapping[str, str]]) -> str:
    """The spec text of an imported sweep: YAML the read paths load like any spec (no `report:`,
    so the layout is inferred), naming every file imported into it."""
    header = "# Runs imported by `bnsweep import` (docs/import.md); not a spec to launch.\n"
    body = {"name": name, "imported": [dict(o) for o in origins]}
    return header + yaml.safe_dump(body, sort_keys=False, allow_unicode=True)


def _plain(value: Any) -> Any:
    """numpy and pandas scalars as Python values; NaN and NA as None (SQL NULL)."""
    if value is None:
        return None
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    try:
        import pandas as pd

        if value is pd.NA:
            return None
    except ImportError:  # pragma: no cover - pandas comes with bnsweep
        pass
    return value


def trial_rows(
    records: Sequence[Mapping[str, Any]], sweep: str, origin: ImportOrigin
) -> list[dict[str, Any]]:
    """Trial rows for the store, keyed by `imported_hash`, with their provenance."""
    now = utc_now()
    version = _package_version()
    hashes: dict[tuple[Any, ...], str] = {}  # one hash per arm of an experiment, not per row
    # The runtime JSON as `json.dumps(..., sort_keys=True)` writes it, with the fixed part once.
    fixed = json.dumps(origin.as_dict(), sort_keys=True, separators=(",", ":"))[1:-1]
    before_row, after_format = fixed.split(',"sha256"')
    rows = []
    for record in records:
        values = {name: record[name] for name in SPEC_COLUMNS}
        key = tuple(values.values())
        spec_hash = hashes.get(key)
        if spec_hash is None:
            spec_hash = hashes[key] = imported_hash(values, sweep)
        run = json.dumps(str(record.get("source_run") or ""))
        runtime = (
            f'{{"import":{{{before_row},"row":{int(record["source_row"])},"run":{run},'
            f'"sha256"{after_format}}}}}'
        )
        rows.append(
            {
                "spec_hash": spec_hash,
                "seed": int(record["seed"]),
                **values,
                **{name: _plain(record.get(name)) for name in RESULT_VALUES},
                "recipe": bnsweep.workers.spec.RECIPE,
                "status": "completed",
                "attempts": 0,
                "host": IMPORTED_HOST,
                "device": origin.format,
                "package_version": version,
                "runtime": runtime,
                "created_at": now,
                "updated_at": now,
            }
        )
    return rows


def _package_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("bnsweep")
    except PackageNotFoundError:
        return None


def _same(stored: Any, new: Any) -> bool:
    if stored is None or new is None:
        return stored is None and new is None
    return bool(stored == new)


def _cell_text(row: Mapping[str, Any]) -> str:
    arm = arm_name(
        str(row["formulation"]), float(row["bn_scale_init"]), float(row["bn_lr_divisor"])
    )
    return f"seed {row['seed']} of arm {arm} ({row['dataset']}, {row['arch']}, lr={row['lr']:g})"


def _existing(
    conn: sa.Connection, sweep: str, rows: Sequence[Mapping[str, Any]]
) -> dict[tuple[str, int], Any]:
    """The stored trials of `rows`' cells. Every imported trial is linked to the sweep its key
    names, so they are read through the sweep's links (an index), not by a list of hashes, which
    PostgreSQL scans slowly right after a large insert, before its statistics catch up."""
    table = Trial.__table__
    wanted = {(r["spec_hash"], r["seed"]) for r in rows}
    columns = [table.c.id, table.c.spec_hash, table.c.seed, table.c.runtime]
    columns += [table.c[name] for name in RESULT_VALUES]
    query = (
        sa.select(*columns)
        .join(SweepTrial, SweepTrial.trial_id == table.c.id)
        .join(Sweep, Sweep.id == SweepTrial.sweep_id)
        .where(Sweep.name == sweep)
    )
    found: dict[tuple[str, int], Any] = {}
    for row in conn.execute(query):
        if (row.spec_hash, row.seed) in wanted:
            found[(row.spec_hash, row.seed)] = row
    return found


def _written_by_import(runtime: str | None) -> bool:
    try:
        data = json.loads(runtime) if runtime else None
    except ValueError:
        return False
    return isinstance(data, dict) and isinstance(data.get("import"), dict)


def _plan(
    conn: sa.Connection, sweep: str, rows: Sequence[Mapping[str, Any]], replace: bool
) -> tuple[list[Mapping[str, Any]], list[tuple[int, Mapping[str, Any]]], int]:
    """(rows to insert, (trial id, row) to replace, rows unchanged); ImportConflict for a row
    whose result differs from the stored one when `replace` is off."""
    existing = _existing(conn, sweep, rows)
    inserts: list[Mapping[str, Any]] = []
    updates: list[tuple[int, Mapping[str, Any]]] = []
    unchanged = 0
    for row in rows:
        stored = existing.get((row["spec_hash"], row["seed"]))
        if stored is None:
            inserts.append(row)
            continue
        differs = [n for n in RESULT_VALUES if not _same(getattr(stored, n), row[n])]
        if not differs:
            unchanged += 1
            continue
        source = json.loads(row["runtime"])["import"]
        name = differs[0]
        if not _written_by_import(stored.runtime):
            raise ImportConflict(
                f"row {source['row']}: {_cell_text(row)} is a trial bnsweep did not import; "
                "it is never replaced"
            )
        if not replace:
            raise ImportConflict(
                f"row {source['row']}: {_cell_text(row)} is stored with {name} "
                f"{getattr(stored, name)!r} from an earlier import, this file says {row[name]!r}; "
                "give --replace to replace the trials earlier imports into this sweep wrote"
            )
        updates.append((int(stored.id), row))
    return inserts, updates, unchanged


def _check_sweep(conn: sa.Connection, sweep: str) -> list[dict[str, str]] | None:
    """The files imported into `sweep` so far (None: no such sweep yet); ImportConflict for a
    sweep `bnsweep launch` registered."""
    text = conn.scalar(sa.select(Sweep.spec_text).where(Sweep.name == sweep))
    if text is None:
        return None
    origins = imported_origins(text)
    if origins is None:
        raise ImportConflict(
            f"sweep {sweep!r} was registered by `bnsweep launch`, not by an import: its spec and "
            "trials are not an import's to change; import into a sweep of another name"
        )
    return origins


def check_sweep_name(sweep: str) -> None:
    if not isinstance(sweep, str) or not sweep.strip() or len(sweep) > 200:
        raise StoreError(f"--sweep: expected a name of 1-200 characters, got {sweep!r}")


def plan_import(
    store: Store, sweep: str, rows: Sequence[Mapping[str, Any]], replace: bool
) -> ImportCount:
    """What `write_import` would do, read-only (a dry run)."""
    check_sweep_name(sweep)

    def work(conn: sa.Connection) -> ImportCount:
        origins = _check_sweep(conn, sweep)
        inserts, updates, unchanged = _plan(conn, sweep, rows, replace)
        return ImportCount(len(inserts), unchanged, len(updates), origins is None)

    return store._run(work, f"planning the import into sweep {sweep!r}")


def write_import(
    store: Store,
    sweep: str,
    rows: Sequence[Mapping[str, Any]],
    origin: ImportOrigin,
    *,
    replace: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> ImportCount:
    """Write `rows` (from `trial_rows`) into `sweep`, all in one transaction: nothing is
    written when any row is refused. Safe to run again: the same rows change nothing."""
    check_sweep_name(sweep)
    insert = store._insert
    trials, links = Trial.__table__, SweepTrial.__table__

    def work(conn: sa.Connection) -> ImportCount:
        origins = _check_sweep(conn, sweep)
        inserts, updates, unchanged = _plan(conn, sweep, rows, replace)
        now = utc_now()
        known = origins or []
        if not any(o.get("sha256") == origin.sha256 for o in known):
            known = [*known, origin.as_dict()]
        text = import_spec_text(sweep, known)
        if origins is None:
            conn.execute(
                insert(Sweep.__table__)
                .values(name=sweep, spec_text=text, created_at=now, updated_at=now)
                .on_conflict_do_nothing(index_elements=["name"])
            )
        else:
            conn.execute(
                sa.update(Sweep)
                .where(Sweep.name == sweep, Sweep.spec_text != text)
                .values(spec_text=text, updated_at=now)
            )
        sweep_id = conn.scalar(sa.select(Sweep.id).where(Sweep.name == sweep))
        total, done = len(inserts) + len(updates), 0
        for batch in chunks(inserts, _BATCH):
            # No RETURNING: psycopg then sends the rows one statement each, three times slower.
            statement = insert(trials).on_conflict_do_nothing(index_elements=["spec_hash", "seed"])
            conn.execute(statement, list(batch))
            done += len(batch)
            if progress is not None:
                progress(done, total)
        for trial_id, row in updates:
            values = {n: row[n] for n in (*RESULT_VALUES, "runtime", "device")}
            conn.execute(
                sa.update(Trial).where(trials.c.id == trial_id).values(updated_at=now, **values)
            )
        if updates and progress is not None:
            progress(total, total)
        # A trial already stored was linked by the import that wrote it: its key holds the sweep.
        added = sorted(
            store._trial_ids(conn, {(r["spec_hash"], r["seed"]) for r in inserts}).values()
        )
        for ids in chunks(added, _BATCH):
            conn.execute(
                insert(links).on_conflict_do_nothing(index_elements=["sweep_id", "trial_id"]),
                [{"sweep_id": sweep_id, "trial_id": trial_id} for trial_id in ids],
            )
        return ImportCount(len(inserts), unchanged, len(updates), origins is None)

    return store._run(work, f"importing into sweep {sweep!r}", write=True)
