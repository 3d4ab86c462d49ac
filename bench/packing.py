"""Several trials on one GPU: aggregate training images/s with 1, 2, 4 … trials at once.

Each trial is a separate process (as Ray runs a trial with a fractional `gpus:`), running the
real `bnsweep.workers.trial.run_trial` on fabricated CIFAR-10-format files. Every trial's first
epoch is
a warm-up (CUDA context, cuDNN autotuning, torch.compile); the trials then wait for each other at
a barrier and run their remaining epochs together. The aggregate is the training images of those
epochs, summed over the trials, divided by the wall time from the barrier to the last trial's
end. Evaluation runs inside that time, as in a sweep, so this is the rate at which a GPU gets
through training images, all work included.

    python bench/packing.py --device cuda --trials 1 2 4            # full CIFAR size
    python bench/packing.py --device cpu --trials 1 2 --arch resnet8 --train-images 256 \\
        --val-images 64 --test-images 64 --batch 64                # the same path on a CPU

No Ray: plain processes sharing the device, so a bare GPU machine with PyTorch runs it.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import queue
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# A checkout runs this without installing the project (bench/gpu.sh on a bare GPU machine).
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

#: How long a trial waits for the others at the barrier, and the parent for a trial's report.
TIMEOUT_S = 1800.0


def _trial(
    index: int,
    spec_values: dict[str, Any],
    threads: int | None,
    barrier: Any,
    results: Any,
) -> None:
    """One trial process: run_trial, timing each epoch; report (index, payload) on `results`."""
    try:
        import torch
        from throughput import accept_fabricated_cifar

        from bnsweep.workers.spec import TrialSpec
        from bnsweep.workers.trial import run_trial

        if threads:
            torch.set_num_threads(threads)
        accept_fabricated_cifar()
        spec = TrialSpec(**spec_values)
        ends: list[float] = []
        released: list[float] = []

        def on_epoch(metrics: Any, save: Any) -> None:
            ends.append(time.monotonic())  # CLOCK_MONOTONIC: one clock for every process
            if metrics.epoch == 1:
                barrier.wait(timeout=TIMEOUT_S)
                released.append(time.monotonic())

        result = run_trial(spec, on_epoch=on_epoch)
        if result.status != "completed":
            raise RuntimeError(f"trial {index} {result.status}: {result.error}")
        memory = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
        results.put(
            (
                index,
                {
                    "released": released[0],
                    "ends": ends,
                    "epoch_seconds": [m.seconds for m in result.history],
                    "max_memory_bytes": memory,
                },
            )
        )
    except BaseException as err:
        barrier.abort()  # the others must not wait for a trial that is gone
        results.put((index, {"error": f"{type(err).__name__}: {' '.join(str(err).split())}"}))


def train_images_per_epoch(train: int, batch: int) -> int:
    """What the worker's DeviceLoader trains on: a last batch of one image is dropped."""
    return train - 1 if train % batch == 1 and batch > 1 else train


def run_packed(
    trials: int, spec_values: dict[str, Any], train_images: int, threads: int | None
) -> dict[str, Any]:
    """Run `trials` trials at once; their aggregate and per-trial training images/s."""
    ctx = mp.get_context("spawn")  # CUDA cannot be used in a forked child
    barrier = ctx.Barrier(trials)
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=_trial, args=(i, {**spec_values, "seed": i + 1}, threads, barrier, results)
        )
        for i in range(trials)
    ]
    for p in procs:
        p.start()
    reports: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while len(reports) < trials:
            try:
                index, payload = results.get(timeout=1.0)
            except queue.Empty:
                # A trial that died without reporting (killed, or it could not even start).
                dead = [
                    f"trial {i} exited with code {p.exitcode}"
                    for i, p in enumerate(procs)
                    if i not in reports and p.exitcode not in (None, 0)
                ]
                if dead or time.monotonic() > deadline:
                    raise RuntimeError(
                        "; ".join(dead) or f"no report within {TIMEOUT_S:.0f} s"
                    ) from None
                continue
            reports[index] = payload
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.terminate()
    errors = [f"trial {i}: {r['error']}" for i, r in sorted(reports.items()) if "error" in r]
    if errors:
        raise RuntimeError("; ".join(errors))

    per_epoch = train_images_per_epoch(train_images, spec_values["batch_size"])
    measured_epochs = spec_values["epochs"] - 1
    start = min(r["released"] for r in reports.values())
    end = max(r["ends"][-1] for r in reports.values())
    per_trial = [
        per_epoch * measured_epochs / (r["ends"][-1] - r["released"])
        for _, r in sorted(reports.items())
    ]
    memory = [r["max_memory_bytes"] for r in reports.values() if r["max_memory_bytes"]]
    return {
        "trials": trials,
        "aggregate_images_per_s": trials * per_epoch * measured_epochs / (end - start),
        "per_trial_images_per_s": per_trial,
        "seconds": end - start,
        "max_memory_gib_per_trial": max(memory) / 2**30 if memory else None,
        "load": os.getloadavg()[0],
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=("cpu", "cuda"))
    parser.add_argument("--trials", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--precision", default="bf16", choices=("fp32", "bf16"))
    parser.add_argument(
        "--memory-format", default="channels_last", choices=("contiguous", "channels_last")
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile in every trial")
    parser.add_argument("--epochs", type=int, default=3, help="per trial; the first is warm-up")
    parser.add_argument("--train-images", type=int, default=45000)
    parser.add_argument("--val-images", type=int, default=5000)
    parser.add_argument("--test-images", type=int, default=10000)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads per trial (CPU runs)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be >= 2: the first epoch of every trial is a warm-up")
    if min(args.trials) < 1:
        parser.error("--trials: each count must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    from throughput import write_cifar10

    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("packing.py: --device cuda, but no CUDA device is visible")
        where = torch.cuda.get_device_name(0)
    else:
        where = f"CPU ({os.cpu_count()} cores)"
    rows = []
    with tempfile.TemporaryDirectory(prefix="bnsweep-packing-") as tmp:
        root = write_cifar10(Path(tmp), args.train_images + args.val_images, args.test_images)
        spec_values = {
            "dataset": "cifar10",
            "arch": args.arch,
            "batch_size": args.batch,
            "epochs": args.epochs,
            "precision": args.precision,
            "memory_format": args.memory_format,
            "compile": args.compile,
            "val_fraction": args.val_images / (args.train_images + args.val_images),
            "data_root": str(root),
            "device": args.device,
        }
        print(
            f"{args.arch} {args.precision}/{args.memory_format}"
            f"{' compiled' if args.compile else ''}, batch {args.batch}, {args.train_images} "
            f"train images, {args.epochs} epochs per trial (1 warm-up) on {where}",
            flush=True,
        )
        for trials in args.trials:
            # On a CPU the trials share the cores; on a GPU each keeps torch's default.
            threads = args.threads or (
                max(1, (os.cpu_count() or 1) // trials) if args.device == "cpu" else None
            )
            row = run_packed(trials, spec_values, args.train_images, threads)
            rows.append(row)
            print(
                f"  {trials} trial(s): {row['aggregate_images_per_s']:10.1f} img/s aggregate "
                f"(per trial {', '.join(f'{r:.1f}' for r in row['per_trial_images_per_s'])}; "
                f"load {row['load']:.1f})",
                flush=True,
            )
    single = next((r for r in rows if r["trials"] == 1), None)
    for row in rows:
        if single is not None:
            row["vs_one_trial"] = row["aggregate_images_per_s"] / single["aggregate_images_per_s"]
    print(f"{'trials':>6} {'aggregate img/s':>16} {'x one trial':>12} {'GiB/trial':>10}")
    for row in rows:
        ratio = f"{row['vs_one_trial']:.2f}" if "vs_one_trial" in row else "-"
        memory = row["max_memory_gib_per_trial"]
        print(
            f"{row['trials']:>6} {row['aggregate_images_per_s']:>16.1f} {ratio:>12} "
            f"{(f'{memory:.2f}' if memory else '-'):>10}"
        )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "device": where,
            "results": rows,
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
