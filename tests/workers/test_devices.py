"""Trials on GPU nodes, checked on a CPU with a mocked `torch.cuda`: a cpu trial never touches
CUDA, checkpoints resume with any number of GPUs, every precision is deterministic unless
`cudnn_benchmark` says otherwise, and evaluation batches change no accuracy."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from bnsweep.workers.checkpoint import load_checkpoint, save_checkpoint
from bnsweep.workers.data import load_splits
from bnsweep.workers.devices import device_numerics, resolve_device
from bnsweep.workers.errors import SpecError
from bnsweep.workers.seeding import complex_seed
from bnsweep.workers.spec import PRECISIONS, RESULT_FIELD_NAMES, RUNTIME_FIELDS, TrialSpec
from bnsweep.workers.trial import (
    EVAL_BATCH_SIZES,
    autocast_for,
    build,
    eval_batch_size_for,
    evaluate,
    make_loaders,
    memory_format_for,
    run_trial,
    train_one_epoch,
)

SPEC = TrialSpec(dataset="digits", arch="resnet8", epochs=2, batch_size=64, device="cpu")

#: torch.cuda functions that query, initialise or set GPU state. `_lazy_init` is where every
#: CUDA initialisation goes through, also one a tensor op on a CUDA device starts from C++.
CUDA_CALLS = (
    "is_available",
    "device_count",
    "_lazy_init",
    "init",
    "current_device",
    "set_device",
    "synchronize",
    "get_rng_state",
    "get_rng_state_all",
    "set_rng_state",
    "set_rng_state_all",
)


def _metrics(history) -> list[dict]:
    return [{k: v for k, v in asdict(m).items() if k != "seconds"} for m in history]


@pytest.fixture
def fake_gpus(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[list[str], callable]]:
    """`torch.cuda` reporting N GPUs (set with the yielded function), recording every call in
    CUDA_CALLS. Initialising CUDA or touching RNG states raises, as it would with fewer GPUs
    than the states saved, or fail on this CPU machine."""
    calls: list[str] = []
    count = {"gpus": 8}

    def recorder(name: str):
        def call(*args, **kwargs):
            calls.append(name)
            if name == "is_available":
                return count["gpus"] > 0
            if name == "device_count":
                return count["gpus"]
            if name == "set_rng_state_all" and len(args[0]) > count["gpus"]:
                raise IndexError("list index out of range")  # what torch raises
            raise AssertionError(f"torch.cuda.{name} was called")

        return call

    for name in CUDA_CALLS:
        monkeypatch.setattr(torch.cuda, name, recorder(name))

    def set_gpus(n: int) -> None:
        count["gpus"] = n

    yield calls, set_gpus


@pytest.fixture(scope="module")
def uninterrupted():
    return run_trial(SPEC)


# -- a cpu trial never touches CUDA ---------------------------------------------------------
def test_a_cpu_trial_on_a_node_with_gpus_never_calls_into_cuda(
    fake_gpus, tmp_path: Path, uninterrupted
) -> None:
    calls, _ = fake_gpus
    result = run_trial(SPEC, on_epoch=lambda m, save: save(tmp_path / f"epoch{m.epoch}"))
    resumed = run_trial(SPEC, checkpoint=tmp_path / "epoch1")
    assert calls == []
    assert not torch.cuda.is_initialized()
    assert _metrics(result.history) == _metrics(uninterrupted.history)
    assert _metrics(resumed.history) == _metrics(uninterrupted.history)
    assert "cuda" not in load_checkpoint(tmp_path / "epoch1")["rng"]


@pytest.mark.parametrize("gpus", [1, 0])
def test_an_old_checkpoint_with_eight_gpu_rng_states_resumes_with_fewer_gpus(
    gpus: int, fake_gpus, tmp_path: Path, uninterrupted
) -> None:
    calls, set_gpus = fake_gpus
    set_gpus(0)
    run_trial(SPEC, on_epoch=lambda m, save: m.epoch == 1 and save(tmp_path / "new"))
    # What the old code wrote on an 8-GPU node: one CUDA RNG state (16 bytes) per GPU.
    state = load_checkpoint(tmp_path / "new")
    state["rng"]["cuda"] = [torch.full((16,), i, dtype=torch.uint8) for i in range(8)]
    del state["format_version"]
    save_checkpoint(tmp_path / "old", state)
    assert load_checkpoint(tmp_path / "old")["format_version"] == 1

    set_gpus(gpus)
    calls.clear()
    resumed = run_trial(SPEC, checkpoint=tmp_path / "old")
    assert _metrics(resumed.history) == _metrics(uninterrupted.history)
    assert "set_rng_state_all" not in calls and "_lazy_init" not in calls


# -- the device Ray assigned ------------------------------------------------------------------
def test_cpu_is_the_cpu_without_asking_cuda(fake_gpus) -> None:
    calls, _ = fake_gpus
    assert resolve_device("cpu") == torch.device("cpu")
    assert calls == []


def test_cuda_is_the_first_visible_gpu_and_auto_follows_what_is_visible(fake_gpus) -> None:
    _, set_gpus = fake_gpus
    set_gpus(2)
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("auto") == torch.device("cuda", 0)
    set_gpus(0)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(SpecError, match=r"^device: 'cuda' was asked for but no CUDA device"):
        resolve_device("cuda")


# -- numerics: reproducible unless cudnn_benchmark ----------------------------------------------
def _flags() -> tuple:
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    if hasattr(cudnn, "conv"):
        tf32 = (cudnn.conv.fp32_precision, matmul.fp32_precision)
    else:
        tf32 = (cudnn.allow_tf32, matmul.allow_tf32)
    return (cudnn.benchmark, cudnn.deterministic, *tf32)


@pytest.mark.parametrize(
    ("precision", "benchmark"), list(itertools.product(PRECISIONS, (False, True)))
)
def test_every_precision_is_deterministic_unless_cudnn_benchmark_is_set(
    precision: str, benchmark: bool
) -> None:
    # Only flags are touched, so this runs on a CPU-only machine with a CUDA build too.
    before = _flags()
    spec = TrialSpec(precision=precision, cudnn_benchmark=benchmark)
    with (
        pytest.raises(RuntimeError, match="inside"),
        device_numerics(spec, torch.device("cuda", 0)),
    ):
        benchmark_on, deterministic, *tf32 = _flags()
        assert (benchmark_on, deterministic) == (benchmark, not benchmark)
        allowed = precision == "tf32"
        expected = ("tf32", "tf32") if allowed else ("ieee", "ieee")
        assert tuple(tf32) == (
            expected if hasattr(torch.backends.cudnn, "conv") else (allowed,) * 2
        )
        raise RuntimeError("inside")
    assert _flags() == before
    with device_numerics(spec, torch.device("cpu")):
        assert _flags() == before


# -- runtime fields -----------------------------------------------------------------------------
def test_runtime_fields_are_recorded_but_not_part_of_the_cell() -> None:
    base = TrialSpec()
    assert base.runtime_fields() == {
        "cudnn_benchmark": False,
        "compile": False,
        "compile_mode": "default",
        "eval_batch_size": None,
    }
    assert not set(RUNTIME_FIELDS) & set(RESULT_FIELD_NAMES)
    changed = base.replace(
        cudnn_benchmark=True, compile=True, compile_mode="reduce-overhead", eval_batch_size=7
    )
    assert changed.spec_hash == base.spec_hash
    assert changed.runtime_fields()["eval_batch_size"] == 7
    # tf32 rounds products to a 10-bit mantissa: a cell of its own.
    assert len({base.replace(precision=p).spec_hash for p in PRECISIONS}) == 3
    # From the CLI and YAML an integer may come as a string.
    assert TrialSpec(eval_batch_size="128").eval_batch_size == 128


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"cudnn_benchmark": "yes"}, r"^cudnn_benchmark: expected true or false"),
        ({"compile_mode": "max-autotune"}, r"^compile_mode: unknown value 'max-autotune'"),
        ({"eval_batch_size": 0}, r"^eval_batch_size: must be >= 1"),
        ({"eval_batch_size": 2.5}, r"^eval_batch_size: expected an integer"),
        ({"precision": "fp16"}, r"^precision: unknown value 'fp16'; allowed: bf16, fp32, tf32"),
    ],
)
def test_bad_runtime_fields_are_one_line(values: dict, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        TrialSpec(**values)


# -- evaluation batches -------------------------------------------------------------------------
def test_the_eval_batch_is_sized_for_the_device_unless_given() -> None:
    data = load_splits(SPEC)
    generator = torch.Generator().manual_seed(1)
    cpu = torch.device("cpu")
    assert eval_batch_size_for(SPEC, cpu) == EVAL_BATCH_SIZES["cpu"] == 256
    assert eval_batch_size_for(SPEC, torch.device("cuda", 0)) == EVAL_BATCH_SIZES["cuda"] == 1024
    loaders = make_loaders(SPEC.replace(eval_batch_size=7), data, cpu, generator)
    assert loaders["train"].batch_size == SPEC.batch_size
    assert loaders["val"].batch_size == loaders["test"].batch_size == 7


def test_accuracies_do_not_depend_on_the_eval_batch() -> None:
    device = torch.device("cpu")
    data = load_splits(SPEC)
    model, optimizer, _ = build(SPEC, data, device)
    generator = torch.Generator().manual_seed(complex_seed(SPEC.seed))
    autocast, memory_format = autocast_for(SPEC, device), memory_format_for(SPEC)
    train = make_loaders(SPEC, data, device, generator)["train"]
    train_one_epoch(model, train, optimizer, autocast, memory_format)  # BN running statistics

    seen = {}
    for batch in (7, 128, len(data.val_y) + len(data.test_y)):
        loaders = make_loaders(SPEC.replace(eval_batch_size=batch), data, device, generator)
        seen[batch] = [
            evaluate(model, loaders[split], autocast, memory_format) for split in ("val", "test")
        ]
    reference = seen[7]
    assert all(0.0 < acc < 1.0 for _, acc in reference)  # some right, some wrong
    for results in seen.values():
        for (loss, acc), (ref_loss, ref_acc) in zip(results, reference, strict=True):
            assert acc == ref_acc
            assert math.isclose(loss, ref_loss, rel_tol=0, abs_tol=1e-6)


# -- on a real GPU ------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", PRECISIONS)
def test_a_gpu_run_repeats_and_resumes_bit_identically(precision: str, tmp_path: Path) -> None:
    spec = SPEC.replace(device="cuda", precision=precision)
    first = run_trial(spec, on_epoch=lambda m, save: m.epoch == 1 and save(tmp_path / "ckpt"))
    again = run_trial(spec)
    resumed = run_trial(spec, checkpoint=tmp_path / "ckpt")
    assert _metrics(again.history) == _metrics(first.history)
    assert _metrics(resumed.history) == _metrics(first.history)
