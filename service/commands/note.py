"""`bnsweep note`: write a note on a sweep, a cell or a trial; `bnsweep note --list` reads them.

    bnsweep note --sweep demo "γ = 0.01 arm rerun after the data fix"
    bnsweep note --sweep demo --arm "rbn γ=0.1 c=100" "diverges at epoch 3 on every seed"
    bnsweep note --trial 42 - < observations.txt
    bnsweep note --list --sweep demo

A cell is one arm of a sweep, named as `bnsweep tables --versus` names arms (the same code,
bnsweep.analysis.pairing.find_arm), or by its spec hash. Notes are only added: no command edits
or deletes one. The store and pandas are imported inside the handler, so `bnsweep --help`
stays quick.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import TYPE_CHECKING

from bnsweep.workers.errors import SpecError

if TYPE_CHECKING:
    import pandas as pd

    from bnsweep.store.api import Store
    from bnsweep.store.values import Note


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "note",
        help="write a note on a sweep, a cell or a trial, or list the notes",
        description="Add a note (author and UTC time recorded) to the results store, shown on "
        "the dashboard's and the report's pages; --list prints the notes, newest first.",
    )
    parser.add_argument(
        "text", nargs="?", help="the note; '-' reads it from standard input (at most 10,000 chars)"
    )
    parser.add_argument("--list", action="store_true", help="list notes instead of adding one")
    parser.add_argument("--sweep", metavar="NAME", help="the sweep (with --arm: the cell's sweep)")
    cell = parser.add_mutually_exclusive_group()
    cell.add_argument(
        "--arm",
        metavar="ARM",
        help="a cell of --sweep by its arm, as --versus names it: BASE, 'rbn γ=0.1 c=100'",
    )
    cell.add_argument("--spec-hash", metavar="HASH", help="a cell by its spec hash")
    parser.add_argument("--seed", type=int, help="with --spec-hash: that cell's trial of this seed")
    parser.add_argument("--trial", type=int, metavar="ID", help="a trial by its id")
    parser.add_argument("--author", help="who writes it (default: your user name on this machine)")
    parser.add_argument(
        "--db",
        default=None,
        metavar="URL",
        help="results database (default: $BNSWEEP_DB, else sqlite:///bnsweep.db); "
        "sqlite:///PATH or postgresql://USER@HOST/DB",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return (list_notes if args.list else add_note)(args)


def list_notes(args: argparse.Namespace) -> int:
    from bnsweep.store.api import Store

    given = [f for f in ("text", "arm", "spec_hash", "seed", "trial", "author") if _given(args, f)]
    if given:
        raise SpecError(
            f"note --list: takes --sweep and --db only, got --{given[0].replace('_', '-')}"
        )
    with Store.open(args.db, read_only=True) as store:
        notes = store.notes(args.sweep)
    for note in notes:
        print(note_lines(note))
    return 0


def note_lines(note: Note) -> str:
    """A note for a terminal: one heading line, then its text indented."""
    when = note.created_at.strftime("%Y-%m-%d %H:%M UTC")
    text = "\n".join("    " + line for line in note.text.splitlines())
    return f"#{note.id}  {when}  {note.author}  on {note.target}\n{text}"


def add_note(args: argparse.Namespace) -> int:
    from bnsweep.store.api import Store

    text = _text(args.text)
    author = args.author if args.author is not None else _user()
    _check_target(args)
    with Store.open(args.db, create=False) as store:
        spec_hash = args.spec_hash
        if args.arm is not None:
            spec_hash = arm_cell(store, args.sweep, args.arm)
        note = store.add_note(
            text,
            author,
            sweep=None if args.seed is not None else args.sweep,
            spec_hash=spec_hash,
            trial_id=args.trial,
            seed=args.seed,
        )
    print(f"added note #{note.id} on {note.target}")
    return 0


def _given(args: argparse.Namespace, field: str) -> bool:
    return getattr(args, field) is not None


def _text(text: str | None) -> str:
    if text is None:
        raise SpecError("note: give the text, or '-' to read it from standard input")
    return sys.stdin.read() if text == "-" else text


def _user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no user name in the environment nor the password database
        raise SpecError("note: cannot tell your user name; give --author NAME") from None


def _check_target(args: argparse.Namespace) -> None:
    """Exactly one target: a sweep, a cell (--arm or --spec-hash) or a trial."""
    if args.trial is not None and any(_given(args, f) for f in ("sweep", "arm", "spec_hash")):
        raise SpecError("note: --trial names a trial on its own; drop --sweep/--arm/--spec-hash")
    if args.seed is not None and args.spec_hash is None:
        raise SpecError("note: --seed names a trial with --spec-hash HASH --seed N")
    if args.arm is not None and args.sweep is None:
        raise SpecError("note: --arm names a cell of a sweep; add --sweep NAME")
    if not any(_given(args, f) for f in ("sweep", "spec_hash", "trial")):
        raise SpecError(
            "note: say what it is on: --sweep NAME, --sweep NAME --arm ARM, --spec-hash HASH, "
            "--trial ID or --spec-hash HASH --seed N"
        )


def arm_cell(store: Store, sweep: str, arm: str) -> str:
    """The spec hash of the one cell of `sweep` whose arm `arm` names (find_arm's syntax)."""
    from bnsweep.analysis.pairing import Arm, arm_label, find_arm

    known = [info.name for info in store.sweeps()]
    if sweep not in known:
        raise SpecError(
            f"note: no sweep named {sweep!r}; known sweeps: " + (", ".join(known) or "none")
        )
    trials = store.trials(sweep=sweep)
    cells: dict[Arm, set[str]] = {}
    for spec_hash, formulation, gamma, c in zip(
        trials["spec_hash"],
        trials["formulation"],
        trials["bn_scale_init"],
        trials["bn_lr_divisor"],
        strict=True,
    ):
        cells.setdefault(Arm(str(formulation), float(gamma), float(c)), set()).add(spec_hash)
    if not cells:
        raise SpecError(f"note: --arm: sweep {sweep!r} has no cells")
    found = find_arm(list(cells), arm, field="--arm")
    hashes = sorted(cells[found])
    if len(hashes) > 1:
        raise SpecError(
            f"note: --arm {arm!r} is {arm_label(found)} in {len(hashes)} cells of sweep "
            f"{sweep!r}: {_differences(trials, hashes)}; name one with --spec-hash"
        )
    return hashes[0]


def _differences(trials: pd.DataFrame, hashes: list[str]) -> str:
    """`1493545199bcc91a (lr=0.1), 4fee79a39c32874f (lr=0.01)`: what tells the cells apart."""
    from bnsweep.store.columns import SPEC_COLUMNS

    rows = trials[trials["spec_hash"].isin(hashes)].drop_duplicates("spec_hash")
    differ = [c for c in SPEC_COLUMNS if rows[c].nunique(dropna=False) > 1]
    return ", ".join(
        f"{row['spec_hash']} ({' '.join(f'{c}={row[c]}' for c in differ)})"
        for _, row in rows.sort_values("spec_hash").iterrows()
    )
