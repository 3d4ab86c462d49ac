"""How experiment fields and formulations are shown in a table: headers, value names, order.

Kept free of pandas and scipy, like analysis/layout.py: only names and sort keys, and the names
of a table's columns and of its text marks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "FIELD_DISPLAY",
    "FORMULATION_NAMES",
    "FRAME_COLUMNS",
    "TEXT_MARKS",
    "FieldDisplay",
    "display",
    "formulation_name",
]


@dataclass(frozen=True)
class FieldDisplay:
    """Header and value names of one experiment field; `order` lists known values first."""

    header: str
    names: Mapping[Any, str] = field(default_factory=dict)
    descending: bool = False

    def label(self, value: Any) -> str:
        if value in self.names:
            return self.names[value]
        return f"{value:g}" if isinstance(value, float) else str(value)

    def sort_key(self, value: Any) -> tuple[int, Any]:
        names = list(self.names)
        if value in names:
            return (0, names.index(value))
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return (1, -value if self.descending else value)
        return (2, str(value))


FIELD_DISPLAY: dict[str, FieldDisplay] = {
    # Dataset and network names as the paper prints them (Tables 3, 4, 6), in its order.
    "dataset": FieldDisplay(
        "Dataset",
        {
            "cifar10": "CIFAR-10",
            "cifar100": "CIFAR-100",
            "cub200": "CUB-200",
            "stanford_cars": "ST-Cars",
            "digits": "Digits",
            "synthetic": "Synthetic",
        },
    ),
    "arch": FieldDisplay(
        "Network",
        {
            "resnet8": "ResNet-8",
            "resnet18": "ResNet-18",
            "resnet34": "ResNet-34",
            "resnet50": "ResNet-50",
            "resnet101": "ResNet-101",
            "resnet152": "ResNet-152",
            "repvgg_a0": "RepVGG-A0",
            "mobilenet_v2": "MobileNetV2",
            "resnext50_32x4d": "ResNeXt-50",
        },
    ),
    # Table 5 names the BN-based input normalisation "Proposed" (Sect. 3.4).
    "input_norm": FieldDisplay(
        "Norm", {"fixed": "Fixed", "offline": "Offline", "bn": "Proposed", "none": "None"}
    ),
    # The paper's columns run from the largest α down (Tables 1-6).
    "lr": FieldDisplay("Learning rate (α)", descending=True),
    "epochs": FieldDisplay("Epochs"),
    "batch_size": FieldDisplay("Batch size"),
    "momentum": FieldDisplay("Momentum"),
    "weight_decay": FieldDisplay("Weight decay"),
    "val_fraction": FieldDisplay("Validation fraction"),
    "precision": FieldDisplay("Precision"),
    "memory_format": FieldDisplay("Memory format"),
}

#: Row names of the formulations (Sect. 4.4-4.5), in the order `gamma` rows list them.
FORMULATION_NAMES: dict[str, str] = {
    "standard": "Standard",
    "a1": "A1",
    "a2": "A2",
    "rbn": "RBN",
    "rbn_minus": "RBN⁻",
    "iebn": "IEBN",
    "iebn_minus": "IEBN⁻",
}


def display(name: str) -> FieldDisplay:
    return FIELD_DISPLAY.get(name) or FieldDisplay(name)


def formulation_name(formulation: str) -> str:
    return FORMULATION_NAMES.get(formulation, formulation)


#: The columns of a table's lines: `Table.to_frame()` holds them and the CSV renderer writes
#: them, one line per filled cell, then one per ordered pair of each pairwise matrix (`table`
#: ends in "(pairwise)", `row` is the row arm with its n, mean and std, `versus` the column arm,
#: and the statistics are row against column). `column` is the column's value as the table
#: prints it, `column_value` the value itself (0.1 for α = 0.1); `t` holds W+ when `test` is
#: "wilcoxon"; `versus` is what the cell was tested against ("" for the reference itself);
#: `diverged` and `n_runs` count the cell's diverged and all its runs. Statistics of an
#: untested cell are NaN (empty in the CSV).
FRAME_COLUMNS = (
    "table",
    "block",
    "row",
    "column",
    "formulation",
    "gamma",
    "c",
    "n",
    "mean",
    "std",
    "t",
    "df",
    "p",
    "p_adjusted",
    "significant",
    "best",
    "effect",
    "ci_low",
    "ci_high",
    "mean_diff",
    "n_pairs",
    "test",
    "not_tested",
    "diverged",
    "dropped",
    "versus",
    "detail",
    "n_runs",
    "column_value",
)


#: Marks in text for what bold and underline say, where styles cannot be shown (the terminal
#: table written to a file or a pipe, or with `--color never`).
TEXT_MARKS = {"significant": "*", "best": "^"}
