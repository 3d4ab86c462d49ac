"""The columns of the store's DataFrames, the `where` filters on them, and arm labels.

The column dicts fix each frame's columns and pandas dtypes, stable even when a frame is empty;
`check_where` validates and coerces filters, `where_clauses` turns them into bound SQL.
"""

from __future__ import annotations

import json
import math
import re
import shlex
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import sqlalchemy as sa
import yaml

import bnsweep.workers.spec
from bnsweep.store.errors import StoreError
from bnsweep.store.events import DIAGNOSTIC_VALUES, check_cell
from bnsweep.store.models import SPEC_COLUMN_TYPES, STATUSES, Diagnostic, Epoch, Trial
from bnsweep.workers.spec import ARM_FIELDS, TrialSpec, is_base_arm

#: Rows per statement when a list of keys is sent as `IN (...)`; well below both backends' limits.
_CHUNK = 500

T = TypeVar("T")


SPEC_COLUMNS: tuple[str, ...] = tuple(SPEC_COLUMN_TYPES)

#: Columns of `Store.trials()`, in order, with their pandas dtypes (stable even when empty).
TRIAL_COLUMNS: dict[str, str] = {
    "trial_id": "int64",
    "spec_hash": "str",
    "seed": "int64",
    **{
        name: {str: "str", float: "float64", int: "int64"}[kind]
        for name, kind in SPEC_COLUMN_TYPES.items()
    },
    "status": "str",
    "attempts": "int64",
    "epochs_run": "Int64",
    "best_epoch": "Int64",
    "best_val_acc": "float64",
    "test_acc": "float64",
    "final_test_acc": "float64",
    "diverged_epoch": "Int64",
    "seconds": "float64",
    "images_per_sec": "float64",
    "started_at": "datetime64[us, UTC]",
    "finished_at": "datetime64[us, UTC]",
    "host": "str",
    "device": "str",
    "package_version": "str",
    "git_commit": "str",
    "recipe": "int64",
    "threads": "Int64",
    "runtime": "str",  # JSON text of the run's runtime options
    "plugins": "str",  # JSON text of the plugins the spec names, their versions and recipes
    "error": "str",
}

#: Columns of `Store.epochs()`. The epoch's own learning rate and wall time are `epoch_lr` and
#: `epoch_seconds`, because `lr` is the spec's α and `seconds` the trial's total.
EPOCH_COLUMNS: dict[str, str] = {
    "trial_id": "int64",
    "spec_hash": "str",
    "seed": "int64",
    **{name: TRIAL_COLUMNS[name] for name in SPEC_COLUMNS},
    "epoch": "int64",
    "train_loss": "float64",
    "val_loss": "float64",
    "val_acc": "float64",
    "test_acc": "float64",
    "epoch_lr": "float64",
    "epoch_seconds": "float64",
}


#: Columns of `Store.diagnostics()`: one row per (trial, epoch, BN layer); epoch 0 is the
#: network at initialisation. NaN (a BN the probe never reached) reads back as NaN.
DIAGNOSTIC_COLUMNS: dict[str, str] = {
    "trial_id": "int64",
    "spec_hash": "str",
    "seed": "int64",
    **{name: TRIAL_COLUMNS[name] for name in SPEC_COLUMNS},
    "epoch": "int64",
    "layer": "str",
    "depth": "int64",
    "module": "str",
    "channels": "int64",
    **dict.fromkeys(DIAGNOSTIC_VALUES, "float64"),
}


#: The columns `trials(columns=RESULT_COLUMNS)` reads: what the significance tables need. Leaving
#: out the provenance (timestamps, host, device, versions, errors) halves the read of a large
#: store: the timestamps are most of the per-value conversion work.
RESULT_COLUMNS: tuple[str, ...] = tuple(
    name
    for name in TRIAL_COLUMNS
    if name
    not in (
        "started_at",
        "finished_at",
        "host",
        "device",
        "package_version",
        "git_commit",
        "runtime",
        "plugins",
        "error",
    )
)


#: Fields `where` may filter on (equality, or membership for a list of values; `Compare` for
#: the numeric ones).
TRIAL_FILTER_FIELDS: tuple[str, ...] = (
    "spec_hash",
    "seed",
    *SPEC_COLUMNS,
    "status",
    "attempts",
    "epochs_run",
    "best_epoch",
    "diverged_epoch",
    "best_val_acc",
    "test_acc",
    "final_test_acc",
    "seconds",
    "images_per_sec",
    "host",
    "device",
    "package_version",
    "git_commit",
    "recipe",
    "threads",
)
#: The paper's symbols as names of the fields they stand for: γ, α and c.
WHERE_ALIASES: Mapping[str, str] = {"gamma": "bn_scale_init", "alpha": "lr", "c": "bn_lr_divisor"}
#: Comparisons `where` accepts besides equality; all but != on numeric fields only.
COMPARISONS: Mapping[str, Callable[[Any, Any], Any]] = {
    ">": lambda column, value: column > value,
    ">=": lambda column, value: column >= value,
    "<": lambda column, value: column < value,
    "<=": lambda column, value: column <= value,
    "!=": lambda column, value: column != value,
}


class _Current:
    """The `recipe` filter value meaning "the current recipe": bnsweep's own (`RECIPE`), and
    for a trial naming plugins, each plugin's newest recipe in the store (docs/extending.md).
    It is data only: no plugin is imported to know it."""

    def __repr__(self) -> str:
        return "CURRENT"


#: `where={"recipe": CURRENT}`: what the tables, `bnsweep.trials` and the dashboard read.
CURRENT = _Current()

#: What `host` says of a trial `bnsweep import` wrote (docs/import.md). bnsweep did not train
#: it, so no training recipe of bnsweep's applies to it: a newer `RECIPE` never hides it, and it
#: is never counted among the trials of an older recipe.
IMPORTED_HOST = "imported"


def imported_origins(spec_text: str) -> list[dict[str, str]] | None:
    """The files an imported sweep's spec text names; None for a sweep bnsweep launched."""
    try:
        data = yaml.safe_load(spec_text) if spec_text else None
    except yaml.YAMLError:
        return None
    found = data.get("imported") if isinstance(data, dict) else None
    return [dict(o) for o in found if isinstance(o, dict)] if isinstance(found, list) else None


def current_recipe_clause() -> sa.ColumnElement[bool]:
    """SQL for "of this bnsweep's training recipe, or imported": the rows `CURRENT` keeps
    (before the plugin-recipe rule)."""
    table = Trial.__table__
    return sa.or_(table.c.recipe == bnsweep.workers.spec.RECIPE, table.c.host == IMPORTED_HOST)


def stale_plugin_records(texts: Iterable[str | None]) -> frozenset[str]:
    """Of the stored `trials.plugins` values `texts`, those naming a plugin at a recipe older
    than the newest the same texts hold for it: their trials are of an older plugin recipe."""
    records: dict[str, dict[tuple[str, str], int]] = {}
    newest: dict[tuple[str, str], int] = {}
    for text in texts:
        if not text or text in records:
            continue
        try:
            entries = {(k, str(v["name"])): int(v["recipe"]) for k, v in json.loads(text).items()}
        except (ValueError, TypeError, KeyError, AttributeError):
            continue  # not written by bnsweep: never counted stale, never hidden
        records[text] = entries
        for key, recipe in entries.items():
            newest[key] = max(recipe, newest.get(key, recipe))
    return frozenset(
        text
        for text, entries in records.items()
        if any(recipe < newest[key] for key, recipe in entries.items())
    )


@dataclass(frozen=True)
class Compare:
    """A `where` value other than equality: `Compare(">", 0.9)` keeps rows above 0.9. Several
    comparisons of one field must all hold; its plain values are alternatives."""

    op: str
    value: object


EPOCH_FILTER_FIELDS: tuple[str, ...] = (*TRIAL_FILTER_FIELDS, "epoch")
_DIAGNOSTIC_OWN_FIELDS = ("epoch", "layer", "depth", "module")
DIAGNOSTIC_FILTER_FIELDS: tuple[str, ...] = (*TRIAL_FILTER_FIELDS, *_DIAGNOSTIC_OWN_FIELDS)


def _filter_column(name: str, diagnostics: bool = False) -> sa.ColumnElement[Any]:
    if diagnostics and name in _DIAGNOSTIC_OWN_FIELDS:
        return Diagnostic.__table__.c[name]
    return Epoch.__table__.c.epoch if name == "epoch" else Trial.__table__.c[name]


def _coerce(name: str, kind: type, value: object) -> object:
    """A filter value as the column's type, so `--where lr=0.1` compares a float with a float."""
    if value is None:
        return None
    if kind is str:
        text = str(value)
        if name == "status" and text not in STATUSES:
            raise StoreError(f"where status={text!r}: allowed: {', '.join(STATUSES)}")
        return text
    if isinstance(value, bool):
        raise StoreError(f"where {name}: expected a number, got {value!r}")
    if kind is int and isinstance(value, (str, int)):
        try:
            whole = int(value.strip()) if isinstance(value, str) else value
        except ValueError:
            pass  # "3.0" or "1e3": through float below
        else:
            return _int64(name, whole, value)
    try:
        number = float(value.strip()) if isinstance(value, str) else float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        expected = "an integer" if kind is int else "a number"
        raise StoreError(f"where {name}: expected {expected}, got {value!r}") from None
    if kind is int:
        if not number.is_integer():
            raise StoreError(f"where {name}: expected an integer, got {value!r}")
        return _int64(name, int(number), value)
    if not math.isfinite(number):
        raise StoreError(f"where {name}: expected a finite number, got {value!r}")
    return number


def _int64(name: str, number: int, shown: object) -> int:
    # Both backends store 64-bit integers; a larger one cannot be bound as a parameter.
    if not -(2**63) <= number < 2**63:
        raise StoreError(f"where {name}: {shown!r} is outside the 64-bit integer range")
    return number


def check_where(
    where: Mapping[str, object] | None, *, epochs: bool = False, diagnostics: bool = False
) -> dict[str, tuple[object, ...]]:
    """Validate and coerce filters: field → tuple of accepted values (a list means any of them).

    An unknown field raises StoreError listing the valid ones; a value that does not fit the
    column's type raises StoreError naming the field.
    """
    if diagnostics:
        allowed = DIAGNOSTIC_FILTER_FIELDS
    else:
        allowed = EPOCH_FILTER_FIELDS if epochs else TRIAL_FILTER_FIELDS
    checked: dict[str, tuple[object, ...]] = {}
    for given, value in (where or {}).items():
        name = WHERE_ALIASES.get(given, given)
        if name not in allowed:
            raise StoreError(
                f"unknown field {given!r} in where; valid fields: {', '.join(allowed)} "
                f"(and {', '.join(WHERE_ALIASES)} for {', '.join(WHERE_ALIASES.values())})"
            )
        kind = _filter_column(name, diagnostics).type.python_type
        values = value if isinstance(value, (list, tuple, set, frozenset)) else (value,)
        if not values:
            raise StoreError(f"where {name}: expected at least one value")
        coerced = checked.setdefault(name, ())
        checked[name] = coerced + tuple(_coerce_filter(name, kind, v) for v in values)
    return checked


def _coerce_filter(name: str, kind: type, value: object) -> object:
    if value is CURRENT and name == "recipe":
        return value
    if not isinstance(value, Compare):
        return _coerce(name, kind, value)
    if value.op not in COMPARISONS:
        raise StoreError(
            f"where {name}: unknown comparison {value.op!r}; allowed: =, " + ", ".join(COMPARISONS)
        )
    if value.op != "!=" and kind not in (int, float):
        raise StoreError(f"where {name}{value.op}: {name} is text; only = and != apply to it")
    return Compare(value.op, _coerce(name, kind, value.value))


def where_clauses(
    checked: Mapping[str, tuple[object, ...]],
    diagnostics: bool = False,
    stale: Iterable[str] = (),
) -> list[sa.ColumnElement[bool]]:
    """SQL for `checked`; `stale` is `stale_plugin_records` of the store, which `CURRENT`
    leaves out."""
    # Values travel as bound parameters; nothing from the user is pasted into SQL text.
    clauses: list[sa.ColumnElement[bool]] = []
    for name, given in checked.items():
        column = _filter_column(name, diagnostics)
        if any(v is CURRENT for v in given):
            clauses.append(current_recipe_clause())
            if stale:
                plugins = Trial.__table__.c.plugins
                clauses.append(sa.or_(plugins.is_(None), plugins.not_in(sorted(stale))))
            given = tuple(v for v in given if v is not CURRENT)
        compares = [v for v in given if isinstance(v, Compare)]
        values = [v for v in given if not isinstance(v, Compare)]
        present = [v for v in values if v is not None]
        parts: list[sa.ColumnElement[bool]] = []
        if present:
            parts.append(column.in_(present) if len(present) > 1 else column == present[0])
        if len(present) < len(values):
            parts.append(column.is_(None))
        if parts:
            clauses.append(sa.or_(*parts))
        clauses.extend(COMPARISONS[c.op](column, c.value) for c in compares)
    return clauses


def _format_number(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def arm_label(values: Mapping[str, object], fields: Sequence[str] = ()) -> str:
    """A readable name for an arm: γ, c and the formulation, then `fields` (those that vary).

    e.g. "γ=0.1 c=100 standard lr=0.1"; BASE (γ = 1, c = 1, standard) is prefixed "BASE".
    """
    parts = [
        f"γ={_format_number(values['bn_scale_init'])}",
        f"c={_format_number(values['bn_lr_divisor'])}",
        str(values["formulation"]),
    ]
    parts += [f"{name}={_format_number(values[name])}" for name in fields if name not in ARM_FIELDS]
    is_base = is_base_arm(values["formulation"], values["bn_scale_init"], values["bn_lr_divisor"])
    return ("BASE " if is_base else "") + " ".join(parts)


def cell_of(cell: TrialSpec | tuple[str, int]) -> tuple[str, int]:
    if isinstance(cell, TrialSpec):
        return cell.spec_hash, cell.seed
    spec_hash, seed = cell
    check_cell(spec_hash, seed)
    return spec_hash, seed


def chunks(items: Sequence[T], size: int = _CHUNK) -> Iterable[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


_WHERE = re.compile(r"^\s*(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*(?P<op>>=|<=|!=|=|>|<)(?P<value>.*)$")


def parse_where(items: Sequence[str]) -> dict[str, list[object]]:
    """`FIELD=VALUE` (or FIELD>VALUE, >=, <, <=, !=) strings → {field: [values]}: a repeated
    field with `=` means any of its values; comparisons must all hold."""
    where: dict[str, list[object]] = {}
    for item in items:
        match = _WHERE.match(item)
        if match is None:
            raise StoreError(
                f"--where {item!r}: expected FIELD=VALUE or FIELD>VALUE (>=, <, <=, !=), "
                "e.g. --where lr=0.1 --where test_acc>0.9"
            )
        name, op, value = match["name"], match["op"], match["value"].strip()
        where.setdefault(name, []).append(value if op == "=" else Compare(op, value))
    return where


def split_where(text: str) -> list[str]:
    """One line of filters (the dashboard's `where`) → the items `parse_where` takes: words
    split as a POSIX shell splits `--where` arguments, so `host="node 1" test_acc>0.9` means
    what `--where 'host=node 1' --where 'test_acc>0.9'` means on the command line."""
    try:
        return shlex.split(text)
    except ValueError as err:  # "No closing quotation" or "No escaped character"
        raise StoreError(
            f"where {text!r}: {str(err).lower()}; quote a value with spaces as "
            'FIELD="VALUE", e.g. host="node 1"'
        ) from None
