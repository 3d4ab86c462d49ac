"""What BN diagnostics cost a training epoch: epochs with and without them, interleaved.

An "epoch" is what `run_trial` does per epoch: one pass over the training split, then
evaluation of the validation and test splits. With diagnostics, the inspector runs after it as
in `run_trial` (one probe forward in train mode plus the γ/β statistics). Epochs alternate
(off, on, on, off, ...) on the same model, so drift in machine load hits both alike. Two
figures: the ratio of the median epoch times with and without, and the median time of the
inspection itself over the median epoch. On a loaded machine the first is noise of several
per cent either way; the second is timed within the epoch it belongs to and stays readable. The
load average is printed before and after: it says how far to trust the numbers.

    python bench/diagnostics_overhead.py                      # digits and CIFAR-size synthetic
    python bench/diagnostics_overhead.py --data cifar-size --train-images 45000 --reps 3

`cifar-size` is random uint8 images of CIFAR's shape (3×32×32, 10 classes) with a training
split of `--train-images` (5000 by default, a ninth of CIFAR-10's 45 000, so the overhead it
reports is about nine times the real one); `digits` is the real 8×8 digits set, the worst case
in this repository: the smallest training split (1293 images) for a probe of one batch.
Results: docs/diagnostics.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import dataclass

import torch

from bnsweep.workers.data import DataSplits, load_splits
from bnsweep.workers.devices import resolve_device
from bnsweep.workers.diagnostics import BNDiagnostics
from bnsweep.workers.spec import TrialSpec
from bnsweep.workers.trial import (
    autocast_for,
    build,
    evaluate,
    make_loaders,
    memory_format_for,
    train_one_epoch,
)


@dataclass(frozen=True)
class Timing:
    data: str
    train_images: int
    probe: int
    off: list[float]
    on: list[float]
    inspect: list[float]

    @property
    def overhead(self) -> float:
        return statistics.median(self.on) / statistics.median(self.off) - 1.0


def cifar_size(train_images: int, eval_images: int = 1000) -> DataSplits:
    g = torch.Generator().manual_seed(0)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
        return x, torch.arange(n) % 10

    (tx, ty), (vx, vy), (sx, sy) = split(train_images), split(eval_images), split(eval_images)
    return DataSplits(tx, ty, vx, vy, sx, sy, num_classes=10, augment="flip", crop_size=None)


def measure(name: str, spec: TrialSpec, data: DataSplits, reps: int, every: int = 1) -> Timing:
    device = resolve_device(spec.device)
    model, optimizer, _ = build(spec, data, device)
    # The worker's own phases, so the epoch timed is the epoch `run_trial` runs.
    loaders = make_loaders(spec, data, device, torch.Generator().manual_seed(0))
    inspector = BNDiagnostics.for_spec(spec, every=every)
    autocast, fmt = autocast_for(spec, device), memory_format_for(spec)

    def epoch(number: int, with_diagnostics: bool) -> tuple[float, float]:
        started = time.perf_counter()
        loss, _ = train_one_epoch(model, loaders["train"], optimizer, autocast, fmt)
        loss.item()
        evaluate(model, loaders["val"], autocast, fmt)
        evaluate(model, loaders["test"], autocast, fmt)
        inspected = time.perf_counter()
        if with_diagnostics:
            inspector(model, number, data)
            inspector.take()
        _sync(device)
        done = time.perf_counter()
        return done - started, done - inspected

    epoch(0, True)  # warm-up: first-call allocations, the probe batch is built
    off, on, inspect = [], [], []
    for rep in range(reps):
        # Alternate which goes first, so a trend in load does not favour one side.
        order = (False, True) if rep % 2 == 0 else (True, False)
        for flag in order:
            total, part = epoch(rep + 1, flag)
            (on if flag else off).append(total)
            if flag:
                inspect.append(part)
    return Timing(name, len(data.train_x), inspector.probe_size, off, on, inspect)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=("digits", "cifar-size", "both"), default="both")
    parser.add_argument("--train-images", type=int, default=5000)
    parser.add_argument("--reps", type=int, default=5, help="epochs per side (default 5)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    load_before = os.getloadavg()
    runs: list[Timing] = []
    if args.data in ("digits", "both"):
        spec = TrialSpec(dataset="digits", arch="resnet8", batch_size=128, device=args.device)
        runs.append(measure("digits 1×8×8", spec, load_splits(spec), args.reps))
    if args.data in ("cifar-size", "both"):
        spec = TrialSpec(dataset="synthetic", arch="resnet8", batch_size=128, device=args.device)
        data = cifar_size(args.train_images)
        runs.append(measure("CIFAR-size 3×32×32", spec, data, args.reps))
    load_after = os.getloadavg()

    print(
        f"machine: {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
        f"device {args.device}; load average (1/5/15 min) before "
        f"{'/'.join(f'{x:.1f}' for x in load_before)}, after "
        f"{'/'.join(f'{x:.1f}' for x in load_after)}"
    )
    print(
        "| data | train images | probe | epoch off (s) | epoch on (s) | inspection (s) "
        "| on / off − 1 | inspection / epoch |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for t in runs:
        off, on, inspect = (statistics.median(v) for v in (t.off, t.on, t.inspect))
        print(
            f"| {t.data} | {t.train_images} | {t.probe} | {off:.3f} | {on:.3f} | {inspect:.4f} "
            f"| {100 * t.overhead:+.1f} % | {100 * inspect / off:.1f} % |"
        )


if __name__ == "__main__":
    main()
