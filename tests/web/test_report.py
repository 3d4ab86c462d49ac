"""The static report: every link resolves to a file in it, no page names an external URL, it
replaces an earlier report whole, and `bnsweep report` writes it."""

from __future__ import annotations

import re
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from bnsweep.cli import main
from bnsweep.store.api import Store
from bnsweep.store.errors import StoreFailure
from bnsweep.store.events import TrialStarted
from bnsweep.web.report import write_report
from tests.web.stores import cells, make_store

_LINK = re.compile(r'(?:href|src)="([^"]*)"')
_URL = re.compile(r"\b(?:https?|ftp)://", re.I)


def check_site(root: Path) -> int:
    """Assert every relative link of every page resolves and no page names a URL; returns the
    number of pages checked."""
    pages = sorted(root.rglob("*.html"))
    assert pages
    for page in pages:
        text = page.read_text(encoding="utf-8")
        assert _URL.search(text) is None, f"{page} names a URL: {_URL.search(text)}"
        for link in _LINK.findall(text):
            parts = urlsplit(link.replace("&amp;", "&"))
            assert not parts.scheme and not parts.netloc, f"{page}: external link {link}"
            if not parts.path:
                continue  # a fragment of the page itself
            target = (page.parent / unquote(parts.path)).resolve()
            assert target.is_file(), f"{page.relative_to(root)} links to missing {link}"
            assert root.resolve() in target.parents, f"{page} links outside the report: {link}"
    for svg in root.rglob("*.svg"):
        text = svg.read_text(encoding="utf-8")
        assert not re.search(r'href="(?:https?:)?//', text), f"{svg} loads something external"
    return len(pages)


@pytest.mark.parametrize("state", ["failed", "diverged", "pending", "empty"])
def test_every_link_of_the_report_resolves(tmp_path: Path, state: str) -> None:
    url = make_store(tmp_path / "r.db", state)
    out = write_report(url, None, tmp_path / "report")
    assert out == (tmp_path / "report").resolve()
    pages = check_site(out)
    if state == "empty":
        assert pages == 1 and "No sweeps" in (out / "index.html").read_text(encoding="utf-8")
        return
    sweep = out / "sweeps" / "demo"
    assert (out / "sweeps" / "demo.html").is_file()
    assert (sweep / "trials.csv").is_file() and (sweep / "trials.parquet").is_file()
    if state != "pending":
        assert sorted(p.name for p in sweep.glob("tables.*")) == [
            "tables.csv",
            "tables.html",
            "tables.md",
            "tables.tex",
        ]
        assert list((sweep / "cells").glob("*.html"))
        assert list((sweep / "figures").glob("difference_*.svg"))


def test_the_downloads_are_what_bnsweep_tables_writes(tmp_path: Path, capsys) -> None:
    url = make_store(tmp_path / "r.db", "finished")
    out = write_report(url, "demo", tmp_path / "report")
    for fmt, ext in (("md", "md"), ("latex", "tex"), ("csv", "csv"), ("html", "html")):
        assert (
            main(
                [
                    "tables",
                    "--db",
                    url,
                    "--sweep",
                    "demo",
                    "--format",
                    fmt,
                    "--out",
                    str(tmp_path / "t"),
                ]
            )
            == 0
        )
        capsys.readouterr()
        expected = (tmp_path / "t" / f"demo.{ext}").read_text(encoding="utf-8")
        assert (out / "sweeps" / "demo" / f"tables.{ext}").read_text(encoding="utf-8") == expected


def test_a_new_report_replaces_the_old_one_whole(tmp_path: Path) -> None:
    url = make_store(tmp_path / "r.db", "finished")
    out = tmp_path / "report"
    write_report(url, "demo", out)
    (out / "stale.html").write_text("old", encoding="utf-8")
    write_report(url, "demo", out)
    assert not (out / "stale.html").exists()
    # Nothing is left beside it: no temporary or old folders.
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".report")]


def test_a_failed_write_leaves_the_old_report(tmp_path: Path, monkeypatch) -> None:
    url = make_store(tmp_path / "r.db", "finished")
    out = tmp_path / "report"
    write_report(url, "demo", out)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    from bnsweep.web import report

    def broken(*args: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(report, "_write_sweep", broken)
    with pytest.raises(RuntimeError):
        write_report(url, "demo", out)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".report")]


def test_an_unknown_sweep_names_the_known_ones(tmp_path: Path) -> None:
    url = make_store(tmp_path / "r.db", "finished")
    # The store's own refusal, as for every command: a runtime failure (exit 1).
    with pytest.raises(StoreFailure, match=r"no sweep named 'nope'.*known sweeps: demo"):
        write_report(url, "nope", tmp_path / "report")
    assert not (tmp_path / "report").exists()


def test_write_report_takes_an_open_store_and_leaves_it_open(tmp_path: Path) -> None:
    url = make_store(tmp_path / "r.db", "finished")
    with Store.open(url, create=False) as store:
        write_report(store, "demo", tmp_path / "report")
        assert store.sweeps()  # still usable: the caller's store is not closed


def test_bnsweep_report_prints_the_folder(tmp_path: Path, capsys) -> None:
    url = make_store(tmp_path / "r.db", "finished")
    assert main(["report", "--db", url, "--sweep", "demo", "--out", str(tmp_path / "site")]) == 0
    assert capsys.readouterr().out.strip() == str((tmp_path / "site").resolve())
    assert main(["report", "--db", url, "--sweep", "x", "--out", str(tmp_path / "o")]) == 1
    assert "bnsweep: error: no sweep named 'x'" in capsys.readouterr().err


def test_a_report_is_rewritten_while_a_launch_runs_and_at_its_end(tmp_path: Path) -> None:
    from bnsweep.web.report import ReportWhileRunning

    url = make_store(tmp_path / "r.db", "running")
    out = tmp_path / "report"
    with ReportWhileRunning(url, "demo", out, every_seconds=0.05) as writer:
        deadline = time.monotonic() + 120
        while writer.written is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert writer.written == out.resolve()  # written while the block still ran
        with Store.open(url) as store:
            spec = cells(range(1, 4))[-1]
            store.apply([TrialStarted(spec.spec_hash, spec.seed)])
    # The last write, at the end, has the last state: three running cells.
    assert '<span data-count="running">3</span>' in (out / "sweeps" / "demo.html").read_text(
        encoding="utf-8"
    )


def test_a_report_that_cannot_be_written_is_a_warning(tmp_path: Path, caplog) -> None:
    from bnsweep.web.report import ReportWhileRunning

    with ReportWhileRunning(f"sqlite:///{tmp_path / 'none.db'}", "demo", tmp_path / "r"):
        pass
    assert "could not write the report" in caplog.text and "no results database" in caplog.text
