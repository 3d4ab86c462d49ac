"""What issue 13 asked of the renderers for people and scripts: LaTeX with a `\\label`, $d_z$ and a
fragment mode; a terminal table that marks significance and the best mean in text when it
cannot use bold and underline."""

from __future__ import annotations

import re

import pytest

from bnsweep.analysis.layout import TableLayout
from bnsweep.analysis.render.formats import render
from bnsweep.analysis.render.latex import latex_label
from bnsweep.analysis.render.terminal import TERM_MARKS, render_term
from bnsweep.analysis.stats import AnalysisOptions
from bnsweep.analysis.table_model import Table
from bnsweep.analysis.tables import build_tables
from tests.analysis.data import golden_trials


@pytest.fixture(scope="module")
def tables() -> list[Table]:
    return build_tables(golden_trials())


def test_latex_tables_carry_a_unique_label_and_typeset_d_z(tables: list[Table]) -> None:
    tex = render([*tables, *tables], "latex")  # the same titles twice: labels still differ
    labels = re.findall(r"\\label\{([^}]*)\}", tex)
    assert len(labels) == 2 * len(tables) and len(set(labels)) == len(labels)
    assert all(re.fullmatch(r"tab:[a-z0-9-]+", label) for label in labels)
    assert "$d_z$" in tex and r"d\_z" not in tex


def test_latex_labels_are_whole_words_of_the_title() -> None:
    taken: set[str] = set()
    label = latex_label("Test accuracy (%) by BN scale initialisation γ and learning rate", taken)
    assert label == "tab:test-accuracy-by-bn-scale-initialisation-and"
    assert latex_label("Test accuracy (%) by BN scale initialisation γ and learning", taken) == (
        label + "-2"
    )
    assert latex_label("γ", set()) == "tab:bnsweep"


def test_a_latex_fragment_is_the_tabular_alone(tables: list[Table]) -> None:
    fragment = render(tables, "latex-fragment")
    full = render(tables, "latex")
    assert r"\begin{table}" not in fragment and r"\caption" not in fragment
    assert r"\par" not in fragment and fragment.count(r"\begin{tabular}") == len(tables)
    tabular = re.compile(r"\\begin\{tabular\}.*?\\end\{tabular\}", re.S)
    assert tabular.findall(fragment) == tabular.findall(full)


def test_plain_terminal_text_marks_significance_and_the_best_mean(tables: list[Table]) -> None:
    plain = render_term(tables, width=120)
    styled = render_term(tables, width=120, styles=True)
    assert "90.72 ± 0.19 *^" in plain  # significant and best (golden: bold + underline)
    assert "67.00 ± 0.43 *" in plain and "67.10 ± 2.73 ^" in plain
    assert "* marks bold: significantly better than BASE" in plain and "\x1b[" not in plain
    assert TERM_MARKS["significant"] + TERM_MARKS["best"] not in styled  # styles say it there


def test_plain_terminal_text_marks_significant_pairwise_cells() -> None:
    # Off a terminal (a file, a pipe, --color never) bold is lost: the matrices mark in text too.
    pairwise = build_tables(
        golden_trials(), TableLayout(pairwise=True), AnalysisOptions(correction="holm")
    )
    significant = sum(
        1 for m in pairwise[0].pairwise for row in m.cells for c in row if c and c.significant
    )
    assert significant >= 2
    plain = render_term(pairwise, width=250)
    matrices = plain[plain.index("Pairwise: ") :]
    assert matrices.count(") " + TERM_MARKS["significant"]) == significant
    assert "in the pairwise matrices * marks bold: the row is significantly better" in plain
    styled = render_term(pairwise, width=250, styles=True)
    assert ") *" not in styled[styled.index("Pairwise: ") :]  # bold says it there
