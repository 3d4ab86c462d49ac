"""Several trials per GPU: a sweep asking for a quarter GPU per trial runs four trials at once.

Ray is told this CPU machine has one GPU (Ray only counts GPUs; it never touches one), the
trials train on the CPU (`device: cpu`), and the store's start/finish times show the overlap.
The GPU packing benchmark's CPU path (plain processes, no Ray) is exercised at toy size too.
"""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
import yaml

from bnsweep.driver import launch
from bnsweep.store.api import Store
from bnsweep.sweep import parse_sweep_spec
from tests.bench_scripts import BENCH

pytestmark = pytest.mark.timeout(600)


@pytest.fixture
def one_fake_gpu() -> Iterator[None]:
    ray.init(
        address="local",
        num_cpus=2,
        num_gpus=1,
        include_dashboard=False,
        logging_level=logging.WARNING,
    )
    yield
    ray.shutdown()


class GpuWatch:
    """Polls Ray for the GPU capacity left free, from a thread, while a launch runs."""

    def __init__(self, every: float = 0.1) -> None:
        self.every, self.least_free = every, 1.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.least_free = min(self.least_free, ray.available_resources().get("GPU", 0.0))
            self._stop.wait(self.every)

    def __enter__(self) -> GpuWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_four_quarter_gpu_trials_train_at_once(one_fake_gpu: None, tmp_path: Path) -> None:
    # Four cells that differ in precision and memory format, so the store also shows that both
    # are recorded with each result.
    grid = {"precision": ["fp32", "bf16"], "memory_format": ["contiguous", "channels_last"]}
    text = yaml.safe_dump(
        {
            "name": "packed",
            "defaults": {
                "dataset": "digits",
                "arch": "resnet8",
                # Long enough that the last trial starts before the first ends, on a fast machine
                # too (Ray starts the four workers over a few seconds).
                "epochs": 8,
                "batch_size": 64,
                "device": "cpu",
            },
            "grids": [grid],
            "base": False,
            "seeds": 1,
            "resources": {"cpus": 0.5, "gpus": 0.25},
            "retries": 0,
            "storage": str(tmp_path / "runs"),
        }
    )
    sweep = parse_sweep_spec(text)
    url = f"sqlite:///{tmp_path / 'packed.db'}"
    with Store.open(url) as store, GpuWatch() as watch:
        summary = launch(sweep, store, text, progress_stream=io.StringIO())
    assert (summary.completed, summary.failed) == (4, 0)

    # 4 × 0.25 GPU: the whole fake GPU was handed out at one moment...
    assert watch.least_free == pytest.approx(0.0, abs=1e-9)
    with Store.open(url, create=False) as store:
        trials = store.trials(sweep="packed")
    assert set(trials["status"]) == {"completed"}
    # ... and every trial had started before the first one finished.
    assert trials["started_at"].max() < trials["finished_at"].min()
    recorded = set(zip(trials["precision"], trials["memory_format"], strict=True))
    assert recorded == {
        ("fp32", "contiguous"),
        ("fp32", "channels_last"),
        ("bf16", "contiguous"),
        ("bf16", "channels_last"),
    }


def test_the_packing_bench_runs_concurrent_trials_on_a_cpu(tmp_path: Path) -> None:
    out = tmp_path / "packing.json"
    started = time.monotonic()
    subprocess.run(
        [sys.executable, str(BENCH / "packing.py"), "--device", "cpu", "--trials", "1", "2",
         "--arch", "resnet8", "--batch", "32", "--precision", "fp32",
         "--memory-format", "contiguous", "--train-images", "64", "--val-images", "16",
         "--test-images", "16", "--epochs", "2", "--json", str(out)],
        check=True, timeout=540,
    )  # fmt: skip
    rows = json.loads(out.read_text())["results"]
    assert [r["trials"] for r in rows] == [1, 2]
    for row in rows:
        assert len(row["per_trial_images_per_s"]) == row["trials"]
        assert 0 < row["seconds"] < time.monotonic() - started
        assert row["aggregate_images_per_s"] > 0
    assert rows[0]["vs_one_trial"] == 1.0
