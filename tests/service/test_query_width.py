"""`bnsweep query` in a terminal narrower than its table: low-priority columns are dropped and
named in one line under the table, an error message folds over lines, and no value is cut."""

from __future__ import annotations

import io

import pandas as pd
import pytest
from rich.console import Console

import bnsweep.commands.store as store_command
from bnsweep.store.api import Store
from tests.service.test_store_cli import (  # noqa: F401 (fixtures)
    Run,
    _specs_without_registries,
    bnsweep,
    db,
)

NOTE = "not shown for want of width: "


@pytest.fixture(scope="module")
def trials(db: str) -> pd.DataFrame:  # noqa: F811
    with Store.open(db, read_only=True) as store:
        return store.trials(sweep="demo")


def _print(frame: pd.DataFrame, width: int, **kwargs: bool) -> str:
    console = Console(width=width, file=io.StringIO(), color_system=None, force_terminal=False)
    store_command._print_table(frame, epochs=False, console=console, **kwargs)
    return console.file.getvalue()  # type: ignore[attr-defined]


def _expected(frame: pd.DataFrame, header: str) -> list[str]:
    names = {v: k for k, v in store_command._HEADERS.items()}
    return [store_command._cell(v) for v in frame[names.get(header, header)]]


def _rich_cells(out: str) -> tuple[list[str], list[list[str]]]:
    """(headers, rows of cells) of a rich table printed without colour."""
    lines = out.splitlines()
    (head,) = [line for line in lines if line.startswith("┃")]
    headers = [h.strip() for h in head.strip("┃").split("┃")]
    rows = [
        [c.strip() for c in line.strip("│").split("│")] for line in lines if line.startswith("│")
    ]
    return headers, rows


@pytest.mark.parametrize("width", [40, 80, 200])
def test_no_value_is_cut_and_the_dropped_columns_are_named(
    trials: pd.DataFrame, width: int
) -> None:
    frame = trials[trials["error"].isna()].reset_index(drop=True)
    out = _print(frame, width)
    *table, last = out.rstrip("\n").splitlines()
    assert all(len(line) <= width for line in table)
    headers, rows = _rich_cells(out)
    assert len(rows) == len(frame) and "seed" in headers
    for j, header in enumerate(headers):
        assert [row[j] for row in rows] == _expected(frame, header), header
    every = [store_command._HEADERS.get(c, c) for c in _all_columns(frame)]
    if set(headers) == set(every):
        assert NOTE not in out
    else:
        assert last.startswith(NOTE) and "--format csv" in last
        dropped = last.removeprefix(NOTE).split(" (")[0].split(", ")
        assert {store_command._HEADERS.get(c, c) for c in dropped} == set(every) - set(headers)
        # Provenance goes first: the hash is dropped before any result.
        assert "spec_hash" in dropped
        assert [h for h in every if h in headers] == headers  # the shown keep their order


def _all_columns(frame: pd.DataFrame) -> list[str]:
    from bnsweep.store.columns import SPEC_COLUMNS

    varying = [c for c in SPEC_COLUMNS if frame[c].nunique(dropna=False) > 1]
    with_error = ["error"] if frame["error"].notna().any() else []
    return ["spec_hash", "seed", *varying, *store_command._TRIAL_RESULT_COLUMNS, *with_error]


def test_a_narrow_terminal_keeps_the_varying_fields_and_results_first(
    trials: pd.DataFrame,
) -> None:
    frame = trials[trials["error"].isna()]
    headers, _ = _rich_cells(_print(frame, 80))
    assert "hash" not in headers and "seconds" not in headers
    assert {"seed", "status", "test_acc"} <= set(headers)
    narrow, _ = _rich_cells(_print(frame, 40))
    assert narrow[:2] == ["seed", "γ"] and "test_acc" in narrow


def test_wide_enough_shows_everything_as_before(trials: pd.DataFrame) -> None:
    out = _print(trials, 400)
    headers, _ = _rich_cells(out)
    assert headers[:2] == ["hash", "seed"] and headers[-1] == "error" and NOTE not in out


def test_an_error_message_folds_instead_of_being_cut(trials: pd.DataFrame) -> None:
    message = "CUDA out of memory while allocating the activations of layer4 " * 3
    frame = trials.assign(error=[message.strip()] + [None] * (len(trials) - 1))
    out = _print(frame, 120)
    headers, rows = _rich_cells(out)
    assert "error" in headers and all(len(line) <= 120 for line in out.splitlines()[:-1])
    j = headers.index("error")
    folded = " ".join(row[j] for row in rows if row[j])
    assert folded.split() == message.split()


def test_the_plain_text_of_long_results_drops_columns_too(
    trials: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_command, "_RICH_ROWS", 2)
    out = _print(trials, 60)
    title, head, rule, *body, last = out.rstrip("\n").splitlines()
    assert title == f"{len(trials)} trials" and set(rule) == {"-", " "}
    assert all(len(line) <= 60 for line in (head, rule, *body))
    assert last.startswith(NOTE) and "spec_hash" in last
    assert "hash" not in head.split() and head.split()[0] == "seed"
    assert [line.split()[0] for line in body] == _expected(trials, "seed")


def test_query_from_the_command_line_names_what_it_left_out(
    bnsweep: Run,  # noqa: F811
    db: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(store_command, "_console", lambda: Console(width=40, color_system=None))
    code, out, _ = bnsweep("query", "--db", db, "--sweep", "demo")
    assert code == 0
    assert out.rstrip("\n").splitlines()[-1].startswith(NOTE)
