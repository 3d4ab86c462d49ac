"""Training throughput: a reference-style loop against the bnsweep worker's loop, side by side.

Both loops train the same model (`bnsweep.workers.trial.build`: CIFAR ResNet-18, the paper's
parameter
groups) at the same batch size on the same fabricated CIFAR-10-format files, read through the
real `cifar10` loader, and evaluate validation and test after every training epoch:

- `reference`: what a typical training script does. PIL images through RandomHorizontalFlip +
  ToTensor in a DataLoader with no workers, copied to the device per batch, `loss.item()` every
  step, fp32 with PyTorch's default settings, `torch.optim.SGD` with its default implementation.
- every other setting: the worker's own phases (`build`, `make_loaders`, `train_one_epoch`,
  `evaluate`, under `device_numerics`), i.e. device-resident uint8 data, augmentation on the
  device, no host sync inside an epoch, in one precision / memory format (/ torch.compile).

All settings run in one process, interleaved epoch by epoch (the order rotates every round), so a
change in machine load hits every setting alike and the ratios stay meaningful. The load average
and the share of the CPU the process got are printed next to every figure.

    python bench/throughput.py                                  # CPU, reduced sizes, minutes
    python bench/throughput.py --device cuda --train-images 45000 --val-images 5000 \\
        --test-images 10000 --epochs 2 --settings reference fp32 bf16-cl bf16-cl-compile

The defaults keep CIFAR-10's proportions (45k train / 5k val / 10k test) at 1/20 of its size.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

# A checkout runs this without installing the project (bench/gpu.sh on a bare GPU machine).
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from machine import cpu_model

from bnsweep.workers.data import DataSplits, load_dataset
from bnsweep.workers.devices import cpu_has_fast_bf16, device_numerics
from bnsweep.workers.param_groups import param_groups
from bnsweep.workers.seeding import complex_seed
from bnsweep.workers.spec import TrialSpec
from bnsweep.workers.splits import stratified_split
from bnsweep.workers.trial import (
    autocast_for,
    build,
    compiled,
    evaluate,
    make_loaders,
    memory_format_for,
    train_one_epoch,
)

CIFAR10_NAMES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip


# -- settings -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Setting:
    name: str
    precision: str = "fp32"
    memory_format: str = "contiguous"
    compile: bool = False
    reference: bool = False


SETTINGS: dict[str, Setting] = {
    s.name: s
    for s in (
        Setting("reference", reference=True),
        Setting("fp32"),
        Setting("fp32-cl", memory_format="channels_last"),
        Setting("bf16", precision="bf16"),
        Setting("bf16-cl", precision="bf16", memory_format="channels_last"),
        Setting("fp32-compile", compile=True),
        Setting("fp32-cl-compile", memory_format="channels_last", compile=True),
        Setting("bf16-cl-compile", precision="bf16", memory_format="channels_last", compile=True),
    )
}
DEFAULT_SETTINGS = ("reference", "fp32", "fp32-cl", "bf16", "bf16-cl")
#: Without native bfloat16 a CPU runs bf16 convolutions about 10x slower than fp32 (an epoch of
#: the default size takes most of an hour), so bf16 is left out unless asked for.
DEFAULT_SETTINGS_CPU_WITHOUT_BF16 = ("reference", "fp32", "fp32-cl")


# -- data -----------------------------------------------------------------------------------
def write_cifar10(root: Path, train: int, test: int, seed: int = 0) -> Path:
    """CIFAR-10's "python version" files with random pixels: data_batch_1..5 holding `train`
    images between them, test_batch with `test`, batches.meta. The same format as
    tests/workers/fixtures.py writes, without needing pytest (the GPU script needs only the
    project). Labels cycle through the ten classes, so the stratified split always works."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    def dump(name: str, count: int, offset: int) -> None:
        batch = {
            "batch_label": f"fabricated {name}",
            "labels": ((np.arange(count) + offset) % 10).tolist(),
            "data": rng.integers(0, 256, size=(count, 3 * 32 * 32), dtype=np.uint8),
            "filenames": [f"fabricated_{offset + i:05d}.png" for i in range(count)],
        }
        with (folder / name).open("wb") as f:
            pickle.dump(batch, f, protocol=2)

    sizes = [train // 5 + (i < train % 5) for i in range(5)]
    for i, count in enumerate(sizes):
        dump(f"data_batch_{i + 1}", count, sum(sizes[:i]))
    dump("test_batch", test, 0)
    meta = {"label_names": list(CIFAR10_NAMES), "num_cases_per_batch": sizes[0], "num_vis": 3072}
    with (folder / "batches.meta").open("wb") as f:
        pickle.dump(meta, f, protocol=2)
    return root


def accept_fabricated_cifar() -> None:
    """torchvision checks every CIFAR file against the official MD5s, even with download=False;
    fabricated files cannot pass. Bypassed here, in the benchmark process only, as the tests do;
    the product never does this."""
    import torchvision.datasets.cifar as tv_cifar

    tv_cifar.check_integrity = lambda *args, **kwargs: True


# -- the two loops --------------------------------------------------------------------------
@dataclass
class EpochTiming:
    train_seconds: float
    eval_seconds: float
    train_images: int
    cpu_seconds: float  # CPU time this process used during the epoch (all threads)
    load: float  # 1-minute load average at the end of the epoch

    @property
    def seconds(self) -> float:
        return self.train_seconds + self.eval_seconds


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class ReferenceLoop:
    """The reference-style loop: PIL + DataLoader, a host sync every step, fp32."""

    def __init__(self, spec: TrialSpec, data: DataSplits, device: torch.device, root: Path) -> None:
        from torch.utils.data import DataLoader, Subset
        from torchvision import transforms
        from torchvision.datasets import CIFAR10

        self.device = device
        self.model, _, schedule = build(spec, data, device)
        # A script builds its optimizer with torch's defaults (a per-parameter loop on the CPU).
        groups = param_groups(
            self.model,
            lr=spec.lr,
            weight_decay=spec.weight_decay,
            bn_lr_divisor=spec.bn_lr_divisor,
        )
        self.optimizer = torch.optim.SGD(groups, lr=spec.lr, momentum=spec.momentum)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, list(schedule.lr_lambdas)
        )
        flip = transforms.Compose([transforms.RandomHorizontalFlip(), transforms.ToTensor()])
        plain = transforms.ToTensor()
        train_set = CIFAR10(str(root), train=True, transform=flip)
        # The same validation split as the worker's (class-stratified, complex seed of 0).
        kept, val = stratified_split(train_set.targets, spec.val_fraction)
        n = len(kept)
        self.train = DataLoader(
            Subset(train_set, kept.tolist()),
            batch_size=spec.batch_size,
            shuffle=True,
            num_workers=0,
            # The worker drops a last batch of one image (BN cannot normalise it); so does this.
            drop_last=n % spec.batch_size == 1,
            generator=torch.Generator().manual_seed(complex_seed(spec.seed)),
        )
        self.evals = [
            DataLoader(
                Subset(CIFAR10(str(root), train=True, transform=plain), val.tolist()),
                batch_size=spec.batch_size,
            ),
            DataLoader(
                CIFAR10(str(root), train=False, transform=plain), batch_size=spec.batch_size
            ),
        ]

    def epoch(self) -> tuple[float, float, int]:
        started = time.perf_counter()
        self.model.train()
        running, images = 0.0, 0
        for x, y in self.train:
            x, y = x.to(self.device), y.to(self.device)
            self.optimizer.zero_grad()
            loss = F.cross_entropy(self.model(x), y)
            loss.backward()
            self.optimizer.step()
            running += loss.item() * y.size(0)
            images += y.size(0)
        trained = time.perf_counter()
        self.model.eval()
        with torch.no_grad():
            for loader in self.evals:
                loss_sum, correct = 0.0, 0
                for x, y in loader:
                    x, y = x.to(self.device), y.to(self.device)
                    logits = self.model(x)
                    loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
                    correct += (logits.argmax(1) == y).sum().item()
        self.scheduler.step()
        return trained - started, time.perf_counter() - trained, images


class WorkerLoop:
    """The bnsweep worker's phases, exactly as `run_trial` calls them."""

    def __init__(self, spec: TrialSpec, data: DataSplits, device: torch.device) -> None:
        self.spec, self.device = spec, device
        self.model, self.optimizer, self.scheduler = build(spec, data, device)
        self.step_model = compiled(self.model, spec)
        generator = torch.Generator().manual_seed(complex_seed(spec.seed))
        self.loaders = make_loaders(spec, data, device, generator)
        self.autocast = autocast_for(spec, device)
        self.memory_format = memory_format_for(spec)

    def epoch(self) -> tuple[float, float, int]:
        with device_numerics(self.spec, self.device):
            started = time.perf_counter()
            loss_sum, images = train_one_epoch(
                self.step_model,
                self.loaders["train"],
                self.optimizer,
                self.autocast,
                self.memory_format,
            )
            loss_sum.item()  # the epoch's one host sync: run_trial reads the loss here
            trained = time.perf_counter()
            for split in ("val", "test"):
                evaluate(self.step_model, self.loaders[split], self.autocast, self.memory_format)
            self.scheduler.step()
            return trained - started, time.perf_counter() - trained, images


# -- measuring ------------------------------------------------------------------------------
@dataclass
class Row:
    setting: str
    epochs: list[EpochTiming] = field(default_factory=list)
    error: str | None = None

    def median(self, value: Callable[[EpochTiming], float]) -> float:
        return statistics.median(value(e) for e in self.epochs)

    def summary(self, threads: int, reference: Row | None) -> dict[str, Any]:
        if self.error is not None or not self.epochs:
            return {"setting": self.setting, "error": self.error or "no measured epoch"}
        out: dict[str, Any] = {
            "setting": self.setting,
            "train_images_per_s": self.median(lambda e: e.train_images / e.train_seconds),
            "epoch_seconds": self.median(lambda e: e.seconds),
            "train_seconds": self.median(lambda e: e.train_seconds),
            "eval_seconds": self.median(lambda e: e.eval_seconds),
            "load": self.median(lambda e: e.load),
            # Below 100 %: other processes took part of the cores this process asked for.
            "cpu_share": self.median(lambda e: e.cpu_seconds / (e.seconds * threads)),
            "epochs_measured": len(self.epochs),
        }
        if reference is not None and reference.epochs and reference.error is None:
            out["epoch_ratio"] = reference.median(lambda e: e.seconds) / out["epoch_seconds"]
            # CPU seconds per epoch, reference over ours: less sensitive to the share of the
            # cores other processes took, though spinning threads still count.
            out["cpu_time_ratio"] = reference.median(lambda e: e.cpu_seconds) / self.median(
                lambda e: e.cpu_seconds
            )
            out["train_ratio"] = out["train_images_per_s"] / reference.median(
                lambda e: e.train_images / e.train_seconds
            )
        return out


def measure(
    loops: dict[str, Callable[[], Any]],
    warmup: int,
    epochs: int,
    device: torch.device,
    log: Callable[[str], None],
) -> dict[str, Row]:
    """Build every loop, then run `warmup` + `epochs` rounds of one epoch per setting."""
    rows = {name: Row(name) for name in loops}
    runners: dict[str, Any] = {}
    for name, make in loops.items():
        try:
            runners[name] = make()
        except Exception as err:  # a setting this machine cannot run is a result, not a crash
            rows[name].error = _one_line(err)
    names = list(runners)
    for round_ in range(warmup + epochs):
        shift = round_ % max(len(names), 1)
        for name in names[shift:] + names[:shift]:
            if rows[name].error is not None:
                continue
            _sync(device)
            cpu = time.process_time()
            try:
                train_s, eval_s, images = runners[name].epoch()
            except Exception as err:  # e.g. torch.compile without a working compiler
                rows[name].error = _one_line(err)
                continue
            timing = EpochTiming(
                train_s, eval_s, images, time.process_time() - cpu, os.getloadavg()[0]
            )
            phase = "warm-up" if round_ < warmup else "measured"
            log(
                f"  {phase} epoch {round_ + 1}: {name:<16} {timing.seconds:7.2f} s "
                f"({images / train_s:8.1f} train img/s, load {timing.load:.1f})"
            )
            if round_ >= warmup:
                rows[name].epochs.append(timing)
    return rows


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:300]}"


def machine(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_native_bf16": cpu_has_fast_bf16(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def table(summaries: Sequence[dict[str, Any]]) -> str:
    header = (
        f"{'setting':<16} {'train img/s':>11} {'epoch s':>8} {'train s':>8} {'eval s':>7} "
        f"{'x ref (epoch)':>13} {'x ref (train)':>13} {'x ref (cpu s)':>13} {'load':>5} "
        f"{'cpu %':>6}"
    )
    lines = [header, "-" * len(header)]
    for s in summaries:
        if "error" in s:
            lines.append(f"{s['setting']:<16} failed: {s['error']}")
            continue
        ratio = f"{s['epoch_ratio']:.2f}" if "epoch_ratio" in s else "-"
        train_ratio = f"{s['train_ratio']:.2f}" if "train_ratio" in s else "-"
        cpu_ratio = f"{s['cpu_time_ratio']:.2f}" if "cpu_time_ratio" in s else "-"
        lines.append(
            f"{s['setting']:<16} {s['train_images_per_s']:>11.1f} {s['epoch_seconds']:>8.2f} "
            f"{s['train_seconds']:>8.2f} {s['eval_seconds']:>7.2f} {ratio:>13} "
            f"{train_ratio:>13} {cpu_ratio:>13} {s['load']:>5.1f} {100 * s['cpu_share']:>6.0f}"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--epochs", type=int, default=1, help="measured epochs per setting")
    parser.add_argument("--warmup", type=int, default=1, help="warm-up epochs per setting")
    parser.add_argument("--train-images", type=int, default=2304, help="images trained on")
    parser.add_argument("--val-images", type=int, default=256)
    parser.add_argument("--test-images", type=int, default=512)
    parser.add_argument(
        "--settings",
        nargs="+",
        default=None,
        choices=list(SETTINGS),
        help=f"default: {' '.join(DEFAULT_SETTINGS)} (no bf16 on a CPU without native bf16)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.warmup < 0 or args.batch < 1:
        parser.error("--epochs must be >= 1, --warmup >= 0, --batch >= 1")
    if min(args.train_images, args.val_images, args.test_images) < 10:
        parser.error("each split needs at least 10 images (one per class)")
    return args


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("throughput.py: --device cuda, but no CUDA device is visible")

    def log(line: str) -> None:
        if not args.quiet:
            print(line, flush=True)

    accept_fabricated_cifar()
    with tempfile.TemporaryDirectory(prefix="bnsweep-bench-") as tmp:
        root = write_cifar10(Path(tmp), args.train_images + args.val_images, args.test_images)
        spec = TrialSpec(
            dataset="cifar10",
            arch=args.arch,
            batch_size=args.batch,
            epochs=args.warmup + args.epochs,
            val_fraction=args.val_images / (args.train_images + args.val_images),
            data_root=str(root),
            device=args.device,
        )
        data = load_dataset("cifar10", root, spec.val_fraction)
        info = machine(device)
        log(
            f"{args.arch}, batch {args.batch}, {len(data.train_y)} train / {len(data.val_y)} val "
            f"/ {len(data.test_y)} test images on {info.get('gpu', info['cpu'])} "
            f"(torch {info['torch']}, {info['threads']} threads, {info['cpu_capability']}, native "
            f"bf16: {'yes' if info['cpu_native_bf16'] else 'no'}, load {os.getloadavg()[0]:.1f})"
        )

        settings = args.settings or list(
            DEFAULT_SETTINGS
            if device.type == "cuda" or info["cpu_native_bf16"]
            else DEFAULT_SETTINGS_CPU_WITHOUT_BF16
        )

        def loop(setting: Setting) -> Callable[[], Any]:
            if setting.reference:
                return lambda: ReferenceLoop(spec, data, device, root)
            own = spec.replace(
                precision=setting.precision,
                memory_format=setting.memory_format,
                compile=setting.compile,
            )
            return lambda: WorkerLoop(own, data, device)

        args.settings = list(dict.fromkeys(settings))
        loops = {name: loop(SETTINGS[name]) for name in args.settings}
        rows = measure(loops, args.warmup, args.epochs, device, log)

    reference = rows.get("reference")
    summaries = [row.summary(info["threads"], reference) for row in rows.values()]
    print(table(summaries))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "machine": info,
            "images": {
                "train": len(data.train_y),
                "val": len(data.val_y),
                "test": len(data.test_y),
            },
            "results": summaries,
            "epochs": {name: [asdict(e) for e in row.epochs] for name, row in rows.items()},
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return summaries


if __name__ == "__main__":
    main()
