"""`bnsweep tables` and `bnsweep plots`: regenerate the significance tables and figures.

Tables always reflect every completed trial in the store linked to the sweep: a trial is
shared by every sweep that registered its cell, so results of earlier launches and of other
sweeps with the same cells count too. Trials of an older training recipe never count; `tables`
says in one line on stderr when the store holds some. The tables are built and rendered in
`service/sweep_tables.py`, which `bnsweep launch` and the dashboard use too.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

from bnsweep.analysis.layout import LAYOUT_NAMES
from bnsweep.sweep_tables import (
    FORMATS,
    render_tables,
    safe_name,
    table_layout,
    tables_for,
    write_tables,
)

log = logging.getLogger(__name__)

# Literal here so `bnsweep --help` does not import scipy; a test keeps them equal to the
# registries in bnsweep.analysis.stats.
CORRECTIONS = ("none", "holm")
TESTS = ("t", "wilcoxon")
# Literal for the same reason (matplotlib and pandas stay unloaded); a test keeps them equal to
# bnsweep.analysis.plots.PLOT_KINDS.
PLOT_KINDS = ("all", "curves", "diagnostics", "gamma", "trend")


def register(subparsers: argparse._SubParsersAction) -> None:
    tables = subparsers.add_parser(
        "tables",
        help="significance tables of a sweep (Markdown, LaTeX, HTML, CSV, terminal)",
        description="Test every arm against BASE (one-sided paired t-test over seeds, Sect. 4.3) "
        "and print or write the paper's tables from every completed trial in the store.",
    )
    source = tables.add_mutually_exclusive_group()
    source.add_argument(
        "--sweep",
        metavar="NAME",
        action="append",
        help="a sweep registered in the store (default: all trials); repeat it to put sweeps "
        "side by side, one table each with the same layout",
    )
    source.add_argument("--spec", help="a sweep spec (YAML): its cells, whichever sweep ran them")
    tables.add_argument(
        "--format",
        type=_formats,
        default=("term",),
        metavar="FORMAT[,FORMAT...]",
        help=f"one or several of {', '.join(FORMATS)}, comma-separated ('table' is term too; "
        "default: term)",
    )
    tables.add_argument("--out", help="write <out>/<sweep>.<ext> instead of printing")
    tables.add_argument(
        "--level",
        type=float,
        default=0.05,
        help="significance level: significant when p ≤ LEVEL (default 0.05)",
    )
    # α is the learning rate everywhere else (train --alpha, every table header).
    tables.add_argument("--alpha", action=_Renamed, new="--level", help=argparse.SUPPRESS)
    tables.add_argument(
        "--color",
        choices=("auto", "always", "never"),
        default="auto",
        help="bold/underline in the term format: auto (on a terminal), always, never; "
        "without them significance and the best mean are marked * and ^",
    )
    tables.add_argument(
        "--correction", choices=CORRECTIONS, default="none", help="across one table (default none)"
    )
    tables.add_argument("--test", choices=TESTS, default="t", help="paired test (default t)")
    tables.add_argument(
        "--exclude-diverged",
        action="store_true",
        help="leave diverged runs out of means and pairs (default: they count with the score of "
        "their best validation epoch, the diverged network's own evaluation included, as in the "
        "official code)",
    )
    tables.add_argument(
        "--layout",
        choices=LAYOUT_NAMES,
        help="override the spec's report: layout (default: the spec's, else inferred)",
    )
    tables.add_argument(
        "--versus",
        metavar="ARM",
        help="test every cell against this arm instead of BASE: 'BASE' or "
        "'<formulation> γ=<value> c=<value>' (gamma= works too; parts left out match any), "
        "e.g. 'rbn γ=1 c=1'",
    )
    tables.add_argument(
        "--pairwise",
        action="store_true",
        help="add, per block and column, the matrix of every row tested against every other",
    )
    tables.add_argument(
        "--db",
        metavar="URL",
        help="results store URL (default: BNSWEEP_DB or sqlite:///bnsweep.db)",
    )
    tables.set_defaults(func=run_tables)

    plots = subparsers.add_parser(
        "plots",
        help="figures of a sweep: accuracy vs γ per α, validation curves, BN diagnostics "
        "(PNG and PDF)",
        description="Accuracy against γ (log axis) per α with ± std bars and the BASE level, "
        "validation-accuracy curves per arm (mean ± std over seeds), and from the BN diagnostics: "
        "γ/β drift per layer at the end of training, the >6σ fraction over epochs, and the "
        "gradient factor per layer at initialisation per γ (docs/diagnostics.md). --kind trend: "
        "each arm's mean paired difference to BASE with its CI against epochs (docs/analysis.md).",
    )
    plots.add_argument(
        "--sweep", metavar="NAME", help="a sweep registered in the store (default: all trials)"
    )
    plots.add_argument("--out", help="output folder (default: plots/<sweep>)")
    plots.add_argument(
        "--kind",
        choices=PLOT_KINDS,
        default="all",
        help="which figures: all (default: accuracy vs γ, curves, diagnostics), one of those, or "
        "trend (the paired difference to BASE against epochs; needs several epochs values)",
    )
    plots.add_argument(
        "--db",
        metavar="URL",
        help="results store URL (default: BNSWEEP_DB or sqlite:///bnsweep.db)",
    )
    plots.set_defaults(func=run_plots)


class _Renamed(argparse.Action):
    """A flag that was renamed: refused with one line naming the new one."""

    def __init__(self, option_strings: list[str], dest: str, new: str, **kwargs: Any) -> None:
        self.new = new
        super().__init__(option_strings, dest, nargs="?", **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_args: Any, **_kwargs: Any) -> None:
        parser.error(
            f"{self.option_strings[0]} is the learning rate α elsewhere; the significance "
            f"level is {self.new} (e.g. {self.new} 0.01)"
        )


def _formats(text: str) -> tuple[str, ...]:
    # "table" is what status and query call the terminal format: one name for both.
    names = tuple(
        dict.fromkeys(("term" if n.strip() == "table" else n.strip()) for n in text.split(","))
    )
    names = tuple(n for n in names if n)
    unknown = [n for n in names if n not in FORMATS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown format {unknown[0] if unknown else text!r}; allowed: {', '.join(FORMATS)}"
        )
    return names


def _out_folder(out: str | Path) -> Path:
    """--out as a writable folder, checked before any table is built."""
    from bnsweep.commands import check_writable_folder

    return check_writable_folder("--out", out)


# -- handlers ----------------------------------------------------------------------------------
def _spec_trials(args: argparse.Namespace) -> tuple[str, str | None, Any, pd.DataFrame]:
    """(name, store url, report mapping, trials) for --spec: the spec's cells, from any sweep."""
    from bnsweep.commands import database_url
    from bnsweep.store.results import load_cells
    from bnsweep.sweep import expand, load_sweep_spec

    spec = load_sweep_spec(args.spec)
    url = database_url(args.db, spec.database)
    trials = load_cells(url, ((t.spec_hash, t.seed) for t in expand(spec)))
    return spec.name, url, spec.report, trials


def _side_by_side(url: str | None, sweeps: list[str]) -> tuple[str, Any, dict[str, pd.DataFrame]]:
    """(name for --out, report mapping, sweep → trials) for several --sweep: the tables share
    the first sweep's `report:` layout, and stderr says so when another sweep's differs."""
    from bnsweep.store.results import load_trials, sweep_report

    reports = {s: sweep_report(url, s) for s in sweeps}
    report = reports[sweeps[0]]
    others = [s for s in sweeps[1:] if reports[s] != report]
    if others:
        print(
            f"sweep(s) {', '.join(others)} have another report: layout than {sweeps[0]}; "
            f"every table uses {sweeps[0]}'s (--layout, --versus and --pairwise still apply)",
            file=sys.stderr,
        )
    return "-vs-".join(sweeps), report, {s: load_trials(url, s) for s in sweeps}


def run_tables(args: argparse.Namespace) -> int:
    from bnsweep.store.results import load_trials, older_recipe_note, sweep_report

    if not 0 < args.level < 1:
        from bnsweep.workers.errors import SpecError

        raise SpecError(f"--level: must be a number in (0, 1), got {args.level:g}")
    if args.out is not None:  # `--out ''` is refused, not read as "print"
        _out_folder(args.out)
    options = {"alpha": args.level, "correction": args.correction, "test": args.test}
    options["exclude_diverged"] = args.exclude_diverged
    sweeps = list(dict.fromkeys(args.sweep or ()))
    trials: pd.DataFrame | dict[str, pd.DataFrame]
    if args.spec:
        name, url, report, trials = _spec_trials(args)
        # A spec's cells of an older recipe have other hashes: say what the whole store holds.
        notes = [older_recipe_note(url, None)]
    elif len(sweeps) > 1:
        name, report, trials = _side_by_side(args.db, sweeps)
        notes = [older_recipe_note(args.db, s) for s in sweeps]
    else:
        name = sweeps[0] if sweeps else "all"
        trials = load_trials(args.db, sweeps[0] if sweeps else None)
        report = sweep_report(args.db, sweeps[0]) if sweeps else None
        notes = [older_recipe_note(args.db, sweeps[0] if sweeps else None)]
    for note in notes:
        if note is not None:
            print(note, file=sys.stderr)  # stdout stays the tables, for files and pipes
    tables = tables_for(
        trials, report, args.layout, versus=args.versus, pairwise=args.pairwise, **options
    )
    styled = {"always": True, "never": False}.get(args.color, sys.stdout.isatty())
    for fmt in args.format:
        if args.out is not None:
            text = render_tables(tables, fmt, for_terminal=args.color == "always")
            print(write_tables(text, args.out, name, fmt))
        else:
            text = render_tables(tables, fmt, for_terminal=styled)
            sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


def run_plots(args: argparse.Namespace) -> int:
    from bnsweep.analysis.plots import FORMATS as FIGURE_FORMATS
    from bnsweep.analysis.plots import PLOT_KINDS, PlotInputs
    from bnsweep.store.results import load_diagnostics, load_results, sweep_report

    trials, epochs = load_results(args.db, args.sweep)
    diagnostics = load_diagnostics(args.db, args.sweep)
    report = sweep_report(args.db, args.sweep) if args.sweep else None
    default = Path("plots") / safe_name(args.sweep or "all")
    out = _out_folder(default if args.out is None else args.out)
    inputs = PlotInputs(trials, epochs, diagnostics, table_layout(report, None))
    paths = PLOT_KINDS[args.kind](inputs, out, FIGURE_FORMATS)
    for path in paths:
        print(path)
    if not paths:
        print(f"nothing to plot for {args.sweep or 'the store'}", file=sys.stderr)
    return 0
