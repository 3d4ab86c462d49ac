"""Extension points: networks, datasets, BN formulations and input normalisations from any
installed package, found through entry points (docs/extending.md).

Each kind of registry is an entry-point group, and bnsweep declares its own built-ins the same
way (pyproject.toml), so a name is a name wherever it comes from:

- `arch`: group `bnsweep.models`, a builder
  `(num_classes, in_channels, small_input, norm_layer) -> nn.Module`;
- `dataset`: group `bnsweep.datasets`, a loader `(data_root) -> RawDataset` decorated with
  `register_dataset`;
- `formulation`: group `bnsweep.formulations`, a subclass of `nn.BatchNorm2d`;
- `input_norm`: group `bnsweep.input_norms`, a builder `(in_channels, gamma, stats) -> nn.Module`.

Three phases, each with its own cost:

- *listing* (`names`, `builtin_names`, `reference`) reads installed packages' metadata and
  imports nothing, so a sweep spec naming a plugin validates without torch in well under a
  second;
- *loading* (`load`) imports one entry point's target and checks what can be checked without
  running it (its kind, its registration, a formulation's base class); it happens in `launch`
  and `train` only, never on a command that reads the store;
- *first use* (`check_model`, `check_input_norm`, `check_dataset`) checks what the target
  returns, where it is called (`build_model`, `load_dataset`).

A violation at any phase is one `PluginError` line naming the plugin, its distribution, the
rule it breaks and the fix (exit 2). This module imports no torch at import time.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from bnsweep.workers.errors import SpecError, choice_error, one_line

#: The spec field each kind fills → its entry-point group.
GROUPS: dict[str, str] = {
    "arch": "bnsweep.models",
    "dataset": "bnsweep.datasets",
    "formulation": "bnsweep.formulations",
    "input_norm": "bnsweep.input_norms",
}
#: The distribution whose entry points are the built-ins: their recipe is bnsweep's own
#: `RECIPE`, so their cells' keys do not name them.
BUILTIN_DISTRIBUTION = "bnsweep"
#: The attribute a `register_*` decorator sets on what it decorates.
REGISTRATION_ATTRIBUTE = "__bnsweep_plugin__"


class PluginError(SpecError):
    """A plugin that cannot be found, imported or used as its kind's contract says (exit 2)."""


# -- registration, on the code it registers ------------------------------------------------


@dataclass(frozen=True)
class Registration:
    """What a `register_*` decorator says about the object it decorates."""

    kind: str  # a key of GROUPS
    name: str
    recipe: int
    options: Mapping[str, Any] = field(default_factory=dict)


T = TypeVar("T")


def _register(kind: str, name: str, recipe: int, **options: Any) -> Callable[[T], T]:
    if not isinstance(name, str) or not name:
        raise PluginError(f"register: the {kind} name must be a non-empty string, got {name!r}")
    if isinstance(recipe, bool) or not isinstance(recipe, int) or recipe < 1:
        raise PluginError(
            f"register {kind} {name!r}: recipe must be an integer >= 1, got {recipe!r}"
        )

    def mark(target: T) -> T:
        setattr(target, REGISTRATION_ATTRIBUTE, Registration(kind, name, recipe, options))
        return target

    return mark


def register_model(name: str, *, recipe: int = 1) -> Callable[[T], T]:
    """Mark a network builder `(num_classes, in_channels, small_input, norm_layer) -> nn.Module`
    for the `bnsweep.models` entry point `name`. Bump `recipe` whenever a change to the builder
    changes what an unchanged spec trains: the cells are then trained again, never mixed."""
    return _register("arch", name, recipe)


def register_dataset(
    name: str,
    *,
    augment: str,
    crop_size: int | None = None,
    layout: str = "",
    needs_root: bool = False,
    recipe: int = 1,
) -> Callable[[T], T]:
    """Mark a loader `(data_root) -> RawDataset` for the `bnsweep.datasets` entry point `name`.

    `augment` is the training augmentation (`flip`, `crop_flip` with `crop_size`, or `none`);
    `layout` is one line saying what `data_root` must hold; `needs_root` whether it must be set.
    """
    options = {"augment": augment, "crop_size": crop_size, "layout": layout}
    return _register("dataset", name, recipe, needs_root=needs_root, **options)


def register_formulation(name: str, *, recipe: int = 1) -> Callable[[T], T]:
    """Mark a BN formulation (a subclass of `nn.BatchNorm2d`) for `bnsweep.formulations`."""
    return _register("formulation", name, recipe)


def register_input_norm(name: str, *, recipe: int = 1) -> Callable[[T], T]:
    """Mark an input normalisation builder `(in_channels, gamma, stats) -> nn.Module` for
    `bnsweep.input_norms`."""
    return _register("input_norm", name, recipe)


# -- listing: metadata only, nothing imported ------------------------------------------------


@dataclass(frozen=True)
class Reference:
    """One entry point, found but not imported."""

    kind: str
    name: str
    target: str  # "module:attribute"
    distribution: str
    version: str

    @property
    def builtin(self) -> bool:
        return self.distribution == BUILTIN_DISTRIBUTION

    @property
    def label(self) -> str:
        """`arch 'tinynet' (bnsweep-example-plugin 0.1.0)`: how every message names it."""
        return f"{self.kind} {self.name!r} ({self.distribution} {self.version})"


@functools.cache
def _scan() -> dict[str, dict[str, tuple[Reference, ...]]]:
    """kind → name → every entry point declaring it (several only when names clash)."""
    found: dict[str, dict[str, tuple[Reference, ...]]] = {kind: {} for kind in GROUPS}
    everything = importlib.metadata.entry_points()
    for kind, group in GROUPS.items():
        for point in everything.select(group=group):
            dist = point.dist
            ref = Reference(
                kind,
                point.name,
                point.value,
                dist.metadata["Name"] if dist is not None else "?",
                dist.version if dist is not None else "?",
            )
            named = found[kind].setdefault(point.name, ())
            if all(r.distribution != ref.distribution for r in named):
                found[kind][point.name] = (*named, ref)
    return found


def refresh() -> None:
    """Forget what was listed and loaded: after installing or removing a plugin in-process."""
    _scan.cache_clear()
    _LOADED.clear()


def _natural(name: str) -> list[object]:
    # resnet8 before resnet18 before resnet101: numbers in names compare as numbers.
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def builtin_names(kind: str) -> tuple[str, ...]:
    """The names bnsweep itself declares for `kind` (pyproject.toml), in natural order."""
    builtin = (name for name, refs in _scan()[kind].items() if any(r.builtin for r in refs))
    return tuple(sorted(builtin, key=_natural))


def names(kind: str) -> tuple[str, ...]:
    """Every name a spec may give `kind`: the built-ins, then the installed plugins'."""
    listed = _scan()[kind]
    builtin = builtin_names(kind)
    return builtin + tuple(sorted((n for n in listed if n not in builtin), key=_natural))


def reference(kind: str, name: str) -> Reference:
    """The one entry point declaring `name`; a PluginError when none does or two clash."""
    refs = _scan()[kind].get(name, ())
    if not refs:
        raise choice_error(kind, name, names(kind))
    if len(refs) > 1:
        first, second = sorted(refs, key=lambda r: (not r.builtin, r.distribution))[:2]
        whose = "the built-in" if first.builtin else "the plugin"
        raise PluginError(
            f"{kind} {name!r}: declared by both {first.distribution} {first.version} and "
            f"{second.distribution} {second.version}; a plugin may not take {whose} name of "
            f"another distribution: rename it in {second.distribution}'s entry points "
            f"({GROUPS[kind]})"
        )
    return refs[0]


def is_builtin(kind: str, name: str) -> bool:
    """Whether `name` is one of bnsweep's own; nothing is imported."""
    refs = _scan()[kind].get(name, ())
    return any(r.builtin for r in refs)


def plugin_names(values: Mapping[str, object]) -> dict[str, str]:
    """{kind: name} of the spec fields in `values` that name a plugin, not a built-in."""
    return {
        kind: str(values[kind])
        for kind in GROUPS
        if kind in values and not is_builtin(kind, str(values[kind]))
    }


# -- loading: one import, checked -----------------------------------------------------------


@dataclass(frozen=True)
class Plugin:
    """An entry point's target, imported and checked against its kind's static contract."""

    ref: Reference
    target: Any
    recipe: int | None  # None for built-ins: bnsweep's RECIPE covers them
    options: Mapping[str, Any]

    def error(self, rule: str, fix: str) -> PluginError:
        return contract_error(self.ref, rule, fix)


def contract_error(ref: Reference, rule: str, fix: str) -> PluginError:
    return PluginError(f"plugin {ref.label}: {rule}; {fix}")


_LOADED: dict[tuple[str, str], Plugin] = {}


def load(kind: str, name: str) -> Plugin:
    """Import `name`'s target (once per process) and check its kind's static contract."""
    key = (kind, name)
    if key not in _LOADED:
        ref = reference(kind, name)
        _LOADED[key] = _checked(ref, _import(ref))
    return _LOADED[key]


def _import(ref: Reference) -> Any:
    module = ref.target.split(":")[0].strip()
    # The entry point's own load: `module:attr.attr`, the module imported by importlib.
    point = importlib.metadata.EntryPoint(ref.name, ref.target, GROUPS[ref.kind])
    try:
        return point.load()
    except (ModuleNotFoundError, AttributeError) as err:
        raise contract_error(
            ref,
            f"its entry point {ref.target!r} names nothing importable ({one_line(err)})",
            f"point the entry point in {ref.distribution}'s {GROUPS[ref.kind]} at an existing "
            "module:attribute and reinstall it",
        ) from None
    except Exception as err:  # the plugin's own code failed: say so, whatever it raised
        raise contract_error(
            ref,
            f"importing {module} raised {one_line(err)}",
            f"fix {ref.distribution} so that `import {module}` succeeds",
        ) from None


def _checked(ref: Reference, target: Any) -> Plugin:
    registration = _registration(target)
    if registration is not None and (
        registration.kind != ref.kind or registration.name != ref.name
    ):
        raise contract_error(
            ref,
            f"its target is registered as {registration.kind} {registration.name!r}",
            f"register it as {ref.kind} {ref.name!r} or point the entry point at the right object",
        )
    options = dict(registration.options) if registration is not None else {}
    plugin = Plugin(
        ref,
        target,
        None if ref.builtin else (registration.recipe if registration is not None else 1),
        options,
    )
    STATIC_CHECKS[ref.kind](plugin)
    return plugin


def _registration(target: Any) -> Registration | None:
    # From the object itself, not a base class: a subclass of a registered formulation is
    # another formulation and carries its own registration or none.
    own = vars(target) if isinstance(target, type) else getattr(target, "__dict__", {})
    found = own.get(REGISTRATION_ATTRIBUTE)
    return found if isinstance(found, Registration) else None


def _check_callable(plugin: Plugin) -> None:
    if not callable(plugin.target):
        raise plugin.error(
            f"its target is a {type(plugin.target).__name__}, not a callable builder",
            "point the entry point at the builder function or class",
        )


def _check_formulation(plugin: Plugin) -> None:
    from torch.nn.modules.batchnorm import _BatchNorm

    if not (isinstance(plugin.target, type) and issubclass(plugin.target, _BatchNorm)):
        raise plugin.error(
            f"{plugin.target!r} is not a subclass of torch.nn.BatchNorm2d",
            "subclass nn.BatchNorm2d so that running statistics, eval mode and `weight` (γ) "
            "behave as bnsweep expects",
        )


def _check_dataset(plugin: Plugin) -> None:
    from bnsweep.workers.device_loader import AUGMENTS

    _check_callable(plugin)
    if not plugin.options:
        raise plugin.error(
            "its loader is not decorated with bnsweep.register_dataset",
            "decorate it with @register_dataset(name, augment=...) so bnsweep knows how to "
            "augment it",
        )
    augment, crop = plugin.options["augment"], plugin.options["crop_size"]
    if augment not in AUGMENTS:
        raise plugin.error(
            f"augment {augment!r} is not one of {', '.join(AUGMENTS)}",
            "pass one of them to register_dataset",
        )
    if (augment == "crop_flip") != (crop is not None):
        raise plugin.error(
            f"crop_size {crop!r} with augment {augment!r}",
            "set crop_size (an integer) for augment 'crop_flip' and only for it",
        )
    if crop is not None and (isinstance(crop, bool) or not isinstance(crop, int) or crop < 1):
        raise plugin.error(f"crop_size {crop!r} is not an integer >= 1", "fix register_dataset")


#: kind → what `load` checks before the target is ever called.
STATIC_CHECKS: dict[str, Callable[[Plugin], None]] = {
    "arch": _check_callable,
    "dataset": _check_dataset,
    "formulation": _check_formulation,
    "input_norm": _check_callable,
}


# -- first use: what the target returns -------------------------------------------------------


def check_model(kind_name: str, model: object, norm_layer: type) -> None:
    """A model builder returns an `nn.Module` holding at least one `norm_layer`: the method
    sets and trains the γ of those modules, so a network without them has nothing to act on."""
    from torch import nn

    ref = reference("arch", kind_name)
    if not isinstance(model, nn.Module):
        raise contract_error(
            ref,
            f"its builder returned a {type(model).__name__}, not a torch.nn.Module",
            "return the network (an nn.Module)",
        )
    if not any(isinstance(m, norm_layer) for m in model.modules()):
        raise contract_error(
            ref,
            f"the network it built has no {norm_layer.__name__} module",
            "build every BN with the norm_layer argument, e.g. norm_layer(channels)",
        )


def check_input_norm(name: str, module: object) -> None:
    from torch import nn

    if not isinstance(module, nn.Module):
        raise contract_error(
            reference("input_norm", name),
            f"its builder returned a {type(module).__name__}, not a torch.nn.Module",
            "return a module (nn.Identity() for no normalisation)",
        )


def check_dataset(name: str, raw: object) -> None:
    """A loader returns a `RawDataset`: uint8 [N, C, H, W] images and int64 [N] labels in
    [0, num_classes), train and test of one image shape."""
    import torch

    from bnsweep.workers.loaders import RawDataset

    ref = reference("dataset", name)

    def fail(rule: str) -> PluginError:
        return contract_error(
            ref,
            rule,
            "return bnsweep.workers.loaders.RawDataset(train_x, train_y, test_x, test_y, "
            "num_classes) with uint8 [N, C, H, W] images and int64 [N] labels",
        )

    if not isinstance(raw, RawDataset):
        raise fail(f"its loader returned a {type(raw).__name__}, not a RawDataset")
    if isinstance(raw.num_classes, bool) or not isinstance(raw.num_classes, int):
        raise fail(f"num_classes is {raw.num_classes!r}, not an integer")
    if raw.num_classes < 2:
        raise fail(f"num_classes is {raw.num_classes}, fewer than 2")

    def described(t: object) -> str:
        return f"{t.dtype} {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__

    shape = None
    for split in ("train", "test"):
        x, y = getattr(raw, f"{split}_x"), getattr(raw, f"{split}_y")
        if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8 or x.ndim != 4:
            what = (
                f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
            )
            raise fail(f"{split}_x is {what}, not uint8 [N, C, H, W]")
        if shape is not None and x.shape[1:] != shape:
            raise fail(f"test images are {tuple(x.shape[1:])}, train images {tuple(shape)}")
        shape = x.shape[1:]
        if not isinstance(y, torch.Tensor) or y.dtype != torch.int64 or y.shape != (len(x),):
            what = (
                f"{y.dtype} {tuple(y.shape)}" if isinstance(y, torch.Tensor) else type(y).__name__
            )
            raise fail(f"{split}_y is {what}, not int64 [{len(x)}]")
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= raw.num_classes):
            raise fail(f"{split}_y has labels outside [0, {raw.num_classes})")


# -- registries: the built-ins and the plugins behind one mapping ----------------------------

V = TypeVar("V")


class Registry(Mapping[str, V], Generic[V]):
    """name → what the name stands for, for one kind: bnsweep's built-ins and every installed
    plugin. Listing imports nothing; looking a name up loads (imports) that one entry point."""

    def __init__(self, kind: str, convert: Callable[[Plugin], V] | None = None) -> None:
        self.kind = kind
        self._convert = convert

    def __getitem__(self, name: str) -> V:
        if not isinstance(name, str) or name not in _scan()[self.kind]:
            raise KeyError(name)
        plugin = load(self.kind, name)
        return self._convert(plugin) if self._convert is not None else plugin.target

    def __iter__(self) -> Iterator[str]:
        return iter(names(self.kind))

    def __len__(self) -> int:
        return len(names(self.kind))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in _scan()[self.kind]

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self)})"


# -- what is recorded with each trial -------------------------------------------------------


def recipe_of(kind: str, name: str) -> int | None:
    """A plugin's declared recipe (it is loaded for this), None for a built-in (no import)."""
    if is_builtin(kind, name):
        return None
    return load(kind, name).recipe


def provenance(values: Mapping[str, object]) -> str | None:
    """JSON of every plugin a spec's `values` name: {kind: {name, distribution, version,
    recipe}}, keys sorted; None when it names built-ins only. Stored with each trial
    (`trials.plugins`), so a read needs neither the plugin nor its import."""
    named = plugin_names(values)
    if not named:
        return None
    record = {}
    for kind, name in sorted(named.items()):
        plugin = load(kind, name)
        record[kind] = {
            "name": name,
            "distribution": plugin.ref.distribution,
            "version": plugin.ref.version,
            "recipe": plugin.recipe,
        }
    return json.dumps(record, sort_keys=True, separators=(",", ":"))


def distribution_versions(values: Mapping[str, object]) -> dict[str, str]:
    """{distribution: version} of the plugins `values` name, from metadata only (no import):
    what every node must have installed (`launch` compares each node's with the driver's)."""
    found: dict[str, str] = {}
    for kind, name in plugin_names(values).items():
        ref = reference(kind, name)
        found[ref.distribution] = ref.version
    return found


__all__ = [
    "BUILTIN_DISTRIBUTION",
    "GROUPS",
    "Plugin",
    "PluginError",
    "Reference",
    "Registration",
    "Registry",
    "builtin_names",
    "check_dataset",
    "check_input_norm",
    "check_model",
    "distribution_versions",
    "is_builtin",
    "load",
    "names",
    "plugin_names",
    "provenance",
    "recipe_of",
    "reference",
    "refresh",
    "register_dataset",
    "register_formulation",
    "register_input_norm",
    "register_model",
]
