"""`torch.compile` for trials: a check that it will work here, and one compiled model per variant.

Compiling either works or refuses; it never quietly trains eagerly:

- `compile_problem(device)` checks, in this process, what compiling needs at run time (a C or C++
  compiler on PATH, then an actual compile and run of a tiny function) and names what is missing.
  A driver runs it on a worker before it launches trials with `compile: true`.
- Dynamo caches compiled graphs per code object, and every `torch.compile(module)` call compiles
  the same wrapper code (`torch._dynamo.external_utils`), so by default all models of a process
  share one cache line of `recompile_limit` (8) entries. A variant needs about four (training and
  evaluation, each at a full and a partial batch). After the second formulation or architecture
  a reused Ray actor sees, Dynamo would log one warning and run everything after eagerly.
  `CompiledModels` keeps one module and its compiled wrapper per `Variant`, compiled with
  `isolate_recompiles=True` (its own cache line), and each new trial loads its freshly
  initialised weights into that module, so seeds and trials of a variant compile nothing new.
- `loud_fallback()` turns Dynamo's silent fall-back to eager (recompile limit hit, backend
  errors swallowed by `suppress_errors`) into a `CompileError` that fails the trial in one line.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bnsweep.workers.data import DataSplits
from bnsweep.workers.devices import resolve_device
from bnsweep.workers.errors import BnsweepError, choice_error
from bnsweep.workers.spec import COMPILE_MODES, TrialSpec

#: The modes whose compiled model replays CUDA graphs (see `_MarkStep`).
CUDA_GRAPH_MODES = frozenset({"reduce-overhead"})


class CompileError(BnsweepError):
    """`torch.compile` cannot work here, or a compiled trial would fall back to eager."""


# -- will compiling work here? ----------------------------------------------------------------
def compile_problem(device: str, mode: str = "default") -> str | None:
    """One line naming what stops `torch.compile` from working on `device` in this process and
    how to fix it, or None when a tiny function compiles and runs there and computes what it
    computes eagerly. `device` is a trial's: auto, cpu or cuda (the first visible GPU).

    The answer is kept for the life of the process (the compile of the test function takes from
    seconds to a minute or two on a CPU); a PATH or CC changed afterwards is not seen.
    """
    if mode not in COMPILE_MODES:
        raise choice_error("compile_mode", mode, COMPILE_MODES)
    return _compile_problem(device, mode)


@functools.cache
def _compile_problem(device_name: str, mode: str) -> str | None:
    try:
        device = resolve_device(device_name)
    except BnsweepError as err:
        return f"compile on {device_name}: {err}"
    unsupported = _torch_unsupported()
    if unsupported is not None:
        return unsupported
    missing = _missing_compiler(device)
    if missing is not None:
        return missing
    x = torch.arange(12, dtype=torch.float32, device=device).view(3, 4)
    try:
        with loud_fallback(f"the compile self-test on {device}"):
            got = compile_module(_self_test, mode)(x)
    except CompileError as err:
        return str(err)
    if not torch.allclose(got, _self_test(x)):
        return (
            f"compile on {device}: a compiled test function computed {got.tolist()}, not "
            f"{_self_test(x).tolist()}; set compile: false"
        )
    return None


def _self_test(x: torch.Tensor) -> torch.Tensor:
    # Pointwise ops and a reduction: Inductor generates (C++ or Triton) code for both.
    return torch.relu(x * 2.0 - 3.0).sum(dim=1)


def _torch_unsupported() -> str | None:
    if "isolate_recompiles" not in inspect.signature(torch.compile).parameters:
        return (
            f"compile: torch {torch.__version__} has no torch.compile(isolate_recompiles=...), "
            "which keeps each variant's graphs apart so none falls back to eager; "
            "install a newer torch (2.14 has it) or set compile: false"
        )
    return None


def _missing_compiler(device: torch.device) -> str | None:
    """What Inductor needs at run time: a C++ compiler for its CPU kernels (torch's
    `_inductor.config.cpp.cxx`: $CXX, else g++), a C compiler for Triton's GPU kernel
    launchers (Triton's own search: $CC, else gcc, else clang)."""
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            return (
                "compile on cuda: Triton is not installed or finds no usable GPU; install the "
                "triton wheel that matches torch, or set compile: false"
            )
        cc = os.environ.get("CC")
        candidates, what = ((cc,), f"$CC={cc}") if cc else (("gcc", "clang"), "gcc, clang")
        kind, needed_by, package = "C", "Triton builds its GPU kernel launchers with it", "gcc"
    else:
        cxx = os.environ.get("CXX")
        candidates, what = ((cxx,), f"$CXX={cxx}") if cxx else (("g++",), "g++")
        kind, needed_by, package = "C++", "Inductor builds its CPU kernels with it", "g++"
    if any(shutil.which(name) for name in candidates):
        return None
    return (
        f"compile on {device.type}: no {kind} compiler on PATH (looked for {what}); "
        f"{needed_by} at run time. Install one (apt-get install {package}; the project's "
        "docker/Dockerfile does) or set compile: false"
    )


# -- compiling without a silent fall-back -------------------------------------------------------
def compile_module(module: Callable[..., torch.Tensor], mode: str = "default") -> Any:
    """`torch.compile(module)` in its own Dynamo cache line (`isolate_recompiles`), so other
    compiled models in the process do not use up its recompile limit. Compiling is lazy: it
    happens at the first call, which should run inside `loud_fallback()`."""
    unsupported = _torch_unsupported()
    if unsupported is not None:
        raise CompileError(unsupported)
    # torch's overloads of compile() do not declare isolate_recompiles yet (2.14 takes it;
    # _torch_unsupported checked above that this torch does).
    step = torch.compile(module, mode=mode, isolate_recompiles=True)  # type: ignore[call-overload]
    return _MarkStep(step) if mode in CUDA_GRAPH_MODES else step


class _MarkStep(nn.Module):
    """CUDA graphs replay into the same output memory. Marking each call as a new step tells
    cudagraph trees that the previous call's outputs (consumed by then) may be overwritten, also
    where training and evaluation calls alternate."""

    def __init__(self, compiled: Callable[..., torch.Tensor]) -> None:
        super().__init__()
        self.compiled = compiled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch.compiler.cudagraph_mark_step_begin()
        return self.compiled(x)


@contextlib.contextmanager
def loud_fallback(what: str) -> Iterator[None]:
    """Compiled code called inside fails instead of running eagerly: a recompile limit hit raises
    (Dynamo's `fail_on_recompile_limit_hit`; without it Dynamo logs once and stops compiling),
    and backend errors are not suppressed (`suppress_errors`, settable from the environment,
    would otherwise run the failed frame eagerly). Either becomes one `CompileError` line."""
    from torch._dynamo import config
    from torch._dynamo.exc import FailOnRecompileLimitHit, TorchDynamoException

    with config.patch(fail_on_recompile_limit_hit=True, suppress_errors=False):
        try:
            yield
        except FailOnRecompileLimitHit as err:
            raise CompileError(
                f"compile: {what} needed more than torch._dynamo.config.recompile_limit "
                f"({config.recompile_limit}) graphs and would run eagerly from here on; "
                "set compile: false, or raise that limit"
            ) from err
        except TorchDynamoException as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise CompileError(
                f"compile: {what} failed: {type(err).__name__}: {first}; "
                "check compile_problem() on this worker, or set compile: false"
            ) from err


# -- one compiled model per variant -------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    """Everything that decides a compiled model's graphs. Seeds, γ, α, c and every other value
    that only changes numbers in the weights or the optimizer are not part of it."""

    arch: str
    formulation: str
    input_norm: str
    num_classes: int
    in_channels: int
    image_size: int
    memory_format: str
    precision: str  # autocast is traced into the graph
    mode: str
    device: str

    @classmethod
    def of(cls, spec: TrialSpec, data: DataSplits, device: torch.device) -> Variant:
        return cls(
            arch=spec.arch,
            formulation=spec.formulation,
            input_norm=spec.input_norm,
            num_classes=data.num_classes,
            in_channels=data.in_channels,
            image_size=data.image_size,
            memory_format=spec.memory_format,
            precision=spec.precision,
            mode=spec.compile_mode,
            device=str(device),
        )

    def __str__(self) -> str:
        return f"{self.arch}/{self.formulation}/{self.input_norm} ({self.mode} on {self.device})"


@dataclass(frozen=True)
class CompiledModel:
    module: nn.Module  # the network itself: checkpoints, inspectors and the optimizer use it
    step: nn.Module  # its compiled wrapper: what the training loop calls


class CompiledModels:
    """A process's compiled models, one per `Variant`, kept for the life of the process (a Ray
    actor reused across trials). Each holds one network on its device (ResNet-18: 45 MB)."""

    def __init__(self) -> None:
        self._models: dict[Variant, CompiledModel] = {}

    def __len__(self) -> int:
        return len(self._models)

    def get(self, variant: Variant, fresh: nn.Module) -> CompiledModel:
        """The variant's compiled model, now holding `fresh`'s weights and buffers. The first
        time, `fresh` itself becomes the variant's module; later, its state is copied into the
        kept module (in place, so the compiled graphs and their guards still apply)."""
        kept = self._models.get(variant)
        if kept is None:
            kept = CompiledModel(fresh, compile_module(fresh, variant.mode))
            self._models[variant] = kept
            return kept
        kept.module.load_state_dict(fresh.state_dict())
        for parameter in kept.module.parameters():
            parameter.grad = None  # the previous trial's last gradients
        return kept

    def clear(self) -> None:
        self._models.clear()


#: The process's cache, used by `bnsweep.workers.trial.run_trial`.
COMPILED = CompiledModels()
