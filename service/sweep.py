"""Sweep specs: a YAML file validated into a typed `SweepSpec`, expanded into trial cells.

A *cell* is one `TrialSpec` with one seed; the results store keys it by (spec_hash, seed).
`expand()` lists every cell a sweep asks for, the BASE arm included (γ = 1, c = 1, standard
BN, otherwise equal to the cell it is compared with; Sect. 4.2), in a stable order.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from workers.errors import SpecError
from workers.spec import FIELD_NAMES, TrialSpec

#: The BASE arm of the paper: default γ, no learning-rate reduction, standard formulation.
BASE_ARM: Mapping[str, Any] = {
    "formulation": "standard",
    "bn_scale_init": 1.0,
    "bn_lr_divisor": 1.0,
}

#: Trial fields a sweep may not set per cell: the seed comes from `seeds`.
_NOT_IN_GRID = frozenset({"seed"})

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


class Resources(BaseModel):
    """What one trial asks Ray for. A GPU fraction below 1 packs several trials on one GPU."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cpus: float = Field(1.0, gt=0)
    gpus: float = Field(0.0, ge=0)

    @field_validator("gpus")
    @classmethod
    def _whole_or_fraction(cls, value: float) -> float:
        if value > 1 and not float(value).is_integer():
            raise ValueError("must be a fraction in (0, 1] or a whole number of GPUs")
        return value


class Diagnostics(BaseModel):
    """BN diagnostics of every trial (docs/diagnostics.md): at initialisation, every `every`
    epochs and at the last epoch; `every: 0` turns them off. They never change a result."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    every: int = Field(1, ge=0)
    #: Validation images in the probe batch; default: 64, or the batch size when smaller.
    probe_size: int | None = Field(None, ge=2)


class SweepSpec(BaseModel):
    """One sweep: trial defaults, grids of axes, the BASE arm, seeds, resources and storage."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str = ""
    defaults: dict[str, Any] = Field(default_factory=dict)
    grids: list[dict[str, list[Any]]] = Field(min_length=1)
    base: bool = True
    seeds: int | list[int] = 15
    resources: Resources = Field(default_factory=Resources)
    max_concurrent: int | None = Field(None, ge=1)
    retries: int = Field(2, ge=0)
    #: A checkpoint every this many epochs, and after the last: a failure loses at most this
    #: many epochs. 10 writes a tenth of the per-epoch traffic (a ResNet-18 checkpoint is about
    #: 90 MB: 64 TB for the six paper tables at every epoch) for at most 10 of 180 epochs lost per
    #: failure; docs/benchmarks.md has the measurement.
    checkpoint_every: int = Field(10, ge=1)
    storage: str = "runs"
    shared_storage: bool | None = None
    database: str | None = None
    report: dict[str, Any] | None = None
    diagnostics: Diagnostics = Field(default_factory=Diagnostics)

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
        return value

    @field_validator("report")
    @classmethod
    def _report(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        # The table layout is analysis's to define; checking it here fails a bad spec at launch,
        # not after hours of training when the tables are rendered.
        from analysis.tables import TableLayout

        TableLayout.from_dict(value)
        return value

    @model_validator(mode="after")
    def _cells_are_valid(self) -> SweepSpec:
        # Build every distinct trial once so a bad value fails at load time, naming the field.
        for values in _grid_points(self):
            TrialSpec(**values)
        return self

    @property
    def seed_list(self) -> list[int]:
        return list(range(1, self.seeds + 1)) if isinstance(self.seeds, int) else list(self.seeds)


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
        key = TrialSpec(**values).spec_hash
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


def parse_sweep_spec(text: str, source: str = "<spec>") -> SweepSpec:
    """Validate YAML text; any problem becomes one SpecError line naming the field."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise SpecError(
            f"{source}:{where} is not valid YAML ({getattr(err, 'problem', err)})"
        ) from None
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a sweep spec is a mapping with at least 'name' and 'grids'")
    try:
        return SweepSpec.model_validate(data)
    except ValidationError as err:
        raise SpecError(f"{source}: {_first_error(err)}") from None
    except SpecError as err:
        raise SpecError(f"{source}: {err}") from None


def load_sweep_spec(path: str | Path) -> SweepSpec:
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"sweep spec not found: {path}")
    return parse_sweep_spec(path.read_text(encoding="utf-8"), source=str(path))


def _first_error(err: ValidationError) -> str:
    """One line for the first problem: the field path, what is wrong, and what is allowed."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"] if p not in ("function-after",))
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        nested = {"resources": Resources, "diagnostics": Diagnostics}
        model = nested.get(str(first["loc"][0]), SweepSpec) if len(first["loc"]) > 1 else SweepSpec
        allowed = ", ".join(model.model_fields)
        message = f"unknown key; allowed: {allowed}"
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{loc}: {message}{more}" if loc else f"{message}{more}"
