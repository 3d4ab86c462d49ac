"""The device a trial runs on, and that device's numerics settings for the run's precision."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from bnsweep.workers.errors import SpecError
from bnsweep.workers.spec import TrialSpec


def resolve_device(name: str) -> torch.device:
    """`cpu` is the CPU, and nothing of torch.cuda is called for it (a Ray task given no GPU
    sees every GPU of its node). `cuda` is the first visible GPU, `cuda:0`: the one Ray made
    visible to a GPU trial. `auto` is `cuda` when a GPU is visible, else `cpu`."""
    if name == "cpu":
        return torch.device("cpu")
    if name == "auto":
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SpecError(
            "device: 'cuda' was asked for but no CUDA device is visible; allowed here: auto, cpu"
        )
    if name == "cuda":
        return torch.device("cuda", 0)
    raise SpecError(f"device: unknown value {name!r}; allowed: auto, cpu, cuda")


#: Whether each precision lets the GPU's fp32 matmuls and convolutions use TF32 tensor cores.
#: bf16 says no: autocast runs those in bfloat16, and what it leaves in fp32 stays IEEE.
TF32_ALLOWED = {"fp32": False, "tf32": True, "bf16": False}


@contextlib.contextmanager
def device_numerics(spec: TrialSpec, device: torch.device) -> Iterator[None]:
    """cuDNN and matmul settings for the run, restored afterwards (a notebook keeps its own).

    Every precision is reproducible by default: deterministic cuDNN algorithms, none chosen by
    timing. fp32 is IEEE fp32: TF32 off for convolutions and matmuls (PyTorch enables it for
    cuDNN convolutions by default). tf32 lets both use TF32 tensor cores. `cudnn_benchmark`
    trades reproducibility for speed: cuDNN times the algorithms once per input shape and keeps
    the fastest, and may pick non-deterministic ones.
    """
    if device.type != "cuda":
        yield
        return
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    tf32 = TF32_ALLOWED[spec.precision]
    settings: list[tuple[Any, str, Any]] = [
        (cudnn, "benchmark", spec.cudnn_benchmark),
        (cudnn, "deterministic", not spec.cudnn_benchmark),
    ]
    if hasattr(cudnn, "conv"):
        # torch >= 2.9's precision API; mixing it with the legacy flags below is an error.
        precision = "tf32" if tf32 else "ieee"
        settings += [
            (cudnn.conv, "fp32_precision", precision),
            (matmul, "fp32_precision", precision),
        ]
    else:
        settings += [(cudnn, "allow_tf32", tf32), (matmul, "allow_tf32", tf32)]
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in settings]
    for owner, name, value in settings:
        setattr(owner, name, value)
    try:
        yield
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)


def cpu_has_fast_bf16() -> bool:
    """Whether oneDNN runs bfloat16 convolutions natively on this CPU. Without it (e.g. AMD Zen 3,
    AVX2 only) PyTorch falls back to its slow reference convolution for bf16."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(torch.backends.mkldnn.is_available() and check is not None and check())
