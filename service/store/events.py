"""The events a trial reports to the store (`Store.apply`), validated at construction.

Each event is a frozen value checked where it is made, so a bad value fails at the edge with
one line naming the field, not at the write. The worker's result types come from
`bnsweep.workers.results`, which imports no torch; a plain mapping with their keys works too.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bnsweep.store.errors import StoreError
from bnsweep.store.models import FINAL_STATUSES
from bnsweep.workers.results import VALUE_FIELDS, EpochMetrics, LayerDiagnostics, TrialResult

_ERROR_CHARS = 65536


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def _utc(value: datetime) -> datetime:
    if not isinstance(value, datetime):
        raise StoreError(f"expected a datetime, got {value!r}")
    return value.astimezone(timezone.utc)


@functools.lru_cache(maxsize=1)
def _package_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("bnsweep")
    except PackageNotFoundError:
        return None


def _source_root() -> Path:
    """The folder holding bnsweep's packages (`service/`, `workers/`): a checkout's root when
    bnsweep runs from its source, site-packages when installed from a wheel."""
    return Path(__file__).resolve().parents[2]


@functools.lru_cache(maxsize=1)
def source_commit() -> str | None:
    """The git commit (`git rev-parse HEAD`) of the source checkout bnsweep runs from, or None
    when it is not a checkout (installed from a wheel, git missing). Read once per process.

    The checkout must be bnsweep's own: a site-packages folder inside some other repository's
    tree does not count. Uncommitted changes are not detected.
    """
    root = _source_root()
    env = {k: v for k, v in os.environ.items() if k not in ("GIT_DIR", "GIT_WORK_TREE")}
    try:
        done = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--show-toplevel", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            env=env,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = done.stdout.split("\n")
    if done.returncode != 0 or len(lines) < 2 or not lines[0]:
        return None
    if Path(lines[0]).resolve() != root or not re.fullmatch(r"[0-9a-f]{40,64}", lines[1]):
        return None
    return lines[1]


def runtime_text(value: Mapping[str, object] | None) -> str | None:
    """A run's runtime options as stored: canonical JSON (sorted keys), or None."""
    if value is None:
        return None
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise StoreError(
            f"runtime: expected a mapping of option name to value, e.g. "
            f'{{"compile": false}}, got {value!r}'
        )
    try:
        return json.dumps(dict(value), sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError):
        raise StoreError(
            f"runtime: every value must be JSON (strings, numbers, booleans, null, lists, "
            f"mappings), got {value!r}"
        ) from None


def _get(obj: object, name: str, default: object = None) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _opt_float(name: str, value: object) -> float | None:
    """A float for storage: None and NaN become NULL (SQLite cannot store NaN); ±inf is kept."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise StoreError(f"{name}: expected a number, got {value!r}")
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise StoreError(f"{name}: expected a number, got {value!r}") from None
    return None if math.isnan(number) else number


def _opt_int(name: str, value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise StoreError(f"{name}: expected an integer, got {value!r}")
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise StoreError(f"{name}: expected an integer, got {value!r}") from None


def _fraction(name: str, value: object) -> float | None:
    """Accuracies are fractions in [0, 1]; a percentage here is a bug upstream, so say so."""
    number = _opt_float(name, value)
    if number is not None and not 0.0 <= number <= 1.0:
        raise StoreError(f"{name}: accuracies are fractions in [0, 1], got {number!r}")
    return number


def check_cell(spec_hash: object, seed: object) -> None:
    if not isinstance(spec_hash, str) or not spec_hash:
        raise StoreError(f"spec_hash: expected a non-empty string, got {spec_hash!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise StoreError(f"seed: expected an integer, got {seed!r}")


@dataclass(frozen=True)
class TrialStarted:
    """A trial began (or began again after a failure): status running, attempts + 1.

    The provenance of the attempt goes on the trial's row: host, device, package version, the
    source checkout's git commit (`source_commit()` unless given), the run's intra-op thread
    count (`torch.get_num_threads()`) and its runtime options (a JSON mapping such as
    `{"compile": false, "cudnn_benchmark": false}`, stored as text).
    """

    spec_hash: str
    seed: int
    host: str | None = None
    device: str | None = None
    package_version: str | None = field(default_factory=_package_version)
    started_at: datetime = field(default_factory=utc_now)
    git_commit: str | None = field(default_factory=source_commit)
    threads: int | None = None
    runtime: Mapping[str, object] | None = None

    def __post_init__(self) -> None:
        check_cell(self.spec_hash, self.seed)
        object.__setattr__(self, "started_at", _utc(self.started_at))
        if self.git_commit is not None and (
            not isinstance(self.git_commit, str) or not 0 < len(self.git_commit) <= 64
        ):
            raise StoreError(f"git_commit: expected a commit id, got {self.git_commit!r}")
        threads = _opt_int("threads", self.threads)
        if threads is not None and threads < 1:
            raise StoreError(f"threads: expected an integer >= 1, got {self.threads!r}")
        object.__setattr__(self, "threads", threads)
        runtime_text(self.runtime)  # fails here, at the edge, not at the write
        if self.runtime is not None:
            object.__setattr__(self, "runtime", dict(self.runtime))


@dataclass(frozen=True)
class EpochValues:
    """One epoch's metrics as stored; built from `EpochMetrics` or a mapping with its keys."""

    epoch: int
    train_loss: float | None
    val_loss: float | None
    val_acc: float | None
    test_acc: float | None
    lr: float | None
    seconds: float | None

    @classmethod
    def from_metrics(cls, metrics: EpochMetrics | Mapping[str, object]) -> EpochValues:
        epoch = _opt_int("epoch", _get(metrics, "epoch"))
        if epoch is None or epoch < 0:
            raise StoreError(f"epoch: expected an integer >= 0, got {_get(metrics, 'epoch')!r}")
        return cls(
            epoch=epoch,
            train_loss=_opt_float("train_loss", _get(metrics, "train_loss")),
            val_loss=_opt_float("val_loss", _get(metrics, "val_loss")),
            val_acc=_fraction("val_acc", _get(metrics, "val_acc")),
            test_acc=_fraction("test_acc", _get(metrics, "test_acc")),
            lr=_opt_float("lr", _get(metrics, "lr")),
            seconds=_opt_float("seconds", _get(metrics, "seconds")),
        )


@dataclass(frozen=True)
class EpochRecorded:
    """One epoch's metrics; upserted on (trial, epoch) because Ray retries replay epochs."""

    spec_hash: str
    seed: int
    #: The worker's `EpochMetrics` or a mapping with its keys; always `EpochValues` once built.
    metrics: EpochValues | EpochMetrics | Mapping[str, object]

    def __post_init__(self) -> None:
        check_cell(self.spec_hash, self.seed)
        if not isinstance(self.metrics, EpochValues):
            object.__setattr__(self, "metrics", EpochValues.from_metrics(self.metrics))

    @property
    def values(self) -> EpochValues:
        assert isinstance(self.metrics, EpochValues)
        return self.metrics


#: What a finished trial reports: the worker's `TrialResult` fields (all but the in-memory
#: history, which the epochs table holds), as stored on its row.
RESULT_FIELDS: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(TrialResult) if f.name != "history"
)


@dataclass(frozen=True)
class TrialFinished:
    """A trial ran to the end (completed) or stopped on a non-finite loss (diverged)."""

    spec_hash: str
    seed: int
    status: str
    epochs_run: int | None = None
    best_epoch: int | None = None
    best_val_acc: float | None = None
    test_acc: float | None = None  # at the best-validation epoch
    final_test_acc: float | None = None
    seconds: float | None = None
    images_per_sec: float | None = None
    diverged_epoch: int | None = None
    error: str | None = None
    finished_at: datetime = field(default_factory=utc_now)

    def __post_init__(self) -> None:
        check_cell(self.spec_hash, self.seed)
        if self.status not in FINAL_STATUSES:
            raise StoreError(
                f"status: a finished trial is one of {', '.join(FINAL_STATUSES)}, "
                f"got {self.status!r}"
            )
        for name in ("epochs_run", "best_epoch", "diverged_epoch"):
            object.__setattr__(self, name, _opt_int(name, getattr(self, name)))
        for name in ("best_val_acc", "test_acc", "final_test_acc"):
            object.__setattr__(self, name, _fraction(name, getattr(self, name)))
        for name in ("seconds", "images_per_sec"):
            object.__setattr__(self, name, _opt_float(name, getattr(self, name)))
        if self.error is not None:
            object.__setattr__(self, "error", str(self.error)[:_ERROR_CHARS])
        object.__setattr__(self, "finished_at", _utc(self.finished_at))

    @classmethod
    def from_result(
        cls,
        spec_hash: str,
        seed: int,
        result: TrialResult | Mapping[str, object],
        finished_at: datetime | None = None,
    ) -> TrialFinished:
        """The event for a worker's `TrialResult` (or a mapping with the same keys)."""
        values = {name: _get(result, name) for name in RESULT_FIELDS}
        return cls(spec_hash, seed, finished_at=finished_at or utc_now(), **values)


@dataclass(frozen=True)
class TrialFailed:
    """A trial raised: status failed, with the error text. A later start retries it."""

    spec_hash: str
    seed: int
    error: str
    finished_at: datetime = field(default_factory=utc_now)

    def __post_init__(self) -> None:
        check_cell(self.spec_hash, self.seed)
        object.__setattr__(self, "error", str(self.error)[:_ERROR_CHARS])
        object.__setattr__(self, "finished_at", _utc(self.finished_at))


#: The measured values of one BN layer, in the order of the `diagnostics` table: the worker's.
DIAGNOSTIC_VALUES: tuple[str, ...] = VALUE_FIELDS


@dataclass(frozen=True)
class LayerValues:
    """One BN layer's diagnostics as stored (docs/diagnostics.md); NaN becomes None."""

    layer: str
    depth: int
    module: str
    channels: int
    gamma_mean: float | None
    gamma_std: float | None
    beta_mean: float | None
    beta_std: float | None
    gamma_drift: float | None
    beta_drift: float | None
    outlier_fraction: float | None
    gradient_factor: float | None

    @classmethod
    def from_layer(cls, layer: LayerDiagnostics | Mapping[str, object]) -> LayerValues:
        name = _get(layer, "layer")
        if not isinstance(name, str) or not name or len(name) > 255:
            raise StoreError(f"layer: expected a module path of 1-255 characters, got {name!r}")
        module = _get(layer, "module")
        if not isinstance(module, str) or not module or len(module) > 64:
            raise StoreError(f"module ({name}): expected a class name, got {module!r}")
        counts: dict[str, int] = {}
        for key in ("depth", "channels"):
            value = _opt_int(key, _get(layer, key))
            if value is None or value < 0:
                raise StoreError(f"{key} ({name}): expected an integer >= 0, got {value!r}")
            counts[key] = value
        values = {key: _opt_float(key, _get(layer, key)) for key in DIAGNOSTIC_VALUES}
        fraction = values["outlier_fraction"]
        if fraction is not None and not 0.0 <= fraction <= 1.0:
            raise StoreError(f"outlier_fraction ({name}): a fraction in [0, 1], got {fraction!r}")
        return cls(
            layer=name, module=module, depth=counts["depth"], channels=counts["channels"], **values
        )


@dataclass(frozen=True)
class DiagnosticsRecorded:
    """The BN diagnostics of one epoch (0 = initialisation), one entry per BN layer; upserted
    on (trial, epoch, layer), so replayed epochs overwrite themselves as epoch metrics do."""

    spec_hash: str
    seed: int
    epoch: int
    #: The worker's `LayerDiagnostics` or mappings with their keys; `LayerValues` once built.
    layers: tuple[LayerValues | LayerDiagnostics | Mapping[str, object], ...]

    def __post_init__(self) -> None:
        check_cell(self.spec_hash, self.seed)
        epoch = _opt_int("epoch", self.epoch)
        if epoch is None or epoch < 0:
            raise StoreError(f"epoch: expected an integer >= 0, got {self.epoch!r}")
        object.__setattr__(self, "epoch", epoch)
        layers = tuple(
            item if isinstance(item, LayerValues) else LayerValues.from_layer(item)
            for item in self.layers
        )
        names = [layer.layer for layer in layers]
        if len(set(names)) != len(names):
            repeated = sorted({n for n in names if names.count(n) > 1})
            raise StoreError(f"layers: each BN layer once per epoch; repeated: {repeated}")
        object.__setattr__(self, "layers", layers)

    @property
    def values(self) -> tuple[LayerValues, ...]:
        return self.layers  # type: ignore[return-value]


Event = TrialStarted | EpochRecorded | DiagnosticsRecorded | TrialFinished | TrialFailed
EVENT_TYPES = (TrialStarted, EpochRecorded, DiagnosticsRecorded, TrialFinished, TrialFailed)
