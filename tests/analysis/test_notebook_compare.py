"""Every comparison in the notebook face: `bnsweep.tables(trials, versus=..., pairwise=...)`
through the command line's own layout code, sweeps side by side (a mapping of sweep name →
trials frame, in the notebook and as `bnsweep tables --sweep A --sweep B`), and the short repr
of `Tables`."""

from __future__ import annotations

import inspect
from dataclasses import replace

import pytest

import bnsweep
from bnsweep.analysis.layout import TableLayout
from bnsweep.analysis.notebook import Tables
from bnsweep.analysis.notebook import tables as notebook_tables
from bnsweep.analysis.pairing import AnalysisError
from bnsweep.analysis.tables import build_sweep_tables, build_tables
from bnsweep.store.results import load_trials, sweep_report
from bnsweep.sweep_tables import tables_for
from bnsweep.workers.errors import SpecError
from tests.analysis.data import BASE, frame, golden_trials, rows, shifted
from tests.analysis.test_report import Run, db  # noqa: F401 (a fixture)
from tests.analysis.test_report import bnsweep as bnsweep_cli  # noqa: F401 (a fixture)

B = [90.0, 90.4, 89.6, 90.2, 89.8, 90.1]
RBN = "rbn γ=1 c=1"


def _methods_frame():
    return frame(
        rows(BASE, B),
        rows(("rbn", 1.0, 1.0), shifted(B, [0.3, 0.1, 0.4, 0.2, 0.3, 0.2])),
        rows(("standard", 0.1, 100.0), shifted(B, [1.0, 1.2, 0.8, 1.1, 0.9, 1.0])),
    )


def test_versus_and_pairwise_are_keyword_only_and_additive() -> None:
    params = inspect.signature(notebook_tables).parameters
    assert list(params)[:3] == ["trials", "layout", "options"]
    for name in ("versus", "pairwise"):
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY
        assert params[name].default is None


def test_the_notebook_and_the_command_line_build_the_same_comparison() -> None:
    trials = _methods_frame()
    shown = bnsweep.tables(trials, versus=RBN, pairwise=True)
    assert shown == tables_for(trials, None, versus=RBN, pairwise=True)
    assert shown == build_tables(trials, TableLayout(versus=RBN, pairwise=True))
    (table,) = shown
    assert table.reference == RBN and table.pairwise
    # A spec's report: mapping with the keywords on top, as the command line's flags are.
    report = {"layout": "methods", "pairwise": True}
    assert notebook_tables(trials, report, versus=RBN) == tables_for(trials, report, versus=RBN)


def test_none_keeps_the_layouts_choice_and_false_turns_pairwise_off() -> None:
    trials = _methods_frame()
    layout = TableLayout(pairwise=True, versus=RBN)
    assert notebook_tables(trials, layout)[0].pairwise
    (off,) = notebook_tables(trials, layout, pairwise=False)
    assert off.pairwise == () and off.reference == RBN
    assert [off] == build_tables(trials, replace(layout, pairwise=False))


def test_a_bad_versus_is_one_clear_error() -> None:
    with pytest.raises(AnalysisError, match="allowed: "):
        notebook_tables(_methods_frame(), versus="iebn")
    with pytest.raises(SpecError, match=r"report\.pairwise"):
        notebook_tables(_methods_frame(), pairwise="yes")  # type: ignore[arg-type]


def test_sweeps_side_by_side_one_table_each_with_the_same_layout() -> None:
    gamma_only = golden_trials()
    methods = _methods_frame()
    shown = notebook_tables({"sweep-a": gamma_only, "sweep-b": methods})
    assert isinstance(shown, Tables) and len(shown) == 2
    a, b = shown
    assert a.title.startswith("sweep-a: ") and b.title.startswith("sweep-b: ")
    # The kind comes from both sweeps' arms: the RBN arm of sweep-b makes both "methods".
    assert a.kind == b.kind == "methods"
    kind = TableLayout(kind="methods")
    for name, trials, table in (("sweep-a", gamma_only, a), ("sweep-b", methods, b)):
        (alone,) = build_tables(trials, kind)
        assert table == replace(alone, title=f"{name}: {alone.title}")
    frame_ = shown.to_frame()
    assert list(dict.fromkeys(frame_["table"])) == [a.title, b.title]


def test_each_sweep_is_tested_against_its_own_reference() -> None:
    one = _methods_frame()
    worse = shifted(B, [-0.3, -0.1, -0.4, -0.2, -0.3, -0.2])
    two = frame(rows(BASE, B), rows(("rbn", 1.0, 1.0), worse))
    a, b = notebook_tables({"one": one, "two": two}, versus=RBN, pairwise=True)
    assert a.reference == b.reference == RBN
    assert a == replace(build_tables(one, TableLayout(versus=RBN, pairwise=True))[0], title=a.title)
    assert b == replace(build_tables(two, TableLayout(versus=RBN, pairwise=True))[0], title=b.title)


@pytest.mark.parametrize(
    ("frames", "message"),
    [
        ({}, "no sweeps to compare"),
        ({"a": "not a frame"}, "sweep a: expected a trials DataFrame, got str"),
        ({"ok": golden_trials(), "bad": golden_trials().iloc[:0]}, "sweep bad: no trials"),
    ],
)
def test_a_sweep_that_cannot_be_tabulated_is_named(frames, message: str) -> None:
    with pytest.raises(AnalysisError, match=message):
        build_sweep_tables(frames)


def test_a_versus_arm_missing_from_one_sweep_names_that_sweep() -> None:
    with pytest.raises(AnalysisError, match="sweep gamma: versus: "):
        notebook_tables({"methods": _methods_frame(), "gamma": golden_trials()}, versus=RBN)


def test_neither_a_frame_nor_a_mapping_is_refused() -> None:
    with pytest.raises(AnalysisError, match="expected a trials DataFrame or a mapping"):
        notebook_tables([golden_trials()])  # type: ignore[arg-type]


def test_the_repr_is_a_few_lines_and_str_the_full_text() -> None:
    shown = notebook_tables({"sweep-a": golden_trials(), "sweep-b": golden_trials()}, pairwise=True)
    text = repr(shown)
    lines = text.splitlines()
    assert lines[0] == "Tables: 2 tables" and len(lines) == 1 + 2 * 2 + 1
    assert len(text) < 1000 < len(str(shown))
    assert str(shown) == shown.render("term")
    for i, t in enumerate(shown):
        assert lines[1 + 2 * i] == f"  [{i}] {t.title}"
        cells = [c for *_, c in t.cells()]
        significant = sum(c.significant for c in cells)
        tested = sum(1 for c in cells if c.stats is not None and c.stats.tested)
        assert significant > 0
        assert (
            f"{len({c.arm for c in cells})} arms, n = 4–5 seeds; {significant} of {tested} "
            "tested cells significantly better than BASE (paired t-test, p ≤ 0.05)"
        ) in lines[2 + 2 * i]
        assert f"; {len(t.pairwise)} pairwise matrices" in lines[2 + 2 * i]
    assert repr(Tables()) == "Tables: none"


def test_the_command_line_puts_sweeps_side_by_side(bnsweep_cli: Run, db: str) -> None:  # noqa: F811
    code, out, err = bnsweep_cli(
        "tables", "--sweep", "small", "--sweep", "other", "--db", db, "--format", "md"
    )
    assert code == 0, err
    assert "### small: Digits table" in out and "### other: Digits table" in out
    # other's spec has no report: section; the first sweep's layout is used, and stderr says so.
    assert "other have another report: layout than small" in err
    frames = {name: load_trials(db, name) for name in ("small", "other")}
    expected = tables_for(frames, sweep_report(db, "small"))
    assert out.rstrip("\n") == Tables(expected).render("md").rstrip("\n")
    # One sweep named twice is that sweep alone.
    code, twice, _ = bnsweep_cli(
        "tables", "--sweep", "small", "--sweep", "small", "--db", db, "--format", "md"
    )
    code1, once, _ = bnsweep_cli("tables", "--sweep", "small", "--db", db, "--format", "md")
    assert code == code1 == 0 and twice == once


def test_the_command_line_names_a_sweep_it_cannot_tabulate(bnsweep_cli: Run, db: str) -> None:  # noqa: F811
    code, _, err = bnsweep_cli("tables", "--sweep", "small", "--sweep", "empty", "--db", db)
    assert code == 2  # AnalysisError: the results cannot be tabulated
    *notes, last = err.splitlines()
    assert "Traceback" not in err and all("report: layout" in n for n in notes)
    assert "sweep empty: no completed trial" in last
