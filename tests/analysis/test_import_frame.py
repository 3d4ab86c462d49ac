"""Runs made elsewhere as a trials frame (`bnsweep.analysis.import_frame`), through
`bnsweep.tables(frame, mapping=...)`: the same tables as native runs of the same numbers, and
every refusal in one line naming the row and the column.

The fixtures have the shapes the tools produce: MLflow's `search_runs()` frame (run_id,
experiment_id, status, artifact_uri, start_time, end_time, metrics.*, params.* as strings,
tags.*), and the CSV the W&B runs table exports (Name, State, Notes, User, Tags, Created,
Runtime, Sweep, then config and summary keys as plain columns).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from bnsweep.analysis.import_frame import (
    RunsError,
    normalise_runs,
    read_runs_file,
)
from bnsweep.analysis.notebook import tables
from tests.analysis.data import BASE, frame, rows

#: Test accuracies (%) by arm and seed: the low-γ arm is better than BASE on every seed.
SCORES: dict[tuple[str, float, float], list[float]] = {
    BASE: [93.1, 93.4, 92.9, 93.3, 93.0],
    ("standard", 0.1, 100.0): [93.6, 93.8, 93.5, 93.9, 93.4],
    ("rbn", 1.0, 1.0): [93.0, 93.6, 92.8, 93.1, 93.2],
}


def native() -> pd.DataFrame:
    return frame(*(rows(arm, scores) for arm, scores in SCORES.items()))


def mlflow_frame(scores: dict[Any, list[float]] = SCORES) -> pd.DataFrame:
    """`mlflow.search_runs()` of these runs: metrics as floats (fractions), params as strings,
    one failed and one running run that the import leaves out."""
    out = []
    for i, ((formulation, gamma, c), values) in enumerate(scores.items()):
        for seed, value in enumerate(values, start=1):
            out.append(
                {
                    "run_id": f"{i:02d}{seed:030d}",
                    "experiment_id": "417",
                    "status": "FINISHED",
                    "artifact_uri": f"mlflow-artifacts:/417/{i}{seed}/artifacts",
                    "start_time": pd.Timestamp("2025-03-01 10:00", tz="UTC"),
                    "end_time": pd.Timestamp("2025-03-01 12:00", tz="UTC"),
                    "metrics.test_accuracy": value / 100,
                    "metrics.train_loss": 0.01,
                    "params.norm": formulation,
                    "params.gamma": str(gamma),
                    "params.gamma_lr_divisor": str(c),
                    "params.seed": str(seed),
                    "tags.mlflow.runName": f"{formulation}-{gamma}-{seed}",
                    "tags.mlflow.user": "ada",
                }
            )
    for status in ("FAILED", "RUNNING"):
        out.append({**out[0], "run_id": status, "status": status, "metrics.test_accuracy": None})
    return pd.DataFrame(out)


MLFLOW_MAPPING = {
    "formulation": "norm",
    "bn_lr_divisor": "gamma_lr_divisor",
    "test_acc": "test_accuracy",
}


def wandb_csv(path: Path, scores: dict[Any, list[float]] = SCORES) -> Path:
    """The W&B runs table's "Export CSV": percentages in a summary column, γ as `gamma`."""
    out = []
    for (formulation, gamma, c), values in scores.items():
        for seed, value in enumerate(values, start=1):
            out.append(
                {
                    "Name": f"{formulation}-g{gamma}-s{seed}",
                    "State": "finished",
                    "Notes": "-",
                    "User": "ada",
                    "Tags": "bn,cifar",
                    "Created": "2025-03-01T10:00:00.000Z",
                    "Runtime": 7200,
                    "Sweep": "x1y2z3",
                    "formulation": formulation,
                    "gamma": gamma,
                    "c": c,
                    "seed": seed,
                    "test/acc": value,
                    "_step": 180,
                }
            )
    out.append({**out[0], "Name": "crashed-1", "State": "crashed", "test/acc": ""})
    pd.DataFrame(out).to_csv(path, index=False)
    return path


def markdown(trials: pd.DataFrame, **kwargs: Any) -> str:
    return tables(trials, **kwargs).render("md")


def test_an_mlflow_frame_gives_the_native_tables() -> None:
    expected = markdown(native())
    assert "**" in expected and "<u>" in expected  # bold and underline are there to compare
    assert markdown(mlflow_frame(), mapping=MLFLOW_MAPPING) == expected


def test_a_wandb_csv_export_gives_the_native_tables(tmp_path: Path) -> None:
    read, kind = read_runs_file(wandb_csv(tmp_path / "wandb_export.csv"))
    assert kind == "csv"
    runs = normalise_runs(read, {"test_acc": "test/acc"})
    assert runs.convention == "wandb" and runs.scale == "percent"
    assert runs.skipped == (("crashed", 1),)
    assert markdown(runs.frame) == markdown(native())


def test_parquet_reads_as_csv_does(tmp_path: Path) -> None:
    mlflow_frame().to_parquet(tmp_path / "runs.parquet")
    read, kind = read_runs_file(tmp_path / "runs.parquet")
    assert kind == "parquet"
    assert markdown(read, mapping=MLFLOW_MAPPING) == markdown(native())


def test_the_summary_names_each_fields_source_and_the_defaults() -> None:
    runs = normalise_runs(mlflow_frame(), MLFLOW_MAPPING, {"dataset": "imagenet-subset"})
    sources = dict(runs.sources)
    assert sources["bn_scale_init"] == "← column params.gamma"
    assert sources["test_acc"] == "← column metrics.test_accuracy"
    assert sources["dataset"] == "= imagenet-subset (--set)"
    assert sources["epochs"] == "= 180 (default: no column, no --set)"
    assert runs.skipped == (("FAILED", 1), ("RUNNING", 1))
    assert set(runs.frame["dataset"]) == {"imagenet-subset"}  # not a registered dataset: data
    assert runs.frame["source_row"].tolist()[:2] == [2, 3]  # spreadsheet rows: header is row 1


def test_a_store_frame_without_mapping_is_tabled_as_before() -> None:
    trials = native()
    assert tables(trials) == tables(trials.copy())
    assert "status" in trials and markdown(trials) == markdown(trials, mapping={})


def _refusal(trials: pd.DataFrame, mapping: dict[str, str] | None = None, **kw: Any) -> str:
    with pytest.raises(RunsError) as caught:
        normalise_runs(trials, MLFLOW_MAPPING if mapping is None else mapping, **kw)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_a_seed_twice_in_an_arm_is_refused_naming_both_rows() -> None:
    runs = mlflow_frame()
    runs.loc[3, "params.seed"] = "1"
    message = _refusal(runs)
    assert message.startswith("rows 2 and 5, column params.seed: seed 1 twice in arm BASE")


def test_an_arm_off_bases_seeds_is_refused_naming_the_seeds() -> None:
    missing = mlflow_frame().drop(index=[6, 7]).reset_index(drop=True)
    message = _refusal(missing)
    assert "arm standard γ=0.1 c=100 lacks seed(s) 2, 3 that BASE ran" in message
    assert message.startswith("row 7, column params.seed")
    extra = mlflow_frame()
    extra.loc[len(extra)] = {**extra.loc[5].to_dict(), "params.seed": "6", "run_id": "z"}
    message = _refusal(extra)
    assert message.startswith("row 19, column params.seed: arm standard γ=0.1 c=100 has seed(s) 6")


def test_text_where_a_number_belongs_is_refused() -> None:
    runs = mlflow_frame()
    runs.loc[4, "params.gamma"] = "one"
    assert _refusal(runs).startswith(
        "row 6, column params.gamma: 'one' is not a number (bn_scale_init needs one)"
    )


def test_a_missing_score_is_refused() -> None:
    runs = mlflow_frame()
    runs.loc[2, "metrics.test_accuracy"] = float("nan")
    assert _refusal(runs).startswith("row 4, column metrics.test_accuracy: empty (NaN)")


def test_spec_rules_hold_for_numbers() -> None:
    runs = mlflow_frame()
    runs.loc[1, "params.gamma"] = "-0.5"
    message = _refusal(runs)
    assert message.startswith("row 3, column params.gamma: bn_scale_init (γ): must be a finite")
    runs = mlflow_frame()
    runs.loc[0, "params.seed"] = "1.5"
    assert _refusal(runs).startswith("row 2, column params.seed: seed must be an integer")


def test_a_missing_column_names_the_columns_and_the_way_to_map() -> None:
    message = _refusal(mlflow_frame(), mapping={})
    assert message.startswith("no column for bn_lr_divisor (looked for bn_lr_divisor, params.")
    assert "columns found: run_id, experiment_id, status" in message
    assert "--map bn_lr_divisor=COLUMN" in message and "--set bn_lr_divisor=VALUE" in message
    message = _refusal(mlflow_frame(), mapping={**MLFLOW_MAPPING, "seed": "random_seed"})
    assert message.startswith("--map seed=random_seed: no such column (tried random_seed, params.")


def test_unknown_fields_and_doubly_given_fields_are_refused() -> None:
    message = _refusal(mlflow_frame(), mapping={**MLFLOW_MAPPING, "gama": "gamma"})
    assert message.startswith("--map gama=...: unknown field; allowed: dataset, arch,")
    with pytest.raises(RunsError, match="both --map and --set"):
        normalise_runs(mlflow_frame(), MLFLOW_MAPPING, {"test_acc": "0.9"})


def test_fractions_and_percentages_together_are_ambiguous() -> None:
    runs = mlflow_frame()
    runs.loc[3, "metrics.test_accuracy"] = 93.2
    message = _refusal(runs)
    assert "looks like a fraction but row 5" in message and "--scale" in message
    assert normalise_runs(runs, MLFLOW_MAPPING, scale="percent").scale == "percent"
    with pytest.raises(RunsError, match="is not a fraction in"):
        normalise_runs(runs, MLFLOW_MAPPING, scale="fraction")
    runs.loc[3, "metrics.test_accuracy"] = 120.0
    assert "neither a fraction in [0, 1] nor a percentage" in _refusal(runs)


def test_wandb_dict_columns_are_refused_with_the_way_to_flatten() -> None:
    runs = pd.DataFrame({"name": ["a"], "config": [{"gamma": 1.0}], "summary": [{"test_acc": 0.9}]})
    assert "pd.json_normalize" in _refusal(runs, mapping={})


def test_a_file_neither_csv_nor_parquet_is_refused(tmp_path: Path) -> None:
    binary = tmp_path / "runs.xlsx"
    binary.write_bytes(b"PK\x03\x04\x00\x00binary")
    with pytest.raises(RunsError, match="neither CSV nor Parquet"):
        read_runs_file(binary)
    csv = tmp_path / "runs.csv"
    mlflow_frame().to_csv(csv, index=False)
    with pytest.raises(RunsError, match="is CSV, not PARQUET"):
        read_runs_file(csv, "parquet")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(RunsError, match="not a readable CSV file"):
        read_runs_file(empty)


def test_no_finished_run_is_refused() -> None:
    runs = mlflow_frame()
    runs["status"] = "FAILED"
    assert _refusal(runs).startswith("no finished run among the 17 rows (skipped: 17 FAILED)")
