"""`bnsweep import FILE --sweep NAME`: runs made elsewhere (a CSV or Parquet file of one's own
loop, an MLflow `search_runs()` frame, a W&B export) into a sweep of the results store, so that
`tables`, `status`, `query`, `report` and `dashboard` read them as they read bnsweep's own.

Reading and checking the rows is `bnsweep.analysis.import_frame` (the same code
`bnsweep.tables(frame, mapping=...)` runs); keying and writing them is
`bnsweep.store.imports`. docs/import.md has the column mapping and the refusals.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path
from typing import Any

#: `--format`: a file type with bnsweep's own column names, or a tool's column convention
#: (the file's type then told by its bytes); `auto` tells both.
FORMATS = {
    "auto": (None, "auto"),
    "csv": ("csv", "plain"),
    "parquet": ("parquet", "plain"),
    "mlflow": (None, "mlflow"),
    "wandb": (None, "wandb"),
}
SCALES = ("auto", "fraction", "percent")
#: Files with more rows than this report their progress on stderr.
PROGRESS_ROWS = 10_000


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "import",
        help="load runs made elsewhere (CSV, Parquet, MLflow, W&B) into a sweep of the store",
        description="Load finished runs of another tool into a sweep of the results store, so "
        "`bnsweep tables --sweep NAME` tests them as it tests bnsweep's own. Each store field "
        "comes from the column of its name (gamma, c and alpha work for bn_scale_init, "
        "bn_lr_divisor and lr), from --map, or from --set; a field found nowhere takes "
        "TrialSpec's default, shown in the summary. All rows are written in one transaction, "
        "or none; importing the same file again changes nothing (docs/import.md).",
    )
    parser.add_argument("file", metavar="FILE", help="a CSV or Parquet file of runs")
    parser.add_argument("--sweep", required=True, metavar="NAME", help="the sweep to import into")
    parser.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="FIELD=COLUMN",
        help="read store FIELD from COLUMN, e.g. --map bn_scale_init=params.gamma (with "
        "--format mlflow or wandb the prefix may be left out: --map bn_scale_init=gamma)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="the same VALUE of FIELD for every row, e.g. --set dataset=imagenet-subset",
    )
    parser.add_argument(
        "--format",
        choices=tuple(FORMATS),
        default="auto",
        help="csv or parquet (bnsweep's column names), mlflow (search_runs columns: "
        "params.*, metrics.*, status) or wandb (the runs table's CSV export: Name, State, "
        "config and summary keys); default auto: told from the file",
    )
    parser.add_argument(
        "--scale",
        choices=SCALES,
        default="auto",
        help="accuracies as fractions in [0, 1] or percentages; default auto: percentages "
        "when some value is above 1, refused when a file mixes both",
    )
    parser.add_argument(
        "--replace",
        action="store_true",
        help="replace trials an earlier import into this sweep wrote whose results this file "
        "changes (default: refuse); never trials bnsweep trained",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="check the file and say what would be written"
    )
    parser.add_argument(
        "--db",
        default=None,
        metavar="URL",
        help="results database (default: $BNSWEEP_DB, else sqlite:///bnsweep.db)",
    )
    parser.set_defaults(func=run_import)


def _pairs(items: list[str], option: str) -> dict[str, str]:
    from bnsweep.analysis.import_frame import RunsError

    out: dict[str, str] = {}
    for item in items:
        name, eq, value = item.partition("=")
        name, value = name.strip(), value.strip()
        if not eq or not name or not value:
            raise RunsError(f"{option} {item!r}: expected FIELD=VALUE, e.g. {option} dataset=mnist")
        if name in out:
            raise RunsError(f"{option} {name}: given twice")
        out[name] = value
    return out


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _say(text: str) -> None:
    print(f"bnsweep import: {text}", file=sys.stderr, flush=True)


def run_import(args: argparse.Namespace) -> int:
    from bnsweep.analysis.import_frame import normalise_runs, read_runs_file
    from bnsweep.store import imports
    from bnsweep.store.api import Store
    from bnsweep.store.errors import NoStoreYet

    mapping = _pairs(args.map, "--map")
    fixed = _pairs(args.set, "--set")
    imports.check_sweep_name(args.sweep)
    path = Path(args.file)
    file_type, convention = FORMATS[args.format]
    started = time.monotonic()
    frame, found_type = read_runs_file(path, file_type)
    chatty = len(frame) > PROGRESS_ROWS or sys.stderr.isatty()
    if chatty:
        _say(f"read {len(frame):,} rows of {path} in {time.monotonic() - started:.1f} s")
    runs = normalise_runs(frame, mapping, fixed, convention=convention, scale=args.scale)
    shown_format = runs.convention if runs.convention != "plain" else found_type
    origin = imports.ImportOrigin(path.name, _sha256(path), shown_format)
    records: list[dict[str, Any]] = runs.frame.to_dict("records")
    rows = imports.trial_rows(records, args.sweep, origin)
    if chatty:
        _say(f"checked {len(rows):,} runs in {time.monotonic() - started:.1f} s")

    def progress(done: int, total: int) -> None:
        if chatty:
            _say(f"wrote {done:,} of {total:,} trials")

    if args.dry_run:
        try:
            with Store.open(args.db, read_only=True) as store:
                count = imports.plan_import(store, args.sweep, rows, args.replace)
                url = store.url
        except NoStoreYet:
            count = imports.ImportCount(len(rows), 0, 0, True)
            url = args.db or "the default store (not created yet)"
    else:
        with Store.open(args.db) as store:
            count = imports.write_import(
                store, args.sweep, rows, origin, replace=args.replace, progress=progress
            )
            url = store.url
    _summary(args, runs, origin, count, url, time.monotonic() - started)
    return 0


def _summary(
    args: argparse.Namespace,
    runs: Any,
    origin: Any,
    count: Any,
    url: str,
    seconds: float,
) -> None:
    frame = runs.frame
    from bnsweep.workers.spec import ARM_FIELDS, EXPERIMENT_FIELDS

    arms = frame[list(ARM_FIELDS)].drop_duplicates()
    experiments = frame[list(EXPERIMENT_FIELDS)].drop_duplicates()
    verb = "would import" if args.dry_run else "imported"
    print(
        f"{verb} {origin.file} ({origin.format}, sha256 {origin.sha256[:12]}) into sweep "
        f"{args.sweep} of {url}: {len(frame):,} runs of {runs.rows_read:,} rows, "
        f"{len(experiments)} experiment(s), {len(arms)} arm(s); "
        f"accuracies read as {runs.scale}s"
    )
    print(
        f"trials: {count.new:,} new, {count.unchanged:,} unchanged, {count.replaced:,} replaced"
        + (" (a new sweep)" if count.sweep_created else "")
        + f", {seconds:.1f} s"
    )
    print("fields:")
    for line in runs.summary_lines():
        print(line)
    if not args.dry_run:
        print(f"next: bnsweep tables --sweep {args.sweep}" + (f" --db {url}" if args.db else ""))
