"""Golden files for every renderer on a small fixed results set (tests/analysis/data.py).

Bold and underline placement is checked explicitly first, so a golden file can only be
regenerated (BNSWEEP_UPDATE_GOLDEN=1) from a table whose emphasis follows the rules.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path

import pytest

from bnsweep.analysis.layout import TableLayout
from bnsweep.analysis.render.formats import RENDERERS, render
from bnsweep.analysis.render.terminal import render_term
from bnsweep.analysis.stats import AnalysisOptions
from bnsweep.analysis.table_model import Table
from bnsweep.analysis.tables import build_tables
from tests.analysis.data import golden_trials

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("BNSWEEP_UPDATE_GOLDEN") == "1"


@pytest.fixture(scope="module")
def tables() -> list[Table]:
    return build_tables(golden_trials())


@pytest.fixture(scope="module")
def pairwise_tables() -> list[Table]:
    """The same results with the pairwise matrices, Holm-adjusted (Sect. 4.5)."""
    return build_tables(
        golden_trials(), TableLayout(pairwise=True), AnalysisOptions(correction="holm")
    )


def _emphasis(table: Table) -> dict[tuple[str, str, str], tuple[bool, bool]]:
    return {
        (b.label, r.label, table.column_labels[j]): (c.significant, c.best)
        for b, r, j, c in table.cells()
    }


def test_bold_and_underline_follow_the_rules(tables):
    (table,) = tables
    bold_underline = {k for k, v in _emphasis(table).items() if v == (True, True)}
    bold_only = {k for k, v in _emphasis(table).items() if v == (True, False)}
    underline_only = {k for k, v in _emphasis(table).items() if v == (False, True)}
    assert bold_underline == {("CIFAR-10", "0.10", "0.1"), ("CIFAR-100", "0.05", "0.01")}
    # Significant but not the highest mean.
    assert bold_only == {("CIFAR-100", "0.05", "0.1")}
    # Highest mean but not significant; BASE can be the best of its column (Table 3, ST-Cars).
    assert underline_only == {("CIFAR-100", "0.10", "0.1"), ("CIFAR-10", "BASE", "0.01")}
    # Both arms print 58.42; only the higher unrounded mean (58.423 > 58.418) is underlined.
    tie = [r.cells[1] for r in table.blocks[1].rows if not r.is_base]
    assert [c.mean_text for c in tie] == ["58.42", "58.42"]
    assert [c.best for c in tie] == [True, False]
    assert all(
        r.is_base == (i == len(b.rows) - 1) for b in table.blocks for i, r in enumerate(b.rows)
    )


def test_markdown_marks(tables):
    md = render(tables, "md")
    assert "|  | 0.10 | **<u>90.72</u> ± 0.19** | 84.67 ± 0.17<sup>†</sup> |" in md
    assert "| CIFAR-100 | 0.05 | **67.00 ± 0.43** | **<u>58.42</u> ± 0.16** |" in md
    assert "|  | 0.10 | <u>67.10</u> ± 2.73 | 58.42 ± 0.12 |" in md


def test_latex_marks(tables):
    tex = render(tables, "latex")
    assert r"\textbf{\underline{90.72} $\pm$ 0.19}" in tex
    assert r"\textbf{67.00 $\pm$ 0.43}" in tex and r"\underline{67.10} $\pm$ 2.73" in tex
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex
    assert "%" not in tex.replace(r"\%", "").replace("% requires", "")  # every % escaped


def test_html_is_standalone(tables):
    page = render(tables, "html")
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page
    assert not re.search(r"""(src|href)\s*=|@import|url\(""", page)  # no external resources
    assert "<strong><u>90.72</u> ± 0.19</strong>" in page


def test_terminal_styles(tables):
    styled = render_term(tables, width=100, styles=True)
    assert "\x1b[1;4m90.72\x1b[0m\x1b[1m ± 0.19" in styled  # bold + underline, then bold
    assert "\x1b[4m67.10\x1b[0m ± 2.73" in styled  # underline only
    assert "\x1b[1m67.00\x1b[0m\x1b[1m ± 0.43" in styled  # bold only


def test_pairwise_bold_follows_the_rules(pairwise_tables):
    # Bold in a matrix: the row beats the column by the one-sided test after Holm (≤ 0.05).
    (table,) = pairwise_tables
    assert len(table.pairwise) == 4  # two blocks × two α
    for m in table.pairwise:
        for row in m.cells:
            for c in row:
                assert c is None or c.significant == (c.stats.tested and c.stats.p_adjusted <= 0.05)
    first = table.pairwise[0]
    assert (first.block, first.column) == ("CIFAR-10", "α = 0.1")
    assert [c.significant for c in first.cells[1] if c] == [True, True]  # γ = 0.1 beats both


@pytest.mark.parametrize("fmt", sorted(RENDERERS))
@pytest.mark.parametrize("name", ["tables", "tables_pairwise"])
def test_renderer_matches_golden(tables, pairwise_tables, name, fmt):
    # The terminal golden is plain text at a fixed width; its styles are checked above.
    chosen = tables if name == "tables" else pairwise_tables
    text = render_term(chosen, width=110) if fmt == "term" else render(chosen, fmt)
    path = GOLDEN / f"{name}.{RENDERERS[fmt].extension}"
    if UPDATE:
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"{path} is missing: run with BNSWEEP_UPDATE_GOLDEN=1 to create it"
    expected = path.read_text(encoding="utf-8")
    if text != expected:
        diff = "".join(
            difflib.unified_diff(
                expected.splitlines(True), text.splitlines(True), str(path), "rendered"
            )
        )
        pytest.fail(
            f"{fmt} output differs from {path.name} "
            f"(BNSWEEP_UPDATE_GOLDEN=1 regenerates it after review):\n{diff}"
        )
