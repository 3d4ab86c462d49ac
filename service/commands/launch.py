"""`bnsweep launch`: run a sweep's missing cells on Ray and render its tables at the end."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.store.api import Store
    from service.sweep import SweepSpec

DEFAULT_DB = "sqlite:///bnsweep.db"


def database_url(cli_value: str | None, spec_value: str | None = None) -> str:
    """`--db`, then BNSWEEP_DB, then the spec's `database`, then a SQLite file here."""
    return cli_value or os.environ.get("BNSWEEP_DB") or spec_value or DEFAULT_DB


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "launch",
        help="run a sweep's missing cells on Ray and write results to the store",
        description="Expand SPEC, ask the store which cells are done, and train only the missing "
        "ones on Ray Tune. Relaunching resumes an interrupted sweep.",
    )
    parser.add_argument("spec", help="sweep spec (YAML)")
    parser.add_argument(
        "--db", help=f"results store URL (default: BNSWEEP_DB, the spec's, or {DEFAULT_DB})"
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


def run(args: argparse.Namespace) -> int:
    from service.store.api import Store
    from service.sweep import load_sweep_spec
    from workers.errors import SpecError

    if args.num_cpus is not None and args.num_cpus < 1:
        raise SpecError(f"--num-cpus: must be >= 1, got {args.num_cpus}")
    report_every = getattr(args, "report_every", 0.0) or 0.0
    if report_every < 0 or (report_every and not getattr(args, "report", None)):
        raise SpecError(f"--report-every: minutes >= 0, with --report DIR; got {report_every:g}")
    sweep = load_sweep_spec(args.spec)
    spec_text = _without_password(Path(args.spec).read_text(encoding="utf-8"), sweep.database)
    url = database_url(args.db, sweep.database)
    if args.dry_run:
        return dry_run(sweep, url)

    from service.driver import launch

    with Store.open(url) as store, _report(args, url, sweep.name) as report:
        summary = launch(sweep, store, spec_text, address=args.address, num_cpus=args.num_cpus)
    resumed = f", {len(summary.resumed)} resumed from checkpoints" if summary.resumed else ""
    print(
        f"sweep {sweep.name}: ran {summary.ran} cells this launch ({summary.completed} completed, "
        f"{summary.diverged} diverged, {summary.failed} failed{resumed})"
    )
    if not args.no_tables:
        from service.commands.report import render_sweep_tables

        print(render_sweep_tables(url, sweep.name, fmt="term"))
    if report is not None and report.written is not None:
        print(f"report: {report.written / 'index.html'}")
    return 0


def _report(args: argparse.Namespace, url: str, name: str) -> Any:
    """The `--report` writer around the launch (service/web/report.py), or nothing."""
    import contextlib

    if not getattr(args, "report", None):
        return contextlib.nullcontext()
    from service.web.report import ReportWhileRunning

    return ReportWhileRunning(url, name, args.report, 60.0 * (args.report_every or 0.0))


def dry_run(sweep: SweepSpec, url: str) -> int:
    """Print the plan; write nothing. A database that does not exist yet is read as empty
    rather than created."""
    from service.driver import LaunchPlan, plan
    from service.store.api import redact_url
    from service.sweep import expand

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
    """The store at `url` opened without creating anything; None when it has no bnsweep schema
    yet (no SQLite file, an empty PostgreSQL database)."""
    import sqlalchemy as sa

    from service.store.api import Store, normalize_url

    parsed = sa.make_url(normalize_url(url))
    path = parsed.database if parsed.get_backend_name() == "sqlite" else None
    if path not in (None, "", ":memory:") and not Path(str(path)).expanduser().exists():
        return None
    with Store.open(url, check_schema=False) as probe:
        if probe.schema_revision() is None:
            return None
    return Store.open(url, create=False)  # still refuses a schema of another bnsweep version


def _without_password(spec_text: str, database: str | None) -> str:
    """The spec as the store keeps it: a password in its `database` URL becomes ***."""
    if not database:
        return spec_text
    import sqlalchemy as sa

    try:
        password = sa.make_url(database.strip()).password
    except (sa.exc.ArgumentError, ValueError):
        return spec_text
    return spec_text.replace(str(password), "***") if password else spec_text
