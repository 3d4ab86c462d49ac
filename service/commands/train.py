"""`bnsweep train`: one run of the worker, with a progress bar; no Ray and no database."""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields

from bnsweep.commands import check_writable_folder
from bnsweep.workers.plugins import GROUPS
from bnsweep.workers.spec import (
    ARCH_NAMES,
    COMPILE_MODES,
    DATASET_NAMES,
    DEVICES,
    FORMULATION_NAMES,
    INPUT_NORM_NAMES,
    MEMORY_FORMATS,
    PRECISIONS,
    TrialSpec,
)

#: Short flags the paper's symbols suggest, in addition to one `--field-name` per TrialSpec field.
ALIASES = {"bn_scale_init": ("--gamma",), "bn_lr_divisor": ("--c",), "lr": ("--alpha",)}

#: What `--help` lists for the named fields: the names the spec validates against, which need no
#: torch, so `bnsweep --help` stays quick.
ALLOWED: dict[str, tuple[str, ...]] = {
    "dataset": DATASET_NAMES,
    "arch": ARCH_NAMES,
    "formulation": FORMULATION_NAMES,
    "input_norm": INPUT_NORM_NAMES,
    "precision": tuple(PRECISIONS),
    "memory_format": tuple(MEMORY_FORMATS),
    "device": tuple(DEVICES),
    "compile_mode": tuple(COMPILE_MODES),
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train one run (no Ray, no database) and print its result",
        description="Train one run of the paper's method and print its result. Unset fields take "
        "the paper's defaults (Sect. 4.1-4.2).",
    )
    defaults = TrialSpec.__dataclass_fields__
    for f in fields(TrialSpec):
        flags = (f"--{f.name.replace('_', '-')}", *ALIASES.get(f.name, ()))
        default = defaults[f.name].default
        if isinstance(default, bool):
            # A flag, not a value: `--compile`, `--no-compile`.
            parser.add_argument(
                *flags, dest=f.name, default=None, action=argparse.BooleanOptionalAction,
                help=f"default: {'on' if default else 'off'}",
            )  # fmt: skip
            continue
        allowed = f"one of {', '.join(ALLOWED[f.name])}; " if f.name in ALLOWED else ""
        if f.name in GROUPS:
            allowed = allowed.replace("; ", ", or an installed plugin's (docs/extending.md); ")
        parser.add_argument(
            *flags, dest=f.name, default=None, metavar=f.name.upper(),
            help=f"{allowed}default: {default}",
        )  # fmt: skip
    parser.add_argument(
        "--checkpoint-dir", default=None, help="write a resumable checkpoint here after every epoch"
    )
    parser.add_argument(
        "--resume", default=None, help="continue from this checkpoint file or folder"
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict

    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from bnsweep.workers.trial import run_trial

    values = {
        f.name: getattr(args, f.name)
        for f in fields(TrialSpec)
        if getattr(args, f.name) is not None
    }
    spec = TrialSpec(**values)
    # A plugin's failure is one line naming it, before the first epoch (docs/extending.md).
    from bnsweep.sweep import check_plugins

    check_plugins([spec])
    if args.checkpoint_dir:
        # Before the first epoch, not after it: a run of hours must not fail at its first save.
        check_writable_folder("--checkpoint-dir", args.checkpoint_dir)
    if args.resume:
        check_resume(args.resume)
    console = Console(stderr=True)
    columns = (
        TextColumn("epoch"),
        MofNCompleteColumn(),
        BarColumn(),
        TextColumn("{task.fields[status]}"),
        TimeRemainingColumn(),
    )
    # Off a terminal rich would only print the bar's last frame, also before an error line.
    with Progress(
        *columns, console=console, transient=False, disable=not console.is_terminal
    ) as bar:
        task = bar.add_task("train", total=spec.epochs, status="", completed=0)

        def on_epoch(m, save):
            if args.checkpoint_dir:
                save(args.checkpoint_dir)
            status = (
                f"loss {m.train_loss:.4f}  val {100 * m.val_acc:.2f}%  test {100 * m.test_acc:.2f}%"
            )
            bar.update(task, completed=m.epoch, status=status)
            if not console.is_terminal:
                # Off a terminal (a Slurm log, a pipe) the bar is off: one line per epoch.
                print(
                    f"epoch {m.epoch}/{spec.epochs}  {status}  {m.seconds:.1f} s",
                    file=sys.stderr,
                    flush=True,
                )

        result = run_trial(spec, on_epoch=on_epoch, checkpoint=args.resume)

    summary = {k: v for k, v in asdict(result).items() if k != "history"}
    summary.update(spec_hash=spec.spec_hash, seed=spec.seed)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(
        f"{result.status}: spec {spec.spec_hash} seed {spec.seed}, {result.epochs_run} "
        f"epoch{'' if result.epochs_run == 1 else 's'} in {result.seconds:.1f} s "
        f"({result.images_per_sec:.0f} img/s)"
    )
    if result.test_acc is not None and result.best_val_acc is not None:
        print(
            f"best val {100 * result.best_val_acc:.2f}% at epoch {result.best_epoch}; "
            f"test at best {100 * result.test_acc:.2f}%; final test "
            + (f"{100 * result.final_test_acc:.2f}%" if result.final_test_acc is not None else "-")
        )
    if result.error:
        print(result.error)
    return 0


def check_resume(path: str) -> None:
    """Refuse a checkpoint that cannot be resumed before any data loads: one line naming it and
    what --resume takes."""
    from bnsweep.workers.checkpoint import FILENAME, CheckpointError, load_checkpoint

    try:
        load_checkpoint(path)
    except CheckpointError as err:
        raise CheckpointError(
            f"--resume: {err}; give the folder (or its {FILENAME}) that "
            "`bnsweep train --checkpoint-dir` wrote"
        ) from None
