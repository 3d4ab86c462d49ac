"""The paper's BN method: BN formulations, BN-based input normalisation, and what a "scale" is.

Davis & Frank, "Revisiting Batch Normalization":

- Sect. 3.2: initialise every BN scale γ in (0, 1] (β = 0) and train γ with learning rate α/c;
  γ > 1 is accepted too (the paper tried it, Sect. 4.4).
- Sect. 3.4: normalise the input with a BN prepended to the network, γ̂ = 0.58·γ, β fixed at 0.
- Sect. 4.4: the alternative formulations A1 (Eq. 26) and A2 (Eq. 27).
- Sect. 4.5: the scaling of RBN and IEBN (Eq. 28-29) and their "minus" variants.

Every formulation is a subclass of `nn.BatchNorm2d` taking `(num_features, eps, momentum, ...)`,
so it can be passed as torchvision's `norm_layer`; `weight` is γ and `bias` is β in all of them,
so running statistics, eval mode and `state_dict` behave exactly like `nn.BatchNorm2d`.

What counts as a BN "scale" (the parameters trained with α/c, Sect. 3.2): exactly the γ
(`weight`) of every BN module in the network, the prepended input BN included. The extra
parameters of the alternative methods - A2's γ0 and RBN/IEBN's w_v, w_b - are *not* scales of
the proposed method: the paper reduces the learning rate of γ only, and compares against the
alternatives as their authors train them. Like every BN parameter they get no weight decay
(Sect. 4.2) and the full rate α. Selection is by module type (`_BatchNorm`), never by parameter
name: a substring rule such as "bn" or "weight" would also catch w_v/w_b or conv weights.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from bnsweep.workers.errors import DataError, SpecError
from bnsweep.workers.plugins import Registry
from bnsweep.workers.spec import BN_SCALE_RULE, check_bn_scale

log = logging.getLogger(__name__)

#: Standard deviation of ReLU(z) for z ~ N(0, 1): sqrt(1/2 - 1/(2π)) ≈ 0.5838. The input BN has
#: no activation after it, so its γ̂ = σ_act·γ matches the variance of every other layer (Sect. 3.4).
SIGMA_ACT_RELU = 0.58


# -- BN formulations ------------------------------------------------------------------------


class _AffineBatchNorm2d(nn.BatchNorm2d):
    """`nn.BatchNorm2d` whose affine tail is computed by the subclass.

    `_batch_norm` is `_BatchNorm.forward` with the affine weight and bias as arguments, so the
    running statistics (momentum, cumulative average, `num_batches_tracked`) stay exactly
    BatchNorm's. Formulations whose tail is per-channel fold it into that one fused call.
    """

    def __init__(self, num_features: int, *args, **kwargs) -> None:
        super().__init__(num_features, *args, **kwargs)
        if not self.affine:
            name = type(self).__name__
            raise ValueError(f"{name} needs affine=True: its affine tail is the formulation")

    def _batch_norm(self, x: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
        self._check_input_dim(x)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average, as in _BatchNorm
                factor = 1.0 / float(self.num_batches_tracked)
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        track = not self.training or self.track_running_stats
        return F.batch_norm(
            x,
            self.running_mean if track else None,
            self.running_var if track else None,
            weight,
            bias,
            use_batch_stats,
            factor,
            self.eps,
        )


class A1BatchNorm2d(_AffineBatchNorm2d):
    """A1, Eq. 26: Y = γ(X̂ + β) = γ·X̂ + γ·β, one fused batch_norm call."""

    def forward(self, x: Tensor) -> Tensor:
        return self._batch_norm(x, self.weight, self.weight * self.bias)


class A2BatchNorm2d(_AffineBatchNorm2d):
    """A2, Eq. 27: Y = γ(γ0·X̂ + β) with an extra per-channel γ0 initialised to 1 (Sect. 4.4)."""

    def __init__(self, num_features: int, *args, **kwargs) -> None:
        super().__init__(num_features, *args, **kwargs)
        self.gamma0 = nn.Parameter(torch.ones_like(self.weight))

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if "gamma0" in self._parameters:  # absent while nn.BatchNorm2d.__init__ runs
            nn.init.ones_(self.gamma0)

    def forward(self, x: Tensor) -> Tensor:
        return self._batch_norm(x, self.weight * self.gamma0, self.weight * self.bias)


class _SigmoidScaledBatchNorm2d(_AffineBatchNorm2d):
    """Eq. 28-29: Y = γ·S·X̂ + β with S = sigmoid(w_v·GAP(𝒳) + w_b), per channel.

    Subclasses choose 𝒳 (`gap_of`: "normalized" X̂ for RBN, "raw" input X for IEBN), the
    initial w_b, and whether the instance term w_v·GAP(𝒳) exists (absent in the minus variants,
    where S = sigmoid(w_b) is per channel and folds into the fused call). w_v starts at 0, so
    every variant starts with the effective scale γ·sigmoid(w_b) (Sect. 4.5).
    """

    w_b_init: float
    gap_of: str | None  # "normalized", "raw", or None for the minus variants

    def __init__(self, num_features: int, *args, **kwargs) -> None:
        super().__init__(num_features, *args, **kwargs)
        if self.gap_of is not None:
            self.w_v = nn.Parameter(torch.zeros_like(self.weight))
        self.w_b = nn.Parameter(torch.full_like(self.weight, self.w_b_init))

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if "w_b" in self._parameters:  # absent while nn.BatchNorm2d.__init__ runs
            nn.init.constant_(self.w_b, self.w_b_init)
            if "w_v" in self._parameters:
                nn.init.zeros_(self.w_v)

    def forward(self, x: Tensor) -> Tensor:
        if self.gap_of is None:
            return self._batch_norm(x, self.weight * torch.sigmoid(self.w_b), self.bias)
        raw_gap = x.mean(dim=(2, 3), keepdim=True) if self.gap_of == "raw" else None
        x_hat = self._batch_norm(x, None, None)
        gap = raw_gap if raw_gap is not None else x_hat.mean(dim=(2, 3), keepdim=True)
        shape = (1, -1, 1, 1)
        scale = torch.sigmoid(self.w_v.view(shape) * gap + self.w_b.view(shape))
        return torch.addcmul(self.bias.view(shape), x_hat, scale * self.weight.view(shape))


class RBNBatchNorm2d(_SigmoidScaledBatchNorm2d):
    """RBN's scaling (Gao et al. 2021): 𝒳 = X̂, w_v = 0, w_b = 1 (initial S ≈ 0.731)."""

    w_b_init = 1.0
    gap_of = "normalized"


class RBNMinusBatchNorm2d(_SigmoidScaledBatchNorm2d):
    """RBN⁻: S = sigmoid(w_b), w_b = 1, no instance statistics and no w_v."""

    w_b_init = 1.0
    gap_of = None


class IEBNBatchNorm2d(_SigmoidScaledBatchNorm2d):
    """IEBN's scaling (Liang et al. 2020): 𝒳 = raw input X, w_v = 0, w_b = −1 (S ≈ 0.269)."""

    w_b_init = -1.0
    gap_of = "raw"


class IEBNMinusBatchNorm2d(_SigmoidScaledBatchNorm2d):
    """IEBN⁻: S = sigmoid(w_b), w_b = −1, no instance statistics and no w_v."""

    w_b_init = -1.0
    gap_of = None


#: name → BN class usable as torchvision's `norm_layer`: the `bnsweep.formulations` entry
#: points, bnsweep's own and every installed plugin's (docs/extending.md). `standard` is plain
#: `nn.BatchNorm2d` (Eq. 4), so BASE runs exactly PyTorch's BN.
FORMULATIONS: Registry[type[nn.BatchNorm2d]] = Registry("formulation")


# -- which parameters are scales ------------------------------------------------------------


def bn_modules(model: nn.Module) -> list[_BatchNorm]:
    """Every BN module of `model` (any `_BatchNorm`: every formulation and the input BN)."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm)]


def bn_scale_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    """The BN scales of Sect. 3.2: the γ (`weight`) of every BN module, input BN included."""
    for module in bn_modules(model):
        if module.weight is not None:
            yield module.weight


def bn_other_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    """Every other parameter owned by a BN module: β, A2's γ0, RBN/IEBN's w_v and w_b.

    Frozen ones (the input BN's β) are included; callers building optimisers drop them.
    """
    for module in bn_modules(model):
        for param in module.parameters(recurse=False):
            if param is not module.weight:
                yield param


#: The one line for a γ that is not a positive finite number; `TrialSpec` says the same.


@torch.no_grad()
def set_bn_scale(model: nn.Module, gamma: float) -> None:
    """Set every BN γ to `gamma` and β to 0; the input BN gets γ̂ = 0.58·γ (Sect. 3.2, 3.4).

    Call it after the model is built: torchvision's constructors reset every BN weight to 1.
    Extra parameters of the alternative formulations (γ0, w_v, w_b) keep their own values.
    """
    gamma = check_bn_scale(gamma)
    modules = bn_modules(model)
    for module in modules:
        if module.weight is not None:
            module.weight.fill_(gamma * getattr(module, "gamma_factor", 1.0))
        if module.bias is not None:
            module.bias.zero_()
    log.debug("set γ = %g on %d BN modules", gamma, len(modules))


# -- input normalisation (Sect. 3.4) --------------------------------------------------------


class InputBatchNorm2d(nn.BatchNorm2d):
    """The BN prepended to the network (Sect. 3.4): one trainable γ̂ per input channel.

    No activation follows it, so β is unnecessary; it stays a parameter (the `state_dict` is
    BatchNorm2d's) but is frozen at 0. `set_bn_scale` sets γ̂ = `gamma_factor`·γ.
    """

    gamma_factor = SIGMA_ACT_RELU

    def __init__(self, num_features: int, *args, **kwargs) -> None:
        super().__init__(num_features, *args, **kwargs)
        self.bias.requires_grad_(False)


class Standardize(nn.Module):
    """(x − mean) / std per channel, with mean and std as buffers (saved with the model)."""

    mean: Tensor
    std: Tensor

    def __init__(self, mean: Tensor, std: Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.detach().float().reshape(1, -1, 1, 1).clone())
        self.register_buffer("std", std.detach().float().reshape(1, -1, 1, 1).clone())

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


Stats = tuple[Tensor, Tensor]
InputNormBuilder = Callable[[int, float, Stats | None], nn.Module]


def _input_bn(in_channels: int, gamma: float, stats: Stats | None) -> nn.Module:
    module = InputBatchNorm2d(in_channels)
    set_bn_scale(module, gamma)
    return module


#: "Fixed" input normalisation (Sect. 3.4): μ = σ = 128 for an 8-bit [0-255] image, the middle
#: value of the data type and the largest magnitude of the mean-subtracted data. The pipeline
#: hands the model x/255 in [0, 1], so the same standardisation is μ = σ = 128/255 there.
FIXED_MEAN = FIXED_STD = 128.0 / 255.0


def _fixed(in_channels: int, gamma: float, stats: Stats | None) -> nn.Module:
    return Standardize(
        torch.full((in_channels,), FIXED_MEAN), torch.full((in_channels,), FIXED_STD)
    )


def _offline(in_channels: int, gamma: float, stats: Stats | None) -> nn.Module:
    if stats is None:
        raise SpecError(
            "input_norm 'offline': needs the training split's per-channel (mean, std); none given"
        )
    mean, std = (torch.as_tensor(t, dtype=torch.float32).flatten() for t in stats)
    if mean.numel() != in_channels or std.numel() != in_channels:
        raise SpecError(
            f"input_norm 'offline': stats have {mean.numel()} mean and {std.numel()} std values; "
            f"the data has {in_channels} channels"
        )
    if not bool(torch.isfinite(mean).all()) or not bool((std > 0).all()):
        raise DataError(
            f"input_norm 'offline': the training split's per-channel std must be > 0 and finite, "
            f"got mean {mean.tolist()} std {std.tolist()}"
        )
    return Standardize(mean, std)


def _none(in_channels: int, gamma: float, stats: Stats | None) -> nn.Module:
    return nn.Identity()


#: name → builder `(in_channels, γ, stats) -> module` prepended to the network (Sect. 3.4): the
#: `bnsweep.input_norms` entry points, bnsweep's own and every installed plugin's.
#: `stats` is the training split's per-channel (mean, std) in [0, 1] units, as computed by
#: `bnsweep.workers.input_stats.channel_stats`; only `offline` uses it.
INPUT_NORMS: Registry[InputNormBuilder] = Registry("input_norm")


__all__ = [
    "BN_SCALE_RULE",
    "FIXED_MEAN",
    "FIXED_STD",
    "FORMULATIONS",
    "INPUT_NORMS",
    "SIGMA_ACT_RELU",
    "A1BatchNorm2d",
    "A2BatchNorm2d",
    "IEBNBatchNorm2d",
    "IEBNMinusBatchNorm2d",
    "InputBatchNorm2d",
    "RBNBatchNorm2d",
    "RBNMinusBatchNorm2d",
    "Standardize",
    "bn_modules",
    "bn_other_parameters",
    "bn_scale_parameters",
    "check_bn_scale",
    "set_bn_scale",
]
