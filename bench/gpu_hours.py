"""GPU-hours for each paper table, from counted FLOPs and a GPU's throughput.

For every spec in `configs/paper/` this expands the cells (`bnsweep.sweep.expand`, as
`bnsweep launch --dry-run` does), counts the ones an earlier table has already run, and prices a
cell of each (dataset, network) by its floating-point operations:

    per epoch = training images x 3 x forward FLOPs (the backward pass costs about two forwards)
              + (validation + test images) x forward FLOPs
    per cell  = epochs x per epoch

Forward FLOPs per image are counted by `torch.utils.flop_counter.FlopCounterMode` on the model
`bnsweep.workers.trial.build` makes, at the input size the loader feeds it (32 x 32 for CIFAR, 224
x 224
crops for CUB-200 and Stanford Cars). Convolutions and matmuls only: BN, ReLU and the update are
bandwidth-bound and are what the "sustained" rate below has to absorb.

GPU-hours = FLOPs / sustained FLOP/s. The sustained rate comes from, in order of preference:

- `--measured OUT/throughput.json` (what `bench/gpu.sh` writes): the best worker setting's
  training images/s for CIFAR ResNet-18, times its training FLOPs per image. Every network is
  then priced at that efficiency; larger inputs and wider layers usually run more efficiently
  than a 32 x 32 ResNet-18, so this overestimates the 224 x 224 tables.
- `--tflops X`: a sustained rate you know for your GPU.
- neither: the GPU's peak (`--peak-tflops`, default the H100 SXM's dense bf16, 989), which gives
  a lower bound that no real run reaches.

A second table prices every paper table in each precision (fp32, tf32, bf16) at stated sustained
rates for an H100 SXM (`stated_rates`; none of them is measured yet): the price of a precision.

    python bench/gpu_hours.py                                # lower bounds at the H100's peak
    python bench/gpu_hours.py --measured out/gpu/throughput.json
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bnsweep.sweep import expand, load_sweep_spec
from bnsweep.workers.loaders import CROP
from bnsweep.workers.models import build_model
from bnsweep.workers.spec import TrialSpec
from bnsweep.workers.trial import SMALL_INPUT_MAX

PAPER = Path(__file__).resolve().parent.parent / "configs" / "paper"

#: A training image costs a forward and a backward pass, the backward about two forwards.
TRAINING_FORWARDS = 3

#: H100 SXM, dense bfloat16 tensor-core peak (NVIDIA's datasheet; 1,979 is with 2:4 sparsity).
H100_PEAK_TFLOPS = 989.0
#: H100 SXM dense peaks per precision, TFLOP/s (NVIDIA's datasheet): IEEE fp32 runs on the CUDA
#: cores (67), TF32 and bf16 on the tensor cores (494.5 and 989; twice that with 2:4 sparsity).
H100_PEAK_TFLOPS_BY_PRECISION = {"fp32": 67.0, "tf32": 494.5, "bf16": H100_PEAK_TFLOPS}
#: The bf16 throughput target for a CIFAR ResNet-18 on an H100 (docs/benchmarks.md#throughput).
BF16_TARGET_IMAGES_PER_S = 50_000
#: Assumed share of the fp32 CUDA-core peak that cuDNN's IEEE fp32 convolutions sustain.
FP32_SUSTAINED_SHARE = 0.6


@dataclass(frozen=True)
class DatasetShape:
    """The official split sizes; the worker holds `val_fraction` of the training split out."""

    train: int
    test: int
    classes: int
    image_size: int  # what the network sees


#: Official sizes: CIFAR (Krizhevsky 2009), CUB-200-2011 (Wah et al. 2011), Stanford Cars
#: (Krause et al. 2013). The loaders in workers/data.py read exactly these splits.
DATASETS = {
    "cifar10": DatasetShape(train=50_000, test=10_000, classes=10, image_size=32),
    "cifar100": DatasetShape(train=50_000, test=10_000, classes=100, image_size=32),
    "cub200": DatasetShape(train=5_994, test=5_794, classes=200, image_size=CROP),
    "stanford_cars": DatasetShape(train=8_144, test=8_041, classes=196, image_size=CROP),
}


def _network(arch: str, dataset: str) -> torch.nn.Module:
    """The network a paper cell of `dataset` trains (BN formulation and γ do not change its
    FLOPs or its size)."""
    shape = DATASETS[dataset]
    return build_model(
        arch,
        num_classes=shape.classes,
        in_channels=3,
        small_input=shape.image_size <= SMALL_INPUT_MAX,
        formulation="standard",
        gamma=1.0,
        input_norm="bn",
    )


@functools.cache  # each network is built and counted once, however many cells and tables use it
def forward_flops(arch: str, dataset: str) -> int:
    """Forward FLOPs for one image (a multiply-add counts as two)."""
    shape = DATASETS[dataset]
    model = _network(arch, dataset).eval()
    batch = 2  # BN in eval mode does not care; 2 keeps the count exact and the run short
    x = torch.zeros(batch, 3, shape.image_size, shape.image_size)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() // batch


@functools.cache
def checkpoint_bytes(arch: str, dataset: str) -> int:
    """The size of one trial checkpoint: weights, BN buffers and one SGD momentum buffer per
    parameter, serialised as `bnsweep.workers.checkpoint.save_checkpoint` does (RNG states and the
    epoch
    history add a few kB)."""
    model = _network(arch, dataset)
    momentum = {
        i: {"momentum_buffer": p.detach().clone()} for i, p in enumerate(model.parameters())
    }
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": {"state": momentum}}, buffer)
    return buffer.tell()


@dataclass(frozen=True)
class CellCost:
    train_images: int  # per epoch
    eval_images: int  # per epoch: validation + test
    forward_flops: int  # per image

    def flops(self, epochs: int) -> float:
        images = TRAINING_FORWARDS * self.train_images + self.eval_images
        return epochs * self.forward_flops * images


def cell_cost(spec: TrialSpec) -> CellCost:
    shape = DATASETS[spec.dataset]
    val = round(shape.train * spec.val_fraction)
    return CellCost(shape.train - val, val + shape.test, forward_flops(spec.arch, spec.dataset))


@dataclass
class TableCost:
    name: str
    cells: int
    new_cells: int
    flops: float  # all cells
    new_flops: float  # cells no earlier table ran
    networks: Counter[str]
    checkpoint_bytes_every_epoch: float = 0.0  # new cells, a checkpoint after every epoch
    checkpoint_bytes: float = 0.0  # new cells, at the spec's `checkpoint_every`


def paper_tables(paths: Sequence[Path]) -> list[TableCost]:
    """Every table's cost, counting as new only the cells no earlier table already holds."""
    seen: set[tuple[str, int]] = set()
    tables = []
    for path in paths:
        sweep = load_sweep_spec(path)
        cells = expand(sweep)
        cost = TableCost(path.stem, len(cells), 0, 0.0, 0.0, Counter())
        for cell in cells:
            flops = cell_cost(cell).flops(cell.epochs)
            cost.flops += flops
            cost.networks[f"{cell.dataset}/{cell.arch}"] += 1
            key = (cell.spec_hash, cell.seed)
            if key not in seen:
                seen.add(key)
                cost.new_cells += 1
                cost.new_flops += flops
                size = checkpoint_bytes(cell.arch, cell.dataset)
                saves = -(-cell.epochs // sweep.checkpoint_every)  # and always after the last
                cost.checkpoint_bytes_every_epoch += cell.epochs * size
                cost.checkpoint_bytes += saves * size
        tables.append(cost)
    return tables


def measured_rate(path: Path, setting: str | None) -> tuple[float, str]:
    """Sustained FLOP/s from bench/gpu.sh's throughput.json: `setting`, else its fastest."""
    saved = json.loads(path.read_text())
    arch = saved["args"]["arch"]
    rows = [r for r in saved["results"] if r["setting"] != "reference" and "error" not in r]
    if setting is not None:
        rows = [r for r in rows if r["setting"] == setting]
    if not rows:
        finished = [r["setting"] for r in saved["results"] if "error" not in r]
        raise SystemExit(
            f"{path}: no finished worker setting {setting or ''} to price with; "
            f"finished: {', '.join(finished) or 'none'}"
        )
    best = max(rows, key=lambda r: r["train_images_per_s"])
    # gpu.sh trains on CIFAR-10-format data.
    train_flops = TRAINING_FORWARDS * forward_flops(arch, "cifar10")
    where = saved.get("machine", {}).get("gpu") or saved.get("machine", {}).get("cpu", "?")
    rate = best["train_images_per_s"] * train_flops
    return rate, (
        f"measured: {arch} {best['setting']} at {best['train_images_per_s']:,.0f} training "
        f"images/s on {where} = {rate / 1e12:.1f} TFLOP/s sustained"
    )


@dataclass(frozen=True)
class StatedRate:
    flops_per_s: float
    source: str


def stated_rates() -> dict[str, StatedRate]:
    """A sustained H100 rate per precision, each with where it comes from. bf16 is the throughput
    target; tf32 takes bf16's share of its peak (the same tensor-core efficiency, which flatters
    tf32: its activations move twice the bytes); fp32 is an assumed share of the CUDA-core peak.
    """
    peak = {p: tflops * 1e12 for p, tflops in H100_PEAK_TFLOPS_BY_PRECISION.items()}
    train_flops = TRAINING_FORWARDS * forward_flops("resnet18", "cifar10")
    bf16 = BF16_TARGET_IMAGES_PER_S * train_flops
    share = bf16 / peak["bf16"]
    return {
        "fp32": StatedRate(
            FP32_SUSTAINED_SHARE * peak["fp32"],
            f"assumed {FP32_SUSTAINED_SHARE:.0%} of the {H100_PEAK_TFLOPS_BY_PRECISION['fp32']:g} "
            "TFLOP/s fp32 CUDA-core peak (no tensor cores in IEEE fp32)",
        ),
        "tf32": StatedRate(
            share * peak["tf32"],
            f"bf16's {share:.0%} of peak applied to the "
            f"{H100_PEAK_TFLOPS_BY_PRECISION['tf32']:g} TFLOP/s TF32 tensor-core peak",
        ),
        "bf16": StatedRate(
            bf16,
            f"CIFAR ResNet-18 at the {BF16_TARGET_IMAGES_PER_S:,} images/s target "
            f"({share:.0%} of the {H100_PEAK_TFLOPS_BY_PRECISION['bf16']:g} TFLOP/s peak)",
        ),
    }


def per_precision(tables: Sequence[TableCost], rates: dict[str, StatedRate]) -> str:
    """GPU-hours of each table's new cells in each precision at `rates`."""
    names = list(rates)
    lines = [
        "GPU-hours of the new cells per precision, H100 SXM at stated sustained rates:",
        "",
        *(f"- {p}: {r.flops_per_s / 1e12:,.1f} TFLOP/s, {r.source}" for p, r in rates.items()),
        "",
        "| table | new cells | " + " | ".join(f"{p} GPU-hours" for p in names) + " |",
        "| --- | ---: | " + " | ".join("---:" for _ in names) + " |",
    ]
    for t in tables:
        hours = " | ".join(f"{t.new_flops / rates[p].flops_per_s / 3600:,.1f}" for p in names)
        lines.append(f"| {t.name} | {t.new_cells:,} | {hours} |")
    total = sum(t.new_flops for t in tables)
    hours = " | ".join(f"{total / rates[p].flops_per_s / 3600:,.1f}" for p in names)
    lines.append(f"| all (each cell once) | {sum(t.new_cells for t in tables):,} | {hours} |")
    return "\n".join(lines)


def markdown(tables: Sequence[TableCost], rate: float, peak: float, source: str) -> str:
    lines = [
        f"Sustained rate: {source}. Peak: {peak / 1e12:,.0f} TFLOP/s.",
        "",
        "| table | cells | new cells | PFLOP, new cells | GPU-hours, all cells | GPU-hours, new "
        "cells | lower bound at peak (new cells) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for t in tables:
        lines.append(
            f"| {t.name} | {t.cells:,} | {t.new_cells:,} | {t.new_flops / 1e15:,.0f} | "
            f"{t.flops / rate / 3600:,.1f} | {t.new_flops / rate / 3600:,.1f} | "
            f"{t.new_flops / peak / 3600:,.2f} |"
        )
    total = sum(t.new_flops for t in tables)
    lines.append(
        f"| all (each cell once) | {sum(t.cells for t in tables):,} | "
        f"{sum(t.new_cells for t in tables):,} | {total / 1e15:,.0f} | | "
        f"{total / rate / 3600:,.1f} | {total / peak / 3600:,.2f} |"
    )
    return "\n".join(lines)


def storage(tables: Sequence[TableCost]) -> str:
    """Checkpoint bytes written to the shared storage per table (new cells only), at every
    epoch and at each spec's `checkpoint_every`."""
    lines = [
        "| table | new cells | checkpoint every epoch | at the spec's `checkpoint_every` |",
        "| --- | ---: | ---: | ---: |",
    ]
    for t in [*tables, _total(tables)]:
        lines.append(
            f"| {t.name} | {t.new_cells:,} | {t.checkpoint_bytes_every_epoch / 1e12:.1f} TB | "
            f"{t.checkpoint_bytes / 1e12:.2f} TB |"
        )
    return "\n".join(lines)


def _total(tables: Sequence[TableCost]) -> TableCost:
    total = TableCost("all six", 0, 0, 0.0, 0.0, Counter())
    for t in tables:
        total.cells += t.cells
        total.new_cells += t.new_cells
        total.checkpoint_bytes_every_epoch += t.checkpoint_bytes_every_epoch
        total.checkpoint_bytes += t.checkpoint_bytes
    return total


def per_network(tables: Sequence[TableCost]) -> str:
    keys = sorted({k for t in tables for k in t.networks})
    lines = [
        "| dataset/network | forward GFLOP per image | training images per epoch | "
        "evaluated images per epoch | PFLOP per 180-epoch cell |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for key in keys:
        dataset, arch = key.split("/")
        cost = cell_cost(TrialSpec(dataset=dataset, arch=arch))
        lines.append(
            f"| {key} | {cost.forward_flops / 1e9:.2f} | {cost.train_images:,} | "
            f"{cost.eval_images:,} | {cost.flops(180) / 1e15:.2f} |"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--measured", type=Path, help="bench/gpu.sh's throughput.json: price at its rate"
    )
    parser.add_argument(
        "--setting",
        help="with --measured: the setting to price at, e.g. fp32 for the paper specs as "
        "written (default: the fastest)",
    )
    parser.add_argument("--tflops", type=float, help="a sustained rate, in TFLOP/s")
    parser.add_argument("--peak-tflops", type=float, default=H100_PEAK_TFLOPS)
    parser.add_argument(
        "--specs",
        type=Path,
        nargs="+",
        default=sorted(PAPER.glob("table*.yaml")),
        help="sweep specs, in the order they run (default: configs/paper/table1..6)",
    )
    args = parser.parse_args(argv)
    if args.measured is not None and args.tflops is not None:
        parser.error("--measured and --tflops each give the rate: pass one")
    if args.setting is not None and args.measured is None:
        parser.error("--setting picks a row of --measured's file: pass --measured too")
    if args.measured is not None and not args.measured.is_file():
        parser.error(f"--measured: no such file: {args.measured}")
    for name in ("tflops", "peak_tflops"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            parser.error(f"--{name.replace('_', '-')}: must be > 0, got {value}")
    return args


def main(argv: Sequence[str] | None = None) -> str:
    args = parse_args(argv)
    peak = args.peak_tflops * 1e12
    if args.measured is not None:
        rate, source = measured_rate(args.measured, args.setting)
    elif args.tflops is not None:
        rate, source = args.tflops * 1e12, f"given: {args.tflops:,.0f} TFLOP/s"
    else:
        rate, source = peak, "none given, so the GPU-hours are lower bounds at peak"
    tables = paper_tables(args.specs)
    report = "\n\n".join(
        [
            markdown(tables, rate, peak, source),
            per_precision(tables, stated_rates()),
            per_network(tables),
            storage(tables),
        ]
    )
    print(report)
    return report


if __name__ == "__main__":
    main()
