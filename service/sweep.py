"""Sweep specs: a YAML file validated into a typed `SweepSpec`, expanded into trial cells.

A *cell* is one `TrialSpec` with one seed; the results store keys it by (spec_hash, seed).
`expand()` lists every cell a sweep asks for, the BASE arm included (γ = 1, c = 1, standard
BN, otherwise equal to the cell it is compared with; Sect. 4.2), in a stable order.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bnsweep.workers import plugins
from bnsweep.workers.errors import BnsweepError, SpecError, one_line
from bnsweep.workers.spec import FIELD_NAMES, INT_LIMITS, TrialSpec

#: The BASE arm of the paper: default γ, no learning-rate reduction, standard formulation.
BASE_ARM: Mapping[str, Any] = {
    "formulation": "standard",
    "bn_scale_init": 1.0,
    "bn_lr_divisor": 1.0,
}

#: Trial fields a sweep may not set per cell: the seed comes from `seeds`.
_NOT_IN_GRID = frozenset({"seed"})

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")

#: The most cells a sweep may have unless its `max_cells` says otherwise (docs/sweeps.md):
#: a typo such as `seeds: 10000000` is refused at once instead of filling memory.
DEFAULT_MAX_CELLS = 100_000
MAX_CELLS_ENV = "BNSWEEP_MAX_CELLS"

#: What a union-typed field accepts, in words: pydantic would name each member type instead
#: ("seeds.int: ...", "seeds.list[int]: ...").
_UNION_HELP = {"seeds": "a count (>= 1), or a list of distinct integers >= 0"}


#: Upper bounds of the spec's counts (docs/sweeps.md, "Limits"): far above any real sweep, so a
#: typo is refused at once instead of being scheduled. The trial fields' own bounds are
#: bnsweep.workers.spec.INT_LIMITS.
MAX_RESOURCE = 1024  # CPUs or GPUs of one trial
MAX_COUNT = 100_000  # retries, checkpoint_every, max_concurrent, diagnostics.every
MAX_CELLS_LIMIT = 10_000_000  # what max_cells may raise the cell limit to


def default_max_cells() -> int:
    """BNSWEEP_MAX_CELLS if set, else DEFAULT_MAX_CELLS."""
    text = os.environ.get(MAX_CELLS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_CELLS
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_CELLS_LIMIT:
        raise SpecError(
            f"{MAX_CELLS_ENV}: expected an integer from 1 to {MAX_CELLS_LIMIT:,}, got {text!r}"
        )
    return value


class Resources(BaseModel):
    """What one trial asks Ray for. A GPU fraction below 1 packs several trials on one GPU."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    # allow_inf_nan: `cpus: .inf` or `.nan` would pass gt/ge and reach Ray's scheduler.
    cpus: float = Field(1.0, gt=0, le=MAX_RESOURCE, allow_inf_nan=False)
    gpus: float = Field(0.0, ge=0, le=MAX_RESOURCE, allow_inf_nan=False)

    @field_validator("gpus")
    @classmethod
    def _whole_or_fraction(cls, value: float) -> float:
        if value > 1 and not float(value).is_integer():
            raise ValueError("must be a fraction in (0, 1] or a whole number of GPUs")
        return value


class Diagnostics(BaseModel):
    """BN diagnostics of every trial (docs/diagnostics.md): at initialisation, every `every`
    epochs and at the last epoch; `every: 0` turns them off. They never change a result."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    every: int = Field(1, ge=0, le=MAX_COUNT)
    #: Validation images in the probe batch; default: 64, or the batch size when smaller.
    probe_size: int | None = Field(None, ge=2, le=INT_LIMITS["batch_size"])


class SweepSpec(BaseModel):
    """One sweep: trial defaults, grids of axes, the BASE arm, seeds, resources and storage."""

    # strict: YAML already gives numbers and booleans their types, so `seeds: true` or
    # `cpus: "2"` is a mistake to name, not a value to convert.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    name: str
    description: str = ""
    defaults: dict[str, Any] = Field(default_factory=dict)
    grids: list[dict[str, list[Any]]] = Field(min_length=1)
    base: bool = True
    seeds: int | list[int] = 15
    resources: Resources = Field(default_factory=Resources)
    max_concurrent: int | None = Field(None, ge=1, le=MAX_COUNT)
    retries: int = Field(2, ge=0, le=MAX_COUNT)
    #: A checkpoint every this many epochs, and after the last: a failure loses at most this
    #: many epochs. 10 writes a tenth of the per-epoch traffic (a ResNet-18 checkpoint is about
    #: 90 MB: 64 TB for the six paper tables at every epoch) for at most 10 of 180 epochs lost per
    #: failure; docs/benchmarks.md has the measurement.
    checkpoint_every: int = Field(10, ge=1, le=MAX_COUNT)
    storage: str = "runs"
    shared_storage: bool | None = None
    database: str | None = None
    report: dict[str, Any] | None = None
    diagnostics: Diagnostics = Field(default_factory=Diagnostics)
    #: Refuse the sweep when it has more cells than this (default: BNSWEEP_MAX_CELLS, else
    #: DEFAULT_MAX_CELLS).
    max_cells: int | None = Field(None, ge=1, le=MAX_CELLS_LIMIT)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("use letters, digits, '.', '_' or '-' (at most 100 characters)")
        return value

    @field_validator("defaults")
    @classmethod
    def _defaults(cls, value: dict[str, Any]) -> dict[str, Any]:
        _check_fields(value.keys(), "defaults")
        return value

    @field_validator("grids")
    @classmethod
    def _grids(cls, value: list[dict[str, list[Any]]]) -> list[dict[str, list[Any]]]:
        for i, grid in enumerate(value):
            if not grid:
                raise ValueError(f"grid {i} has no axes")
            _check_fields(grid.keys(), f"grids[{i}]")
            for axis, values in grid.items():
                if not values:
                    raise ValueError(f"grids[{i}].{axis} is an empty list")
        return value

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, value: int | list[int]) -> int | list[int]:
        if isinstance(value, int):
            if value < 1:
                raise ValueError("a count must be >= 1 (15 means seeds 1..15)")
        elif not value or len(set(value)) != len(value) or min(value) < 0:
            raise ValueError("an explicit list must be non-empty, without repeats, and >= 0")
        elif max(value) > INT_LIMITS["seed"]:
            raise ValueError(f"a seed must be <= {INT_LIMITS['seed']:,}, got {max(value)}")
        return value

    @field_validator("report")
    @classmethod
    def _report(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        # The table layout is analysis's to define; checking it here fails a bad spec at launch,
        # not after hours of training when the tables are rendered.
        from bnsweep.analysis.layout import TableLayout

        TableLayout.from_dict(value)
        return value

    @model_validator(mode="after")
    def _cells_are_valid(self) -> SweepSpec:
        limit = self.max_cells or default_max_cells()
        seeds = self.seeds if isinstance(self.seeds, int) else len(self.seeds)
        # From the grid sizes alone first: a huge grid is refused before any cell exists.
        listed = sum(math.prod(len(values) for values in grid.values()) for grid in self.grids)
        if listed * seeds > limit:
            raise ValueError(_too_many(listed * seeds, limit, "at least "))
        # Build every distinct trial once so a bad value fails at load time, naming the field.
        points = _grid_points(self)
        for values in points:
            TrialSpec(**values)
        if len(points) * seeds > limit:
            raise ValueError(_too_many(len(points) * seeds, limit, ""))
        return self

    @property
    def seed_list(self) -> list[int]:
        return list(range(1, self.seeds + 1)) if isinstance(self.seeds, int) else list(self.seeds)


def _too_many(cells: int, limit: int, bound: str) -> str:
    return (
        f"the sweep has {bound}{cells:,} cells (grid points x seeds), more than "
        f"the limit of {limit:,}; set max_cells (or {MAX_CELLS_ENV}) to allow more"
    )


def _check_fields(names: Any, where: str) -> None:
    allowed = [n for n in FIELD_NAMES if n not in _NOT_IN_GRID]
    unknown = sorted(set(names) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown trial field(s) {', '.join(unknown)} in {where}; allowed: {', '.join(allowed)}"
        )


def _grid_points(spec: SweepSpec) -> list[dict[str, Any]]:
    """Every distinct (defaults + grid point) combination, BASE arms added, in a stable order."""
    points: list[dict[str, Any]] = []
    seen: set[str] = set()

    def add(values: dict[str, Any]) -> None:
        # The result fields, not `spec_hash`: equal fields mean an equal hash, and computing
        # the hash of a spec naming a plugin would import the plugin to read its recipe.
        key = json.dumps(TrialSpec(**values).result_fields(), sort_keys=True, default=repr)
        if key not in seen:
            seen.add(key)
            points.append(values)

    for grid in spec.grids:
        axes = list(grid)
        for combo in itertools.product(*(grid[a] for a in axes)):
            add({**spec.defaults, **dict(zip(axes, combo, strict=True))})
    if spec.base:
        for values in list(points):
            add({**values, **BASE_ARM})
    return points


def expand(spec: SweepSpec) -> list[TrialSpec]:
    """All cells of the sweep: each distinct trial spec × each seed, BASE included."""
    return [
        TrialSpec(**values, seed=seed) for values in _grid_points(spec) for seed in spec.seed_list
    ]


# -- plugins: every one the cells name, loaded and used once before a launch or a run --------


def named_plugins(cells: Sequence[TrialSpec]) -> list[tuple[str, str]]:
    """Every (kind, name) of a plugin the cells name, each once, in a stable order."""
    named = {item for c in cells for item in plugins.plugin_names(c.result_fields()).items()}
    return sorted(named)


def check_plugins(cells: Sequence[TrialSpec]) -> None:
    """On the driver, before anything is written: every plugin the cells name loads and keeps
    its contract when used (docs/extending.md). A network is built once per (arch,
    formulation, input norm) naming a plugin; a plugin dataset is loaded once, so the driver
    must be able to read it. A violation is one PluginError line (exit 2)."""
    named = named_plugins(cells)
    if not named:
        return  # built-ins only: nothing imported, so `launch --dry-run` stays torch-free
    from bnsweep.workers.data import load_dataset
    from bnsweep.workers.trial import SMALL_INPUT_MAX

    for kind, name in named:
        plugins.load(kind, name)
    # dataset -> (num_classes, in_channels, small_input) as a trial builds its network
    shapes: dict[str, tuple[int, int, bool]] = {}
    for cell in _distinct(cells, ("dataset", "data_root", "val_fraction")):
        if not plugins.is_builtin("dataset", cell.dataset):
            with _plugin_call("dataset", cell.dataset, "loading it"):
                splits = load_dataset(cell.dataset, cell.data_root, cell.val_fraction)
            small = splits.image_size <= SMALL_INPUT_MAX
            shapes[cell.dataset] = (splits.num_classes, splits.in_channels, small)
    for cell in _distinct(cells, ("dataset", "arch", "formulation", "input_norm")):
        fields = {k: getattr(cell, k) for k in ("arch", "formulation", "input_norm")}
        if all(plugins.is_builtin(k, v) for k, v in fields.items()):
            continue
        # A built-in dataset is not loaded here (its files may be on the workers only): a
        # CIFAR-sized RGB input stands in for it.
        num_classes, in_channels, small = shapes.get(cell.dataset, (10, 3, True))
        kind, name = next((k, v) for k, v in fields.items() if not plugins.is_builtin(k, v))
        _check_build(cell, num_classes, in_channels, small, kind, name)


def _distinct(cells: Sequence[TrialSpec], keys: Sequence[str]) -> list[TrialSpec]:
    seen: dict[tuple[object, ...], TrialSpec] = {}
    for cell in cells:
        seen.setdefault(tuple(getattr(cell, k) for k in keys), cell)
    return list(seen.values())


def _check_build(
    cell: TrialSpec, num_classes: int, in_channels: int, small: bool, kind: str, name: str
) -> None:
    import torch

    from bnsweep.workers.models import build_model

    stats = (torch.zeros(in_channels), torch.ones(in_channels))  # what `offline` needs
    with _plugin_call(kind, name, "building the network"):
        build_model(
            cell.arch,
            num_classes,
            in_channels,
            small,
            cell.formulation,
            cell.bn_scale_init,
            cell.input_norm,
            stats,
        )


@contextlib.contextmanager
def _plugin_call(kind: str, name: str, doing: str) -> Iterator[None]:
    """A plugin's own code failing while bnsweep calls it is one line naming the plugin."""
    try:
        yield
    except BnsweepError:
        raise
    except Exception as err:  # the plugin's code: whatever it raised, one line naming it
        raise plugins.contract_error(
            plugins.reference(kind, name),
            f"{doing} raised {one_line(err)}",
            "fix the plugin so that it follows its contract (docs/extending.md)",
        ) from None


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error (PyYAML
    would keep the last value without a word)."""


def _mapping_without_duplicates(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # `<<: *defaults` overrides by design
        key = loader.construct_object(key_node, deep=True)
        try:
            first = seen.get(key)
        except TypeError:
            continue  # an unhashable key: construct_mapping names it
        if first is not None:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} given twice (first on line {first})", key_node.start_mark
            )
        seen[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates
)


def load_yaml(text: str, source: str) -> Any:
    """YAML text as data, refusing duplicate keys; a problem is one SpecError line."""
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.reader.ReaderError as err:
        # Its text spans two lines and names an internal "<unicode string>"; say what and where.
        raise SpecError(
            f"{source}: is not valid YAML (character {chr(err.character)!r} at position "
            f"{err.position} is not allowed)"
        ) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = " ".join(str(getattr(err, "problem", None) or err).split())
        raise SpecError(f"{source}:{where} is not valid YAML ({problem})") from None


def parse_sweep_spec(text: str, source: str = "<spec>") -> SweepSpec:
    """Validate YAML text; any problem becomes one SpecError line naming the field."""
    data = load_yaml(text, source)
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a sweep spec is a mapping with at least 'name' and 'grids'")
    try:
        return SweepSpec.model_validate(data)
    except ValidationError as err:
        raise SpecError(f"{source}: {_first_error(err)}") from None
    except SpecError as err:
        raise SpecError(f"{source}: {err}") from None


def read_spec_text(path: str | Path) -> str:
    """The text of a spec file; a missing, unreadable or binary file is one SpecError line."""
    path = Path(path)
    if path.is_dir():
        raise SpecError(f"sweep spec {path}: is a folder, expected a YAML file")
    if not path.exists():
        raise SpecError(f"sweep spec not found: {path}")
    try:
        data = path.read_bytes()
    except PermissionError:
        raise SpecError(f"sweep spec {path}: permission denied") from None
    except OSError as err:
        raise SpecError(f"sweep spec {path}: unreadable ({err.strerror or err})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise SpecError(
            f"sweep spec {path}: not a text file (byte {err.start} is not UTF-8); "
            "a spec is YAML text"
        ) from None
    if "\x00" in text:
        raise SpecError(f"sweep spec {path}: not a text file (it holds NUL bytes)")
    return text


def load_sweep_spec(path: str | Path) -> SweepSpec:
    return parse_sweep_spec(read_spec_text(path), source=str(path))


def redacted_spec_text(text: str, source: str = "<spec>") -> str:
    """The spec as the store keeps it (and the dashboard and reports show it): every URL
    password in it becomes ***, wherever the YAML put it.

    Secrets are found in the parsed document, not in the lines, so a merge key, an anchor and
    its aliases, a flow mapping, a quoted, escaped or multi-line scalar all count; a password in
    a comment counts too. Without any, the text is kept byte for byte. With some, the scalars
    that hold them are rewritten in place (anchors kept), so comments and layout survive; that
    text is kept only if it parses to the redacted document. Otherwise the redacted document is
    stored re-dumped, under a comment saying so: never the secret, never a different spec.
    """
    from bnsweep.store.errors import redact_text

    data = load_yaml(text, source)
    clean = _redacted(data, redact_text)
    if _same(clean, data) and redact_text(text) == text:
        return text
    rewritten = redact_text(_rewrite_scalars(text, redact_text))
    try:
        if _same(load_yaml(rewritten, source), clean):
            return rewritten
    except SpecError:
        pass  # the in-place rewrite broke the YAML: fall back to the parsed document
    return _REDUMP_NOTE + yaml.safe_dump(clean, sort_keys=False, allow_unicode=True)


_REDUMP_NOTE = (
    "# The spec as bnsweep parsed it, its passwords replaced by ***; the file's comments,\n"
    "# anchors and merge keys are not kept.\n"
)


def _redacted(value: Any, redact: Any) -> Any:
    """`value` with `redact` applied to every string in it, mapping keys included."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {_redacted(k, redact): _redacted(v, redact) for k, v in value.items()}
    if isinstance(value, list):
        return [_redacted(v, redact) for v in value]
    return value


def _same(a: Any, b: Any) -> bool:
    # repr, not ==: a NaN in the document equals itself only this way; order counts too.
    return repr(a) == repr(b)


def _rewrite_scalars(text: str, redact: Any) -> str:
    """`text` with each scalar whose value `redact` changes replaced by the redacted value as a
    JSON string (a valid YAML double-quoted scalar), its anchor kept."""
    spans = []
    for event in yaml.parse(text, Loader=_StrictLoader):
        if not isinstance(event, yaml.ScalarEvent) or redact(event.value) == event.value:
            continue
        if event.start_mark is None or event.end_mark is None:
            continue  # the parser always sets them; the caller's check re-dumps otherwise
        start, end = event.start_mark.index, event.end_mark.index
        span = text[start:end]
        anchor = f"&{event.anchor} " if event.anchor else ""
        quoted = json.dumps(redact(event.value), ensure_ascii=False)
        spans.append((start, end, anchor + quoted + span[len(span.rstrip()) :]))
    for start, end, replacement in sorted(spans, reverse=True):
        text = text[:start] + replacement + text[end:]
    return text


def _first_error(err: ValidationError) -> str:
    """One line for the first problem: the field path, what is wrong, and what is allowed."""
    first = err.errors()[0]
    field = str(first["loc"][0]) if first["loc"] else ""
    if field in _UNION_HELP and len(first["loc"]) > 1:
        # One message for the field, not one per member of its union.
        return f"{field}: {_UNION_HELP[field]}; got {first['input']!r}"
    loc = ".".join(str(p) for p in first["loc"] if p not in ("function-after",))
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        nested: dict[str, type[BaseModel]] = {"resources": Resources, "diagnostics": Diagnostics}
        model = nested.get(str(first["loc"][0]), SweepSpec) if len(first["loc"]) > 1 else SweepSpec
        allowed = ", ".join(model.model_fields)
        message = f"unknown key; allowed: {allowed}"
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{loc}: {message}{more}" if loc else f"{message}{more}"
