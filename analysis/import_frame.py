"""Runs made elsewhere as a trials frame: the one normaliser behind `bnsweep import FILE` and
`bnsweep.tables(frame, mapping=...)`.

A frame from another tool (a CSV of one's own training loop, MLflow's `search_runs()`, a W&B
export) becomes a frame with the results store's trial columns (docs/import.md): each store field
is read from a column of the same name (or the paper's symbol: `gamma`, `c`, `alpha`), from the
column that `mapping` names, or fixed for every row; a field found nowhere takes the `TrialSpec`
default, which the summary shows. Names (dataset, network, formulation) are data here and are not
checked against bnsweep's registries; numbers are checked with `TrialSpec`'s own rules.

What a paired test needs is refused in one line naming the row (as a spreadsheet numbers it: the
header is row 1) and the column: a seed twice in one arm, an arm whose seeds differ from BASE's
(Sect. 4.3 pairs run k of an arm with run k of BASE), a value that is not a number, an accuracy
whose scale cannot be told.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bnsweep.workers.errors import SpecError
from bnsweep.workers.spec import (
    ARM_FIELDS,
    EXPERIMENT_FIELDS,
    RESULT_FIELD_NAMES,
    TrialSpec,
    arm_name,
    is_base_arm,
)


class RunsError(SpecError):
    """Runs from elsewhere that cannot become a trials frame: one line, row and column named."""


#: The first spreadsheet row of data: row 1 is the header.
FIRST_ROW = 2

#: Accuracy fields: stored as fractions in [0, 1], read as fractions or percentages.
ACCURACY_FIELDS = ("test_acc", "best_val_acc", "final_test_acc")
#: Fields a frame must provide (a column, `mapping` or a fixed value): the arm's γ and c, the
#: seed the pairing matches on, and the score. The formulation defaults to `standard`.
REQUIRED_FIELDS = ("bn_scale_init", "bn_lr_divisor", "seed", "test_acc")
#: Result fields that are text: names are data here, never checked against a registry.
_TEXT_FIELDS = tuple(
    name for name in RESULT_FIELD_NAMES if isinstance(getattr(TrialSpec(), name), str)
)
_INT_FIELDS = (
    "seed",
    "best_epoch",
    *(n for n in RESULT_FIELD_NAMES if n in ("epochs", "batch_size")),
)
#: Every field a frame may give, in the order of the normalised frame.
FIELDS: tuple[str, ...] = (*RESULT_FIELD_NAMES, "seed", *ACCURACY_FIELDS, "best_epoch")
#: The paper's symbols for γ, c and α, accepted as column names (as `--where` accepts them).
ALIASES: Mapping[str, tuple[str, ...]] = {
    "bn_scale_init": ("gamma", "γ"),
    "bn_lr_divisor": ("c",),
    "lr": ("alpha", "α"),
}
#: The store's text columns are 64 characters wide (bnsweep.store.models).
MAX_NAME = 64
SCALES = ("auto", "fraction", "percent")


@dataclass(frozen=True)
class Convention:
    """How a tool names its columns and marks a finished run."""

    name: str
    #: Tried after the bare name: `--map bn_scale_init=gamma` finds `params.gamma` in MLflow.
    prefixes: tuple[str, ...]
    state_column: str | None = None
    finished: str | None = None  # compared case-insensitively
    run_column: str | None = None  # names a run in the import's provenance
    detect: Callable[[Sequence[str]], bool] = field(default=lambda columns: False, compare=False)


def _mlflow(columns: Sequence[str]) -> bool:
    return "run_id" in columns and any(c.startswith(("params.", "metrics.")) for c in columns)


def _wandb(columns: Sequence[str]) -> bool:
    # The web UI's "Export CSV" (Name, State, ...) or a runs frame flattened by json_normalize.
    return ("State" in columns and "Name" in columns) or (
        "state" in columns and any(c.startswith(("config.", "summary.")) for c in columns)
    )


#: Column conventions by name; `auto` tries each `detect` in order, then `plain`.
CONVENTIONS: dict[str, Convention] = {
    "mlflow": Convention(
        "mlflow",
        prefixes=("params.", "metrics.", "tags."),
        state_column="status",
        finished="FINISHED",
        run_column="run_id",
        detect=_mlflow,
    ),
    "wandb": Convention(
        "wandb",
        prefixes=("config.", "summary."),
        state_column="State",
        finished="finished",
        run_column="Name",
        detect=_wandb,
    ),
    "plain": Convention("plain", prefixes=()),
}


@dataclass(frozen=True)
class NormalisedRuns:
    """A frame with the store's trial columns (and `source_row`, `source_run`), and how it was
    read: where each field came from, the accuracy scale, the rows skipped and why."""

    frame: pd.DataFrame
    convention: str
    sources: tuple[tuple[str, str], ...]  # (field, "column X" | "--set VALUE" | "default V")
    scale: str
    skipped: tuple[tuple[str, int], ...]  # (state, rows) of the runs left out: not finished
    rows_read: int

    def summary_lines(self) -> list[str]:
        """What was read from where, one line per field, for the import's summary."""
        lines = [f"  {name:<15} {source}" for name, source in self.sources]
        skipped = ", ".join(f"{n} {state}" for state, n in self.skipped)
        if skipped:
            lines.append(f"  skipped {sum(n for _, n in self.skipped)} unfinished runs: {skipped}")
        return lines


def _column_list(columns: Sequence[str], limit: int = 25) -> str:
    shown = ", ".join(columns[:limit])
    return shown + (f" and {len(columns) - limit} more" if len(columns) > limit else "")


def _find(columns: Sequence[str], name: str, convention: Convention) -> str | None:
    present = set(columns)
    for candidate in (name, *(p + name for p in convention.prefixes)):
        if candidate in present:
            return candidate
    return None


def _check_field(name: str, option: str) -> None:
    if name not in FIELDS:
        raise RunsError(f"{option} {name}=...: unknown field; allowed: {', '.join(FIELDS)}")


def resolve_columns(
    columns: Sequence[str],
    convention: Convention,
    mapping: Mapping[str, str],
    fixed: Mapping[str, object],
) -> dict[str, tuple[str, Any]]:
    """field → ("column", name) | ("set", value) | ("default", value) | ("absent", None)."""
    for name in mapping:
        _check_field(name, "--map")
    for name in fixed:
        _check_field(name, "--set")
        if name in mapping:
            raise RunsError(f"{name}: both --map and --set given; keep one")
    found: dict[str, tuple[str, Any]] = {}
    for name in FIELDS:
        if name in fixed:
            found[name] = ("set", fixed[name])
        elif name in mapping:
            column = _find(columns, str(mapping[name]), convention)
            if column is None:
                tried = ", ".join(p + str(mapping[name]) for p in ("", *convention.prefixes))
                raise RunsError(
                    f"--map {name}={mapping[name]}: no such column (tried {tried}); "
                    f"columns found: {_column_list(columns)}"
                )
            found[name] = ("column", column)
        else:
            column = next(
                (c for n in (name, *ALIASES.get(name, ())) if (c := _find(columns, n, convention))),
                None,
            )
            if column is not None:
                found[name] = ("column", column)
            elif name in REQUIRED_FIELDS:
                names = (name, *ALIASES.get(name, ()))
                tried = ", ".join(p + n for n in names for p in ("", *convention.prefixes))
                raise RunsError(
                    f"no column for {name} (looked for {tried}); "
                    f"columns found: {_column_list(columns)}; name one with --map {name}=COLUMN "
                    f"(mapping={{'{name}': COLUMN}} in Python) or fix it with --set {name}=VALUE"
                )
            elif name in RESULT_FIELD_NAMES:
                found[name] = ("default", getattr(TrialSpec(), name))
            else:
                found[name] = ("absent", None)
    return found


def _where(source: tuple[str, Any]) -> str:
    kind, value = source
    return f"column {value}" if kind == "column" else f"--set {value}"


def _numbers(
    raw: pd.Series, name: str, source: tuple[str, Any], rows: np.ndarray, required: bool
) -> np.ndarray:
    """The column as floats; text that is not a number (and NaN where one is required) refused."""
    if raw.dtype == bool:
        raise RunsError(
            f"row {rows[0]}, {_where(source)}: {raw.iloc[0]!r} is not a number ({name})"
        )
    values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=float)
    # Text that is not a number coerces to NaN too; an empty cell is NaN before coercion.
    wrong = np.flatnonzero(raw.notna().to_numpy() & np.isnan(values))
    if wrong.size:
        at = wrong[0]
        raise RunsError(
            f"row {rows[at]}, {_where(source)}: {raw.iloc[at]!r} is not a number ({name} needs one)"
        )
    if required:
        empty = np.flatnonzero(np.isnan(values))
        if empty.size:
            raise RunsError(
                f"row {rows[empty[0]]}, {_where(source)}: empty (NaN); {name} needs a number "
                "in every row"
            )
    infinite = np.flatnonzero(np.isinf(values))
    if infinite.size:
        at = infinite[0]
        raise RunsError(
            f"row {rows[at]}, {_where(source)}: {name} must be finite, got {values[at]}"
        )
    if name in _INT_FIELDS:
        fractional = np.flatnonzero(np.isfinite(values) & (values != np.round(values)))
        if fractional.size:
            at = fractional[0]
            raise RunsError(
                f"row {rows[at]}, {_where(source)}: {name} must be an integer, got {values[at]:g}"
            )
    return values


def _texts(raw: pd.Series, name: str, source: tuple[str, Any], rows: np.ndarray) -> np.ndarray:
    text = raw.astype(object).where(raw.notna(), "").astype(str).str.strip()
    for at in np.flatnonzero((text == "").to_numpy() | (text.str.len() > MAX_NAME).to_numpy()):
        shown = "empty" if not text.iloc[at] else f"{text.iloc[at][:20]!r}... is too long"
        raise RunsError(
            f"row {rows[at]}, {_where(source)}: {shown}; {name} needs a name of 1 to "
            f"{MAX_NAME} characters"
        )
    return text.to_numpy(dtype=object)


def _check_spec_rules(
    name: str, values: np.ndarray, source: tuple[str, Any], rows: np.ndarray
) -> None:
    """`TrialSpec`'s rule for one numeric field (γ > 0, c ≥ 1, lr > 0, ...), on each distinct
    value: the spec's own validation, with every other field at its default."""
    if name not in RESULT_FIELD_NAMES and name != "seed":
        return
    for value in np.unique(values[np.isfinite(values)]):
        number: float | int = int(value) if name in _INT_FIELDS else float(value)
        try:
            TrialSpec(**{name: number})  # type: ignore[arg-type]
        except SpecError as err:
            at = int(np.flatnonzero(values == value)[0])
            raise RunsError(f"row {rows[at]}, {_where(source)}: {err}") from None


def _scale(
    accuracies: Mapping[str, np.ndarray],
    sources: Mapping[str, tuple[str, Any]],
    rows: np.ndarray,
    scale: str,
) -> str:
    """`fraction` or `percent`: the one scale of every accuracy column, checked or told apart.

    `auto` reads a column whose values are all in [0, 1] as fractions and one with a value
    above 1 as percentages; a column (or a file) with both a value in (0, 1] and one above 1 is
    ambiguous (0.93 and 93.0 side by side) and refused: say `--scale`."""
    if scale not in SCALES:
        raise RunsError(f"scale: unknown value {scale!r}; allowed: {', '.join(SCALES)}")
    for name, values in accuracies.items():
        outside = np.flatnonzero((values < 0) | (values > 100))
        if outside.size:
            at = outside[0]
            raise RunsError(
                f"row {rows[at]}, {_where(sources[name])}: {name} {values[at]:g} is neither a "
                "fraction in [0, 1] nor a percentage in [0, 100]"
            )
    if scale == "fraction":
        for name, values in accuracies.items():
            above = np.flatnonzero(values > 1)
            if above.size:
                at = above[0]
                raise RunsError(
                    f"row {rows[at]}, {_where(sources[name])}: {name} {values[at]:g} is not a "
                    "fraction in [0, 1] (--scale fraction); use --scale percent for percentages"
                )
        return scale
    if scale == "percent":
        return scale
    small: tuple[str, int] | None = None
    large: tuple[str, int] | None = None
    for name, values in accuracies.items():
        low = np.flatnonzero((values > 0) & (values <= 1))
        high = np.flatnonzero(values > 1)
        if low.size and small is None:
            small = (name, int(low[0]))
        if high.size and large is None:
            large = (name, int(high[0]))
    if small is not None and large is not None:
        (s_name, s_at), (l_name, l_at) = small, large
        raise RunsError(
            f"row {rows[s_at]}, {_where(sources[s_name])}: {s_name} "
            f"{accuracies[s_name][s_at]:g} looks like a fraction but row {rows[l_at]}, "
            f"{_where(sources[l_name])}: {l_name} {accuracies[l_name][l_at]:g} like a "
            "percentage; say which with --scale fraction or --scale percent (scale= in Python)"
        )
    return "percent" if large is not None else "fraction"


def _describe(values: Mapping[str, Any], varying: Sequence[str]) -> str:
    arm = arm_name(values["formulation"], values["bn_scale_init"], values["bn_lr_divisor"])
    where = ", ".join(
        f"{n}={values[n]:g}" if isinstance(values[n], float) else f"{n}={values[n]}"
        for n in varying
    )
    return f"arm {arm}" + (f" of experiment {where}" if where else "")


def _seed_list(seeds: Sequence[int], limit: int = 10) -> str:
    shown = ", ".join(str(s) for s in seeds[:limit])
    return shown + (f" and {len(seeds) - limit} more" if len(seeds) > limit else "")


def _check_pairs(frame: pd.DataFrame, seed_source: tuple[str, Any]) -> None:
    """Refuse a seed twice in one arm, and an arm whose seed set differs from BASE's in its
    experiment (from the seeds all its arms ran, when it has no BASE)."""
    experiment = list(EXPERIMENT_FIELDS)
    varying = [n for n in experiment if frame[n].nunique(dropna=False) > 1]
    key = [*experiment, *ARM_FIELDS, "seed"]
    twice = frame.duplicated(key, keep=False)
    if twice.any():
        first = frame[twice].iloc[0]
        same = frame[twice & (frame[key] == first[key]).all(axis=1)]
        rows = same["source_row"].tolist()
        raise RunsError(
            f"rows {rows[0]} and {rows[1]}, {_where(seed_source)}: seed {first['seed']} twice in "
            f"{_describe(first, varying)}; each seed once per arm (the paired test matches "
            "runs by seed)"
        )
    # Vectorised over integer ids: a 100,000-row file has thousands of arms.
    exp_id = frame.groupby(experiment, sort=False, dropna=False).ngroup().to_numpy()
    arm_id = frame.groupby([*experiment, *ARM_FIELDS], sort=False, dropna=False).ngroup()
    base = np.fromiter(
        (is_base_arm(*arm) for arm in zip(*(frame[n] for n in ARM_FIELDS), strict=True)),
        dtype=bool,
        count=len(frame),
    )
    has_base = pd.Series(base).groupby(exp_id).transform("any").to_numpy()
    # The seeds each experiment's arms must all have: BASE's, or every seed any arm ran.
    reference = pd.DataFrame({"exp": exp_id, "seed": frame["seed"].to_numpy()})[base | ~has_base]
    reference = reference.drop_duplicates()
    pairs = pd.DataFrame({"exp": exp_id, "seed": frame["seed"].to_numpy()})
    in_reference = pairs.merge(reference.assign(ok=True), how="left", on=["exp", "seed"])["ok"]
    extra = np.flatnonzero(in_reference.isna().to_numpy())
    wanted = reference.groupby("exp").size()
    counts = arm_id.groupby(arm_id).transform("size").to_numpy()
    short = np.flatnonzero(counts < wanted.reindex(exp_id).to_numpy())
    if not extra.size and not short.size:
        return
    at = int(extra[0] if extra.size else short[0])
    row = frame.iloc[at]
    group = frame[arm_id.to_numpy() == arm_id.iloc[at]]
    seeds = set(group["seed"].tolist())
    ref_seeds = set(reference.loc[reference["exp"] == exp_id[at], "seed"].tolist())
    who = "BASE" if has_base[at] else "the other arms"
    if extra.size:
        raise RunsError(
            f"row {row['source_row']}, {_where(seed_source)}: {_describe(row, varying)} has "
            f"seed(s) {_seed_list(sorted(seeds - ref_seeds))} that {who} lacks; a paired test "
            "needs every arm on the same seeds: add those runs, or leave the unpaired seeds out "
            "of the file"
        )
    raise RunsError(
        f"row {group['source_row'].iloc[0]}, {_where(seed_source)}: {_describe(row, varying)} "
        f"lacks seed(s) {_seed_list(sorted(ref_seeds - seeds))} that {who} ran; a paired test "
        "needs every arm on the same seeds: add those runs, or leave the unpaired seeds out of "
        "the file"
    )


def pick_convention(columns: Sequence[str], name: str = "auto") -> Convention:
    """The named convention, or with `auto` the first whose columns match (else `plain`)."""
    if name == "auto":
        return next((c for c in CONVENTIONS.values() if c.detect(columns)), CONVENTIONS["plain"])
    if name not in CONVENTIONS:
        raise RunsError(
            f"convention: unknown value {name!r}; allowed: auto, {', '.join(CONVENTIONS)}"
        )
    return CONVENTIONS[name]


def _refuse_nested(frame: pd.DataFrame) -> None:
    # wandb.Api().runs(...) put in a frame as-is holds dicts in `config` and `summary`.
    for name in ("config", "summary"):
        if name in frame.columns and frame[name].map(lambda v: isinstance(v, dict)).any():
            raise RunsError(
                f"column {name} holds mappings; flatten them first: "
                f"pd.json_normalize(...) gives columns {name}.lr, {name}.test_acc, ... "
                "(docs/import.md, W&B)"
            )


def normalise_runs(
    frame: pd.DataFrame,
    mapping: Mapping[str, str] | None = None,
    fixed: Mapping[str, object] | None = None,
    convention: str = "auto",
    scale: str = "auto",
) -> NormalisedRuns:
    """`frame` (runs of another tool) as a trials frame with the store's columns: each field
    from its column, `mapping[field]`'s column or `fixed[field]`; only finished runs (MLflow
    `status` FINISHED, W&B `State` finished); every row validated; a seed set per arm that
    a paired test can use. `RunsError` names the first problem's row and column."""
    if not isinstance(frame, pd.DataFrame):
        raise RunsError(f"expected a pandas DataFrame of runs, got {type(frame).__name__}")
    columns = [str(c) for c in frame.columns]
    frame = frame.set_axis(columns, axis=1)
    _refuse_nested(frame)
    chosen = pick_convention(columns, convention)
    found = resolve_columns(columns, chosen, dict(mapping or {}), dict(fixed or {}))
    rows = np.arange(len(frame), dtype=np.int64) + FIRST_ROW
    keep = np.ones(len(frame), dtype=bool)
    skipped: dict[str, int] = {}
    if chosen.state_column is not None and chosen.state_column in frame.columns:
        states = frame[chosen.state_column].astype(str)
        keep = (states.str.casefold() == str(chosen.finished).casefold()).to_numpy()
        skipped = {str(k): int(v) for k, v in states[~keep].value_counts().sort_index().items()}
    work = frame.loc[keep].reset_index(drop=True)
    rows = rows[keep]
    if work.empty:
        raise RunsError(
            f"no finished run among the {len(frame)} rows"
            + (
                f" (skipped: {', '.join(f'{n} {s}' for s, n in skipped.items())})"
                if skipped
                else ""
            )
            + ": nothing to import"
        )
    out: dict[str, Any] = {}
    accuracies: dict[str, np.ndarray] = {}
    for name, (kind, value) in found.items():
        if kind == "absent":
            continue
        if kind == "default":
            out[name] = np.full(len(work), value, dtype=object)
            continue
        raw = work[value] if kind == "column" else pd.Series([value] * len(work), dtype=object)
        if name in _TEXT_FIELDS:
            out[name] = _texts(raw, name, (kind, value), rows)
            continue
        numbers = _numbers(raw, name, (kind, value), rows, required=name in REQUIRED_FIELDS)
        _check_spec_rules(name, numbers, (kind, value), rows)
        if name in ACCURACY_FIELDS:
            accuracies[name] = numbers
        out[name] = numbers
    chosen_scale = _scale(accuracies, found, rows, scale)
    if chosen_scale == "percent":
        for name in accuracies:
            out[name] = out[name] / 100.0
    result = pd.DataFrame(index=range(len(work)))
    for name in FIELDS:
        if name not in out:
            continue
        if name in _INT_FIELDS:
            series = pd.Series(out[name], dtype="float64").round().astype("Int64")
            result[name] = series if name == "best_epoch" else series.astype("int64")
        elif name in _TEXT_FIELDS:
            result[name] = pd.Series(out[name], dtype=object).astype(str)
        else:
            result[name] = pd.Series(out[name], dtype="float64")
    result.insert(len(RESULT_FIELD_NAMES) + 1, "status", "completed")
    for name in ACCURACY_FIELDS:
        if name not in result.columns:
            result[name] = np.nan
    result["source_row"] = rows
    run_column = chosen.run_column
    result["source_run"] = (
        work[run_column].astype(str).to_numpy() if run_column in work.columns else ""
    )
    _check_pairs(result, found["seed"])
    sources = tuple(
        (
            name,
            {
                "column": lambda v: f"← column {v}",
                "set": lambda v: f"= {v} (--set)",
                "default": lambda v: f"= {v} (default: no column, no --set)",
            }[kind](value),
        )
        for name, (kind, value) in found.items()
        if kind != "absent"
    )
    return NormalisedRuns(
        frame=result,
        convention=chosen.name,
        sources=sources,
        scale=chosen_scale,
        skipped=tuple(skipped.items()),
        rows_read=len(frame),
    )


# -- files -------------------------------------------------------------------------------------

#: File types `read_runs_file` reads, by how their bytes start (Parquet's magic number).
FILE_TYPES = ("csv", "parquet")


def sniff_file_type(path: Path) -> str:
    """`parquet` or `csv` by the file's first bytes; RunsError for anything else."""
    with path.open("rb") as stream:
        head = stream.read(65536)
    if head.startswith(b"PAR1"):
        return "parquet"
    if b"\x00" in head:
        raise RunsError(f"{path}: neither CSV nor Parquet (binary content); allowed: CSV, Parquet")
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as err:
        if err.start < len(head) - 4:  # not merely a character cut at the end of the sample
            raise RunsError(
                f"{path}: neither CSV nor Parquet (not UTF-8 text at byte {err.start}); "
                "allowed: CSV (UTF-8), Parquet"
            ) from None
    return "csv"


def read_runs_file(path: str | Path, file_type: str | None = None) -> tuple[pd.DataFrame, str]:
    """The file's rows as a frame and its type (`csv` or `parquet`); every CSV value is read as
    text, so numbers are converted once, by `normalise_runs`, which names a bad one."""
    path = Path(path)
    found = sniff_file_type(path)
    if file_type is not None and file_type != found:
        raise RunsError(
            f"{path}: is {found.upper()}, not {file_type.upper()} (--format {file_type})"
        )
    try:
        if found == "parquet":
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path, dtype=str, skipinitialspace=False)
    except (ValueError, OSError, UnicodeDecodeError) as err:
        if isinstance(err, OSError) and err.filename is not None:
            raise
        message = " ".join(str(err).split()) or type(err).__name__
        raise RunsError(f"{path}: not a readable {found.upper()} file ({message})") from None
    if frame.columns.empty:
        raise RunsError(f"{path}: no columns; expected a header row naming them")
    return frame, found
