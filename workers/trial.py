"""One training run: `run_trial(spec, on_epoch, checkpoint)`, plain PyTorch.

The loop follows the paper's regime (Sect. 4.2): SGD with momentum, a half-period cosine
schedule stepped per epoch down to 1e-8 in every parameter group (the official code's
eta_min), validation and test accuracy every epoch, and the
reported test accuracy taken at the first epoch with the best validation accuracy.

Nothing inside an epoch waits for the device: losses and correct counts accumulate on it and
are read once per epoch, so a GPU never idles on a host sync.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bnsweep.workers.checkpoint import (
    CheckpointError,
    capture_rng,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)
from bnsweep.workers.compile import COMPILED, Variant, compile_module, loud_fallback
from bnsweep.workers.data import DataSplits, load_splits
from bnsweep.workers.device_loader import DeviceLoader
from bnsweep.workers.devices import cpu_has_fast_bf16, device_numerics, resolve_device
from bnsweep.workers.input_stats import channel_stats
from bnsweep.workers.models import build_model
from bnsweep.workers.param_groups import param_groups
from bnsweep.workers.results import EpochMetrics, TrialResult
from bnsweep.workers.seeding import complex_seed, seed_everything
from bnsweep.workers.spec import TrialSpec

log = logging.getLogger(__name__)

#: Every group's cosine schedule ends here rather than at 0: the official code's
#: CosineAnnealingLR(eta_min=1e-8); Sect. 4.2 says only "half-period cosine".
FINAL_LR = 1e-8
#: Inputs no larger than this (CIFAR's 32, digits' 8) get the paper's small-input stems (Sect. 4.1).
SMALL_INPUT_MAX = 64
#: Validation and test batches when `eval_batch_size` is unset, by device type. Evaluation keeps
#: no activations for a backward pass, so a GPU holds far larger batches than it trains with, and
#: fewer, larger batches spare the host most of its per-batch launch work (CIFAR at batch 128:
#: 118 batches per epoch, about 10 % of an epoch on a fast GPU). A CPU gains little past a few
#: hundred images per convolution, and a larger batch only holds more memory.
EVAL_BATCH_SIZES = {"cuda": 1024, "cpu": 256}


SaveCheckpoint = Callable[[str | Path], Path]
OnEpoch = Callable[[EpochMetrics, SaveCheckpoint], None]
#: Looks at the model at initialisation (epoch 0) and after every epoch, before `on_epoch`.
#: It must leave no trace: BN running statistics, RNG states and weights as it found them.
Inspect = Callable[[nn.Module, int, DataSplits], None]


@dataclass
class _Progress:
    """What the loop carries from epoch to epoch; saved in and restored from checkpoints."""

    epoch: int = 0
    best_epoch: int | None = None
    best_val_acc: float = -1.0
    test_at_best: float | None = None
    train_seconds: float = 0.0
    train_images: int = 0
    seconds: float = 0.0
    history: list[EpochMetrics] = field(default_factory=list)

    def observe(self, m: EpochMetrics) -> None:
        self.epoch = m.epoch
        self.history.append(m)
        # Strictly greater: ties keep the first such epoch (Sect. 4.2).
        if m.val_acc > self.best_val_acc:
            self.best_epoch, self.best_val_acc, self.test_at_best = m.epoch, m.val_acc, m.test_acc

    def to_state(self) -> dict[str, Any]:
        state = {k: v for k, v in asdict(self).items() if k != "history"}
        state["history"] = [asdict(m) for m in self.history]
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> _Progress:
        history = [EpochMetrics(**m) for m in state["history"]]
        return cls(**{**state, "history": history})


# -- phases ---------------------------------------------------------------------------------
@functools.lru_cache(maxsize=8)
def _offline_stats(
    dataset: str, data_root: str | None, val_fraction: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Training-split mean/std for `offline` input normalisation, computed once per process."""
    spec = TrialSpec(dataset=dataset, data_root=data_root, val_fraction=val_fraction)
    return channel_stats(load_splits(spec).train_x)


def build_network(spec: TrialSpec, data: DataSplits, device: torch.device) -> nn.Module:
    """The network, initialised as the paper does (Sect. 3.2, 3.4, 4.1) from the global RNG."""
    stats = (
        _offline_stats(spec.dataset, spec.data_root, spec.val_fraction)
        if spec.input_norm == "offline"
        else None
    )
    model = build_model(
        spec.arch,
        num_classes=data.num_classes,
        in_channels=data.in_channels,
        small_input=data.image_size <= SMALL_INPUT_MAX,
        formulation=spec.formulation,
        gamma=spec.bn_scale_init,
        input_norm=spec.input_norm,
        input_stats=stats,
    )
    # Module.to's overloads take memory_format alone; at run time it goes with a device too.
    return model.to(device=device, memory_format=memory_format_for(spec))  # type: ignore[call-overload]


def build(
    spec: TrialSpec, data: DataSplits, device: torch.device, network: nn.Module | None = None
) -> tuple[nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """Model, optimizer and schedule as the paper sets them up (Sect. 3.2, 3.4, 4.1, 4.2).
    `network`: train this (initialised) network instead of a new one from `build_network`."""
    model = build_network(spec, data, device) if network is None else network
    groups = param_groups(
        model, lr=spec.lr, weight_decay=spec.weight_decay, bn_lr_divisor=spec.bn_lr_divisor
    )
    optimizer = torch.optim.SGD(
        groups, lr=spec.lr, momentum=spec.momentum, **_multi_tensor_update(device)
    )
    # The official code anneals with CosineAnnealingLR(T_max=epochs, eta_min=1e-8) over every
    # group, so each group ends at 1e-8, the γ group too (not at 1e-8/c): one factor per group,
    # with that group's floor. Written as LambdaLR for the closed form (CosineAnnealingLR's
    # recursive update drifts by rounding) and so the factor of an epoch can be asked for.
    schedules: list[Callable[[int], float]] = [
        functools.partial(_cosine_factor, epochs=spec.epochs, floor=FINAL_LR / group["lr"])
        for group in optimizer.param_groups
    ]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedules)
    return model, optimizer, scheduler


def _multi_tensor_update(device: torch.device) -> dict[str, bool]:
    """One update over all parameters at once instead of a Python loop over ~60 tensors:
    `fused` (a single kernel) on CUDA, `foreach` elsewhere. Element by element both compute
    what the loop computes; on the CPU the result is bit-identical to it."""
    return {"fused": True} if device.type == "cuda" else {"foreach": True}


def autocast_for(spec: TrialSpec, device: torch.device) -> Callable[[], Any]:
    """A fresh autocast context per use: bfloat16 for `precision: bf16`, a no-op for fp32 and
    tf32 (tf32 is a setting of the GPU's fp32 matmuls and convolutions: `device_numerics`)."""
    return functools.partial(
        torch.autocast, device.type, dtype=torch.bfloat16, enabled=spec.precision == "bf16"
    )


def memory_format_for(spec: TrialSpec) -> torch.memory_format:
    return torch.channels_last if spec.memory_format == "channels_last" else torch.contiguous_format


def eval_batch_size_for(spec: TrialSpec, device: torch.device) -> int:
    """The validation and test batch: `eval_batch_size`, else `EVAL_BATCH_SIZES` for the device.
    Eval-mode BN normalises with its running statistics, so no output depends on the batch."""
    if spec.eval_batch_size is not None:
        return spec.eval_batch_size
    return EVAL_BATCH_SIZES.get(device.type, EVAL_BATCH_SIZES["cpu"])


def make_loaders(
    spec: TrialSpec, data: DataSplits, device: torch.device, generator: torch.Generator
) -> dict[str, DeviceLoader]:
    """Device-resident loaders for train, val and test; only training draws from `generator`.
    Training batches are `batch_size`; validation and test ones `eval_batch_size_for`."""
    eval_batch = eval_batch_size_for(spec, device)
    return {
        split: DeviceLoader(
            getattr(data, f"{split}_x"),
            getattr(data, f"{split}_y"),
            spec.batch_size if split == "train" else eval_batch,
            device,
            train=split == "train",
            augment=data.augment,
            crop_size=data.crop_size,
            generator=generator,
        )
        for split in ("train", "val", "test")
    }


def compiled(model: nn.Module, spec: TrialSpec) -> nn.Module:
    """The module the loop calls: `model` compiled in `spec.compile_mode` when the spec asks
    for it (in its own Dynamo cache line: `bnsweep.workers.compile.compile_module`), else `model`.

    Checkpoints and inspectors keep using `model` itself, so state-dict keys do not change.
    `run_trial` does not call this: it reuses one compiled model per variant (`prepare`).
    """
    return compile_module(model, spec.compile_mode) if spec.compile else model


def prepare(
    spec: TrialSpec, data: DataSplits, device: torch.device, network: nn.Module
) -> tuple[nn.Module, nn.Module]:
    """(the network to train, the module the loop calls) for an initialised `network`.

    Compiled trials train the process's kept module of their variant
    (`bnsweep.workers.compile.COMPILED`)
    with `network`'s weights loaded into it, so a reused worker compiles each variant once,
    whatever the seed or γ, α, c.
    """
    if not spec.compile:
        return network, network
    kept = COMPILED.get(Variant.of(spec, data, device), network)
    return kept.module, kept.step


def _cosine_factor(epoch: int, *, epochs: int, floor: float) -> float:
    """Half-period cosine: 1 for the first epoch, reaching `floor` after the last one.

    With `floor` = eta_min / the group's initial lr, lr·factor is torch's CosineAnnealingLR
    (T_max = epochs) in closed form: eta_min + (lr − eta_min)(1 + cos(π·epoch/epochs))/2.
    """
    progress = min(epoch / epochs, 1.0)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def train_one_epoch(
    model: nn.Module,
    loader: DeviceLoader,
    optimizer: torch.optim.Optimizer,
    autocast: Callable[[], Any],
    memory_format: torch.memory_format,
) -> tuple[torch.Tensor, int]:
    """One pass over the training split. Returns the summed loss (on the device) and image count."""
    model.train()
    loss_sum = torch.zeros((), device=loader.device, dtype=torch.float32)
    images = 0
    for x, y in loader:
        x = x.contiguous(memory_format=memory_format)
        with autocast():
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach().float() * y.numel()
        images += y.numel()
    return loss_sum, images


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader: DeviceLoader,
    autocast: Callable[[], Any],
    memory_format: torch.memory_format,
) -> tuple[float, float]:
    """Mean loss and accuracy over a split, read from the device once."""
    model.eval()
    loss_sum = torch.zeros((), device=loader.device, dtype=torch.float32)
    correct = torch.zeros((), device=loader.device, dtype=torch.int64)
    count = 0
    for x, y in loader:
        x = x.contiguous(memory_format=memory_format)
        with autocast():
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
        correct += (logits.argmax(dim=1) == y).sum()
        count += y.numel()
    totals = torch.stack([loss_sum, correct.float()]).tolist()
    return totals[0] / max(count, 1), totals[1] / max(count, 1)


# -- the run --------------------------------------------------------------------------------
def run_trial(
    spec: TrialSpec,
    on_epoch: OnEpoch | None = None,
    checkpoint: str | Path | None = None,
    inspect: Inspect | None = None,
) -> TrialResult:
    """Train `spec` to the end (or to divergence) and return its result.

    `on_epoch(metrics, save)` runs after every epoch; `save(folder)` writes a checkpoint from
    which `run_trial(spec, checkpoint=folder)` continues.
    `inspect(model, epoch, data)` sees the model at initialisation and after each epoch.

    When a resumed run continues exactly (the same metrics, bit for bit, as the run that was
    never interrupted): on the CPU, always; on a GPU, in every precision (fp32, tf32, bf16)
    with `cudnn_benchmark` false (the default: deterministic cuDNN, no algorithm chosen by
    timing), `compile` false, on the same GPU model with the same torch, CUDA and cuDNN
    versions. With `cudnn_benchmark` true, or a resume on another GPU model or software
    version, the run continues correctly but may differ in the last digits from the
    uninterrupted one. With `compile` true it differs from the uncompiled run in the last
    digits (fused kernels reorder floating-point sums), and a resume is exact only where the
    compiler makes the same kernels (same GPU model, versions and `compile_mode`; Inductor
    chooses kernels by timing in `max-autotune-no-cudagraphs`, so there it may not).
    """
    device = resolve_device(spec.device)
    if device.type == "cpu" and spec.precision == "bf16" and not cpu_has_fast_bf16():
        log.warning(
            "precision bf16 on a CPU without native bfloat16 (AVX-512 BF16 or AMX; this one: %s) "
            "runs PyTorch's reference convolutions, about 10x slower than fp32 "
            "(docs/benchmarks.md)",
            torch.backends.cpu.get_cpu_capability(),
        )
    with contextlib.ExitStack() as stack:
        if device.type == "cuda":
            # Anything allocated on "cuda" without an index lands on the trial's GPU too.
            stack.enter_context(torch.cuda.device(device))
        stack.enter_context(device_numerics(spec, device))
        if spec.compile:
            stack.enter_context(loud_fallback(f"the compiled {spec.arch}/{spec.formulation}"))
        return _run_trial(spec, device, on_epoch, checkpoint, inspect)


def _run_trial(
    spec: TrialSpec,
    device: torch.device,
    on_epoch: OnEpoch | None,
    checkpoint: str | Path | None,
    inspect: Inspect | None,
) -> TrialResult:
    # Data first: its splits use their own fixed seed, and a first import of a loader's library
    # (scikit-learn draws from Python's RNG) must not shift the run's RNG streams.
    data = load_splits(spec)
    seed_everything(spec.seed)
    model, step_model = prepare(spec, data, device, build_network(spec, data, device))
    model, optimizer, scheduler = build(spec, data, device, network=model)
    # The data order has its own generator, so it is restored exactly and is the same on any device.
    generator = torch.Generator().manual_seed(complex_seed(spec.seed))
    progress = _Progress()

    if checkpoint is not None:
        progress = _restore(
            spec, load_checkpoint(checkpoint), model, optimizer, scheduler, generator
        )
        log.info("resumed %s seed %d after epoch %d", spec.spec_hash, spec.seed, progress.epoch)

    autocast = autocast_for(spec, device)
    memory_format = memory_format_for(spec)
    loaders = make_loaders(spec, data, device, generator)

    def save(folder: str | Path) -> Path:
        return save_checkpoint(
            folder, _state(spec, progress, model, optimizer, scheduler, generator)
        )

    if inspect is not None and checkpoint is None:
        inspect(model, 0, data)  # the network at initialisation, before any update
    for epoch in range(progress.epoch + 1, spec.epochs + 1):
        started = time.perf_counter()
        lr = spec.lr * scheduler.lr_lambdas[0](scheduler.last_epoch)
        loss_sum, images = train_one_epoch(
            step_model, loaders["train"], optimizer, autocast, memory_format
        )
        train_loss = loss_sum.item() / max(images, 1)
        progress.train_seconds += time.perf_counter() - started
        progress.train_images += images
        # A NaN or infinite loss is a result (the setting diverged), not a crash. The diverged
        # network is still validated and tested, and counts for the best validation epoch like
        # any other: the official loop (osu-cvl/revisiting-bn, train.py) has no NaN check and
        # does exactly that, so a run that diverges in its first epoch gets the chance-level
        # score of a network that predicts class 0 everywhere (argmax of NaN logits), which
        # the paper's means and tests counted. The official loop then trains on to the last
        # epoch; bnsweep stops here to spare that compute: once SGD has made the weights NaN
        # the network predicts the same in every later epoch, so none of them validates
        # strictly better and the score is the one the official run ends with.
        diverged = not math.isfinite(train_loss)
        val_loss, val_acc = evaluate(step_model, loaders["val"], autocast, memory_format)
        _, test_acc = evaluate(step_model, loaders["test"], autocast, memory_format)
        scheduler.step()
        metrics = EpochMetrics(
            epoch, train_loss, val_loss, val_acc, test_acc, lr, time.perf_counter() - started
        )
        progress.observe(metrics)
        progress.seconds += metrics.seconds
        if inspect is not None and not diverged:
            inspect(model, epoch, data)
        if on_epoch is not None:
            on_epoch(metrics, save)
        if diverged:
            return _result(
                progress,
                diverged_epoch=epoch,
                error=f"training loss became {train_loss} in epoch {epoch}",
            )
    return _result(progress)


def _result(
    progress: _Progress, diverged_epoch: int | None = None, error: str | None = None
) -> TrialResult:
    final = progress.history[-1] if progress.history else None
    return TrialResult(
        status="diverged" if diverged_epoch is not None else "completed",
        epochs_run=len(progress.history),
        best_epoch=progress.best_epoch,
        best_val_acc=progress.best_val_acc if progress.best_epoch is not None else None,
        test_acc=progress.test_at_best,
        final_test_acc=final.test_acc if final is not None and diverged_epoch is None else None,
        seconds=progress.seconds,
        images_per_sec=progress.train_images / progress.train_seconds
        if progress.train_seconds > 0
        else 0.0,
        diverged_epoch=diverged_epoch,
        error=error,
        history=tuple(progress.history),
    )


def _state(spec, progress, model, optimizer, scheduler, generator) -> dict[str, Any]:
    return {
        "spec_hash": spec.spec_hash,
        "seed": spec.seed,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "data_generator": generator.get_state(),
        "rng": capture_rng(),
        "progress": progress.to_state(),
    }


def _restore(spec, state, model, optimizer, scheduler, generator) -> _Progress:
    if state.get("spec_hash") != spec.spec_hash or state.get("seed") != spec.seed:
        raise CheckpointError(
            f"checkpoint belongs to trial {state.get('spec_hash')} seed {state.get('seed')}, "
            f"not {spec.spec_hash} seed {spec.seed}"
        )
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    generator.set_state(state["data_generator"])
    restore_rng(state["rng"])
    return _Progress.from_state(state["progress"])
