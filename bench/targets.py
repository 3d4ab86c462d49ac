"""The throughput targets, checked against what `bench/throughput.py` and `bench/packing.py` wrote.

    python bench/targets.py --throughput out/bench/throughput.json --packing out/bench/packing.json

Prints one Markdown row per target that applies to the device the files came from: the target,
what was measured, and whether it is met. Needs only the standard library, so `bench/gpu.sh`
runs it on a bare GPU machine. The targets are the project's (docs/benchmarks.md):

- CPU: a whole epoch (training + evaluation) at least 1.15x the reference loop in fp32, and at
  least 2.2x in bf16 with channels-last.
- GPU: at least 7x the reference loop on the same GPU; at least 50,000 training images/s for
  CIFAR ResNet-18 in bf16 (an H100's target); 4 trials sharing a GPU at least 1.5x one trial.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Results = dict[str, Any]


@dataclass(frozen=True)
class Target:
    name: str
    threshold: float
    unit: str  # "x" for a ratio, else what the number counts
    measure: Callable[[Results, Results | None], tuple[float, str] | None]  # value, from what

    def row(self, throughput: Results, packing: Results | None) -> str:
        found = self.measure(throughput, packing)
        goal = f"≥ {_number(self.threshold, self.unit)}"
        if found is None:
            return f"| {self.name} | {goal} | not measured | - |"
        value, source = found
        verdict = "met" if value >= self.threshold else "missed"
        measured = _number(value, self.unit, down=True)
        return f"| {self.name} | {goal} | {measured} ({source}) | {verdict} |"


def _number(value: float, unit: str, *, down: bool = False) -> str:
    """`down` rounds a measurement down, so one just short of its goal never prints as the goal."""
    if unit == "x":
        return f"{math.floor(value * 100) / 100 if down else value:.2f}×"
    return f"{math.floor(value) if down else value:,.0f} {unit}"


def _rows(throughput: Results, accept: Callable[[str], bool]) -> list[Results]:
    return [
        r
        for r in throughput["results"]
        if r["setting"] != "reference" and "error" not in r and accept(r["setting"])
    ]


def best_ratio(accept: Callable[[str], bool]) -> Callable[[Results, Results | None], Any]:
    """The highest whole-epoch ratio to the reference among the settings `accept` admits."""

    def measure(throughput: Results, _: Results | None) -> tuple[float, str] | None:
        rows = [r for r in _rows(throughput, accept) if "epoch_ratio" in r]
        if not rows:
            return None
        best = max(rows, key=lambda r: r["epoch_ratio"])
        return best["epoch_ratio"], best["setting"]

    return measure


def best_rate(accept: Callable[[str], bool]) -> Callable[[Results, Results | None], Any]:
    """The highest training images/s among the settings `accept` admits (ResNet-18 only)."""

    def measure(throughput: Results, _: Results | None) -> tuple[float, str] | None:
        if throughput["args"]["arch"] != "resnet18":
            return None
        rows = _rows(throughput, accept)
        if not rows:
            return None
        best = max(rows, key=lambda r: r["train_images_per_s"])
        return best["train_images_per_s"], best["setting"]

    return measure


def packing_gain(trials: int) -> Callable[[Results, Results | None], Any]:
    """Aggregate images/s with `trials` sharing the device, over one trial alone."""

    def measure(_: Results, packing: Results | None) -> tuple[float, str] | None:
        rows = {r["trials"]: r for r in (packing or {}).get("results", ())}
        if trials not in rows or "vs_one_trial" not in rows[trials]:
            return None
        return rows[trials]["vs_one_trial"], f"{trials} trials"

    return measure


def _fp32(setting: str) -> bool:
    return setting.startswith("fp32")


def _bf16(setting: str) -> bool:
    return setting.startswith("bf16")


def _bf16_channels_last(setting: str) -> bool:
    return setting.startswith("bf16-cl")


#: device type → its targets.
TARGETS: dict[str, tuple[Target, ...]] = {
    "cpu": (
        Target("fp32 epoch vs reference", 1.15, "x", best_ratio(_fp32)),
        Target("bf16 channels-last epoch vs reference", 2.2, "x", best_ratio(_bf16_channels_last)),
    ),
    "cuda": (
        Target("best epoch vs reference, same GPU", 7.0, "x", best_ratio(lambda s: True)),
        Target("ResNet-18 bf16 training", 50_000, "images/s", best_rate(_bf16)),
        Target("4 trials per GPU vs 1", 1.5, "x", packing_gain(4)),
    ),
}


def report(throughput: Results, packing: Results | None) -> str:
    device = "cuda" if "gpu" in throughput["machine"] else "cpu"
    where = throughput["machine"].get("gpu") or throughput["machine"].get("cpu", "?")
    lines = [
        f"Targets on {where} ({throughput['args']['arch']}, batch {throughput['args']['batch']}):",
        "",
        "| target | goal | measured | |",
        "| --- | --- | --- | --- |",
    ]
    lines += [target.row(throughput, packing) for target in TARGETS[device]]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--throughput", type=Path, required=True, help="bench/throughput.py --json")
    parser.add_argument("--packing", type=Path, help="bench/packing.py --json")
    args = parser.parse_args(argv)
    for name in ("throughput", "packing"):
        path = getattr(args, name)
        if path is not None and not path.is_file():
            parser.error(f"--{name}: no such file: {path}")
    return args


def main(argv: Sequence[str] | None = None) -> str:
    args = parse_args(argv)
    throughput = json.loads(args.throughput.read_text())
    packing = json.loads(args.packing.read_text()) if args.packing else None
    text = report(throughput, packing)
    print(text)
    return text


if __name__ == "__main__":
    main()
