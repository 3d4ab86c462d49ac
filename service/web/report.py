"""The static report: the dashboard's pages written as files, for a login node with no open port.

    report/
      index.html                       the sweeps in the report
      static/bnsweep.css, bnsweep.js   the only assets (package data)
      sweeps/NAME.html                 progress, recipe, the table, missing seeds, failures
      sweeps/NAME/cells/B-R-C.html     one cell's pairs and test
      sweeps/NAME/curves.html          curves (curves_seeds.html: with per-seed traces), figures
      sweeps/NAME/figures/*.svg
      sweeps/NAME/trials.html          the trials table; trials/ID.html one trial
      sweeps/NAME/tables.{md,tex,csv,html}, trials.csv, trials.parquet
      .bnsweep-report                  the marker: bnsweep wrote this folder and may replace it

The whole folder is written beside `out_dir` under a temporary name and renamed into place, so
a reader sees the previous report or the new one, never a half-written one. Only a folder that
is new, empty or an earlier report (its marker, checked before and again once moved aside) is
ever replaced: anything else at `out_dir` is refused and left as it was (bnsweep.outputs).
Every link is relative and no page names an external URL, so the folder can be copied anywhere.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from bnsweep.outputs import (
    REPORT_MARKER,
    check_writable_folder,
    replaceable_kind,
    report_marker_text,
)
from bnsweep.sweep_tables import safe_name
from bnsweep.web import build
from bnsweep.web.frame import Site
from bnsweep.web.view import Reader, Snapshot, TableQuery
from bnsweep.workers.errors import SpecError

if TYPE_CHECKING:
    from bnsweep.store.api import Store

log = logging.getLogger(__name__)

ASSETS = ("bnsweep.css", "bnsweep.js")


def write_report(
    store: Store | str | None,
    sweep_name: str | Iterable[str] | None,
    out_dir: str | Path,
    *,
    option: str = "--out",
) -> Path:
    """Write the report of `sweep_name` (a name, several, or None for every sweep) from `store`
    (an open `Store`, or a URL opened read-only) to `out_dir`, atomically; returns `out_dir`
    (absolute). An `out_dir` that is not new, empty or an earlier report is a SpecError naming
    `option`, and nothing is written.

    What `bnsweep launch --report DIR` calls at the end of a sweep (and every few minutes
    while it runs, with `--report-every`).
    """
    url = store if isinstance(store, str) or store is None else store.url
    out = check_out(option, out_dir, url)  # before the store is read: refused, nothing touched
    reader = Reader(store) if isinstance(store, str) or store is None else Reader(store=store)
    try:
        snap = reader.snapshot()
        names = _names(snap, sweep_name)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        try:
            _write_site(snap, names, tmp)
            os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; a report is for others to read
            _swap_into_place(tmp, out, lambda: check_out(option, out, url))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    finally:
        reader.close()
    log.info("wrote the report of %s to %s", ", ".join(names) or "no sweep", out)
    return out


def check_out(option: str, out_dir: str | Path, store_url: str | None) -> Path:
    """`out_dir` as a folder a report may replace (bnsweep.outputs), absolute; SpecError else."""
    return check_writable_folder(option, out_dir, replaced=True, store_url=store_url)


def _names(snap: Snapshot, sweep_name: str | Iterable[str] | None) -> list[str]:
    if sweep_name is None:
        return snap.sweep_names()
    names = [sweep_name] if isinstance(sweep_name, str) else list(sweep_name)
    for name in names:
        # The store's own check, so an unknown sweep is its one line and exit code (1), as
        # for every other command.
        snap.store.get_sweep(name)
    return names


def _swap_into_place(tmp: Path, out: Path, check: Callable[[], object]) -> None:
    """Rename `tmp` to `out`. An existing `out` is checked again (`check`), renamed aside into
    a folder of our own, checked once more there (where nobody else can swap it), and only
    then is `tmp` renamed in and the old folder removed; at every instant `out` is a whole
    report (or, between the two renames, absent). A rename moves a link, never its target."""
    if not os.path.lexists(out):
        os.rename(tmp, out)  # fails, and removes nothing, if a non-empty folder appeared since
        return
    check()
    aside = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    old = aside / out.name
    os.rename(out, old)
    kind = replaceable_kind(old)
    if kind is None:  # changed between the check and the rename: put it back, untouched
        os.rename(old, out)
        aside.rmdir()
        check()  # raises, naming what is there now
        raise SpecError(f"{out}: changed while the report was written; it was left as it is")
    try:
        os.rename(tmp, out)
    except OSError:
        os.rename(old, out)
        aside.rmdir()
        raise
    if kind == "report":
        shutil.rmtree(old, ignore_errors=True)
    try:
        if old.exists():
            old.rmdir()  # an empty folder only while still empty: what reached it since stays
        aside.rmdir()
    except OSError as err:
        log.warning("left %s beside the report: %s", aside, err.strerror or err)


def _write(path: Path, text: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")


def _write_site(snap: Snapshot, names: list[str], root: Path) -> None:
    _write(root / REPORT_MARKER, report_marker_text())
    static = resources.files("bnsweep.web") / "static"
    for asset in ASSETS:
        _write(root / "static" / asset, static.joinpath(asset).read_text(encoding="utf-8"))
    site = Site(live=False)
    overviews = [snap.overview(name) for name in names]
    from bnsweep.web import pages

    _write(root / "index.html", pages.index_page(site, overviews, snap.store.url))
    for name in names:
        _write_sweep(snap, name, root)


def _write_sweep(snap: Snapshot, name: str, root: Path) -> None:
    query = TableQuery()
    folder = safe_name(name, "sweep")
    base = root / "sweeps" / folder
    trials = snap.trials(name)
    shown = trials.iloc[: build.STATIC_TRIAL_ROWS]
    failed = trials[trials["status"].astype(str) == "failed"]
    written = frozenset(int(t) for t in (*shown["trial_id"], *failed["trial_id"]))
    site = Site(live=False, trial_pages=written)

    def page(*parts: str) -> tuple[Site, Path]:
        return site.at(*parts), root.joinpath(*parts[:-1], parts[-1] + ".html")

    here, path = page("sweeps", folder)
    _write(path, build.sweep(snap, here, name, query))
    tables = build.tables_or_reason(snap, name, query)
    if not isinstance(tables, str):
        for ident in build.cell_ids(tables[0]):
            here, path = page("sweeps", folder, "cells", ident)
            _write(path, build.cell(snap, here, name, ident, query))
        for ext in build.TABLE_FORMATS:
            _write(base / f"tables.{ext}", build.table_download(snap, name, query, ext)[0])
    for stem, per_seed in (("curves", False), ("curves_seeds", True)):
        here, path = page("sweeps", folder, stem)
        _write(path, build.curves(snap, here, name, per_seed))
    for fig in build.figures(snap, name).values():
        _write(base / "figures" / f"{fig.stem}.svg", fig.svg)
    here, path = page("sweeps", folder, "trials")
    _write(path, build.trials(snap, here, name))
    figures = len(written) <= build.STATIC_TRIAL_FIGURES
    for trial_id in sorted(written):
        here, path = page("sweeps", folder, "trials", str(trial_id))
        _write(path, build.trial(snap, here, name, trial_id, figure=figures))
    _write(base / "trials.csv", build.trials_csv(snap, name))
    _write(base / "trials.parquet", build.trials_parquet(snap, name))


class ReportWhileRunning:
    """`with ReportWhileRunning(url, sweep, out, every_seconds):` around a launch: rewrites the
    report every `every_seconds` (0: never) in a background thread while the block runs, and
    once more at its end. A report that cannot be written is a warning, never the launch's
    failure: the results are in the store and `bnsweep report` can write it later."""

    def __init__(
        self, url: str | None, sweep: str, out_dir: str | Path, every_seconds: float = 0.0
    ) -> None:
        import threading

        self.url, self.sweep, self.out_dir = url, sweep, Path(out_dir)
        self.every_seconds = float(every_seconds)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bnsweep-report", daemon=True)
        self.written: Path | None = None

    def _write(self) -> None:
        from bnsweep.workers.errors import BnsweepError

        try:
            self.written = write_report(self.url, self.sweep, self.out_dir, option="--report")
        except (BnsweepError, OSError) as err:
            log.warning("could not write the report to %s: %s", self.out_dir, err)

    def _loop(self) -> None:
        while not self._stop.wait(self.every_seconds):
            self._write()

    def __enter__(self) -> ReportWhileRunning:
        if self.every_seconds > 0:
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._write()
