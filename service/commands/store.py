"""`bnsweep db upgrade|forget|unlock`, `bnsweep status` and `bnsweep query`: the results
database from a shell.

The store, pandas and rich are imported inside the handlers so that `bnsweep --help` stays quick.
Every problem is a `StoreError`, which `bnsweep.cli` prints as one line: exit code 2 for a
mistake in what was typed (a bad URL, an unknown field, a malformed `--where`), 1 for a
runtime failure (the database down or missing, an unknown sweep).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd
    from rich.console import Console

    from bnsweep.store.values import ArmStatus, ForgetCount, SweepStatus

from bnsweep.workers.errors import EXIT_RUNTIME

FORMATS = ("table", "csv", "json")

#: The result columns `query --format table` shows after the spec columns that vary.
_TRIAL_RESULT_COLUMNS = (
    "status",
    "best_epoch",
    "best_val_acc",
    "test_acc",
    "final_test_acc",
    "seconds",
)
_EPOCH_RESULT_COLUMNS = ("epoch", "train_loss", "val_loss", "val_acc", "test_acc", "epoch_lr")
_DIAGNOSTIC_RESULT_COLUMNS = (
    "epoch",
    "depth",
    "layer",
    "gamma_mean",
    "gamma_drift",
    "beta_drift",
    "outlier_fraction",
    "gradient_factor",
)
#: Short headers, so a table of a dozen columns fits a terminal; the paper's symbols for γ and c.
_HEADERS = {
    "spec_hash": "hash",
    "bn_scale_init": "γ",
    "bn_lr_divisor": "c",
    "best_epoch": "best ep",
    "best_val_acc": "best val",
    "final_test_acc": "final test",
    "train_loss": "train loss",
    "val_loss": "val loss",
    "epoch_lr": "lr now",
    "gamma_mean": "γ mean",
    "gamma_drift": "γ drift",
    "beta_drift": "β drift",
    "outlier_fraction": ">6σ",
    "gradient_factor": "grad factor",
}


def _format_name(value: str) -> str:
    # "term" is what `tables` calls the terminal format: one name for both.
    return "table" if value == "term" else value


def _add_db(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db",
        default=None,
        metavar="URL",
        help="results database (default: $BNSWEEP_DB, else sqlite:///bnsweep.db); "
        "sqlite:///PATH or postgresql://USER@HOST/DB",
    )


def _add_where(parser: argparse.ArgumentParser, text: str) -> None:
    parser.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help=text + "; repeat a field to accept any of its values",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    db = subparsers.add_parser(
        "db",
        help="manage the results database schema",
        description="Manage the results database schema (Alembic migrations shipped with bnsweep).",
    )
    actions = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    upgrade = actions.add_parser(
        "upgrade",
        help="create the schema, or migrate it to this version of bnsweep",
        description="Create the results schema in a new database, or migrate an existing one to "
        "the revision this bnsweep needs. Safe to run again.",
    )
    _add_db(upgrade)
    upgrade.set_defaults(func=run_db_upgrade)

    forget = actions.add_parser(
        "forget",
        help="delete trials (with their epochs and diagnostics) so the next launch retrains them",
        description="Delete the trials that `bnsweep query` would list with the same --sweep and "
        "--where filters, with their epochs and BN diagnostics; the next `bnsweep launch` of "
        "a sweep with those cells trains them again. A trial is shared by every sweep that "
        "registered its cell, so it is forgotten for all of them. Running trials are refused. "
        "Asks for confirmation on a terminal; elsewhere it needs --yes.",
    )
    forget.add_argument("--sweep", default=None, metavar="NAME", help="only trials of this sweep")
    _add_where(forget, "forget trials whose FIELD equals VALUE, e.g. --where recipe=1")
    forget.add_argument(
        "--dry-run", action="store_true", help="print how many trials match; delete nothing"
    )
    forget.add_argument("--yes", action="store_true", help="delete without asking (for scripts)")
    _add_db(forget)
    forget.set_defaults(func=run_db_forget)

    unlock = actions.add_parser(
        "unlock",
        help="break a sweep's launch lock held by a launch that is gone",
        description="End the PostgreSQL session that holds a sweep's launch lock, for a launch "
        "that died where the server could not see it (a network outage): the server drops such "
        "a lock by itself within a minute. Meant for a launch you know is gone: a live one finds "
        "its lock gone at its next write after an outage and takes it again, or stops if "
        "another launch holds it by then. A SQLite lock belongs to a live "
        "process (the kernel drops it when the process ends): this names it.",
    )
    unlock.add_argument("--sweep", required=True, metavar="NAME", help="the sweep's name")
    _add_db(unlock)
    unlock.set_defaults(func=run_db_unlock)

    status = subparsers.add_parser(
        "status",
        help="cells per sweep by status, and the seeds each arm is missing",
        description="Per sweep: cells total, completed, running, failed, diverged and pending, "
        "and which seeds are missing for which arm.",
    )
    status.add_argument("--sweep", default=None, metavar="NAME", help="only this sweep")
    status.add_argument(
        "--check",
        action="store_true",
        help="exit 1 while any cell has no final result (for scripts: `until bnsweep status "
        "--check; do bnsweep launch ...; done`)",
    )
    status.add_argument(
        "--format",
        choices=FORMATS,
        type=_format_name,
        default="table",
        help="table, or one row per sweep as csv or json (default: table)",
    )
    _add_db(status)
    status.set_defaults(func=run_status)

    query = subparsers.add_parser(
        "query",
        help="print trials (or epochs, or BN diagnostics) from the results database",
        description="Print one row per trial, per epoch with --epochs, or per BN layer and "
        "epoch with --diagnostics. Filters are exact matches on a field; repeat a field to "
        "accept any of several values.",
    )
    query.add_argument("--sweep", default=None, metavar="NAME", help="only trials of this sweep")
    query.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="keep rows whose FIELD equals VALUE (--where lr=0.1 --where seed=3), or compares "
        "with it: >, >=, <, <=, != on numbers (--where test_acc>0.9); gamma, alpha and c "
        "stand for bn_scale_init, lr and bn_lr_divisor",
    )
    query.add_argument(
        "--limit", type=int, default=None, metavar="N", help="at most N rows (the first ones)"
    )
    rows = query.add_mutually_exclusive_group()
    rows.add_argument("--epochs", action="store_true", help="one row per epoch instead")
    rows.add_argument(
        "--diagnostics",
        action="store_true",
        help="one row per (trial, epoch, BN layer): γ/β drift, >6σ fraction, gradient factor "
        "(epoch 0 = initialisation; see docs/diagnostics.md)",
    )
    query.add_argument(
        "--format",
        choices=(*FORMATS, "parquet"),
        type=_format_name,
        default="table",
        help="default: table; parquet is binary, for a file: --format parquet > rows.parquet",
    )
    _add_db(query)
    query.set_defaults(func=run_query)


# -- handlers ------------------------------------------------------------------------------------


def run_db_upgrade(args: argparse.Namespace) -> int:
    from bnsweep.store.api import Store

    with Store.open(args.db, check_schema=False) as store:
        before, after = store.upgrade()
        url = store.url
    if before == after:
        print(f"{url}: schema already at revision {after} (current)")
    else:
        print(f"{url}: schema upgraded from revision {before or 'none'} to {after}")
    return 0


def run_db_forget(args: argparse.Namespace) -> int:
    from bnsweep.store.api import Store
    from bnsweep.store.columns import check_where, parse_where
    from bnsweep.store.errors import StoreError

    where = parse_where(args.where)
    check_where(where)  # a typo in a field never touches the store
    if args.sweep is None and not where:
        raise StoreError(
            "db forget: name the trials to forget with --sweep NAME and/or --where FIELD=VALUE "
            "(e.g. --where recipe=1); see `bnsweep query` for what they select"
        )
    with Store.open(args.db, create=False) as store:
        url = store.url
        count = store.forget(sweep=args.sweep, where=where, dry_run=True)
        what = _forget_summary(count, url)
        if args.dry_run or not count.trials:
            print(f"{what}; nothing deleted" + (" (dry run)" if args.dry_run else ""))
            return 0
        if count.running:
            raise StoreError(
                f"db forget: {count.running} of the {count.trials} matching trials are running "
                "(a launch is writing them); wait for it, or leave them out with "
                "--where status=... naming the other statuses; nothing deleted"
            )
        if not args.yes:
            if not sys.stdin.isatty():
                raise StoreError(
                    f"db forget: {count.trials} trials match; not deleting without confirmation: "
                    "add --yes, or run it on a terminal (--dry-run only counts)"
                )
            answer = input(f"{what}. Delete them? [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                print("nothing deleted")
                return 1
        done = store.forget(sweep=args.sweep, where=where)
    print(
        f"forgot {_trials(done.trials)} ({done.epochs} epoch rows) in {url}; "
        "the next launch of their sweeps trains them again"
    )
    return 0


def run_db_unlock(args: argparse.Namespace) -> int:
    from bnsweep.store.api import Store

    with Store.open(args.db, create=False, check_schema=False) as store:
        holder = store.break_launch_lock(args.sweep)
        url = store.url
    if holder is None:
        print(f"sweep {args.sweep}: nobody holds its launch lock in {url}")
    else:
        print(f"sweep {args.sweep}: ended {holder}, which held its launch lock in {url}")
    return 0


def _trials(n: int) -> str:
    return f"{n} trial" if n == 1 else f"{n} trials"


def _forget_summary(count: ForgetCount, url: str) -> str:
    text = f"{_trials(count.trials)} ({count.epochs} epoch rows) in {url} match"
    if count.shared:
        text += f", {count.shared} of them also used by other sweeps"
    if count.running:
        text += f", {count.running} of them running"
    return text


def run_status(args: argparse.Namespace) -> int:
    from bnsweep.store.api import Store
    from bnsweep.store.values import older_recipe_line

    console = _console()
    with Store.open(args.db, read_only=True) as store:
        names = [args.sweep] if args.sweep else [info.name for info in store.sweeps()]
        statuses = [store.sweep_status(name) for name in names]
        url = store.url
        # A `running` row is honest only while a launch of its sweep is live: a killed launch
        # leaves them behind until the next launch resets them.
        holders = {s.name: store.launch_lock_holder(s.name) for s in statuses if s.running}
    missing = sum(s.total - s.done for s in statuses)
    code = EXIT_RUNTIME if args.check and missing else 0
    if args.format != "table":
        _write_status(statuses, args.format)
        return code
    if not statuses:
        console.print(f"no sweeps in {url}", markup=False, highlight=False)
        return 0
    console.print(_counts_table(statuses, url))
    for status in statuses:
        arms = status.incomplete_arms
        if not arms:
            console.print(
                f"{status.name}: all {status.total} cells done", markup=False, highlight=False
            )
        else:
            console.print(_missing_table(status.name, arms))
        if status.name in holders:
            holder = holders[status.name]
            console.print(
                f"{status.name}: {status.running} running, in the launch by {holder}"
                if holder is not None
                else f"{status.name}: {status.running} cells marked running, but no launch of "
                "the sweep is live (one was killed): the next launch sets them back to pending",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
        line = older_recipe_line(dict(status.older_recipes), status.name)
        if line is not None:
            console.print(line, markup=False, highlight=False, soft_wrap=True)
    return code


def _write_status(statuses: Sequence[SweepStatus], fmt: str) -> None:
    """One record per sweep: the counts, and per arm the seeds without a final result."""
    import csv
    import json

    counts = ("total", "completed", "running", "failed", "diverged", "pending")
    rows = [
        {
            "sweep": s.name,
            **{k: getattr(s, k) for k in counts},
            "missing": s.total - s.done,
        }
        for s in statuses
    ]
    if fmt == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=["sweep", *counts, "missing"])
        writer.writeheader()
        writer.writerows(rows)
        return
    for row, s in zip(rows, statuses, strict=True):
        row["incomplete_arms"] = [
            {
                "spec_hash": arm.spec_hash,
                "label": arm.label,
                "missing_seeds": list(arm.missing_seeds),
                "failed_seeds": list(arm.failed_seeds),
                "running_seeds": list(arm.running_seeds),
            }
            for arm in s.incomplete_arms
        ]
    sys.stdout.write(json.dumps(rows, indent=2) + "\n")


def run_query(args: argparse.Namespace) -> int:
    from bnsweep.store.api import Store
    from bnsweep.store.columns import check_where, parse_where
    from bnsweep.store.errors import StoreError

    where = parse_where(args.where)
    if args.limit is not None and args.limit < 0:
        raise StoreError(f"--limit: must be >= 0, got {args.limit}")
    if args.format == "parquet" and sys.stdout.isatty():
        raise StoreError("--format parquet: binary output; redirect it to a file (> rows.parquet)")
    # Checked before the database is opened: a typo in a field never touches the store.
    diagnostics = getattr(args, "diagnostics", False)
    check_where(where, epochs=args.epochs, diagnostics=diagnostics)
    with Store.open(args.db, read_only=True) as store:
        if diagnostics:
            frame = store.diagnostics(sweep=args.sweep, where=where)
        elif args.epochs:
            frame = store.epochs(sweep=args.sweep, where=where)
        else:
            frame = store.trials(sweep=args.sweep, where=where)
    if args.limit is not None:
        frame = frame.head(args.limit)
    _write_frame(frame, args.format, epochs=args.epochs, diagnostics=diagnostics)
    return 0


# -- rendering -----------------------------------------------------------------------------------


def _counts_table(statuses: Sequence[SweepStatus], url: str) -> object:
    from rich.table import Table

    table = Table(title=f"sweeps in {url}", title_justify="left")
    table.add_column("sweep")
    for column in ("total", "completed", "running", "failed", "diverged", "pending"):
        table.add_column(column, justify="right")
    for s in statuses:
        counts = (s.total, s.completed, s.running, s.failed, s.diverged, s.pending)
        table.add_row(s.name, *(str(n) for n in counts))
    return table


def _missing_table(name: str, arms: Sequence[ArmStatus]) -> object:
    from rich.table import Table

    from bnsweep.store.values import missing_text

    table = Table(title=f"{name}: missing seeds", title_justify="left")
    table.add_column("arm")
    table.add_column("spec_hash")
    table.add_column("done", justify="right")
    table.add_column("missing seeds")
    for arm in arms:
        done = len(arm.seeds) - len(arm.missing_seeds)
        table.add_row(arm.label, arm.spec_hash, f"{done}/{len(arm.seeds)}", missing_text(arm))
    return table


def _write_frame(frame: pd.DataFrame, fmt: str, *, epochs: bool, diagnostics: bool = False) -> None:
    if fmt == "parquet":
        import io

        buffer = io.BytesIO()  # pyarrow wants a seekable file; stdout may be a pipe
        frame.to_parquet(buffer, index=False)
        sys.stdout.flush()
        sys.stdout.buffer.write(buffer.getvalue())
        sys.stdout.buffer.flush()
    elif fmt == "csv":
        frame.to_csv(sys.stdout, index=False)
    elif fmt == "json":
        # One JSON array of row objects; missing values are null and times ISO 8601 in UTC.
        sys.stdout.write(frame.to_json(orient="records", date_format="iso") + "\n")
    else:
        _print_table(frame, epochs=epochs, diagnostics=diagnostics)


def _print_table(
    frame: pd.DataFrame,
    *,
    epochs: bool,
    diagnostics: bool = False,
    console: Console | None = None,
) -> None:
    """The columns that tell rows apart (hash, seed, spec fields that vary) and the results,
    as many as the width holds: a value is never cut (see `_fit`)."""
    from rich.table import Table

    from bnsweep.store.columns import SPEC_COLUMNS
    from bnsweep.workers.spec import ARM_FIELDS

    varying = [c for c in SPEC_COLUMNS if frame[c].nunique(dropna=False) > 1]
    spec_columns = varying or list(ARM_FIELDS)
    results: tuple[str, ...]
    if diagnostics:
        results, what = _DIAGNOSTIC_RESULT_COLUMNS, "diagnostic rows"
    elif epochs:
        results, what = _EPOCH_RESULT_COLUMNS, "epoch rows"
    else:
        results, what = _TRIAL_RESULT_COLUMNS, "trials"
    names = ["spec_hash", "seed", *spec_columns, *results]
    if "error" in frame and frame["error"].notna().any():
        names.append("error")  # docs/sweeps.md: failed trials say why
    title = f"{len(frame)} {what}"
    # Kept first when narrow: what tells rows apart, then the headline result.
    first = ["seed", *spec_columns, *(r for r in _ROW_KEYS + _HEADLINE if r in results)]
    priority = [*first, *(n for n in names if n not in first)]
    console = console or _console()
    rows = [[_cell(value) for value in row] for row in frame[names].itertuples(index=False)]
    plain = len(rows) > _RICH_ROWS  # rich measures every cell of every row twice: minutes
    columns = [
        _Column(
            name,
            _HEADERS.get(name, name),
            frame[name].dtype.kind in "iuf",
            # The plain text shows an error's first line; rich folds the whole message.
            [row[i].splitlines()[0] if plain and row[i] else row[i] for row in rows],
            rank=(_rank_group(frame, name), priority.index(name)),
            order=i,
            folds=name == "error" and not plain,
        )
        for i, name in enumerate(names)
    ]
    shown, dropped = _fit(columns, console.width, plain)
    if plain:
        console.file.write(_plain_table(title, shown))
    else:
        table = Table(title=title, title_justify="left")
        for c in shown:
            table.add_column(
                c.header,
                justify="right" if c.right else "left",
                min_width=c.least,
                no_wrap=not c.folds,
                overflow="fold" if c.folds else "ellipsis",
            )
        for i in range(len(rows)):
            table.add_row(*(c.cells[i] for c in shown))
        console.print(table)
    if dropped:
        # One line, so a narrow terminal still says what it leaves out and where to see it.
        left_out = ", ".join(c.name for c in dropped)
        note = (
            f"not shown for want of width: {left_out} "
            "(a wider terminal shows them, --format csv shows every column)"
        )
        if plain:
            console.file.write(note + "\n")
        else:
            console.print(note, soft_wrap=True, highlight=False, markup=False)


@dataclass(frozen=True)
class _Column:
    """One column of `query --format table`: its cells as printed, its rank when space runs
    out (lower is kept first), and whether its text folds over lines instead of widening."""

    name: str
    header: str
    right: bool
    cells: list[str]
    rank: tuple[int, int]
    order: int  # its place from the left when shown
    folds: bool = False

    @property
    def width(self) -> int:
        """The widest line of its header and cells: the width that cuts nothing."""
        lines = [line for text in (self.header, *self.cells) for line in text.splitlines()]
        return max(map(len, lines), default=0)

    @property
    def least(self) -> int:
        """The narrowest it may be: its whole width, or `_FOLD_WIDTH` for folding text."""
        return min(self.width, _FOLD_WIDTH) if self.folds else self.width


#: An error message folds to lines of at least this many characters before its column is dropped.
_FOLD_WIDTH = 24
#: Result columns that tell rows apart (an epoch, a BN layer): kept with the spec fields.
_ROW_KEYS = ("epoch", "depth", "layer")
#: The result a reader looks for first, and whether the run finished.
_HEADLINE = ("test_acc", "status")
#: Columns that say where a row came from, not what it found: the first to go when narrow.
_PROVENANCE = ("spec_hash", "seconds")


def _rank_group(frame: pd.DataFrame, name: str) -> int:
    """0 for the columns that tell rows apart or report what they found, 1 for a column with one
    value throughout (read it once in --format csv), 2 for provenance."""
    if name in _PROVENANCE:
        return 2
    return 1 if frame[name].nunique(dropna=False) <= 1 else 0


def _fit(columns: list[_Column], width: int, plain: bool) -> tuple[list[_Column], list[_Column]]:
    """(shown, dropped): the columns in rank order while they fit `width` uncut, the first one
    always; the shown ones in their display order. Rich adds 3 characters per column and 1 for
    the table's edge (a box line and a space either side); the plain text 2 between columns."""
    per_column, edge = (2, -2) if plain else (3, 1)
    used = edge
    shown: list[_Column] = []
    dropped: list[_Column] = []
    for c in sorted(columns, key=lambda c: c.rank):
        if not dropped and (not shown or used + c.least + per_column <= width):
            shown.append(c)
            used += c.least + per_column
        else:
            dropped.append(c)
    return sorted(shown, key=_display_order), sorted(dropped, key=_display_order)


def _display_order(column: _Column) -> int:
    return column.order


#: Above this many rows `query --format table` prints aligned plain text instead of a rich table.
_RICH_ROWS = 1000


def _plain_table(title: str, columns: list[_Column]) -> str:
    """Columns aligned with spaces; an error message shows its first line only."""
    widths = [c.width for c in columns]
    right = [c.right for c in columns]

    def line(cells: list[str]) -> str:
        parts = (
            c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True)
        )
        return "  ".join(parts).rstrip()

    n = len(columns[0].cells) if columns else 0
    rows = [[c.cells[i] for c in columns] for i in range(n)]
    body = [line([c.header for c in columns]), "  ".join("-" * w for w in widths)]
    return title + "\n" + "\n".join([*body, *(line(row) for row in rows)]) + "\n"


def _console() -> Console:
    from rich.console import Console

    # Piped or redirected output has no width to fit; rich would assume 80 columns and cut
    # every header short. csv or json is the format for machines; this keeps tables legible.
    return Console(width=None if sys.stdout.isatty() else 160)


def _cell(value: object) -> str:
    import pandas as pd

    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
