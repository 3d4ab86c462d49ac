"""BN diagnostics: the paper's three observations, measured per BN layer during a run.

Davis & Frank start from what they saw in trained networks (Sect. 1, 3.2, 3.3):

1. learned BN scales γ and shifts β stay close to their initial values;
2. the normalisation head (Eqn. 3) can pass on overly large values, |X̂| > 6 (σ units);
3. the "gradient factor" γ/√(σ²_B + ε) scales every update through a BN (Eqn. 20-21) and, at
   initialisation, does not depend on γ (Eqn. 22-24): the previous layer's γ sits in σ_B and
   cancels.

`BNDiagnostics` is a `bnsweep.workers.trial.Inspect`: `run_trial` calls it with the model at
initialisation (epoch 0) and after every epoch. Per BN module (every `_BatchNorm`, the
prepended input BN included) it records `LayerDiagnostics`: mean and spread of γ and β, their
mean absolute drift from initialisation, the fraction of |X̂| > 6 and the mean gradient factor
on a fixed probe batch.

How it leaves no trace (the run's metrics are bit-identical with diagnostics on or off):

- The probe is the first `probe_size` validation images, as evaluation sees them (no
  augmentation, centre crop where the dataset crops), built once; the training data order's
  generator is never handed to it.
- The probe goes through the model in train mode, so each BN normalises with the probe's own
  batch statistics σ²_B, as in a training step. That forward updates the BN running statistics
  and `num_batches_tracked`: they are copied before and written back after. Every global RNG
  (Python, NumPy, torch CPU and CUDA) is captured and restored, in case a module draws from it
  (dropout); the train/eval flag of every module is put back.
- Forward hooks (removed afterwards) read each BN's input; everything runs under `no_grad`, so no
  gradient, `.grad` or optimizer state is touched. All numbers are reduced on the device and read
  back with one transfer per inspection. The cost is about one extra forward of the probe batch
  (bench/diagnostics_overhead.py; docs/diagnostics.md).

Initial values, needed for drift, are not saved anywhere: initialisation is deterministic
(`bnsweep.workers.norm.set_bn_scale`): γ = the spec's `bn_scale_init` times the module's
`gamma_factor`
(0.58 for the input BN, Sect. 3.4; 1 otherwise) and β = 0. A run resumed from a checkpoint
therefore computes the same drift as an uninterrupted one. Without a γ (a model set up some
other way) the inspector copies γ and β at its first call, which must then be epoch 0.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from bnsweep.workers.checkpoint import capture_rng, restore_rng
from bnsweep.workers.data import DataSplits
from bnsweep.workers.device_loader import DeviceLoader
from bnsweep.workers.errors import SpecError
from bnsweep.workers.norm import bn_modules
from bnsweep.workers.results import VALUE_FIELDS, LayerDiagnostics

log = logging.getLogger(__name__)

#: Sect. 3.2: normalised values beyond 6σ are "overly large".
OUTLIER_SIGMAS = 6.0
#: Validation images in the probe batch, at most. A conv BN's σ²_B runs over N·H·W values, so 64
#: images give ≥ 256 per channel even on resnet8's final 2×2 maps of digits; on digits, the
#: smallest training split here, 128 cost about 5 % of an epoch and 64 about half that
#: (bench/diagnostics_overhead.py).
DEFAULT_PROBE_SIZE = 64


def check_every(every: int) -> int:
    if isinstance(every, bool) or not isinstance(every, int) or every < 0:
        raise SpecError(f"diagnostics.every: an integer >= 0 (0 = off), got {every!r}")
    return every


def should_inspect(epoch: int, every: int, last_epoch: int | None) -> bool:
    """Epoch 0 (initialisation), every `every`-th epoch, and the last epoch of the run (whose
    values the end-of-training plots use). `every` = 0 means never."""
    if every == 0:
        return False
    return epoch % every == 0 or epoch == last_epoch


class BNDiagnostics:
    """The inspector `run_trial(spec, inspect=BNDiagnostics(...))` calls; see the module notes.

    `gamma` is the spec's `bn_scale_init` (initial values are recomputed from it, so nothing is
    saved in checkpoints); `every` thins the epochs (0 disables); `last_epoch` (the spec's
    `epochs`) is always recorded; `probe_size` validation images form the probe batch.

    Records accumulate until `take()` hands them over, keyed by epoch.
    """

    def __init__(
        self,
        gamma: float | None = None,
        *,
        every: int = 1,
        last_epoch: int | None = None,
        probe_size: int = DEFAULT_PROBE_SIZE,
    ) -> None:
        if isinstance(probe_size, bool) or not isinstance(probe_size, int) or probe_size < 2:
            raise SpecError(f"diagnostics.probe_size: an integer >= 2, got {probe_size!r}")
        self.gamma = gamma
        self.every = check_every(every)
        self.last_epoch = last_epoch
        self.probe_size = probe_size
        self._initial: dict[str, tuple[Tensor, Tensor | None]] | None = None
        self._probe: Tensor | None = None
        self._probe_source: DataSplits | None = None
        self._records: dict[int, tuple[LayerDiagnostics, ...]] = {}

    @classmethod
    def for_spec(cls, spec: Any, every: int = 1, probe_size: int | None = None) -> BNDiagnostics:
        """The inspector for a `TrialSpec`: its γ, its last epoch, and a probe no larger than one
        of its training batches (σ²_B is then the statistic of at most a training batch)."""
        default = max(min(spec.batch_size, DEFAULT_PROBE_SIZE), 2)
        size = probe_size or default
        return cls(spec.bn_scale_init, every=every, last_epoch=spec.epochs, probe_size=size)

    # -- the Inspect protocol ----------------------------------------------------------------
    def __call__(self, model: nn.Module, epoch: int, data: DataSplits) -> None:
        if not should_inspect(epoch, self.every, self.last_epoch):
            return
        self._records[epoch] = self.measure(model, self._probe_batch(model, data), epoch=epoch)

    def take(self) -> dict[int, tuple[LayerDiagnostics, ...]]:
        """The records since the last `take()`, by epoch (epoch 0 arrives with the first one)."""
        records, self._records = self._records, {}
        return records

    # -- measuring ---------------------------------------------------------------------------
    def measure(
        self, model: nn.Module, probe: Tensor, *, epoch: int = 0
    ) -> tuple[LayerDiagnostics, ...]:
        """Diagnostics of every BN module of `model` on `probe`, leaving the model as it was."""
        # Every formulation and the input BN are affine (γ is `weight`, β is `bias`).
        named = [
            (n, m)
            for n, m in model.named_modules()
            if isinstance(m, _BatchNorm) and m.weight is not None and m.bias is not None
        ]
        if not named:
            return ()
        initial = self._initial_values(named, epoch)
        seen: list[str] = []
        probe_rows: dict[str, Tensor] = {}

        def hook(name: str):
            def read(module: _BatchNorm, inputs: tuple[Tensor, ...], output: Tensor) -> None:
                if name not in probe_rows:  # a module called twice keeps its first call
                    seen.append(name)
                    probe_rows[name] = _probe_statistics(module, inputs[0])

            return read

        with _no_trace(model):
            handles = [m.register_forward_hook(hook(n)) for n, m in named]
            try:
                model(probe)
            finally:
                for handle in handles:
                    handle.remove()

        # Depth is the order of the forward pass; a module the forward never reached goes last.
        order = {name: i for i, name in enumerate(seen)}
        unused = [n for n, _ in named if n not in order]
        for name in unused:
            order[name] = len(order)
        nan = torch.full((2,), float("nan"), device=probe.device)
        rows = []
        for name, module in named:
            gamma0, beta0 = initial[name]
            rows.append(
                torch.cat([_parameter_statistics(module, gamma0, beta0), probe_rows.get(name, nan)])
            )
        values = torch.stack(rows).cpu().tolist()  # the one transfer of this inspection
        out = [
            LayerDiagnostics(
                layer=name,
                depth=order[name],
                module=type(module).__name__,
                channels=int(module.num_features),
                **dict(zip(VALUE_FIELDS, row, strict=True)),
            )
            for (name, module), row in zip(named, values, strict=True)
        ]
        return tuple(sorted(out, key=lambda d: d.depth))

    def _initial_values(
        self, named: Sequence[tuple[str, _BatchNorm]], epoch: int
    ) -> dict[str, tuple[Tensor, Tensor | None]]:
        if self.gamma is not None:
            # Deterministic initialisation (bnsweep.workers.norm.set_bn_scale): γ·factor and β = 0.
            return {
                name: (
                    torch.full_like(m.weight, self.gamma * getattr(m, "gamma_factor", 1.0)),
                    None,
                )
                for name, m in named
            }
        if self._initial is None:
            if epoch != 0:
                raise ValueError(
                    "BNDiagnostics without gamma copies the initial γ/β at its first call, "
                    f"which must be epoch 0, not epoch {epoch}; pass the spec's gamma instead"
                )
            self._initial = {
                name: (m.weight.detach().clone(), m.bias.detach().clone()) for name, m in named
            }
        return self._initial

    def _probe_batch(self, model: nn.Module, data: DataSplits) -> Tensor:
        device = _device_of(model)
        if self._probe is None or self._probe_source is not data or self._probe.device != device:
            self._probe = probe_batch(data, self.probe_size, device)
            self._probe_source = data
        return self._probe


def probe_batch(data: DataSplits, size: int, device: torch.device | str) -> Tensor:
    """The first `size` validation images as evaluation sees them: a fixed batch for every epoch
    and every run of the sweep (the validation split does not depend on the seed)."""
    count = min(size, len(data.val_x))
    if count < 2:
        raise SpecError(
            f"diagnostics: the probe needs at least 2 validation images, the split has "
            f"{len(data.val_x)}"
        )
    loader = DeviceLoader(
        data.val_x[:count],
        data.val_y[:count],
        count,
        device,
        train=False,
        augment=data.augment,
        crop_size=data.crop_size,
    )
    images, _ = next(iter(loader))
    return images


def _device_of(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


def _parameter_statistics(module: _BatchNorm, gamma0: Tensor, beta0: Tensor | None) -> Tensor:
    """[γ mean, γ std, β mean, β std, mean |γ − γ0|, mean |β − β0|] as one float32 vector."""
    gamma = module.weight.detach().float()
    beta = module.bias.detach().float()
    beta_drift = beta.abs() if beta0 is None else (beta - beta0.float()).abs()
    gamma_std, gamma_mean = torch.std_mean(gamma, correction=0)
    beta_std, beta_mean = torch.std_mean(beta, correction=0)
    return torch.stack(
        [
            gamma_mean,
            gamma_std,
            beta_mean,
            beta_std,
            (gamma - gamma0.float()).abs().mean(),
            beta_drift.mean(),
        ]
    )


def _probe_statistics(module: _BatchNorm, x: Tensor) -> Tensor:
    """[fraction of |X̂| > 6, mean γ/√(σ²_B + ε)] from a BN's input, with the batch statistics
    its own normalisation uses (Eqn. 1-3: biased variance over batch and space).

    One fused pass (the kernel BN's own forward runs) gives X̂ and 1/√(σ²_B + ε) together;
    measured at about half the cost of `var_mean` plus a comparison on the CPU."""
    x_hat, _, inv_std = torch.native_batch_norm(
        x.detach().float(), None, None, None, None, True, 0.0, module.eps
    )
    outliers = torch.count_nonzero(x_hat.abs_() > OUTLIER_SIGMAS)
    factor = module.weight.detach().float() * inv_std
    return torch.stack([outliers.float() / x.numel(), factor.mean()])


class _no_trace:
    """Run a train-mode forward that leaves the model and every RNG as they were."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __enter__(self) -> None:
        self.modes = [(m, m.training) for m in self.model.modules()]
        self.buffers = [
            (buf, buf.clone()) for bn in bn_modules(self.model) for buf in _running_buffers(bn)
        ]
        self.rng = capture_rng()
        self.grad = torch.no_grad()
        self.grad.__enter__()
        self.model.train()

    def __exit__(self, *exc_info: object) -> None:
        self.grad.__exit__(*exc_info)
        with torch.no_grad():
            for buf, saved in self.buffers:
                buf.copy_(saved)
        for module, training in self.modes:
            module.training = training
        restore_rng(self.rng)


def _running_buffers(module: _BatchNorm) -> Iterator[Tensor]:
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        buf = getattr(module, name, None)
        if buf is not None:
            yield buf


def conv_bn_relu_stack(depth: int = 8, width: int = 32, in_channels: int = 3) -> nn.Sequential:
    """The setting of the paper's Fig. 1 and Eqn. 22-24: `depth` × (conv3×3 without bias,
    Kaiming-normal fan-in (Sect. 3.3, "Network Weight Initialization") – BN – ReLU).

    Set γ with `bnsweep.workers.norm.set_bn_scale` before measuring."""
    from bnsweep.workers.models import init_weights

    layers: list[nn.Module] = []
    channels = in_channels
    for _ in range(depth):
        layers += [
            nn.Conv2d(channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
        ]
        channels = width
    stack = nn.Sequential(*layers)
    init_weights(stack)
    return stack


__all__ = [
    "DEFAULT_PROBE_SIZE",
    "OUTLIER_SIGMAS",
    "BNDiagnostics",
    "check_every",
    "conv_bn_relu_stack",
    "probe_batch",
    "should_inspect",
]
