"""`bnsweep launch`: run a sweep's missing cells on Ray and render its tables at the end."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

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
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else local)")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print how many cells exist, are done, and would run; run nothing",
    )
    parser.add_argument(
        "--num-cpus", type=int, default=None, help="CPUs for a local Ray (default: all)"
    )
    parser.add_argument("--no-tables", action="store_true", help="skip the tables at the end")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from service.store.api import Store, redact_url
    from service.sweep import load_sweep_spec

    sweep = load_sweep_spec(args.spec)
    spec_text = Path(args.spec).read_text(encoding="utf-8")
    url = database_url(args.db, sweep.database)
    with Store.open(url) as store:
        if args.dry_run:
            from service.driver import plan

            print(plan(sweep, store).describe())
            print(f"store: {redact_url(url)}")
            return 0

        from service.driver import launch

        summary = launch(sweep, store, spec_text, address=args.address, num_cpus=args.num_cpus)
        print(
            f"sweep {sweep.name}: ran {summary.ran} trials this launch "
            f"({summary.completed} completed, {summary.diverged} diverged, {summary.failed} failed"
            + (f", {len(summary.resumed)} resumed from checkpoints" if summary.resumed else "")
            + ")"
        )
    if not args.no_tables:
        from service.commands.report import render_sweep_tables

        print(render_sweep_tables(url, sweep.name, fmt="term"))
    return 0
