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
    url = make_store(tmp_path / "demo.db", "finished")
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
