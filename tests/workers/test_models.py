"""Every registered architecture × formulation: built with γ in place, trainable, right stems.

Deep nets are slow on a CPU, so the fast sweep runs every formulation on ResNet-8 and
MobileNetV2 (one torchvision constructor) and `standard` on every other arch but ResNet-101/152,
all at 16×16; the other (arch, formulation) pairs get the same checks but are marked slow, and
the two deepest nets get a fast build-only check of γ. Every registered pair is a parameter of
`built`, so registering an arch or a formulation is being tested.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from bnsweep.workers.errors import SpecError
from bnsweep.workers.models import MODELS, Network, build_model, init_weights, linear_init_bound
from bnsweep.workers.norm import FORMULATIONS, SIGMA_ACT_RELU, InputBatchNorm2d, bn_modules
from bnsweep.workers.param_groups import param_groups

GAMMA = 0.1
EVERY_FORMULATION = ("resnet8", "mobilenet_v2")
# Same constructor and blocks as resnet50, only deeper; a CPU backward through them takes long.
DEEPEST = ("resnet101", "resnet152")


def _fast(arch: str, name: str) -> bool:
    return arch in EVERY_FORMULATION or (name == "standard" and arch not in DEEPEST)


PAIRS = [
    pytest.param(
        (arch, name), id=f"{arch}-{name}", marks=() if _fast(arch, name) else pytest.mark.exhaustive
    )
    for arch in MODELS
    for name in FORMULATIONS
]

# The module whose output is the final feature map, and the total stride of the small-input
# nets: 32×32 ends at 4×4 for ResNet/ResNeXt (three stride-2 stages, Sect. 4.1) and RepVGG-A0
# (stages 0-1 at stride 1, Sect. 4.4), at 8×8 for MobileNetV2 (Sect. 4.4, see models.py) and
# for ResNet-8 (two stride-2 stages).
FINAL_MAP = {
    "resnet8": ("stages", 4),
    "resnet18": ("layer4", 8),
    "resnet34": ("layer4", 8),
    "resnet50": ("layer4", 8),
    "resnet101": ("layer4", 8),
    "resnet152": ("layer4", 8),
    "resnext50_32x4d": ("layer4", 8),
    "mobilenet_v2": ("features", 4),
    "repvgg_a0": ("stages", 8),
}


def test_every_arch_has_an_expected_final_map() -> None:
    assert set(FINAL_MAP) == set(MODELS)


@pytest.fixture(scope="module", params=PAIRS)
def built(request) -> tuple[str, str, Network]:
    """One build per (arch, formulation), shared by the tests below (pytest groups them)."""
    arch, name = request.param
    torch.manual_seed(0)
    return arch, name, build_model(arch, 10, 3, True, name, GAMMA, "bn")


def _check_gamma(model: Network) -> None:
    assert isinstance(model.input_norm, InputBatchNorm2d)
    assert torch.equal(model.input_norm.weight, torch.full((3,), SIGMA_ACT_RELU * GAMMA))
    modules = bn_modules(model.body)
    assert modules, "every architecture normalises with BN"
    for module in modules:
        assert torch.equal(module.weight, torch.full_like(module.weight, GAMMA))
    for module in bn_modules(model):
        assert torch.equal(module.bias, torch.zeros_like(module.bias))


def test_gamma_survives_construction(built) -> None:
    _check_gamma(built[2])


def test_every_norm_layer_is_the_formulation(built) -> None:
    _, name, model = built
    assert {type(m) for m in bn_modules(model.body)} == {FORMULATIONS[name]}


def test_param_groups_cover_every_trainable_parameter(built) -> None:
    model = built[2]
    groups = {g["name"]: g["params"] for g in param_groups(model, 0.1, 1e-4, 100.0)}
    assert sum(len(p) for p in groups.values()) == sum(
        1 for p in model.parameters() if p.requires_grad
    )
    assert {id(p) for p in groups["bn_scale"]} == {id(m.weight) for m in bn_modules(model)}


@pytest.mark.parametrize("arch", DEEPEST)
def test_deepest_nets_get_gamma(arch: str) -> None:
    model = build_model(arch, 10, 3, True, "standard", GAMMA, "bn")
    _check_gamma(model)
    assert {type(m) for m in bn_modules(model.body)} == {nn.BatchNorm2d}


def test_forward_backward_and_final_map(built) -> None:
    arch, _, model = built
    name, stride = FINAL_MAP[arch]
    captured = []
    hook = getattr(model.body, name).register_forward_hook(lambda m, i, o: captured.append(o))
    try:
        out = model(torch.rand(2, 3, 16, 16))
    finally:
        hook.remove()
    assert out.shape == (2, 10)
    assert captured[0].shape[-2:] == (16 // stride, 16 // stride)
    out.square().mean().backward()
    for pname, param in model.named_parameters():
        if param.requires_grad:
            assert param.grad is not None and torch.isfinite(param.grad).all(), pname
    model.zero_grad(set_to_none=True)


# -- stems for other inputs --------------------------------------------------------------------

# Side of the final map: (small stems at 32×32, ImageNet stems at 64×64: five stride-2 steps,
# ResNet-8 four).
FINAL_SIDE = {
    "resnet8": (8, 4),
    "resnet18": (4, 2),
    "mobilenet_v2": (8, 2),
    "repvgg_a0": (4, 2),
}


@pytest.mark.parametrize("small_input", [True, False], ids=["small", "large"])
@pytest.mark.parametrize("arch", list(FINAL_SIDE))
def test_one_channel_input_and_both_stems(arch: str, small_input: bool) -> None:
    # Digits are 1-channel; each builder replaces its stem conv to match.
    size = 32 if small_input else 64
    model = build_model(arch, 4, 1, small_input, "standard", 0.5, "bn")
    assert model.input_norm.weight.numel() == 1
    name = FINAL_MAP[arch][0]
    expected = FINAL_SIDE[arch][0 if small_input else 1]
    captured = []
    getattr(model.body, name).register_forward_hook(lambda m, i, o: captured.append(o))
    with torch.no_grad():
        assert model(torch.rand(2, 1, size, size)).shape == (2, 4)
    assert captured[0].shape[-2:] == (expected, expected)


def test_resnet_small_stem_is_3x3_stride_1_without_max_pool() -> None:
    body = MODELS["resnet18"](10, 3, True, nn.BatchNorm2d)
    conv = body.conv1
    assert (conv.kernel_size, conv.stride, conv.padding) == ((3, 3), (1, 1), (1, 1))
    assert isinstance(body.maxpool, nn.Identity)


def test_repvgg_a0_layout() -> None:
    body = MODELS["repvgg_a0"](10, 3, True, nn.BatchNorm2d)
    assert [len(stage) for stage in body.stages] == [1, 2, 4, 14, 1]
    widths = [stage[0].conv3[0].out_channels for stage in body.stages]
    assert widths == [48, 48, 96, 192, 1280]
    strides = [stage[0].conv3[0].stride[0] for stage in body.stages]
    assert strides == [1, 1, 2, 2, 2]
    # The identity branch exists exactly where input and output shapes match.
    assert body.stages[0][0].identity is None and body.stages[1][0].identity is not None
    assert body.stages[2][0].identity is None and body.stages[2][1].identity is not None


# -- initialisation --------------------------------------------------------------------------


def test_paper_initialisation() -> None:
    torch.manual_seed(0)
    model = build_model("resnet8", 10, 3, True, "rbn", GAMMA, "none")
    conv = model.body.stages[2].conv2.weight  # 64×64×3×3: fan-in 576
    assert conv.std().item() == pytest.approx(math.sqrt(2 / 576), rel=0.03)
    assert torch.equal(model.body.fc.bias, torch.zeros_like(model.body.fc.bias))
    for module in model.modules():
        bias = getattr(module, "bias", None)
        if isinstance(bias, torch.Tensor):
            assert torch.equal(bias, torch.zeros_like(bias))
    # RBN keeps its own initialisation for the extra parameters (Sect. 4.5).
    for module in bn_modules(model):
        assert torch.equal(module.w_v, torch.zeros_like(module.w_v))
        assert torch.equal(module.w_b, torch.ones_like(module.w_b))


def test_linear_init_is_what_the_official_kaiming_uniform_call_executes() -> None:
    # osu-cvl/revisiting-bn-init: kaiming_uniform_(w, mode='fan_in', nonlinearity='relu',
    # a=sqrt(5)); for 'relu' PyTorch ignores `a`, so the bound is sqrt(6 / fan_in).
    assert linear_init_bound(64) == pytest.approx(math.sqrt(6 / 64))
    ours, official = nn.Linear(64, 10), nn.Linear(64, 10)
    torch.manual_seed(3)
    init_weights(ours)
    torch.manual_seed(3)
    nn.init.kaiming_uniform_(official.weight, mode="fan_in", nonlinearity="relu", a=math.sqrt(5))
    assert torch.equal(ours.weight, official.weight)
    assert torch.equal(ours.bias, torch.zeros(10))


@pytest.mark.parametrize("arch", list(MODELS))
def test_every_classifier_is_drawn_within_the_official_bound(arch: str) -> None:
    torch.manual_seed(0)
    model = build_model(arch, 10, 3, True, "standard", GAMMA, "bn")
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears, f"{arch} has no linear classifier"
    for layer in linears:
        bound = math.sqrt(6 / layer.in_features)
        largest = layer.weight.abs().max().item()
        # ≥ 640 uniform draws (resnet8: 64 × 10), so the largest lies within 10 % of the bound
        # but with probability 0.9^640 ≈ 1e-29; PyTorch's default 1/√fan_in is 2.45× below it.
        assert 0.9 * bound < largest <= bound, (arch, layer.in_features, largest, bound)
        assert torch.equal(layer.bias, torch.zeros_like(layer.bias))


def test_init_weights_leaves_bn_alone() -> None:
    model = nn.Sequential(nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2))
    with torch.no_grad():
        model[1].weight.fill_(0.3)
    init_weights(model)
    assert torch.equal(model[1].weight, torch.full((2,), 0.3))
    assert torch.equal(model[0].bias, torch.zeros(2))


def test_input_norm_is_prepended() -> None:
    stats = (torch.full((3,), 0.5), torch.full((3,), 0.25))
    model = build_model("resnet8", 10, 3, True, "standard", 1.0, "offline", stats)
    assert torch.equal(model.input_norm.std.flatten(), stats[1])
    assert not any(isinstance(m, _BatchNorm) for m in model.input_norm.modules())


# -- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field,kwargs",
    [
        ("arch", {"arch": "resnet9"}),
        ("formulation", {"formulation": "groupnorm"}),
        ("input_norm", {"input_norm": "zca"}),
    ],
)
def test_unknown_names_list_the_valid_ones(field: str, kwargs: dict) -> None:
    args = {
        "arch": "resnet8",
        "num_classes": 10,
        "in_channels": 3,
        "small_input": True,
        "formulation": "standard",
        "gamma": 0.1,
        "input_norm": "bn",
        **kwargs,
    }
    registry = {"arch": MODELS, "formulation": FORMULATIONS}.get(field, ["bn", "fixed"])
    with pytest.raises(SpecError, match=rf"^{field}: unknown value") as err:
        build_model(**args)
    assert all(name in str(err.value) for name in registry)


@pytest.mark.parametrize("gamma", [0.0, -1.0, float("nan")])
def test_gamma_not_positive_raises_before_building(gamma: float) -> None:
    with pytest.raises(SpecError, match=r"bn_scale_init \(γ\): must be a finite number > 0"):
        build_model("resnet152", 10, 3, True, "standard", gamma, "bn")


def test_gamma_above_one_builds() -> None:
    model = build_model("resnet8", 10, 3, True, "standard", 2.0, "bn")
    assert all(
        torch.equal(m.weight, torch.full_like(m.weight, 2.0)) for m in bn_modules(model.body)
    )


def test_bad_class_or_channel_counts_raise() -> None:
    with pytest.raises(SpecError, match="num_classes"):
        build_model("resnet8", 0, 3, True, "standard", 0.1, "bn")
    with pytest.raises(SpecError, match="in_channels"):
        build_model("resnet8", 10, 0, True, "standard", 0.1, "bn")
