"""A real browser on a real `bnsweep dashboard`: Playwright drives Debian's chromium.

The dashboard serves a store with the demo's shape (filled through store events); the test
checks bold and underline against the CSV, opens a cell and reads its p, then runs a real
one-cell `bnsweep launch` into the same store and watches the index move without a reload.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.web.stores import make_store
from tests.web.test_report import check_site

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)"
    ),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.fixture
def dashboard(tmp_path: Path) -> Iterator[tuple[str, str]]:
    yield from serve(tmp_path, "finished")


@pytest.fixture
def running_dashboard(tmp_path: Path) -> Iterator[tuple[str, str]]:
    yield from serve(tmp_path, "running")


def serve(tmp_path: Path, state: str) -> Iterator[tuple[str, str]]:
    """`bnsweep dashboard` on a store in `state` (tests/web/stores.py): (address, store URL)."""
    url = make_store(tmp_path / "demo.db", state)
    port = free_port()
    log = (tmp_path / "dashboard.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "bnsweep.cli", "dashboard", "--db", url, "--port", str(port)],
        cwd=tmp_path,
        env=environment(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    address = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(address + "/api/sweeps", timeout=1).read()
                break
            except OSError:
                assert process.poll() is None, (tmp_path / "dashboard.log").read_text()
                time.sleep(0.1)
        yield address, url
    finally:
        process.terminate()
        process.wait(timeout=20)
        log.close()


def one_cell_spec(folder: Path) -> Path:
    spec = {
        "name": "one",
        "defaults": {
            "dataset": "digits",
            "arch": "resnet8",
            "epochs": 1,
            "batch_size": 64,
            "device": "cpu",
        },
        "grids": [{"bn_scale_init": [0.5], "bn_lr_divisor": [100]}],
        "base": False,
        "seeds": 1,
        "resources": {"cpus": 1},
        "max_concurrent": 1,
        "retries": 0,
        "storage": str(folder / "runs"),
    }
    path = folder / "one.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


def test_a_browser_sees_the_table_a_cell_and_a_launch(
    dashboard: tuple[str, str], tmp_path: Path
) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    address, url = dashboard
    csv_text = urllib.request.urlopen(address + "/sweeps/demo/tables.csv").read().decode()
    rows = {(r["block"], r["row"], r["column"]): r for r in csv.DictReader(io.StringIO(csv_text))}
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(address + "/sweeps/demo")
            # What the reader sees: computed bold weight and underline of each cell's text.
            seen = page.eval_on_selector_all(
                "table.paper td[data-row]",
                """tds => tds.map(td => {
                    const strong = td.querySelector('strong');
                    const u = td.querySelector('u');
                    return {block: td.dataset.block, row: td.dataset.row, column: td.dataset.column,
                            bold: strong !== null &&
                              Number(getComputedStyle(strong).fontWeight) >= 600,
                            underline: u !== null &&
                              getComputedStyle(u).textDecorationLine.includes('underline')};
                })""",
            )
            assert len(seen) == len(rows) > 0
            for cell in seen:
                row = rows[(cell["block"], cell["row"], cell["column"])]
                assert cell["bold"] == (row["significant"] == "true"), cell
                assert cell["underline"] == (row["best"] == "true"), cell
            assert any(c["bold"] for c in seen)

            # Open a significant cell: its page gives the CSV's p.
            target = next(c for c in seen if c["bold"])
            page.click(f'td[data-row="{target["row"]}"][data-column="{target["column"]}"] a')
            page.wait_for_selector('td[data-stat="p"]')
            shown = float(page.inner_text('td[data-stat="p"]'))
            expected = float(rows[(target["block"], target["row"], target["column"])]["p"])
            assert shown == pytest.approx(expected, rel=1e-5)

            # A one-cell launch into the same store: the index moves without a reload.
            page.goto(address + "/")
            page.evaluate("window.__loaded_once = true")
            names = "els => els.map(a => a.textContent)"
            assert page.eval_on_selector_all("#sweeps a", names) == ["demo"]
            launch = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "bnsweep.cli",
                    "launch",
                    str(one_cell_spec(tmp_path)),
                    "--db",
                    url,
                    "--num-cpus",
                    "1",
                    "--no-tables",
                    "--report",
                    str(tmp_path / "report"),
                ],
                cwd=tmp_path,
                env=environment(),
                capture_output=True,
                text=True,
                timeout=400,
            )
            assert launch.returncode == 0, launch.stderr[-3000:]
            page.wait_for_function(
                """() => {
                    const link = [...document.querySelectorAll('#sweeps a')]
                        .find(a => a.textContent === 'one');
                    if (!link) return false;
                    const row = link.closest('tr');
                    return row.querySelector('[data-count="completed"]').textContent === '1';
                }""",
                timeout=30_000,
            )
            assert page.evaluate("window.__loaded_once") is True  # the same page: no reload
            page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
        finally:
            browser.close()
    assert (tmp_path / "dashboard.png").stat().st_size > 10_000
    # `launch --report DIR` wrote the static report of the new sweep at its end.
    assert "report: " in launch.stdout, launch.stderr[-3000:]
    assert check_site(tmp_path / "report") > 1


#: Where the screenshots of docs/dashboard.md go when this is set (e.g. `docs/img`); unset, the
#: test takes them into its own temporary folder and checks they are images of a page.
SCREENSHOTS = os.environ.get("BNSWEEP_SCREENSHOTS")
PHONE = 390
HEADS = "hs => hs.map(h => h.textContent)"


def test_a_browser_sees_a_live_epoch_the_trials_table_and_no_sideways_scroll(
    running_dashboard: tuple[str, str], tmp_path: Path
) -> None:
    from bnsweep.store.api import Store
    from bnsweep.store.columns import parse_where
    from bnsweep.store.events import EpochRecorded
    from tests.service.test_store import epoch

    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    address, url = running_dashboard
    with Store.open(url) as store:
        every = store.trials(sweep="demo")
        kept = store.trials(sweep="demo", where=parse_where(["test_acc>0.81"]))
    running = every[every["status"] == "running"].iloc[0]
    shots = Path(SCREENSHOTS) if SCREENSHOTS else tmp_path / "img"
    shots.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            # The live epoch counter: epochs written into the store while the page is open.
            page.goto(address + "/sweeps/demo")
            page.evaluate("window.__loaded_once = true")
            assert "no epoch yet (of 3)" in page.inner_text("#running")
            for n in (1, 2):
                with Store.open(url) as store:
                    store.apply(
                        [EpochRecorded(str(running["spec_hash"]), int(running["seed"]), epoch(n))]
                    )
                page.wait_for_function(
                    f"""() => document.querySelector('#running').textContent
                        .includes('epoch {n} of 3')""",
                    timeout=20_000,
                )
            assert page.evaluate("window.__loaded_once") is True  # refreshed in place
            page.wait_for_function(
                "() => document.querySelector('.eta').textContent.startsWith('about ')",
                timeout=20_000,
            )
            page.screenshot(path=str(shots / "dashboard-sweep-1400.png"), full_page=True)

            # A table cell says what it opens, and opens it.
            link = page.locator("table.paper a.cell[title*='seed pairs']").first
            assert "p, CI and d_z for" in (link.get_attribute("title") or "")
            link.click()
            page.wait_for_selector('td[data-stat="p"]')
            assert "/cells/" in page.url
            page.screenshot(path=str(shots / "dashboard-cell-1400.png"), full_page=True)
            cell_path = page.url.removeprefix(address)

            # The trials table: a numeric filter through the store's query, then the chooser.
            page.goto(address + "/sweeps/demo/trials")
            page.screenshot(path=str(shots / "dashboard-trials-1400.png"), full_page=True)
            page.fill('input[name="where"]', "test_acc>0.81")
            page.click('form.controls button[type="submit"] >> nth=0')
            page.wait_for_url("**where=test_acc*")
            shown = page.eval_on_selector_all(
                "#trials tbody tr td:first-child a", "as => as.map(a => Number(a.textContent))"
            )
            assert sorted(shown) == sorted(kept["trial_id"].tolist())
            page.click("details.chooser summary")
            for box in page.query_selector_all('details.chooser input[type="checkbox"]'):
                if box.get_attribute("value") in ("test_acc", "host"):
                    box.check()
                else:
                    box.uncheck()
            page.click("details.chooser button")
            page.wait_for_url("**columns=*")
            heads = page.eval_on_selector_all("#trials thead th", HEADS)
            assert heads == ["trial_id", "test_acc", "host"]
            assert "test_acc" in page.url and "where=test_acc" in page.url
            chosen = page.url.removeprefix(address)
            page.reload()  # the URL remembers the columns
            heads = page.eval_on_selector_all("#trials thead th", HEADS)
            assert heads == ["trial_id", "test_acc", "host"]

            # A phone: no page scrolls sideways; wide tables scroll in their own box.
            phone = browser.new_page(viewport={"width": PHONE, "height": 844})
            trial = f"/sweeps/demo/trials/{int(running['trial_id'])}"
            for name, path in (
                ("index", "/"),
                ("sweep", "/sweeps/demo"),
                ("trials", "/sweeps/demo/trials"),
                ("trials-chosen", chosen),
                ("cell", cell_path),
                ("trial", trial),
            ):
                phone.goto(address + path)
                width = phone.evaluate("document.documentElement.scrollWidth")
                assert width <= PHONE, f"{path}: the page is {width} px wide at {PHONE} px"
                if name in ("index", "sweep", "trials", "cell"):
                    phone.screenshot(path=str(shots / f"dashboard-{name}-390.png"), full_page=True)
            page.goto(address + "/")
            page.screenshot(path=str(shots / "dashboard-index-1400.png"), full_page=True)
        finally:
            browser.close()
    for png in shots.glob("dashboard-*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5_000
