"""`bnsweep launch`: run a sweep's missing cells on Ray and render its tables at the end."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING, Any

from bnsweep.commands import DEFAULT_DB, database_url

if TYPE_CHECKING:
    from bnsweep.store.api import Store
    from bnsweep.sweep import SweepSpec


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "launch",
        help="run a sweep's missing cells on Ray and write results to the store",
        description="Expand SPEC, ask the store which cells are done, and train only the missing "
        "ones on Ray Tune. Relaunching resumes an interrupted sweep.",
    )
    parser.add_argument("spec", help="sweep spec (YAML)")
    parser.add_argument(
        "--db",
        metavar="URL",
        help=f"results store URL (default: BNSWEEP_DB, the spec's, or {DEFAULT_DB})",
    )
    parser.add_argument(
        "--address",
        help="Ray cluster to run on, HOST:PORT of its head (default: RAY_ADDRESS, else a local "
        "Ray of this launch's own); ray:// (Ray Client) cannot run a sweep",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print how many cells exist, are done, and would run; run nothing",
    )
    parser.add_argument(
        "--num-cpus", type=int, default=None, help="CPUs for a local Ray (default: all)"
    )
    parser.add_argument("--no-tables", action="store_true", help="skip the tables at the end")
    parser.add_argument(
        "--report",
        metavar="DIR",
        help="write the static report (as `bnsweep report`) to DIR at the end of the sweep",
    )
    parser.add_argument(
        "--report-every",
        type=float,
        default=0.0,
        metavar="MINUTES",
        help="with --report, also rewrite it every MINUTES while the sweep runs (default: only "
        "at the end)",
    )
    parser.set_defaults(func=run)


#: The longest wait between two rewrites of the report while a sweep runs: a day.
MAX_REPORT_EVERY_MINUTES = 24 * 60.0


def check_report_every(minutes: float, report: str | None) -> None:
    """`--report-every` is a finite number of minutes in [0, a day], and only with `--report`.

    NaN passes every comparison and infinity overflows the timer's wait in its thread: both
    are refused here, before anything starts."""
    from bnsweep.workers.errors import SpecError

    if not 0.0 <= minutes <= MAX_REPORT_EVERY_MINUTES or (minutes and not report):
        raise SpecError(
            f"--report-every: minutes from 0 to {MAX_REPORT_EVERY_MINUTES:g}, with --report DIR; "
            f"got {minutes:g}"
        )


def run(args: argparse.Namespace) -> int:
    from bnsweep.store.api import Store
    from bnsweep.sweep import parse_sweep_spec, read_spec_text, redacted_spec_text
    from bnsweep.workers.errors import SpecError

    if args.num_cpus is not None and args.num_cpus < 1:
        raise SpecError(f"--num-cpus: must be >= 1, got {args.num_cpus}")
    check_report_every(getattr(args, "report_every", 0.0) or 0.0, getattr(args, "report", None))
    target = args.address or os.environ.get("RAY_ADDRESS")
    if target and target != "auto" and not target.startswith("ray://"):
        from bnsweep.ray_address import host_port

        host_port(target)  # a malformed address is refused before anything else happens
    text = read_spec_text(args.spec)
    sweep = parse_sweep_spec(text, source=args.spec)
    spec_text = redacted_spec_text(text, source=args.spec)
    url = database_url(args.db, sweep.database)
    # Before the store is opened: a plugin that cannot be imported or breaks its contract is
    # refused in one line, with nothing written (docs/extending.md).
    from bnsweep.sweep import check_plugins, expand

    check_plugins(expand(sweep))
    if args.dry_run:
        return dry_run(sweep, url)

    from bnsweep.driver import disconnect, launch

    _check_storage(sweep.storage)
    report_writer = _report(args, url, sweep.name)  # --report DIR is checked here, up front
    with Store.open(url) as store, report_writer as report:
        summary = launch(sweep, store, spec_text, address=args.address, num_cpus=args.num_cpus)
    disconnect()  # before anything more is printed: no Ray output after our last line
    if summary.requeued:
        print(
            f"sweep {sweep.name}: reset {summary.requeued} cells a stopped launch had left "
            "running (back to pending)"
        )
    resumed = f", {len(summary.resumed)} resumed from checkpoints" if summary.resumed else ""
    counts = (
        f"{summary.completed} completed, {summary.diverged} diverged, {summary.failed} failed"
        f"{resumed}"
    )
    if summary.interrupted:
        # Nothing is marked finished: a relaunch continues each cell from its last checkpoint.
        print(
            f"sweep {sweep.name}: interrupted after {summary.ran} cells started ({counts}); "
            "launch it again to continue from the last checkpoints"
        )
        raise KeyboardInterrupt
    print(f"sweep {sweep.name}: ran {summary.ran} cells this launch ({counts})")
    if not args.no_tables:
        from bnsweep.store.results import load_trials
        from bnsweep.sweep_tables import tables_text

        # The spec in hand is the one just registered: its report: layout, not the stored
        # text parsed again, and one read of the store for the trials.
        print(tables_text(load_trials(url, sweep.name), sweep.report, sweep.name, fmt="term"))
    if report is not None and report.written is not None:
        print(f"report: {report.written / 'index.html'}")
    if summary.unsuccessful:
        print(
            f"sweep {sweep.name}: {summary.unsuccessful} cells did not complete "
            f"({summary.failed} failed, {summary.diverged} diverged); `bnsweep status` lists them"
        )
        return 1
    return 0


def _report(args: argparse.Namespace, url: str, name: str) -> Any:
    """The `--report` writer around the launch (service/web/report.py), or nothing."""
    import contextlib

    if getattr(args, "report", None) is None:  # `--report ''` is refused, not ignored
        return contextlib.nullcontext()
    from bnsweep.outputs import check_writable_folder

    # Refused before the store is opened or a cell trained, not as a warning at the end.
    check_writable_folder("--report", args.report, create=False, replaced=True, store_url=url)
    from bnsweep.web.report import ReportWhileRunning

    return ReportWhileRunning(url, name, args.report, 60.0 * (args.report_every or 0.0))


def dry_run(sweep: SweepSpec, url: str) -> int:
    """Print the plan; write nothing. A database that does not exist yet is read as empty
    rather than created."""
    from bnsweep.plan import LaunchPlan, plan
    from bnsweep.store.errors import redact_url
    from bnsweep.sweep import expand

    store = _open_existing(url)
    if store is None:
        launch_plan = LaunchPlan(sweep, tuple(expand(sweep)), frozenset())
        where = f"store: {redact_url(url)} (none yet; a launch creates it)"
    else:
        with store:
            launch_plan = plan(sweep, store)
        where = f"store: {redact_url(url)}"
    print(launch_plan.describe())
    print(where)
    return 0


def _open_existing(url: str) -> Store | None:
    """The store at `url` opened read-only; None when nothing of bnsweep's is there yet (no
    SQLite file, an empty database). Another program's file, or another bnsweep version's
    schema, is refused."""
    from bnsweep.store.api import Store
    from bnsweep.store.errors import NoStoreYet

    try:
        return Store.open(url, read_only=True)
    except NoStoreYet:
        return None


def _check_storage(storage: str) -> None:
    """A local `storage:` folder can be created and written, checked before the store or Ray
    is touched (a URI such as s3://... is Ray's to check)."""
    if "://" in storage:
        return
    from bnsweep.commands import check_writable_folder

    check_writable_folder("storage", storage, create=False)
