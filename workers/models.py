"""The model zoo: registry name → builder, the paper's small-input stems and initialisation.

A builder takes `(num_classes, in_channels, small_input, norm_layer)` and returns the bare
network; `build_model` adds the paper's initialisation (Sect. 4.1), the input normalisation
(Sect. 3.4) and the BN scale γ (Sect. 3.2), in the order that lets γ survive torchvision's
constructors.

Small inputs (CIFAR-size, `small_input=True`) get the stems of Sect. 4.1 and 4.4:

- ResNet / ResNeXt: a 3×3 stride-1 padding-1 first conv and no max-pool (Sect. 4.1).
- MobileNetV2: the first conv and the 2nd and 3rd bottleneck *stages* at stride 1 (Sect. 4.4).
  "Blocks" in the paper is read as the rows of MobileNetV2's bottleneck table (t, c, n, s):
  the 24- and 32-channel stages lose their stride 2, so a 32×32 input ends in an 8×8 map. The
  other reading - the 2nd and 3rd individual blocks - would change only the 24-channel stage.
- RepVGG-A0: stages 0 and 1 at stride 1 (Sect. 4.4), so a 32×32 input ends in a 4×4 map.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torchvision import models as tvm
from torchvision.models.resnet import BasicBlock

from bnsweep.workers.errors import SpecError, choice_error
from bnsweep.workers.norm import FORMULATIONS, INPUT_NORMS, Stats, set_bn_scale
from bnsweep.workers.plugins import Registry, check_input_norm, check_model
from bnsweep.workers.spec import check_bn_scale

NormLayer = Callable[..., nn.Module]
ModelBuilder = Callable[[int, int, bool, NormLayer], nn.Module]


# -- ResNet family ---------------------------------------------------------------------------


def _stem_conv(in_channels: int, out_channels: int, small_input: bool) -> nn.Conv2d:
    # Sect. 4.1: 3×3 stride 1 for CIFAR-size images instead of ImageNet's 7×7 stride 2.
    if small_input:
        return nn.Conv2d(in_channels, out_channels, 3, stride=1, padding=1, bias=False)
    return nn.Conv2d(in_channels, out_channels, 7, stride=2, padding=3, bias=False)


def _adapt_resnet(model: tvm.ResNet, in_channels: int, small_input: bool) -> tvm.ResNet:
    """Give a torchvision ResNet/ResNeXt the paper's stem and `in_channels` input channels."""
    if small_input or in_channels != 3:
        model.conv1 = _stem_conv(in_channels, model.conv1.out_channels, small_input)
    if small_input:
        model.maxpool = nn.Identity()
    return model


def _torchvision_resnet(constructor: Callable[..., tvm.ResNet]) -> ModelBuilder:
    def build(num_classes: int, in_channels: int, small_input: bool, norm_layer: NormLayer):
        model = constructor(weights=None, num_classes=num_classes, norm_layer=norm_layer)
        return _adapt_resnet(model, in_channels, small_input)

    build.__name__ = constructor.__name__
    return build


class ResNet8(nn.Module):
    """Three-stage CIFAR-style ResNet (16/32/64 channels, one BasicBlock each): 8 weight layers.

    Not in the paper; small enough to train in seconds on a CPU for demos and tests.
    """

    widths = (16, 32, 64)

    def __init__(
        self, num_classes: int, in_channels: int, small_input: bool, norm_layer: NormLayer
    ) -> None:
        super().__init__()
        first = self.widths[0]
        self.stem = nn.Sequential(
            _stem_conv(in_channels, first, small_input),
            norm_layer(first),
            nn.ReLU(inplace=True),
            nn.Identity() if small_input else nn.MaxPool2d(3, stride=2, padding=1),
        )
        stages = []
        for index, width in enumerate(self.widths):
            stride = 1 if index == 0 else 2
            in_width = self.widths[max(index - 1, 0)]
            downsample = None
            if stride != 1 or in_width != width:
                downsample = nn.Sequential(
                    nn.Conv2d(in_width, width, 1, stride=stride, bias=False), norm_layer(width)
                )
            stages.append(BasicBlock(in_width, width, stride, downsample, norm_layer=norm_layer))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.widths[-1], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.pool(self.stages(self.stem(x))), 1))


# -- MobileNetV2 -----------------------------------------------------------------------------

#: torchvision's bottleneck table (t, c, n, s) with the 2nd and 3rd stages at stride 1 (Sect. 4.4).
_MOBILENET_V2_SMALL_INPUT = [
    [1, 16, 1, 1],
    [6, 24, 2, 1],
    [6, 32, 3, 1],
    [6, 64, 4, 2],
    [6, 96, 3, 1],
    [6, 160, 3, 2],
    [6, 320, 1, 1],
]


def _mobilenet_v2(
    num_classes: int, in_channels: int, small_input: bool, norm_layer: NormLayer
) -> nn.Module:
    setting = _MOBILENET_V2_SMALL_INPUT if small_input else None
    model = tvm.mobilenet_v2(
        weights=None,
        num_classes=num_classes,
        norm_layer=norm_layer,
        inverted_residual_setting=setting,
    )
    if small_input or in_channels != 3:
        first = model.features[0][0]
        model.features[0][0] = nn.Conv2d(
            in_channels,
            first.out_channels,
            3,
            stride=1 if small_input else 2,
            padding=1,
            bias=False,
        )
    return model


# -- RepVGG-A0 (training-time form) ----------------------------------------------------------


class RepVGGBlock(nn.Module):
    """ReLU(BN(conv3×3(x)) + BN(conv1×1(x)) [+ BN(x) when the shapes match]) (Ding et al. 2021).

    The training-time multi-branch form; every branch has its own BN, so each gets γ.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, norm_layer: NormLayer):
        super().__init__()
        self.conv3 = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
            norm_layer(out_channels),
        )
        self.conv1 = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
            norm_layer(out_channels),
        )
        self.identity = (
            norm_layer(out_channels) if in_channels == out_channels and stride == 1 else None
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv3(x) + self.conv1(x)
        if self.identity is not None:
            out = out + self.identity(x)
        return self.act(out)


class RepVGG(nn.Module):
    """RepVGG-A: five stages, the first block of each with stride 2 unless `small_input`."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        small_input: bool,
        norm_layer: NormLayer,
        blocks: tuple[int, ...] = (1, 2, 4, 14, 1),
        widths: tuple[int, ...] = (48, 48, 96, 192, 1280),
    ) -> None:
        super().__init__()
        # Sect. 4.4: stages 0 and 1 at stride 1 for CIFAR-size inputs.
        strides = (1, 1, 2, 2, 2) if small_input else (2, 2, 2, 2, 2)
        stages = []
        current = in_channels
        for count, width, stride in zip(blocks, widths, strides, strict=True):
            stage = []
            for index in range(count):
                stage.append(RepVGGBlock(current, width, stride if index == 0 else 1, norm_layer))
                current = width
            stages.append(nn.Sequential(*stage))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(current, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.pool(self.stages(x)), 1))


def _repvgg_a0(
    num_classes: int, in_channels: int, small_input: bool, norm_layer: NormLayer
) -> nn.Module:
    # A0: a = 0.75, b = 2.5; stage 0 has min(64, 64a) = 48 channels.
    return RepVGG(num_classes, in_channels, small_input, norm_layer)


# Each builder under the name its entry point gives it (pyproject.toml, `bnsweep.models`).
resnet18 = _torchvision_resnet(tvm.resnet18)
resnet34 = _torchvision_resnet(tvm.resnet34)
resnet50 = _torchvision_resnet(tvm.resnet50)
resnet101 = _torchvision_resnet(tvm.resnet101)
resnet152 = _torchvision_resnet(tvm.resnet152)
resnext50_32x4d = _torchvision_resnet(tvm.resnext50_32x4d)

#: name → builder `(num_classes, in_channels, small_input, norm_layer) -> nn.Module`: the
#: `bnsweep.models` entry points, bnsweep's own and every installed plugin's
#: (docs/extending.md). A name is imported when it is first looked up.
MODELS: Registry[ModelBuilder] = Registry("arch")


# -- initialisation and assembly -------------------------------------------------------------


def linear_init_bound(fan_in: int) -> float:
    """The bound b of the U(−b, b) that linear weights are drawn from: √(6 / fan_in).

    Sect. 4.1 says only "a uniform distribution (also using 'fan-in')". The official code
    (osu-cvl/revisiting-bn-init, `networks.reinit_network`) calls
    `kaiming_uniform_(w, mode='fan_in', nonlinearity='relu', a=sqrt(5))`, and with
    `nonlinearity='relu'` PyTorch ignores `a`: the gain is √2 and the bound √(6 / fan_in),
    √6 ≈ 2.45× wider than PyTorch's default `nn.Linear` bound 1/√fan_in that its comment
    ("the default initialization of a nn.Linear layer") suggests. That executed bound produced
    the published numbers, and the text does not contradict it, so bnsweep draws from it.
    """
    return math.sqrt(6.0 / fan_in)


@torch.no_grad()
def init_weights(model: nn.Module) -> None:
    """The paper's initialisation (Sect. 4.1): Kaiming normal fan-in (ReLU) for convolutions,
    U(−√(6/fan_in), √(6/fan_in)) for linear layers (`linear_init_bound`), every conv and
    linear bias 0.

    BN modules are left to `set_bn_scale` (γ, β = 0); the extra parameters of A2 and RBN/IEBN
    keep their own initialisation (γ0 = 1, w_v = 0, w_b = ±1), which is not the bias rule.
    """
    for module in model.modules():
        if isinstance(module, nn.modules.conv._ConvNd):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
        elif isinstance(module, nn.Linear):
            # What the official code's kaiming_uniform_(…, nonlinearity='relu', a=√5) executes.
            bound = linear_init_bound(module.in_features)
            nn.init.uniform_(module.weight, -bound, bound)
        else:
            continue
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class Network(nn.Module):
    """The input normalisation (Sect. 3.4) followed by the classification network."""

    def __init__(self, input_norm: nn.Module, body: nn.Module) -> None:
        super().__init__()
        self.input_norm = input_norm
        self.body = body

    def forward(self, x: Tensor) -> Tensor:
        return self.body(self.input_norm(x))


def build_model(
    arch: str,
    num_classes: int,
    in_channels: int,
    small_input: bool,
    formulation: str,
    gamma: float,
    input_norm: str,
    input_stats: Stats | None = None,
) -> Network:
    """Build `arch` with the formulation's BN, the paper's initialisation, input norm and γ.

    `input_stats` is the training split's per-channel (mean, std), needed by `offline` only.
    """
    if arch not in MODELS:
        raise choice_error("arch", arch, MODELS)
    if formulation not in FORMULATIONS:
        raise choice_error("formulation", formulation, FORMULATIONS)
    if input_norm not in INPUT_NORMS:
        raise choice_error("input_norm", input_norm, INPUT_NORMS)
    gamma = check_bn_scale(gamma)
    for name, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SpecError(f"{name}: must be an integer >= 1, got {value!r}")

    norm_layer = FORMULATIONS[formulation]
    body = MODELS[arch](num_classes, in_channels, small_input, norm_layer)
    check_model(arch, body, norm_layer)
    init_weights(body)
    prepended = INPUT_NORMS[input_norm](in_channels, gamma, input_stats)
    check_input_norm(input_norm, prepended)
    model = Network(prepended, body)
    # Last: torchvision's constructors reset every BN weight to 1 (DESIGN.md).
    set_bn_scale(model, gamma)
    return model


__all__ = [
    "MODELS",
    "Network",
    "RepVGG",
    "RepVGGBlock",
    "ResNet8",
    "build_model",
    "init_weights",
    "linear_init_bound",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
]
