"""The same store and the same options give the same numbers, marks and legend on every
surface that shows a sweep's tables:

- the CLI: `bnsweep tables --format md`, `--format csv`, and the plain terminal text (`--color
  never`, what a file or a pipe gets);
- the dashboard: the sweep page, its `tables.md` download and `/api/sweeps/NAME/tables`;
- the notebook: `bnsweep.tables(bnsweep.trials(url, NAME), ...)`, its `to_frame()` and
  `render("md")`;
- the static report (`bnsweep report --out`): the sweep page, `tables.md` and `tables.csv`
  (the report has the default options only).

Compared: every cell's n, mean, std, p, adjusted p, significance (bold), best (underline) and
the arm it was tested against; every cell's printed text; and the lines under the table. Under
the defaults, a lower significance level (`--level`), another reference arm (`--versus`), both,
and the Wilcoxon test with Holm's correction.

One store for the module, written through the store's events (no training): diverged seeds
(a footnote), and trials of an older training recipe for an arm the current recipe does not
have, which no surface may count.
"""

from __future__ import annotations

import csv
import html
import io
import math
import re
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi", reason="the dashboard extra (FastAPI) is not installed")
from fastapi.testclient import TestClient

import bnsweep
import bnsweep.workers.spec
from bnsweep.cli import main
from bnsweep.store.api import Store
from bnsweep.web.app import create_app
from tests.service.test_store import make_spec, run_cell
from tests.web.stores import STATES, register

#: The arm `--versus` names: γ = 0.5 at c = 100, present in every block.
VERSUS = "standard γ=0.5 c=100"

#: Option sets, as `bnsweep tables` takes them.
OPTIONS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "level": {"level": 0.2},
    "versus": {"versus": VERSUS},
    "versus-level": {"versus": VERSUS, "level": 0.2},
    "wilcoxon-holm": {"test": "wilcoxon", "correction": "holm"},
}


def _fill(store: Store) -> None:
    STATES["diverged"](store)
    # An older recipe's trials of an arm this bnsweep never trained (γ = 0.05): the CLI and the
    # notebook leave them out (bnsweep.store.results), so every surface must.
    current = bnsweep.workers.spec.RECIPE
    bnsweep.workers.spec.RECIPE = current - 1  # a spec's hash reads it when computed
    try:
        old = [
            make_spec(bn_scale_init=0.05, lr=lr, seed=s) for lr in (0.1, 0.01) for s in (1, 2, 3)
        ]
        register(store, "demo", old, 3)
        for spec in old:
            run_cell(store, spec, test_acc=0.99, best_val_acc=0.99, final_test_acc=0.99)
    finally:
        bnsweep.workers.spec.RECIPE = current


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('surfaces') / 'results.db'}"
    with Store.open(url) as store:
        _fill(store)
    return url


@pytest.fixture(scope="module")
def client(url: str):
    with TestClient(create_app(url), raise_server_exceptions=True) as client:
        yield client


def cli_args(options: dict[str, Any]) -> list[str]:
    args = []
    for name, value in options.items():
        args += [f"--{name}", f"{value:g}" if isinstance(value, float) else str(value)]
    return args


def run_cli(capsys: pytest.CaptureFixture[str], url: str, *args: str) -> str:
    code = main(["tables", "--db", url, "--sweep", "demo", *args])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def web_params(options: dict[str, Any]) -> dict[str, str]:
    # The page's control for the significance level is `alpha`, as in TableQuery.
    return {
        ("alpha" if k == "level" else k): (f"{v:g}" if isinstance(v, float) else str(v))
        for k, v in options.items()
    }


def notebook(url: str, options: dict[str, Any]) -> Any:
    from bnsweep.analysis.stats import AnalysisOptions

    layout = {"layout": "gamma", **({"versus": options["versus"]} if "versus" in options else {})}
    analysis = AnalysisOptions(
        alpha=options.get("level", 0.05),
        test=options.get("test", "t"),
        correction=options.get("correction", "none"),
    )
    return bnsweep.tables(bnsweep.trials(url, "demo"), layout, analysis)


@pytest.fixture(scope="module")
def surfaces(url: str, client: TestClient) -> dict[str, dict[str, Any]]:
    """Every surface's answer under every option set, computed once (capsys is per test, so
    the CLI runs in each test; the rest here)."""
    out: dict[str, dict[str, Any]] = {}
    for key, options in OPTIONS.items():
        params = web_params(options)
        tables = notebook(url, options)
        out[key] = {
            "web_page": client.get("/sweeps/demo", params=params).text,
            "web_md": client.get("/sweeps/demo/tables.md", params=params).text,
            "web_json": client.get("/api/sweeps/demo/tables", params=params).json(),
            "notebook_md": tables.render("md"),
            "notebook_frame": tables.to_frame(),
        }
    return out


@pytest.fixture(scope="module")
def report(url: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from bnsweep.web import build

    out = tmp_path_factory.mktemp("report") / "report"
    with pytest.MonkeyPatch.context() as patch:
        # No figures (the curves pages' take ~5 s, a trial page's ~0.5 s): none holds a table.
        patch.setattr(build, "figures", lambda snap, name: {})
        patch.setattr(build, "STATIC_TRIAL_FIGURES", 0)
        assert main(["report", "--db", url, "--sweep", "demo", "--out", str(out)]) == 0
    return out


# -- the canonical forms each surface is reduced to ------------------------------------------

_NUMBERS = ("row", "n", "mean", "std", "p", "p_adjusted", "significant", "best", "versus")


def _value(name: str, value: Any) -> Any:
    if name in ("significant", "best"):
        return value in (True, "true")
    if name in ("row", "versus"):
        return "" if value is None or value != value else str(value)
    if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
        return None
    return round(float(value), 6) if name in ("mean", "std") else float(value)


def numbers(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """The cells in reading order: (row, n, mean, std, p, p_adjusted, significant, best,
    versus); the CSV prints 8 significant digits, so means and stds are compared to 6 places
    and p to a relative 1e-7 (below)."""
    return [tuple(_value(k, r[k]) for k in _NUMBERS) for r in rows]


def assert_same_numbers(a: list[tuple[Any, ...]], b: list[tuple[Any, ...]]) -> None:
    assert len(a) == len(b) > 0
    for x, y in zip(a, b, strict=True):
        assert x[:4] + x[6:] == y[:4] + y[6:], (x, y)
        for p, q in zip(x[4:6], y[4:6], strict=True):
            assert (p is None) == (q is None), (x, y)
            if p is not None:
                assert p == pytest.approx(q, rel=1e-7, abs=1e-12), (x, y)


def csv_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def _plain(cell: str) -> tuple[str, bool, bool]:
    """A printed cell as (text, bold, underline), whichever of Markdown or HTML printed it."""
    bold = "**" in cell or "<strong>" in cell
    underline = "<u>" in cell
    text = re.sub(r"<[^>]+>", "", cell.replace("**", ""))
    text = re.sub(r"\\([|*_`<>\\])", r"\1", html.unescape(text))
    return text.strip(), bold, underline


def md_cells(md: str) -> list[tuple[str, bool, bool]]:
    """The main table's cells (not the pairwise matrices'), row by row, as `_plain`."""
    table = md.split("\n\n")[1]
    rows = [line for line in table.splitlines() if line.startswith("| ")][1:]
    return [_plain(c) for line in rows for c in line[2:-2].split(" | ")[1:]]


def md_legend(md: str) -> list[str]:
    """The lines under the main table, each unescaped, without its bullet."""
    lines = []
    for block in md.split("\n\n")[2:]:
        if block.startswith(("#", "Pairwise")):
            break
        lines += [_plain(x.removeprefix("- "))[0] for x in block.splitlines()]
    return lines


def page_cells(page: str) -> list[tuple[str, bool, bool]]:
    table = re.search(r'<table class="paper">.*?</table>', page, re.S).group(0)
    return [_plain(c) for c in re.findall(r'<td class="num"[^>]*>(.*?)</td>', table, re.S)]


def page_legend(page: str) -> list[str]:
    after = page.split('<table class="paper">', 1)[1].split("</table>", 1)[1]
    after = after.split('<p class="downloads">', 1)[0].split("</section>", 1)[0]
    return [html.unescape(x) for x in re.findall(r'<p class="note">(.*?)</p>', after, re.S)]


def frame_rows(frame: Any) -> list[dict[str, Any]]:
    return frame.to_dict("records")


# -- the pairs -------------------------------------------------------------------------------


@pytest.mark.parametrize("key", OPTIONS)
def test_the_numbers_are_the_same_everywhere(
    key: str, url: str, surfaces: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    cli = numbers(csv_rows(run_cli(capsys, url, "--format", "csv", *cli_args(OPTIONS[key]))))
    got = surfaces[key]
    assert_same_numbers(numbers(got["web_json"]), cli)
    assert_same_numbers(numbers(frame_rows(got["notebook_frame"])), cli)
    page = re.findall(r'<td class="num" data-[^>]*>', got["web_page"])
    flags = [
        (dict(re.findall(r'data-(\w+)="([^"]*)"', td))) for td in page
    ]  # the page's own data-* of each cell
    assert [(f["significant"] == "true", f["best"] == "true") for f in flags] == [
        (c[6], c[7]) for c in cli
    ]
    if "versus" in OPTIONS[key]:
        assert {c[8] for c in cli} - {""} == {VERSUS}


@pytest.mark.parametrize("key", OPTIONS)
def test_the_printed_cells_and_legend_are_the_same_everywhere(
    key: str, url: str, surfaces: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    cli = run_cli(capsys, url, "--format", "md", *cli_args(OPTIONS[key]))
    got = surfaces[key]
    assert got["web_md"] == cli
    assert got["notebook_md"] == cli
    cells = md_cells(cli)
    assert any(u for _, _, u in cells)
    # Wilcoxon's smallest one-sided p over 3 pairs is 1/8: nothing is bold there.
    assert any(bold for _, bold, _ in cells) == (key != "wilcoxon-holm")
    assert page_cells(got["web_page"]) == cells
    legend = md_legend(cli)
    assert page_legend(got["web_page"]) == legend
    reference = VERSUS if "versus" in OPTIONS[key] else "BASE"
    assert f"better than {reference} by" in legend[0]
    assert "| 0.05 |" not in cli  # the older recipe's γ = 0.05 arm, which no surface counts


def test_the_static_report_is_the_clis_and_the_dashboards(
    url: str, report: Path, surfaces: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    folder = report / "sweeps" / "demo"
    md = run_cli(capsys, url, "--format", "md")
    assert (folder / "tables.md").read_text(encoding="utf-8") == md
    cli = numbers(csv_rows(run_cli(capsys, url, "--format", "csv")))
    assert_same_numbers(numbers(csv_rows((folder / "tables.csv").read_text("utf-8"))), cli)
    page = (report / "sweeps" / "demo.html").read_text(encoding="utf-8")
    assert page_cells(page) == md_cells(md) == page_cells(surfaces["defaults"]["web_page"])
    assert page_legend(page) == md_legend(md)


def _marks_legend(term: str) -> str:
    """The text-mark legend of the plain terminal text: from the line that starts with the
    significance mark to the end, on one line (rich wraps it)."""
    lines = term.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("* "))
    return " ".join(" ".join(lines[start:]).split())


@pytest.mark.parametrize("key", list(OPTIONS))
def test_the_terminals_text_marks_name_the_arm_tested_against(
    key: str, url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Off a terminal bold and underline become * and ^, with a line saying what they mean:
    the same arm as the caption's."""
    term = run_cli(capsys, url, "--color", "never", *cli_args(OPTIONS[key]))
    legend = _marks_legend(term)
    reference = VERSUS if "versus" in OPTIONS[key] else "BASE"
    assert reference in legend, legend
    if reference != "BASE":
        assert "BASE" not in legend, legend


def test_the_pairwise_marks_survive_off_a_terminal(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    md = run_cli(capsys, url, "--format", "md", "--pairwise", "--level", "0.2")
    pairwise = md.split("#### Pairwise", 1)[1]
    bold = len(re.findall(r"\*\*[^*|]+\*\*", pairwise))
    assert bold > 0
    term = run_cli(capsys, url, "--color", "never", "--pairwise", "--level", "0.2")
    matrices = term.split("Pairwise:", 1)[1]
    assert len(re.findall(r"\*\s*│", matrices)) == bold


def test_the_notebook_frame_has_the_csvs_effect_size_and_ci(
    url: str, surfaces: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    rows = csv_rows(run_cli(capsys, url, "--format", "csv"))
    frame = surfaces["defaults"]["notebook_frame"]
    for name in ("effect", "ci_low", "ci_high"):
        assert name in frame.columns, f"to_frame() has no {name!r}: {list(frame.columns)}"
        got = [_value("p", x) for x in frame[name]]
        assert_same_numbers(
            [(0, 0, 0, 0, g, None) for g in got],
            [(0, 0, 0, 0, _value("p", r[name]), None) for r in rows],
        )


def test_the_counts_are_bnsweep_statuss(
    url: str, client: TestClient, capsys: pytest.CaptureFixture[str]
) -> None:
    """The index, the sweep page's status and the API count as `bnsweep status` does: this
    recipe's trials, the older recipe's apart."""
    import json

    from bnsweep.web.view import status_of

    assert main(["status", "--db", url, "--format", "json"]) == 0
    (cli,) = json.loads(capsys.readouterr().out)
    names = ("total", "completed", "running", "failed", "diverged", "pending")
    (index,) = client.get("/api/sweeps").json()
    status = client.get("/api/sweeps/demo/status").json()
    assert [index[k] for k in names] == [status[k] for k in names] == [cli[k] for k in names]
    with Store.open(url, read_only=True) as store:
        expected = store.sweep_status("demo")
        assert expected.older_recipes  # the store holds some, which the counts leave out
        assert status_of("demo", store.trials(sweep="demo")) == expected
