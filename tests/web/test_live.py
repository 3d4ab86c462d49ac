"""A running sweep on the dashboard: each running cell's epoch counter and last metrics, the
ETA from the first stored epoch (the launch line's rule), and a trial page that refreshes
while its trial runs, all from epoch rows written into the store while the dashboard serves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the dashboard extra (FastAPI) is not installed")
from fastapi.testclient import TestClient

from bnsweep.store.api import Store
from bnsweep.store.events import EpochRecorded, TrialFinished
from bnsweep.web.app import create_app
from tests.service.test_store import epoch, result
from tests.web.stores import make_store


def running_trial(url: str) -> tuple[int, str, int]:
    with Store.open(url) as store:
        trials = store.trials(sweep="demo")
    row = trials[trials["status"] == "running"].iloc[0]
    return int(row["trial_id"]), str(row["spec_hash"]), int(row["seed"])


def record(url: str, *events: object) -> None:
    with Store.open(url) as store:
        store.apply(list(events))


def test_a_running_cell_shows_its_epoch_and_metrics_and_the_eta_starts(tmp_path: Path) -> None:
    url = make_store(tmp_path / "live.db", "running")
    trial_id, spec_hash, seed = running_trial(url)
    with TestClient(create_app(url)) as client:
        page = client.get("/sweeps/demo").text
        assert '<section id="running" data-refresh>' in page
        assert "no epoch yet (of 3)" in page
        assert client.get("/api/sweeps").json()[0]["eta"] == "estimating…"

        record(url, EpochRecorded(spec_hash, seed, metrics=epoch(1)))
        running = client.get("/sweeps/demo", params={"fragment": "running"}).text
        assert f'href="/sweeps/demo/trials/{trial_id}"' in running
        assert "epoch 1 of 3" in running
        values = epoch(1)
        assert f"{100 * values['val_acc']:.2f} %" in running
        assert f"{100 * values['test_acc']:.2f} %" in running
        # One epoch stored: the ETA is there, as in the launch's progress line.
        sweeps = client.get("/api/sweeps").json()[0]
        assert sweeps["eta_seconds"] is not None and sweeps["eta"].startswith("about ")

        record(url, EpochRecorded(spec_hash, seed, metrics=epoch(2)))
        running = client.get("/sweeps/demo", params={"fragment": "running"}).text
        assert "epoch 2 of 3" in running and "epoch 1 of 3" not in running


def test_a_trial_page_refreshes_while_its_trial_runs(tmp_path: Path) -> None:
    url = make_store(tmp_path / "live.db", "running")
    trial_id, spec_hash, seed = running_trial(url)
    path = f"/sweeps/demo/trials/{trial_id}"
    with TestClient(create_app(url)) as client:
        assert '<section id="trial" data-refresh>' in client.get(path).text
        record(url, EpochRecorded(spec_hash, seed, metrics=epoch(1)))
        inner = client.get(path, params={"fragment": "trial"}).text
        assert "Running: " in inner and "epoch 1 of 3" in inner
        assert "<html" not in inner  # the section's content, not a page
        assert client.get(path, params={"fragment": "nope"}).status_code == 404

        record(
            url,
            *(EpochRecorded(spec_hash, seed, metrics=epoch(n)) for n in (2, 3)),
            TrialFinished.from_result(spec_hash, seed, result()),
        )
        page = client.get(path).text
        assert re.search(r'<section id="trial">', page)  # finished: nothing left to refresh
        assert "Running: " not in page


def test_table_cells_are_links_that_say_what_they_open(tmp_path: Path) -> None:
    url = make_store(tmp_path / "done.db", "finished")
    with TestClient(create_app(url)) as client:
        page = client.get("/sweeps/demo").text
        cells = re.findall(r'<a class="cell" href="([^"]+)" title="([^"]+)">', page)
        assert cells
        hovers = {title for _, title in cells}
        assert "3 seed pairs, t, p, CI and d_z for standard γ=0.1 c=100 vs BASE" in hovers
        assert any(title.startswith("the 3 runs of BASE by seed") for title in hovers)
        href = next(h for h, t in cells if "γ=0.1" in t).replace("&amp;", "&")
        assert 'data-stat="p"' in client.get(href).text  # the cell page, with its p
        wilcoxon = client.get("/sweeps/demo", params={"test": "wilcoxon"}).text
        assert "seed pairs, W+, p, CI and d_z" in wilcoxon
