"""`TrialSpec`: everything one training run needs, frozen and validated on construction.

Defaults follow the paper (Sect. 4.1-4.2): SGD momentum 0.9, weight decay 1e-4, 180 epochs,
batch 128, 10 % class-stratified validation split, BN-based input normalisation (Sect. 3.4),
and the proposed method with γ = 0.1 and c = 100 (Sect. 3.2).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers
from dataclasses import dataclass, field, fields
from typing import Any

from bnsweep.workers import plugins
from bnsweep.workers.errors import SpecError, choice_error

PRECISIONS = ("fp32", "tf32", "bf16")
MEMORY_FORMATS = ("contiguous", "channels_last")
DEVICES = ("auto", "cpu", "cuda")
#: `torch.compile` modes a trial may ask for: `reduce-overhead` adds CUDA graphs;
#: `max-autotune-no-cudagraphs` times kernel variants at compile time (plain `max-autotune`
#: is left out: it also adds CUDA graphs, which `reduce-overhead` already names).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs")

#: How a run was computed, not what it computes: recorded with each trial
#: (`TrialSpec.runtime_fields`), left out of `spec_hash`. Each one computes the same function
#: in a different order of floating-point operations (fused kernels, other cuDNN algorithms,
#: other evaluation batches), so its run fills the same cell; docs/performance.md says what
#: each costs in exactness.
RUNTIME_FIELDS = ("cudnn_benchmark", "compile", "compile_mode", "eval_batch_size")

#: The training recipe: what the code does with a spec, beyond the spec's own fields. It is part
#: of `spec_hash`, so cells trained by an older recipe are never reused. Bump it in the same
#: change as anything that alters a result for an unchanged spec (initialisation, schedule,
#: data pipeline, a formulation's arithmetic, ...), and say what changed below; the test that
#: pins a few hashes (tests/workers/test_spec.py) then fails until its values are updated too.
#:
#: 1. Everything before recipe versions existed (hashes without a "recipe" key).
#: 2. Issue 12: linear weights within √(6/fan_in) as the official code executes; every
#:    parameter group's cosine ends at 1e-8 (the γ group ended at 1e-8/c); `fixed` input
#:    normalisation at μ = σ = 128/255 (was 0.5).
#: 3. Issue 19: a diverged run's last epoch (the one whose training loss is not finite) is
#:    validated and tested like any other and counts for the best validation epoch, as the
#:    official loop executes (it has no NaN check): a run that diverges in its first epoch now
#:    has a chance-level score instead of none (workers/trial.py).
RECIPE = 3

#: bnsweep's own names of the registries a spec chooses from, read from the entry points
#: pyproject.toml declares (`bnsweep.workers.plugins`), so a spec validates without importing
#: torch (`launch --dry-run`, the CLI's checks). A spec may also name an installed plugin's
#: entry (`bnsweep.workers.plugins.names`).
DATASET_NAMES = plugins.builtin_names("dataset")
ARCH_NAMES = plugins.builtin_names("arch")
FORMULATION_NAMES = plugins.builtin_names("formulation")
INPUT_NORM_NAMES = plugins.builtin_names("input_norm")

#: Fields that do not change what a run computes; they are left out of `spec_hash`.
NON_RESULT_FIELDS = frozenset({"data_root", "device", "seed", *RUNTIME_FIELDS})

#: The fields that say which arm of an experiment a run belongs to; BASE is γ = 1, c = 1, standard.
ARM_FIELDS = ("formulation", "bn_scale_init", "bn_lr_divisor")
#: BASE in the paper: the standard formulation, default γ = 1, no learning-rate reduction for γ
#: (c = 1) (Sect. 4.2): every arm is tested against it unless told otherwise.
BASE_ARM = ("standard", 1.0, 1.0)


def is_base_arm(formulation: object, gamma: object, c: object) -> bool:
    """Whether (formulation, γ, c) is BASE; the one place that says so."""
    return bool(formulation == BASE_ARM[0] and gamma == BASE_ARM[1] and c == BASE_ARM[2])


def arm_name(formulation: str, gamma: float, c: float) -> str:
    """`BASE`, or `rbn γ=1 c=1`: an arm's name, as `--versus` reads it and tables print it."""
    return "BASE" if is_base_arm(formulation, gamma, c) else f"{formulation} γ={gamma:g} c={c:g}"


@dataclass(frozen=True)
class TrialSpec:
    """One training run. `seed` is the paper's seed id (1..15); it is made complex by MD5."""

    dataset: str = "cifar10"
    arch: str = "resnet18"
    formulation: str = "standard"
    bn_scale_init: float = 0.1  # γ at initialisation: > 0; the method uses (0, 1] (Sect. 3.2)
    bn_lr_divisor: float = 100.0  # c: BN scales train with lr α/c (Sect. 3.2)
    input_norm: str = "bn"  # Sect. 3.4: bn | fixed | offline | none
    lr: float = 0.1  # α, the initial learning rate of every other parameter
    epochs: int = 180
    batch_size: int = 128
    momentum: float = 0.9
    weight_decay: float = 1e-4  # conv and linear weights only (Sect. 4.2)
    val_fraction: float = 0.1
    # fp32: IEEE single precision on every device (no TF32), for exact comparisons with the
    # paper; tf32: fp32 storage, TF32 tensor-core matmuls and convolutions on GPUs (10-bit
    # mantissa products); bf16: autocast to bfloat16, the fast path on GPUs. On a CPU tf32 is
    # fp32. All three use deterministic cuDNN unless `cudnn_benchmark` is set.
    precision: str = "fp32"
    memory_format: str = "contiguous"  # channels_last: NHWC, faster convolutions on GPUs and CPUs
    seed: int = 1
    data_root: str | None = field(default=None, compare=False)
    device: str = field(default="auto", compare=False)
    # A runtime option, not part of the result (see NON_RESULT_FIELDS): wrap the model in
    # `torch.compile`. It pays a compile time at the start of the trial (about a minute).
    compile: bool = field(default=False, compare=False)
    # Runtime too: which `torch.compile` mode, when `compile` is set (COMPILE_MODES).
    compile_mode: str = field(default="default", compare=False)
    # Runtime too: let cuDNN time its algorithms and keep the fastest. Faster convolutions, but
    # the choice depends on timing (load, the trials sharing the GPU), so a run is no longer
    # reproducible, nor a resumed run the run it would have been.
    cudnn_benchmark: bool = field(default=False, compare=False)
    # Runtime too: the batch for validation and test; None sizes it for the device
    # (bnsweep.workers.trial.EVAL_BATCH_SIZES). Eval-mode BN does not depend on the batch.
    eval_batch_size: int | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        _coerce_numbers(self)
        _validate(self)

    # -- identity ---------------------------------------------------------------------------
    @property
    def spec_hash(self) -> str:
        return spec_hash(self)

    @property
    def is_base(self) -> bool:
        """BASE in the paper: default γ = 1, no learning-rate reduction, standard BN (Sect. 4.2)."""
        return is_base_arm(self.formulation, self.bn_scale_init, self.bn_lr_divisor)

    def replace(self, **changes: Any) -> TrialSpec:
        return dataclasses.replace(self, **changes)

    # -- edges: dicts in, dicts out ---------------------------------------------------------
    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrialSpec:
        unknown = sorted(set(values) - set(FIELD_NAMES))
        if unknown:
            raise SpecError(
                f"unknown trial field(s) {', '.join(unknown)}; allowed: {', '.join(FIELD_NAMES)}"
            )
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def result_fields(self) -> dict[str, Any]:
        """The fields that change the result, seed excluded: what `spec_hash` covers."""
        return {k: v for k, v in self.to_dict().items() if k not in NON_RESULT_FIELDS}

    def runtime_fields(self) -> dict[str, Any]:
        """How the run is computed, beyond its result fields (`RUNTIME_FIELDS`): what a driver
        records with each trial. `precision` is a result field and is not repeated here."""
        return {name: getattr(self, name) for name in RUNTIME_FIELDS}


FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in fields(TrialSpec))
RESULT_FIELD_NAMES: tuple[str, ...] = tuple(n for n in FIELD_NAMES if n not in NON_RESULT_FIELDS)

#: The fields that define an experiment: every result field that is not an arm field.
EXPERIMENT_FIELDS: tuple[str, ...] = tuple(f for f in RESULT_FIELD_NAMES if f not in ARM_FIELDS)


def spec_hash(spec: TrialSpec) -> str:
    """A stable 16-hex-digit key of every field that changes the result, the seed excluded,
    and of the training recipe `RECIPE`.

    All seeds of one arm share a hash; a cell in the results store is (spec_hash, seed).
    Floats are written with `repr`, so 0.1 and 0.10 hash alike and 0.1 and 0.1000001 do not.

    The rule: a change to the code that alters the result of an unchanged spec bumps `RECIPE`,
    which changes every hash, so a store filled before the change is never mixed with results
    after it (docs/store.md, "Training recipes"). A change of the key itself (a new field, a new
    encoding) is a recipe change too. A spec naming a plugin also hashes that plugin's declared
    recipe (docs/extending.md), which imports the plugin.
    """
    payload: dict[str, Any] = {
        k: (repr(float(v)) if isinstance(v, float) else v) for k, v in spec.result_fields().items()
    }
    payload["recipe"] = RECIPE
    # A plugin's own recipe is part of its cells' key, as RECIPE is of bnsweep's; a spec of
    # built-ins only has no "plugins" key, so its hash is what it was before plugins existed.
    named = plugins.plugin_names(payload)
    if named:
        payload["plugins"] = {kind: plugins.recipe_of(kind, name) for kind, name in named.items()}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


_FLOAT_FIELDS = ("bn_scale_init", "bn_lr_divisor", "lr", "momentum", "weight_decay", "val_fraction")
_INT_FIELDS = ("epochs", "batch_size", "seed")
#: Integers that may also be unset (None).
_OPTIONAL_INT_FIELDS = ("eval_batch_size",)

#: The largest value of each integer field (docs/sweeps.md, "Limits"): far above any real run,
#: small enough that a typo (`epochs: 1e12`) is refused at once instead of training for ever,
#: and within the store's 32-bit integer columns (a seed above 2**31 - 1 fails at insert).
INT_LIMITS = {
    "epochs": 100_000,
    "batch_size": 1 << 20,
    "eval_batch_size": 1 << 20,
    "seed": 2**31 - 1,
}


def _coerce_numbers(spec: TrialSpec) -> None:
    """YAML and CLI values arrive as int/str; store them as the declared type or name the field."""
    for name in _FLOAT_FIELDS:
        value = getattr(spec, name)
        if isinstance(value, bool):
            raise SpecError(f"{name}: expected a number, got {value!r}")
        try:
            object.__setattr__(spec, name, float(value))
        except (TypeError, ValueError):
            raise SpecError(f"{name}: expected a number, got {value!r}") from None
    for name in _INT_FIELDS + _OPTIONAL_INT_FIELDS:
        value = getattr(spec, name)
        if value is None and name in _OPTIONAL_INT_FIELDS:
            continue
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise SpecError(f"{name}: expected an integer, got {value!r}")
        try:
            object.__setattr__(spec, name, int(value))
        except (TypeError, ValueError):
            raise SpecError(f"{name}: expected an integer, got {value!r}") from None


def _validate(spec: TrialSpec) -> None:
    for name in plugins.GROUPS:
        value = getattr(spec, name)
        if not isinstance(value, str):
            raise choice_error(name, value, plugins.names(name))
        # Listing the installed entry points imports none of them.
        plugins.reference(name, value)
    choices = {
        "precision": PRECISIONS,
        "memory_format": MEMORY_FORMATS,
        "device": DEVICES,
        "compile_mode": COMPILE_MODES,
    }
    for name, allowed in choices.items():
        if getattr(spec, name) not in allowed:
            raise choice_error(name, getattr(spec, name), allowed)

    for name in ("compile", "cudnn_benchmark"):
        if not isinstance(getattr(spec, name), bool):
            raise SpecError(f"{name}: expected true or false, got {getattr(spec, name)!r}")
    for name in _FLOAT_FIELDS:
        if not math.isfinite(getattr(spec, name)):
            raise SpecError(f"{name}: must be finite, got {getattr(spec, name)!r}")
    check_bn_scale(spec.bn_scale_init)
    if spec.bn_lr_divisor < 1.0:
        raise SpecError(f"bn_lr_divisor (c): must be >= 1, got {spec.bn_lr_divisor!r}")
    if spec.lr <= 0.0:
        raise SpecError(f"lr (α): must be > 0, got {spec.lr!r}")
    if spec.epochs < 1:
        raise SpecError(f"epochs: must be >= 1, got {spec.epochs!r}")
    if spec.batch_size < 1:
        raise SpecError(f"batch_size: must be >= 1, got {spec.batch_size!r}")
    if not 0.0 <= spec.momentum < 1.0:
        raise SpecError(f"momentum: must be in [0, 1), got {spec.momentum!r}")
    if spec.weight_decay < 0.0:
        raise SpecError(f"weight_decay: must be >= 0, got {spec.weight_decay!r}")
    if not 0.0 < spec.val_fraction < 1.0:
        raise SpecError(f"val_fraction: must be in (0, 1), got {spec.val_fraction!r}")
    if spec.eval_batch_size is not None and spec.eval_batch_size < 1:
        raise SpecError(
            f"eval_batch_size: must be >= 1, or unset to size it for the device; "
            f"got {spec.eval_batch_size!r}"
        )
    if spec.seed < 0:
        raise SpecError(f"seed: must be >= 0, got {spec.seed!r}")
    for name, limit in INT_LIMITS.items():
        value = getattr(spec, name)
        if value is not None and value > limit:
            raise SpecError(f"{name}: must be <= {limit:,}, got {value!r}")


BN_SCALE_RULE = (
    "must be a finite number > 0 (the method uses (0, 1], Sect. 3.2; γ > 1 is allowed, Sect. 4.4)"
)


def check_bn_scale(gamma: float) -> float:
    """γ must be a finite number > 0; anything else is a user error, never silently 1.

    The method initialises γ in (0, 1] (Sect. 3.2), but the paper also tried γ > 1 (Sect. 4.4,
    "degraded results, as expected"), so a user may too. γ ≤ 0 zeroes or flips every BN output.
    """
    if (
        isinstance(gamma, bool)
        or not isinstance(gamma, numbers.Real)
        or not math.isfinite(gamma)
        or gamma <= 0.0
    ):
        raise SpecError(f"bn_scale_init (γ): {BN_SCALE_RULE}, got {gamma!r}")
    return float(gamma)
