"""Trials on GPU nodes, simulated: a local Ray told it has 2 GPUs, and torch.cuda mocked in every
worker as a node with 8 visible GPUs that must not be touched by a trial Ray gave no GPU.

What holds here holds on a real GPU node: Ray decides which GPU a trial gets (it sets
CUDA_VISIBLE_DEVICES for it), and a trial that got none trains on the CPU without initialising
CUDA. Also here: the checkpoint cadence (a trial killed between checkpoints resumes from the last
one and ends with the metrics of an uninterrupted run), and launches that cannot run, refused.
"""

from __future__ import annotations

import io
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
import torch
from ray import cloudpickle

from bnsweep import preflight
from bnsweep.driver import launch
from bnsweep.plan import cell_of
from bnsweep.preflight import check_resources_fit
from bnsweep.store.api import Store
from bnsweep.sweep import expand, parse_sweep_spec
from bnsweep.workers.errors import SpecError
from bnsweep.workers.trial import run_trial

pytestmark = pytest.mark.timeout(600)

#: JSON settings the workers' hook reads: where to record what each trial saw, where to fail.
SETTINGS_ENV = "BNSWEEP_TEST_GPU_NODE_SETTINGS"


# -- what runs in every Ray worker ------------------------------------------------------------
def _pretend_gpu_node() -> None:
    """torch.cuda says 8 GPUs are there, and fails loudly the moment anything initialises CUDA.
    `run_trial` records what each trial saw; a GPU trial (fake GPUs cannot compute) records and
    returns at once, and a trial can be told to fail once after an epoch."""
    import torch

    import bnsweep.trainable as worker_trainable

    def touched(*args: Any, **kwargs: Any) -> None:
        if not ray.get_gpu_ids():
            raise RuntimeError("CUDA was initialised by a trial Ray gave no GPU")

    torch.cuda.get_device_name = lambda *args: touched() or "Fake GPU"

    torch.cuda.is_available = lambda: True
    torch.cuda.device_count = lambda: 8
    torch.cuda._lazy_init = touched
    torch.cuda.init = touched
    torch.cuda.get_rng_state_all = touched
    torch.cuda.set_rng_state_all = touched
    real_run_trial = worker_trainable.run_trial

    def recording_run_trial(spec: Any, on_epoch: Any = None, checkpoint: Any = None, **kw: Any):
        settings = json.loads(Path(os.environ[SETTINGS_ENV]).read_text())
        seen = {
            "seed": spec.seed,
            "device": spec.device,
            "visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "gpu_ids": [str(i) for i in ray.get_gpu_ids()],
            "resumed": checkpoint is not None,
        }
        with open(settings["record"], "a") as f:
            f.write(json.dumps(seen) + "\n")
        if spec.device == "cuda":
            time.sleep(settings.get("gpu_seconds", 0))  # long enough for the trials to overlap
            from bnsweep.workers.results import TrialResult

            return TrialResult("completed", spec.epochs, 1, 0.5, 0.5, 0.5, 1.0, 1.0)
        fail_at = settings.get("fail_once_after_epoch")
        flag = Path(settings["record"]).with_suffix(".failed")

        def failing_on_epoch(metrics: Any, save: Any) -> None:
            on_epoch(metrics, save)
            if metrics.epoch == fail_at and not flag.exists():
                flag.touch()
                os._exit(1)  # the trial's process dies, as on a lost node or an OOM kill

        result = real_run_trial(spec, on_epoch=failing_on_epoch, checkpoint=checkpoint, **kw)
        assert not torch.cuda.is_initialized()
        return result

    worker_trainable.run_trial = recording_run_trial

    import bnsweep.workers.compile as compile_module

    def compile_problem(device: str, mode: str = "default") -> str | None:
        """The real check, uncached, with no compiler on PATH when the test says so."""
        settings = json.loads(Path(os.environ[SETTINGS_ENV]).read_text())
        saved = {k: os.environ.get(k) for k in ("PATH", "CC", "CXX")}
        if settings.get("no_compiler"):
            os.environ["PATH"] = str(Path(settings["record"]).parent / "empty-bin")
            os.environ.pop("CC", None), os.environ.pop("CXX", None)
        try:
            return compile_module._compile_problem.__wrapped__(device, mode)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    compile_module.compile_problem = compile_problem


@pytest.fixture(scope="module")
def gpu_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    settings = tmp_path_factory.mktemp("gpu-node") / "settings.json"
    os.environ[SETTINGS_ENV] = str(settings)
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/
    ray.init(
        address="local",
        num_cpus=2,
        num_gpus=2,
        include_dashboard=False,
        logging_level=logging.WARNING,
        runtime_env={"worker_process_setup_hook": _pretend_gpu_node},
    )
    yield settings
    ray.shutdown()
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def _sweep(folder: Path, name: str, **fields: Any) -> tuple[Any, str]:
    spec: dict[str, Any] = {
        "name": name,
        "defaults": {"dataset": "digits", "arch": "resnet8", "epochs": 2, "batch_size": 64},
        "grids": [{"bn_scale_init": [0.5], "bn_lr_divisor": [100]}],
        "base": False,
        "seeds": 2,
        "resources": {"cpus": 1, "gpus": 0},
        "retries": 0,
        "storage": str(folder / "runs"),
        **fields,
    }
    text = json.dumps(spec)
    return parse_sweep_spec(text), text


def _launch(sweep: Any, text: str, url: str) -> Any:
    with Store.open(url) as store:
        return launch(sweep, store, text, progress_stream=io.StringIO())


def _settings(path: Path, **values: Any) -> Path:
    record = path.parent / f"{time.monotonic_ns()}.jsonl"
    path.write_text(json.dumps({"record": str(record), **values}))
    return record


def _seen(record: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in record.read_text().splitlines()]


# -- devices ----------------------------------------------------------------------------------
def test_a_trial_given_no_gpu_trains_on_the_cpu_without_touching_cuda(
    gpu_node: Path, tmp_path: Path
) -> None:
    record = _settings(gpu_node)
    sweep, text = _sweep(tmp_path, "cpu-on-gpu-node", seeds=1)  # device: auto, gpus: 0
    url = f"sqlite:///{tmp_path / 'store.db'}"
    summary = _launch(sweep, text, url)
    assert (summary.completed, summary.failed) == (1, 0)
    (seen,) = _seen(record)
    assert seen["device"] == "cpu" and seen["gpu_ids"] == [] and seen["visible"] is None
    with Store.open(url) as store:
        trials = store.trials(sweep="cpu-on-gpu-node")
    assert trials["device"].tolist() == ["cpu"]
    assert trials["threads"].iloc[0] >= 1  # recorded: results depend on it on the CPU
    assert json.loads(trials["runtime"].iloc[0])["checkpoint_every"] == 10


def test_gpu_trials_get_the_gpu_ray_assigned_each(gpu_node: Path, tmp_path: Path) -> None:
    record = _settings(gpu_node, gpu_seconds=3)
    sweep, text = _sweep(tmp_path, "two-gpus", resources={"cpus": 0.5, "gpus": 1})
    summary = _launch(sweep, text, f"sqlite:///{tmp_path / 'store.db'}")
    assert summary.completed == 2
    seen = _seen(record)
    assert [s["device"] for s in seen] == ["cuda", "cuda"]
    # One GPU each, a different one, and the only one it sees: it is its cuda:0.
    assert sorted(s["visible"] for s in seen) == ["0", "1"]
    assert all(s["gpu_ids"] == [s["visible"]] for s in seen)
    with Store.open(f"sqlite:///{tmp_path / 'store.db'}") as store:
        assert store.trials(sweep="two-gpus")["device"].tolist() == ["Fake GPU"] * 2


def test_a_request_no_node_can_meet_is_refused_before_anything_is_written(
    gpu_node: Path, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    for resources, asked in (({"cpus": 1, "gpus": 4}, "4 GPUs"), ({"cpus": 16}, "16 CPUs")):
        sweep, text = _sweep(tmp_path, "too-big", resources=resources)
        started = time.monotonic()
        with pytest.raises(SpecError, match="no node of this Ray cluster") as err:
            _launch(sweep, text, url)
        assert time.monotonic() - started < 30
        assert asked in str(err.value) and "\n" not in str(err.value)
        assert "the largest has 2 CPUs and 2 GPUs" in str(err.value)
    with Store.open(url) as store:
        assert store.sweeps() == []  # refused before the sweep was registered
    assert not (tmp_path / "runs").exists()


def test_with_an_autoscaler_an_unmet_request_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    class Resources:
        cpus, gpus = 1.0, 1.0

    nodes = [{"Alive": True, "Resources": {"CPU": 8.0}}, {"Alive": False, "Resources": {"GPU": 8}}]
    with pytest.raises(SpecError):
        check_resources_fit(Resources(), nodes, autoscaler=False)
    with caplog.at_level(logging.WARNING, logger="bnsweep.preflight"):
        check_resources_fit(Resources(), nodes, autoscaler=True)
    assert "waiting for the autoscaler" in caplog.text
    check_resources_fit(Resources(), [{"Alive": True, "Resources": {"CPU": 1, "GPU": 1}}],
                        autoscaler=False)  # fmt: skip


def test_autoscaler_detection_uses_a_ray_call_that_still_exists(
    gpu_node: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`autoscaler_present` reads the autoscaler's cluster config through ray._private.state; if
    a Ray upgrade moves it, this fails here rather than every launch guessing wrong."""
    from ray._private.state import state

    assert callable(state.get_cluster_config)
    monkeypatch.delenv(preflight.AUTOSCALER_ENV, raising=False)
    assert preflight.autoscaler_present() is False  # a local Ray has no autoscaler config
    monkeypatch.setenv(preflight.AUTOSCALER_ENV, "1")
    assert preflight.autoscaler_present() is True


# -- the checkpoint cadence -------------------------------------------------------------------
def test_a_trial_killed_between_checkpoints_resumes_from_the_last_one_exactly(
    gpu_node: Path, tmp_path: Path
) -> None:
    record = _settings(gpu_node, fail_once_after_epoch=3)
    sweep, text = _sweep(
        tmp_path,
        "cadence",
        seeds=1,
        defaults={"dataset": "digits", "arch": "resnet8", "epochs": 5, "batch_size": 64},
        checkpoint_every=2,
        retries=1,
        diagnostics={"every": 0},
    )
    url = f"sqlite:///{tmp_path / 'store.db'}"
    summary = _launch(sweep, text, url)
    assert (summary.completed, summary.failed, summary.starts) == (1, 0, 2)
    attempts = _seen(record)
    assert [a["resumed"] for a in attempts] == [False, True]
    (cell,) = expand(sweep)
    assert summary.resumed == {cell_of(cell): 2}  # epoch 3 was lost with the process

    with Store.open(url) as store:
        trials, epochs = store.trials(sweep="cadence"), store.epochs(sweep="cadence")
    assert epochs["epoch"].tolist() == [1, 2, 3, 4, 5]
    threads = torch.get_num_threads()
    torch.set_num_threads(int(trials["threads"].iloc[0]))  # as the Ray trial ran
    try:
        alone = run_trial(cell.replace(device="cpu"))
    finally:
        torch.set_num_threads(threads)
    assert epochs["val_acc"].tolist() == [m.val_acc for m in alone.history]
    assert epochs["train_loss"].tolist() == [m.train_loss for m in alone.history]
    assert trials["test_acc"].tolist() == [alone.test_acc]
    assert trials["attempts"].tolist() == [2]


# -- compile ------------------------------------------------------------------------------------
def test_compile_without_a_compiler_on_the_workers_is_refused_before_anything_runs(
    gpu_node: Path, tmp_path: Path
) -> None:
    record = _settings(gpu_node, no_compiler=True)
    (record.parent / "empty-bin").mkdir(exist_ok=True)
    defaults = {"dataset": "digits", "arch": "resnet8", "epochs": 1, "compile": True}
    sweep, text = _sweep(tmp_path, "compiled", defaults=defaults)
    url = f"sqlite:///{tmp_path / 'store.db'}"
    with pytest.raises(SpecError) as err:
        _launch(sweep, text, url)
    message = str(err.value)
    assert message.startswith("compile: true, but compiling fails on worker ")
    assert "no C++ compiler on PATH" in message and "\n" not in message
    assert not record.exists()  # no trial started
    with Store.open(url) as store:
        assert store.sweeps() == []
