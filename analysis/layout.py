"""The layout of a significance table, as a sweep spec's `report:` section names it.

Kept apart from the table builders (analysis/tables.py) and free of pandas and scipy, so that a
sweep spec's `report:` is checked when the spec is read (`launch --dry-run` included) without
importing the analysis stack.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from bnsweep.workers.errors import SpecError, choice_error
from bnsweep.workers.spec import EXPERIMENT_FIELDS

#: The layouts `bnsweep.analysis.planning.LAYOUTS` draws (tests/analysis/test_tables.py keeps them
#: equal).
LAYOUT_NAMES = ("gamma", "formulation", "methods")


# -- the layout, as a sweep spec's `report:` section carries it ------------------------------
@dataclass(frozen=True)
class TableLayout:
    """Which table to draw. `kind=None` infers it from the arms present (see `infer_kind`).

    `columns` is the experiment field across the columns (α in the paper); `blocks` the fields
    that split blocks (default: every other field that varies); `gammas` restricts the γ
    values shown or chosen from (Table 6 picks the best of {0.5, 0.1, 0.05}). `versus` names
    the arm every other cell is tested against (`find_arm` syntax: `BASE`, `rbn γ=1 c=1`;
    default BASE); `pairwise` adds the matrix of each row against each other row.
    """

    kind: str | None = None
    title: str | None = None
    columns: str = "lr"
    blocks: tuple[str, ...] | None = None
    gammas: tuple[float, ...] | None = None
    versus: str | None = None
    pairwise: bool = False

    def __post_init__(self) -> None:
        if self.kind is not None and self.kind not in LAYOUT_NAMES:
            raise choice_error("report.layout", self.kind, LAYOUT_NAMES)
        if self.columns not in EXPERIMENT_FIELDS:
            raise choice_error("report.columns", self.columns, EXPERIMENT_FIELDS)
        if self.title is not None and not isinstance(self.title, str):
            raise SpecError(f"report.title: expected text, got {self.title!r}")
        if self.blocks is not None:
            object.__setattr__(self, "blocks", tuple(self.blocks))
            for name in self.blocks:
                if name not in EXPERIMENT_FIELDS or name == self.columns:
                    allowed = [f for f in EXPERIMENT_FIELDS if f != self.columns]
                    raise choice_error("report.blocks", name, allowed)
        if self.gammas is not None:
            values = []
            for g in self.gammas:
                # γ > 1 is a valid arm (the paper tried it, Sect. 4.4); γ ≤ 0 is not.
                if isinstance(g, bool) or not isinstance(g, (int, float)) or not g > 0.0:
                    raise SpecError(f"report.gammas: each γ must be a number > 0, got {g!r}")
                values.append(float(g))
            object.__setattr__(self, "gammas", tuple(values))
        if self.versus is not None and (not isinstance(self.versus, str) or not self.versus):
            raise SpecError(
                f"report.versus: expected an arm name such as 'BASE' or 'rbn γ=1 c=1', "
                f"got {self.versus!r}"
            )
        if not isinstance(self.pairwise, bool):
            raise SpecError(f"report.pairwise: expected true or false, got {self.pairwise!r}")

    #: Keys of a sweep spec's `report:` mapping → fields (`layout: methods` sets `kind`).
    KEYS: ClassVar[dict[str, str]] = {
        "layout": "kind",
        "title": "title",
        "columns": "columns",
        "blocks": "blocks",
        "gammas": "gammas",
        "versus": "versus",
        "pairwise": "pairwise",
    }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> TableLayout:
        """From a sweep spec's `report:` mapping, e.g. `{layout: gamma, blocks: [dataset]}`;
        unknown keys or values raise `SpecError` naming the key and what is allowed."""
        if values is None:
            return cls()
        if not isinstance(values, Mapping):
            raise SpecError(f"report: expected a mapping of layout keys, got {values!r}")
        unknown = sorted(str(k) for k in set(values) - set(cls.KEYS))
        if unknown:
            raise SpecError(
                f"report: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(cls.KEYS)}"
            )
        kwargs = {cls.KEYS[k]: v for k, v in values.items()}
        for name in ("blocks", "gammas"):
            value = kwargs.get(name)
            if isinstance(value, (str, int, float)):
                kwargs[name] = (value,)
            elif value is not None and not isinstance(value, (list, tuple)):
                raise SpecError(f"report.{name}: expected a list, got {value!r}")
        return cls(**kwargs)
