"""Entry-point registries: listing without imports, loading with errors that name the plugin,
each kind's contract, name clashes, and plugin recipes in `spec_hash`.

Plugins here are real installed distributions: a `.dist-info` folder with an
`entry_points.txt` and a module beside it on `sys.path`, which `importlib.metadata` finds
exactly as it finds a pip-installed package.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from bnsweep.workers import plugins
from bnsweep.workers.errors import BnsweepError
from bnsweep.workers.spec import TrialSpec

#: A small plugin module: a network using norm_layer, a uint8 dataset, a BN subclass, an
#: input norm. Each test plugin's module is this text plus its own lines.
GOOD_MODULE = """
import torch
from torch import nn

import bnsweep
from bnsweep.workers.loaders import RawDataset


@bnsweep.register_model("tinynet", recipe=RECIPE)
def tinynet(num_classes, in_channels, small_input, norm_layer):
    return nn.Sequential(
        nn.Conv2d(in_channels, 4, 3, padding=1, bias=False),
        norm_layer(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, num_classes),
    )


@bnsweep.register_dataset("blobs", augment="flip", layout="nothing: generated")
def blobs(data_root):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (40, 3, 8, 8), generator=g, dtype=torch.uint8)
    y = torch.arange(40) % 2
    return RawDataset(x[:30], y[:30], x[30:], y[30:], 2)


@bnsweep.register_formulation("offset_bn")
class OffsetBatchNorm2d(nn.BatchNorm2d):
    pass


@bnsweep.register_input_norm("halve")
def halve(in_channels, gamma, stats):
    return nn.Identity()
"""

GOOD_ENTRIES = {
    "bnsweep.models": {"tinynet": "{module}:tinynet"},
    "bnsweep.datasets": {"blobs": "{module}:blobs"},
    "bnsweep.formulations": {"offset_bn": "{module}:OffsetBatchNorm2d"},
    "bnsweep.input_norms": {"halve": "{module}:halve"},
}

MakePlugin = Callable[..., Path]


@pytest.fixture
def make_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MakePlugin]:
    """make_plugin(dist, module_text, entries, version=...) installs a distribution on
    sys.path for the test and forgets it afterwards."""
    modules: list[str] = []

    def make(
        dist: str,
        text: str = GOOD_MODULE,
        entries: Mapping[str, Mapping[str, str]] = GOOD_ENTRIES,
        version: str = "0.1.0",
        recipe: int = 1,
    ) -> Path:
        site = tmp_path / f"site-{dist}-{version}"
        module = dist.replace("-", "_")
        write_distribution(
            site, dist, version, module, text.replace("RECIPE", str(recipe)), entries
        )
        monkeypatch.syspath_prepend(str(site))
        modules.append(module)
        plugins.refresh()
        return site

    yield make
    for module in modules:
        sys.modules.pop(module, None)
    monkeypatch.undo()
    plugins.refresh()


def write_distribution(
    site: Path,
    dist: str,
    version: str,
    module: str,
    text: str,
    entries: Mapping[str, Mapping[str, str]],
) -> None:
    info = site / f"{module}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = []
    for group, points in entries.items():
        lines.append(f"[{group}]")
        lines += [f"{name} = {target.format(module=module)}" for name, target in points.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    (site / f"{module}.py").write_text(textwrap.dedent(text))


# -- listing ---------------------------------------------------------------------------------


def test_builtins_are_entry_points_of_bnsweep() -> None:
    import bnsweep

    for kind, registry in (
        ("arch", bnsweep.MODELS),
        ("dataset", bnsweep.DATASETS),
        ("formulation", bnsweep.FORMULATIONS),
        ("input_norm", bnsweep.INPUT_NORMS),
    ):
        assert plugins.builtin_names(kind) == tuple(registry)
        assert all(plugins.reference(kind, n).builtin for n in registry)


def test_listing_names_imports_nothing(make_plugin: MakePlugin) -> None:
    site = make_plugin("listed-plugin")
    code = (
        "import sys; from bnsweep.workers import plugins; "
        "from bnsweep.workers.spec import TrialSpec; "
        "print(plugins.names('arch')[-1]); TrialSpec(arch='tinynet', formulation='offset_bn'); "
        "print('listed_plugin' in sys.modules, 'torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out == ["tinynet", "False", "False"]


def test_registries_include_plugins(make_plugin: MakePlugin) -> None:
    import bnsweep

    make_plugin("viewed-plugin")
    assert "tinynet" in bnsweep.MODELS and "tinynet" in list(bnsweep.MODELS)
    assert bnsweep.DATASETS["blobs"].augment == "flip"
    assert bnsweep.FORMULATIONS["offset_bn"].__name__ == "OffsetBatchNorm2d"
    with pytest.raises(KeyError):
        bnsweep.MODELS["no-such-net"]


# -- built-ins behave as before ----------------------------------------------------------------

#: Hashes of built-in specs, computed before the registries became entry points.
PINNED = {
    (): "a403de1d16011404",
}


def test_builtin_hashes_are_unchanged() -> None:
    assert TrialSpec().spec_hash == PINNED[()]


# -- a plugin end to end in one process -------------------------------------------------------


def test_plugin_builds_trains_and_is_recorded(make_plugin: MakePlugin) -> None:
    import json

    import torch

    import bnsweep

    make_plugin("good-plugin")
    model = bnsweep.build_model("tinynet", 2, 3, True, "offset_bn", 0.1, "halve")
    bns = [m for m in model.modules() if type(m).__name__ == "OffsetBatchNorm2d"]
    assert len(bns) == 1 and torch.allclose(bns[0].weight, torch.full((4,), 0.1))
    from bnsweep.workers.data import load_dataset

    splits = load_dataset("blobs", None, 0.1)
    assert splits.augment == "flip" and len(splits.train_y) + len(splits.val_y) == 30
    spec = TrialSpec(arch="tinynet", formulation="offset_bn", dataset="blobs")
    record = json.loads(plugins.provenance(spec.result_fields()) or "")
    assert record["arch"] == {
        "name": "tinynet",
        "distribution": "good-plugin",
        "version": "0.1.0",
        "recipe": 1,
    }
    assert set(record) == {"arch", "dataset", "formulation"}
    assert plugins.provenance(TrialSpec().result_fields()) is None


def test_plugin_recipe_is_part_of_the_key(make_plugin: MakePlugin, tmp_path: Path) -> None:
    make_plugin("recipe-plugin", recipe=1)
    first = TrialSpec(arch="tinynet").spec_hash
    again = TrialSpec(arch="tinynet").spec_hash
    sys.modules.pop("recipe_plugin", None)
    make_plugin("recipe-plugin", recipe=2, version="0.2.0")
    second = TrialSpec(arch="tinynet").spec_hash
    assert first == again != second
    assert TrialSpec().spec_hash == PINNED[()]


# -- contracts: one line naming the plugin, the rule and the fix --------------------------------


def _one_line_error(err: pytest.ExceptionInfo[BnsweepError], *needles: str) -> str:
    text = str(err.value)
    assert "\n" not in text and err.value.exit_code == 2
    for needle in needles:
        assert needle in text, text
    return text


def test_builder_returning_the_wrong_type(make_plugin: MakePlugin) -> None:
    import bnsweep

    make_plugin("bad-builder", GOOD_MODULE + "\ntinynet = lambda *args: 'a network'\n")
    with pytest.raises(BnsweepError) as err:
        bnsweep.build_model("tinynet", 2, 3, True, "standard", 0.1, "bn")
    _one_line_error(err, "arch 'tinynet' (bad-builder 0.1.0)", "returned a str", "nn.Module")


def test_builder_ignoring_norm_layer(make_plugin: MakePlugin) -> None:
    import bnsweep

    text = GOOD_MODULE + "\ntinynet = lambda n, c, s, norm: nn.Sequential(nn.Flatten())\n"
    make_plugin("no-bn", text)
    with pytest.raises(BnsweepError) as err:
        bnsweep.build_model("tinynet", 2, 3, True, "a1", 0.1, "bn")
    _one_line_error(err, "(no-bn 0.1.0)", "no A1BatchNorm2d module", "norm_layer")


def test_dataset_with_float_images(make_plugin: MakePlugin) -> None:
    from bnsweep.workers.data import load_dataset

    text = GOOD_MODULE.replace("dtype=torch.uint8)", "dtype=torch.uint8).float()")
    make_plugin("float-data", text)
    with pytest.raises(BnsweepError) as err:
        load_dataset("blobs")
    _one_line_error(err, "dataset 'blobs' (float-data 0.1.0)", "torch.float32", "uint8")


def test_formulation_that_is_not_a_bn(make_plugin: MakePlugin) -> None:
    text = GOOD_MODULE + "\nOffsetBatchNorm2d = nn.GroupNorm\n"
    make_plugin("not-bn", text)
    with pytest.raises(BnsweepError) as err:
        plugins.load("formulation", "offset_bn")
    _one_line_error(err, "formulation 'offset_bn' (not-bn 0.1.0)", "not a subclass", "BatchNorm2d")


def test_entry_point_whose_target_is_missing(make_plugin: MakePlugin) -> None:
    entries = {"bnsweep.models": {"ghost": "{module}:nothing_here"}}
    make_plugin("ghost-plugin", GOOD_MODULE, entries)
    with pytest.raises(BnsweepError) as err:
        plugins.load("arch", "ghost")
    _one_line_error(err, "arch 'ghost' (ghost-plugin 0.1.0)", "nothing_here", "entry point")
    entries = {"bnsweep.models": {"phantom": "no_such_module_anywhere:net"}}
    make_plugin("ghost-module", GOOD_MODULE, entries)
    with pytest.raises(BnsweepError) as err:
        TrialSpec(arch="phantom").spec_hash  # noqa: B018 (the hash loads the plugin)
    _one_line_error(err, "no_such_module_anywhere")


def test_plugin_that_imports_but_raises(make_plugin: MakePlugin) -> None:
    make_plugin("raising", GOOD_MODULE + "\nraise RuntimeError('no licence file found')\n")
    with pytest.raises(BnsweepError) as err:
        plugins.load("arch", "tinynet")
    _one_line_error(err, "(raising 0.1.0)", "RuntimeError: no licence file found", "import raising")


def test_registration_under_another_name(make_plugin: MakePlugin) -> None:
    entries = {"bnsweep.models": {"othernet": "{module}:tinynet"}}
    make_plugin("renamed", GOOD_MODULE, entries)
    with pytest.raises(BnsweepError) as err:
        plugins.load("arch", "othernet")
    _one_line_error(err, "registered as arch 'tinynet'")


def test_dataset_without_its_registration(make_plugin: MakePlugin) -> None:
    entries = {"bnsweep.datasets": {"raw": "{module}:loader"}}
    make_plugin("undecorated", GOOD_MODULE + "\ndef loader(root):\n    return None\n", entries)
    with pytest.raises(BnsweepError) as err:
        plugins.load("dataset", "raw")
    _one_line_error(err, "not decorated with bnsweep.register_dataset")


# -- names: a plugin may not shadow another distribution's ------------------------------------


def test_plugin_shadowing_a_builtin_is_refused(make_plugin: MakePlugin) -> None:
    entries = {"bnsweep.models": {"resnet18": "{module}:tinynet"}}
    make_plugin("shadow", GOOD_MODULE, entries)
    with pytest.raises(BnsweepError) as err:
        TrialSpec(arch="resnet18")
    _one_line_error(err, "bnsweep", "shadow 0.1.0", "rename it")


def test_two_plugins_with_one_name_are_refused(make_plugin: MakePlugin) -> None:
    make_plugin("first-plugin")
    make_plugin("second-plugin")
    with pytest.raises(BnsweepError) as err:
        TrialSpec(arch="tinynet")
    _one_line_error(err, "first-plugin 0.1.0", "second-plugin 0.1.0")
    TrialSpec(arch="resnet8")  # names nobody clashes on are unaffected


def test_unknown_name_lists_the_plugins_too(make_plugin: MakePlugin) -> None:
    make_plugin("listing-plugin")
    with pytest.raises(BnsweepError) as err:
        TrialSpec(arch="resnet19")
    _one_line_error(err, "arch: unknown value 'resnet19'", "resnet18", "tinynet")
