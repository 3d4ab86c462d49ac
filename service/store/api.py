"""The results store's public API: open a database by URL, write events, read DataFrames.

Nothing here hands out ORM rows: writes take frozen event values, reads return frozen values
(`SweepInfo`, `SweepStatus`) or pandas DataFrames with fixed columns and dtypes.

Rules worth knowing before reading the code (docs/store.md says the same for users):

- A cell is `(spec_hash, seed)`; every write is an idempotent upsert keyed by it (and by
  `(trial, epoch)` for epochs, `(trial, epoch, layer)` for BN diagnostics), so replaying a
  batch after a lost commit acknowledgement, or a Ray retry that replays epochs, never
  duplicates anything.
- Status transitions: pending → running → completed | diverged | failed; failed → running
  (a retry). completed and diverged are final: later events for such a trial are ignored, except
  that a missing epoch row may still be filled in. A start no newer than the recorded start is a
  replay and is ignored; a failure older than the recorded start belongs to an earlier attempt.
- Transient database failures (connection lost, server restarting, SQLite busy) are retried with
  backoff for `retry_seconds` (default 60 s) around each whole transaction.
- A URL's password never appears in a message, a log line or a repr: see `redact_url`.
- Every trial row carries the training recipe (`workers.spec.RECIPE`) its cell was registered
  under; the recipe is part of `spec_hash`, so a cell of an older recipe is never reused.
  `older_recipes` counts such trials; the analysis reads only the current recipe's.
- Nothing is deleted except by `forget`, which a user asks for (`bnsweep db forget`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import random
import re
import subprocess
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect

import workers.spec
from service.store.models import (
    FINAL_STATUSES,
    SPEC_COLUMN_TYPES,
    STATUSES,
    VERSION_TABLE,
    Diagnostic,
    Epoch,
    Sweep,
    SweepTrial,
    Trial,
)
from workers.errors import BnsweepError, RuntimeFailure
from workers.spec import ARM_FIELDS, TrialSpec

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

#: Where the store lives when neither an argument nor BNSWEEP_DB says otherwise.
DEFAULT_URL = "sqlite:///bnsweep.db"
ENV_VAR = "BNSWEEP_DB"
#: How long one transaction keeps retrying a database that went away, by default.
DEFAULT_RETRY_SECONDS = 60.0
#: SQLite waits this long for another writer's lock before reporting "database is locked".
SQLITE_BUSY_SECONDS = 30.0
#: Key of the PostgreSQL advisory lock that serialises concurrent schema upgrades.
_MIGRATION_LOCK_KEY = 0x626E_7377_6565_70  # "bnsweep"
#: Rows per statement when a list of keys is sent as `IN (...)`; well below both backends' limits.
_CHUNK = 500
_ERROR_CHARS = 65536

T = TypeVar("T")


class StoreError(BnsweepError):
    """The results database is unreachable, misconfigured, at the wrong schema, or was asked
    something it does not know (an unknown sweep or field)."""


class StoreFailure(StoreError, RuntimeFailure):
    """The URL and request were well formed, but the database behind them is down, missing,
    another program's, at another schema, or holds no such sweep: exit code 1, not 2."""


class NoStoreYet(StoreFailure):
    """Nothing bnsweep wrote is there yet: no SQLite file, or a database without any tables.
    A launch would create the schema; a read-only command has nothing to read."""


# -- URLs --------------------------------------------------------------------------------------


def resolve_url(url: str | None = None) -> str:
    """The URL to use: the argument, else BNSWEEP_DB, else `sqlite:///bnsweep.db`."""
    return url or os.environ.get(ENV_VAR) or DEFAULT_URL


def _parse_url(url: str) -> sa.URL:
    """Parse and normalise a store URL: PostgreSQL always goes through psycopg 3."""
    try:
        parsed = sa.make_url(url.strip())
    except (sa_exc.ArgumentError, ValueError):
        raise StoreError(
            f"bad database URL {redact_url(url)!r}: expected sqlite:///PATH or "
            "postgresql://USER@HOST[:PORT]/DATABASE"
        ) from None
    # Split by hand: SQLAlchemy's get_driver_name() loads the dialect, which fails for postgres://.
    backend, _, driver = parsed.drivername.partition("+")
    if backend in ("postgresql", "postgres") and driver in ("", "psycopg"):
        return parsed.set(drivername="postgresql+psycopg")
    if backend == "sqlite" and driver in ("", "pysqlite"):
        return parsed
    raise StoreError(
        f"unsupported database URL {redact_url(url)!r}: use sqlite:///PATH or "
        "postgresql://USER@HOST[:PORT]/DATABASE (driver psycopg 3)"
    )


def normalize_url(url: str) -> str:
    """The URL SQLAlchemy is given (password included): `postgres://` and `postgresql://` become
    `postgresql+psycopg://`. Raises StoreError for anything that is not SQLite or PostgreSQL."""
    return _parse_url(url).render_as_string(hide_password=False)


_USERINFO = re.compile(r"(?P<head>[a-z][a-z0-9+.\-]*://[^:/@\s]*:)(?P<secret>[^\s]*)@", re.I)
_PASSWORD_PARAM = re.compile(r"(?P<head>\bpassword=)(?P<secret>[^&\s]*)", re.I)


def redact_url(url: str | sa.URL) -> str:
    """The URL with any password replaced by `***`: the only form of a URL we print or log."""
    if isinstance(url, sa.URL):
        parsed = url
    else:
        try:
            parsed = sa.make_url(str(url).strip())
        except (sa_exc.ArgumentError, ValueError):
            return _redact_text(str(url))
    if "password" in parsed.query:
        parsed = parsed.update_query_dict({"password": "***"})
    return parsed.render_as_string(hide_password=True)


def _redact_text(text: str) -> str:
    text = _USERINFO.sub(lambda m: m.group("head") + "***@", text)
    return _PASSWORD_PARAM.sub(lambda m: m.group("head") + "***", text)


def _scrub(text: str, url: sa.URL) -> str:
    """One line of a driver's message, with the URL's password removed wherever it appears."""
    text = _redact_text(" ".join(text.split()))
    secrets = [url.password, url.query.get("password")]
    for secret in secrets:
        if isinstance(secret, str) and secret:
            text = text.replace(secret, "***")
    return text


def _db_message(err: BaseException, url: sa.URL) -> str:
    """The driver's own words for a database error, on one line, without SQLAlchemy's trailer."""
    orig = getattr(err, "orig", None)
    text = str(orig) if orig is not None else str(err)
    text = text.split("(Background on this error")[0]
    return _scrub(text, url) or type(err).__name__


# -- values returned by the API ----------------------------------------------------------------


@dataclass(frozen=True)
class SweepInfo:
    """A registered sweep: its name, the spec text it was last registered with, its cell count."""

    name: str
    spec_text: str
    created_at: datetime
    updated_at: datetime
    cells: int


@dataclass(frozen=True)
class ArmStatus:
    """The seeds of one arm (one `spec_hash`) in a sweep, and which of them have no result."""

    spec_hash: str
    label: str
    seeds: tuple[int, ...]
    missing_seeds: tuple[int, ...]  # pending, running or failed: not completed nor diverged
    failed_seeds: tuple[int, ...]
    running_seeds: tuple[int, ...]


@dataclass(frozen=True)
class SweepStatus:
    """Cell counts by status for one sweep, and the missing seeds of each arm."""

    name: str
    total: int
    pending: int
    running: int
    completed: int
    failed: int
    diverged: int
    arms: tuple[ArmStatus, ...]
    #: (recipe, trials) of the sweep's trials of another training recipe: not counted above,
    #: never reused by a launch, left out of the tables (`older_recipe_line`).
    older_recipes: tuple[tuple[int, int], ...] = ()

    @property
    def done(self) -> int:
        """Cells with a final result (completed or diverged): what a relaunch skips."""
        return self.completed + self.diverged

    @property
    def incomplete_arms(self) -> tuple[ArmStatus, ...]:
        return tuple(arm for arm in self.arms if arm.missing_seeds)


@dataclass(frozen=True)
class ForgetCount:
    """What `Store.forget` deleted (or, in a dry run, would delete)."""

    trials: int
    epochs: int  # epoch rows of those trials
    shared: int  # of those trials, how many other sweeps use too (only with a sweep filter)
    running: int = 0  # of those trials, how many are running: a real run refuses them


def older_recipe_line(counts: Mapping[int, int], sweep: str | None = None) -> str | None:
    """One line saying that the store holds trials of another training recipe, which are not
    used, and how to delete them; None when there are none. `counts` is `older_recipes()`."""
    if not counts:
        return None
    current = workers.spec.RECIPE
    total = sum(counts.values())
    kind = "an older" if all(recipe < current for recipe in counts) else "another"
    recipes = ", ".join(f"recipe {recipe}: {n}" for recipe, n in sorted(counts.items()))
    scope = f"sweep {sweep}" if sweep is not None else "the store"
    selector = (f" --sweep {sweep}" if sweep is not None else "") + "".join(
        f" --where recipe={recipe}" for recipe in sorted(counts)
    )
    return (
        f"note: {scope} holds {total} trial(s) of {kind} training recipe ({recipes}); they are "
        f"not used by launches or tables (this bnsweep trains recipe {current}); "
        f"`bnsweep db forget{selector}` deletes them"
    )


# -- events ------------------------------------------------------------------------------------


class EpochMetricsLike(Protocol):
    """What `workers.results.EpochMetrics` provides; a plain mapping with these keys also works."""

    epoch: int
    train_loss: float
    val_loss: float
    val_acc: float
    test_acc: float
    lr: float
    seconds: float


class TrialResultLike(Protocol):
    """What `workers.results.TrialResult` provides; a plain mapping with these keys also works."""

    status: str
    epochs_run: int
    best_epoch: int | None
    best_val_acc: float | None
    test_acc: float | None
    final_test_acc: float | None
    seconds: float
    images_per_sec: float
    diverged_epoch: int | None
    error: str | None


def _now() -> datetime:
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


def _runtime_text(value: Mapping[str, object] | None) -> str | None:
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


def _check_cell(spec_hash: object, seed: object) -> None:
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
    started_at: datetime = field(default_factory=_now)
    git_commit: str | None = field(default_factory=source_commit)
    threads: int | None = None
    runtime: Mapping[str, object] | None = None

    def __post_init__(self) -> None:
        _check_cell(self.spec_hash, self.seed)
        object.__setattr__(self, "started_at", _utc(self.started_at))
        if self.git_commit is not None and (
            not isinstance(self.git_commit, str) or not 0 < len(self.git_commit) <= 64
        ):
            raise StoreError(f"git_commit: expected a commit id, got {self.git_commit!r}")
        threads = _opt_int("threads", self.threads)
        if threads is not None and threads < 1:
            raise StoreError(f"threads: expected an integer >= 1, got {self.threads!r}")
        object.__setattr__(self, "threads", threads)
        _runtime_text(self.runtime)  # fails here, at the edge, not at the write
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
    def from_metrics(cls, metrics: EpochMetricsLike | Mapping[str, object]) -> EpochValues:
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
    metrics: EpochValues | EpochMetricsLike | Mapping[str, object]

    def __post_init__(self) -> None:
        _check_cell(self.spec_hash, self.seed)
        if not isinstance(self.metrics, EpochValues):
            object.__setattr__(self, "metrics", EpochValues.from_metrics(self.metrics))

    @property
    def values(self) -> EpochValues:
        assert isinstance(self.metrics, EpochValues)
        return self.metrics


#: What a finished trial reports: the worker's `TrialResult` fields, as stored on its row.
RESULT_FIELDS = (
    "status",
    "epochs_run",
    "best_epoch",
    "best_val_acc",
    "test_acc",
    "final_test_acc",
    "seconds",
    "images_per_sec",
    "diverged_epoch",
    "error",
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
    finished_at: datetime = field(default_factory=_now)

    def __post_init__(self) -> None:
        _check_cell(self.spec_hash, self.seed)
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
        result: TrialResultLike | Mapping[str, object],
        finished_at: datetime | None = None,
    ) -> TrialFinished:
        """The event for a worker's `TrialResult` (or a mapping with the same keys)."""
        values = {name: _get(result, name) for name in RESULT_FIELDS}
        return cls(spec_hash, seed, finished_at=finished_at or _now(), **values)


@dataclass(frozen=True)
class TrialFailed:
    """A trial raised: status failed, with the error text. A later start retries it."""

    spec_hash: str
    seed: int
    error: str
    finished_at: datetime = field(default_factory=_now)

    def __post_init__(self) -> None:
        _check_cell(self.spec_hash, self.seed)
        object.__setattr__(self, "error", str(self.error)[:_ERROR_CHARS])
        object.__setattr__(self, "finished_at", _utc(self.finished_at))


class LayerDiagnosticsLike(Protocol):
    """What `workers.results.LayerDiagnostics` provides; a mapping with its keys also works."""

    layer: str
    depth: int
    module: str
    channels: int
    gamma_mean: float
    gamma_std: float
    beta_mean: float
    beta_std: float
    gamma_drift: float
    beta_drift: float
    outlier_fraction: float
    gradient_factor: float


#: The measured values of one BN layer, in the order of the `diagnostics` table.
DIAGNOSTIC_VALUES: tuple[str, ...] = (
    "gamma_mean",
    "gamma_std",
    "beta_mean",
    "beta_std",
    "gamma_drift",
    "beta_drift",
    "outlier_fraction",
    "gradient_factor",
)


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
    def from_layer(cls, layer: LayerDiagnosticsLike | Mapping[str, object]) -> LayerValues:
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
        return cls(layer=name, module=module, **counts, **values)


@dataclass(frozen=True)
class DiagnosticsRecorded:
    """The BN diagnostics of one epoch (0 = initialisation), one entry per BN layer; upserted
    on (trial, epoch, layer), so replayed epochs overwrite themselves as epoch metrics do."""

    spec_hash: str
    seed: int
    epoch: int
    #: The worker's `LayerDiagnostics` or mappings with their keys; `LayerValues` once built.
    layers: tuple[LayerValues | LayerDiagnosticsLike | Mapping[str, object], ...]

    def __post_init__(self) -> None:
        _check_cell(self.spec_hash, self.seed)
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
_EVENT_TYPES = (TrialStarted, EpochRecorded, DiagnosticsRecorded, TrialFinished, TrialFailed)


# -- columns, filters and DataFrames -----------------------------------------------------------

SPEC_COLUMNS: tuple[str, ...] = tuple(SPEC_COLUMN_TYPES)

#: Columns of `Store.trials()`, in order, with their pandas dtypes (stable even when empty).
TRIAL_COLUMNS: dict[str, str] = {
    "trial_id": "int64",
    "spec_hash": "str",
    "seed": "int64",
    **{
        name: {str: "str", float: "float64", int: "int64"}[kind]
        for name, kind in SPEC_COLUMN_TYPES.items()
    },
    "status": "str",
    "attempts": "int64",
    "epochs_run": "Int64",
    "best_epoch": "Int64",
    "best_val_acc": "float64",
    "test_acc": "float64",
    "final_test_acc": "float64",
    "diverged_epoch": "Int64",
    "seconds": "float64",
    "images_per_sec": "float64",
    "started_at": "datetime64[us, UTC]",
    "finished_at": "datetime64[us, UTC]",
    "host": "str",
    "device": "str",
    "package_version": "str",
    "git_commit": "str",
    "recipe": "int64",
    "threads": "Int64",
    "runtime": "str",  # JSON text of the run's runtime options
    "error": "str",
}

#: Columns of `Store.epochs()`. The epoch's own learning rate and wall time are `epoch_lr` and
#: `epoch_seconds`, because `lr` is the spec's α and `seconds` the trial's total.
EPOCH_COLUMNS: dict[str, str] = {
    "trial_id": "int64",
    "spec_hash": "str",
    "seed": "int64",
    **{name: TRIAL_COLUMNS[name] for name in SPEC_COLUMNS},
    "epoch": "int64",
    "train_loss": "float64",
    "val_loss": "float64",
    "val_acc": "float64",
    "test_acc": "float64",
    "epoch_lr": "float64",
    "epoch_seconds": "float64",
}


#: Columns of `Store.diagnostics()`: one row per (trial, epoch, BN layer); epoch 0 is the
#: network at initialisation. NaN (a BN the probe never reached) reads back as NaN.
DIAGNOSTIC_COLUMNS: dict[str, str] = {
    "trial_id": "int64",
    "spec_hash": "str",
    "seed": "int64",
    **{name: TRIAL_COLUMNS[name] for name in SPEC_COLUMNS},
    "epoch": "int64",
    "layer": "str",
    "depth": "int64",
    "module": "str",
    "channels": "int64",
    **dict.fromkeys(DIAGNOSTIC_VALUES, "float64"),
}


def _diagnostic_select_columns() -> list[sa.ColumnElement[Any]]:
    trial, diag = Trial.__table__.c, Diagnostic.__table__.c
    return [
        trial.id.label("trial_id"),
        trial.spec_hash,
        trial.seed,
        *(trial[name] for name in SPEC_COLUMNS),
        *(diag[name] for name in list(DIAGNOSTIC_COLUMNS)[3 + len(SPEC_COLUMNS) :]),
    ]


#: The columns `trials(columns=RESULT_COLUMNS)` reads: what the significance tables need. Leaving
#: out the provenance (timestamps, host, device, versions, errors) halves the read of a large
#: store: the timestamps are most of the per-value conversion work.
RESULT_COLUMNS: tuple[str, ...] = tuple(
    name
    for name in TRIAL_COLUMNS
    if name
    not in (
        "started_at",
        "finished_at",
        "host",
        "device",
        "package_version",
        "git_commit",
        "runtime",
        "error",
    )
)


def _trial_select_columns(names: Sequence[str] = tuple(TRIAL_COLUMNS)) -> list[Any]:
    table = Trial.__table__.c
    return [table.id.label("trial_id") if n == "trial_id" else table[n] for n in names]


def _epoch_select_columns() -> list[sa.ColumnElement[Any]]:
    trial, epoch = Trial.__table__.c, Epoch.__table__.c
    return [
        trial.id.label("trial_id"),
        trial.spec_hash,
        trial.seed,
        *(trial[name] for name in SPEC_COLUMNS),
        epoch.epoch,
        epoch.train_loss,
        epoch.val_loss,
        epoch.val_acc,
        epoch.test_acc,
        epoch.lr.label("epoch_lr"),
        epoch.seconds.label("epoch_seconds"),
    ]


#: Fields `where` may filter on (equality, or membership for a list of values; `Compare` for
#: the numeric ones).
TRIAL_FILTER_FIELDS: tuple[str, ...] = (
    "spec_hash",
    "seed",
    *SPEC_COLUMNS,
    "status",
    "attempts",
    "epochs_run",
    "best_epoch",
    "diverged_epoch",
    "best_val_acc",
    "test_acc",
    "final_test_acc",
    "seconds",
    "images_per_sec",
    "host",
    "device",
    "package_version",
    "git_commit",
    "recipe",
    "threads",
)
#: The paper's symbols as names of the fields they stand for: γ, α and c.
WHERE_ALIASES: Mapping[str, str] = {"gamma": "bn_scale_init", "alpha": "lr", "c": "bn_lr_divisor"}
#: Comparisons `where` accepts besides equality; all but != on numeric fields only.
COMPARISONS: Mapping[str, Callable[[Any, Any], Any]] = {
    ">": lambda column, value: column > value,
    ">=": lambda column, value: column >= value,
    "<": lambda column, value: column < value,
    "<=": lambda column, value: column <= value,
    "!=": lambda column, value: column != value,
}


@dataclass(frozen=True)
class Compare:
    """A `where` value other than equality: `Compare(">", 0.9)` keeps rows above 0.9. Several
    comparisons of one field must all hold; its plain values are alternatives."""

    op: str
    value: object


EPOCH_FILTER_FIELDS: tuple[str, ...] = (*TRIAL_FILTER_FIELDS, "epoch")
_DIAGNOSTIC_OWN_FIELDS = ("epoch", "layer", "depth", "module")
DIAGNOSTIC_FILTER_FIELDS: tuple[str, ...] = (*TRIAL_FILTER_FIELDS, *_DIAGNOSTIC_OWN_FIELDS)


def _filter_column(name: str, diagnostics: bool = False) -> sa.ColumnElement[Any]:
    if diagnostics and name in _DIAGNOSTIC_OWN_FIELDS:
        return Diagnostic.__table__.c[name]
    return Epoch.__table__.c.epoch if name == "epoch" else Trial.__table__.c[name]


def _coerce(name: str, kind: type, value: object) -> object:
    """A filter value as the column's type, so `--where lr=0.1` compares a float with a float."""
    if value is None:
        return None
    if kind is str:
        text = str(value)
        if name == "status" and text not in STATUSES:
            raise StoreError(f"where status={text!r}: allowed: {', '.join(STATUSES)}")
        return text
    if isinstance(value, bool):
        raise StoreError(f"where {name}: expected a number, got {value!r}")
    if kind is int and isinstance(value, (str, int)):
        try:
            whole = int(value.strip()) if isinstance(value, str) else value
        except ValueError:
            pass  # "3.0" or "1e3": through float below
        else:
            return _int64(name, whole, value)
    try:
        number = float(value.strip()) if isinstance(value, str) else float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        expected = "an integer" if kind is int else "a number"
        raise StoreError(f"where {name}: expected {expected}, got {value!r}") from None
    if kind is int:
        if not number.is_integer():
            raise StoreError(f"where {name}: expected an integer, got {value!r}")
        return _int64(name, int(number), value)
    if not math.isfinite(number):
        raise StoreError(f"where {name}: expected a finite number, got {value!r}")
    return number


def _int64(name: str, number: int, shown: object) -> int:
    # Both backends store 64-bit integers; a larger one cannot be bound as a parameter.
    if not -(2**63) <= number < 2**63:
        raise StoreError(f"where {name}: {shown!r} is outside the 64-bit integer range")
    return number


def check_where(
    where: Mapping[str, object] | None, *, epochs: bool = False, diagnostics: bool = False
) -> dict[str, tuple[object, ...]]:
    """Validate and coerce filters: field → tuple of accepted values (a list means any of them).

    An unknown field raises StoreError listing the valid ones; a value that does not fit the
    column's type raises StoreError naming the field.
    """
    if diagnostics:
        allowed = DIAGNOSTIC_FILTER_FIELDS
    else:
        allowed = EPOCH_FILTER_FIELDS if epochs else TRIAL_FILTER_FIELDS
    checked: dict[str, tuple[object, ...]] = {}
    for given, value in (where or {}).items():
        name = WHERE_ALIASES.get(given, given)
        if name not in allowed:
            raise StoreError(
                f"unknown field {given!r} in where; valid fields: {', '.join(allowed)} "
                f"(and {', '.join(WHERE_ALIASES)} for {', '.join(WHERE_ALIASES.values())})"
            )
        kind = _filter_column(name, diagnostics).type.python_type
        values = value if isinstance(value, (list, tuple, set, frozenset)) else (value,)
        if not values:
            raise StoreError(f"where {name}: expected at least one value")
        coerced = checked.setdefault(name, ())
        checked[name] = coerced + tuple(_coerce_filter(name, kind, v) for v in values)
    return checked


def _coerce_filter(name: str, kind: type, value: object) -> object:
    if not isinstance(value, Compare):
        return _coerce(name, kind, value)
    if value.op not in COMPARISONS:
        raise StoreError(
            f"where {name}: unknown comparison {value.op!r}; allowed: =, " + ", ".join(COMPARISONS)
        )
    if value.op != "!=" and kind not in (int, float):
        raise StoreError(f"where {name}{value.op}: {name} is text; only = and != apply to it")
    return Compare(value.op, _coerce(name, kind, value.value))


def _where_clauses(
    checked: Mapping[str, tuple[object, ...]], diagnostics: bool = False
) -> list[sa.ColumnElement[bool]]:
    # Values travel as bound parameters; nothing from the user is pasted into SQL text.
    clauses: list[sa.ColumnElement[bool]] = []
    for name, given in checked.items():
        column = _filter_column(name, diagnostics)
        compares = [v for v in given if isinstance(v, Compare)]
        values = [v for v in given if not isinstance(v, Compare)]
        present = [v for v in values if v is not None]
        parts: list[sa.ColumnElement[bool]] = []
        if present:
            parts.append(column.in_(present) if len(present) > 1 else column == present[0])
        if len(present) < len(values):
            parts.append(column.is_(None))
        if parts:
            clauses.append(sa.or_(*parts))
        clauses.extend(COMPARISONS[c.op](column, c.value) for c in compares)
    return clauses


def _status_values(status: str | Sequence[str] | None) -> tuple[str, ...]:
    if status is None:
        return ()
    values = (status,) if isinstance(status, str) else tuple(status)
    unknown = [s for s in values if s not in STATUSES]
    if unknown:
        raise StoreError(f"status {unknown[0]!r}: allowed: {', '.join(STATUSES)}")
    return values


def _frame(rows: Sequence[Sequence[object]], dtypes: Mapping[str, str]) -> pd.DataFrame:
    import pandas as pd

    # Column by column, each built once in its final dtype: a frame of objects converted
    # afterwards costs twice as long for a store of 100,000 trials.
    columns = list(zip(*rows, strict=True)) if rows else [()] * len(dtypes)
    data = {}
    for (name, dtype), values in zip(dtypes.items(), columns, strict=True):
        if dtype.startswith("datetime64"):
            data[name] = pd.to_datetime(pd.Series(values, dtype=object), utc=True).astype(dtype)
        else:
            data[name] = pd.Series(values, dtype=dtype)
    return pd.DataFrame(data, columns=list(dtypes))


def _format_number(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def arm_label(values: Mapping[str, object], fields: Sequence[str] = ()) -> str:
    """A readable name for an arm: γ, c and the formulation, then `fields` (those that vary).

    e.g. "γ=0.1 c=100 standard lr=0.1"; BASE (γ = 1, c = 1, standard) is prefixed "BASE".
    """
    parts = [
        f"γ={_format_number(values['bn_scale_init'])}",
        f"c={_format_number(values['bn_lr_divisor'])}",
        str(values["formulation"]),
    ]
    parts += [f"{name}={_format_number(values[name])}" for name in fields if name not in ARM_FIELDS]
    is_base = (
        values["formulation"] == "standard"
        and values["bn_scale_init"] == 1.0
        and values["bn_lr_divisor"] == 1.0
    )
    return ("BASE " if is_base else "") + " ".join(parts)


def _cell_of(cell: TrialSpec | tuple[str, int]) -> tuple[str, int]:
    if isinstance(cell, TrialSpec):
        return cell.spec_hash, cell.seed
    spec_hash, seed = cell
    _check_cell(spec_hash, seed)
    return spec_hash, seed


def _chunks(items: Sequence[T], size: int = _CHUNK) -> Iterable[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# -- migrations --------------------------------------------------------------------------------


def _script_location() -> Path:
    """The Alembic scripts shipped inside the package (package data, see pyproject.toml)."""
    return Path(__file__).resolve().parent / "migrations"


def _alembic_config(location: Path) -> Any:
    from alembic.config import Config

    config = Config()
    # configparser interpolates '%'; a path containing one must be escaped.
    config.set_main_option("script_location", str(location).replace("%", "%%"))
    config.set_main_option("path_separator", "os")
    return config


@functools.lru_cache(maxsize=4)
def _script_directory(location: Path) -> Any:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config(location))


def head_revision() -> str:
    """The schema revision this version of bnsweep reads and writes."""
    head = _script_directory(_script_location()).get_current_head()
    assert head is not None, "the shipped migrations have no head"
    return head


def _known_revisions() -> set[str]:
    return {script.revision for script in _script_directory(_script_location()).walk_revisions()}


def _current_revision(conn: sa.Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
    heads = context.get_current_heads()
    return heads[0] if heads else None


# -- engines -----------------------------------------------------------------------------------


def _sqlite_on_connect(dbapi_connection: Any, _record: object) -> None:
    # Let SQLAlchemy emit BEGIN itself (see _sqlite_on_begin): pysqlite's legacy mode would
    # leave SELECTs outside the transaction and cannot start a write transaction up front.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        # WAL: readers (`bnsweep query`) never block the writer (the sweep driver) and vice versa.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_SECONDS * 1000)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")  # durable at each checkpoint; safe with WAL
    finally:
        cursor.close()


def _sqlite_on_begin(conn: sa.Connection) -> None:
    # A write transaction takes the write lock when it starts. Started as a plain (deferred)
    # read, it could find at its first write that another writer committed in between, and
    # SQLite then fails at once instead of waiting out the busy timeout.
    write = conn.get_execution_options().get("bnsweep_write", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def _sqlite_read_only_on_connect(dbapi_connection: Any, _record: object) -> None:
    # No journal_mode change here: a read-only command leaves the file as it found it.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_SECONDS * 1000)}")
        cursor.execute("PRAGMA query_only=ON")
    finally:
        cursor.close()


def _sqlite_read_only_uri(path: Path) -> str:
    # mode=ro: SQLite opens the file O_RDONLY and never writes it, checkpoints a WAL into it
    # or changes its journal mode.
    return f"file:{urllib.parse.quote(str(path.resolve()))}?mode=ro"


def _probe_sqlite(path: Path) -> None:
    """Refuse an existing file that is not SQLite, not bnsweep's, or of a newer bnsweep,
    reading it through a read-only connection (nothing about the file changes)."""
    import sqlite3

    try:
        conn = sqlite3.connect(_sqlite_read_only_uri(path), uri=True, timeout=SQLITE_BUSY_SECONDS)
        try:
            tables = {
                row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
            versions = (
                [row[0] for row in conn.execute(f'SELECT version_num FROM "{VERSION_TABLE}"')]
                if VERSION_TABLE in tables
                else []
            )
        finally:
            conn.close()
    except sqlite3.DatabaseError as err:
        text = str(err)
        if "not a database" in text or "malformed" in text:
            raise StoreFailure(
                f"{path}: not a SQLite database, or a damaged one ({text})"
            ) from None
        if "unable to open" in text and not os.access(path, os.R_OK):
            raise StoreFailure(f"{path}: permission denied (cannot read it)") from None
        raise StoreFailure(f"{path}: cannot read it ({text})") from None
    if tables and not versions:
        raise StoreFailure(_foreign(str(path)))
    unknown = [v for v in versions if v not in _known_revisions()]
    if unknown:
        raise StoreFailure(_newer(str(path), unknown[0]))


def _foreign(where: str) -> str:
    return (
        f"{where} holds tables but no bnsweep schema version: another program's database, "
        "which bnsweep leaves alone; give --db a bnsweep store or a new file"
    )


def _newer(where: str, revision: str) -> str:
    return (
        f"{where} is at schema revision {revision}, unknown to this bnsweep (which needs "
        f"{head_revision()}): it was written by a newer bnsweep; upgrade bnsweep"
    )


def _make_engine(url: sa.URL, *, read_only: bool = False) -> sa.Engine:
    if url.get_backend_name() == "sqlite" and read_only and not _is_sqlite_memory(url):
        import sqlite3

        uri = _sqlite_read_only_uri(Path(str(url.database)).expanduser())
        engine = sa.create_engine(
            "sqlite://",
            creator=lambda: sqlite3.connect(
                uri, uri=True, timeout=SQLITE_BUSY_SECONDS, check_same_thread=False
            ),
            pool_pre_ping=True,
        )
        sa_event.listen(engine, "connect", _sqlite_read_only_on_connect)
        sa_event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    if url.get_backend_name() == "sqlite":
        engine = sa.create_engine(
            url, pool_pre_ping=True, connect_args={"timeout": SQLITE_BUSY_SECONDS}
        )
        sa_event.listen(engine, "connect", _sqlite_on_connect)
        sa_event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    connect_args: dict[str, Any] = {"connect_timeout": 10, "application_name": "bnsweep"}
    if read_only:
        # The server refuses any write of a read-only command, whatever the code tries.
        connect_args["options"] = "-c default_transaction_read_only=on"
    return sa.create_engine(
        url,
        # A connection dropped by a server restart is found and replaced at checkout.
        pool_pre_ping=True,
        connect_args=connect_args,
    )


def _is_sqlite_memory(url: sa.URL) -> bool:
    return url.database in (None, "", ":memory:") or url.query.get("mode") == "memory"


# PostgreSQL error classes worth waiting out: connection exceptions (08), operator intervention
# (57P01 admin shutdown, 57P02 crash shutdown, 57P03 cannot connect now), too many connections,
# and the concurrency aborts a retried transaction resolves (serialization failure, deadlock).
_TRANSIENT_SQLSTATE_PREFIXES = ("08", "57P", "53300", "40001", "40P01")


_PERMANENT_CONNECT_ERRORS = (
    "authentication failed",
    "does not exist",
    "no pg_hba.conf entry",
    "permission denied",
    "invalid",
)


def _is_transient(err: sa_exc.DBAPIError) -> bool:
    """Whether retrying the whole transaction later may succeed."""
    if err.connection_invalidated:
        return True
    orig = err.orig
    sqlstate = getattr(orig, "sqlstate", None)
    if sqlstate:
        return sqlstate.startswith(_TRANSIENT_SQLSTATE_PREFIXES)
    if isinstance(err, sa_exc.InterfaceError):
        return True  # the driver's connection object is closed or broken
    if isinstance(err, sa_exc.OperationalError):
        message = str(orig).lower()
        if "sqlite" in type(orig).__module__:
            return "locked" in message or "busy" in message
        # psycopg reports failures to connect without an SQLSTATE: a refused or reset
        # connection is worth waiting out, a wrong password or database name is not.
        return not any(pattern in message for pattern in _PERMANENT_CONNECT_ERRORS)
    return False


# -- the store ---------------------------------------------------------------------------------


class _ShmWatch:
    """The SQLite `-shm` file as last seen: SQLite maps it into memory, and touching a mapped
    page that someone truncated away kills the process with SIGBUS, a C-level crash no Python
    code can catch. Checked before each transaction, a shrunk `-shm` (same file, fewer bytes)
    stops the store with one line instead. Not airtight: a truncation between the check and
    SQLite's next access, or a full disk under the mapping, still crashes."""

    def __init__(self, database: Path) -> None:
        self.path = database.with_name(database.name + "-shm")
        self.seen: tuple[int, int] | None = None

    def check(self) -> None:
        try:
            stat = self.path.stat()
        except OSError:
            self.seen = None  # no -shm (not WAL, or every connection closed): nothing mapped
            return
        if self.seen is not None and stat.st_ino == self.seen[0] and stat.st_size < self.seen[1]:
            # Grown back (zeros) so that closing our connections touches mapped bytes again;
            # SQLite rebuilds a zeroed index from the -wal file, as after a crash.
            with contextlib.suppress(OSError):
                os.truncate(self.path, self.seen[1])
            raise StoreFailure(
                f"{self.path} was truncated while bnsweep had it open (another program, or a "
                "cleanup of the folder); SQLite would crash on it: stop that, then run again"
            )
        self.seen = (stat.st_ino, stat.st_size)


class _FileWatch:
    """The SQLite file behind the store's path, as first seen: if it is deleted or replaced
    while the store is open, SQLite keeps writing to the old, unlinked file, and every result
    from then on would vanish without a word. Checked before each transaction."""

    def __init__(self, database: Path) -> None:
        self.path = database
        self.seen: tuple[int, int] | None = None

    def check(self) -> None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            if self.seen is None:
                return  # not created yet: the first transaction creates it
            identity = None
        else:
            identity = (stat.st_dev, stat.st_ino)
        if self.seen is None:
            self.seen = identity
            return
        if identity != self.seen:
            what = "deleted" if identity is None else "replaced by another file"
            raise StoreFailure(
                f"{self.path} was {what} while bnsweep had it open; nothing more is written, so "
                "that no result goes to a file nobody can read: put the store back (or choose "
                "another --db) and launch again"
            )


@dataclass
class _Cell:
    """A trial's state as seen inside one `apply` transaction."""

    id: int
    status: str
    started_at: datetime | None


class Store:
    """The results database. Open with `Store.open(url)`; close with `close()` or `with`."""

    def __init__(self, engine: sa.Engine, url: sa.URL, retry_seconds: float) -> None:
        self._engine = engine
        self._url = url
        self.retry_seconds = float(retry_seconds)
        sqlite_file = url.get_backend_name() == "sqlite" and not _is_sqlite_memory(url)
        self._shm = _ShmWatch(Path(str(url.database)).expanduser()) if sqlite_file else None
        self._file = _FileWatch(Path(str(url.database)).expanduser()) if sqlite_file else None
        if self._file is not None:
            self._file.check()

    # -- opening -------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        url: str | None = None,
        *,
        create: bool = True,
        check_schema: bool = True,
        read_only: bool = False,
        retry_seconds: float = DEFAULT_RETRY_SECONDS,
    ) -> Store:
        """Open the store at `url` (else BNSWEEP_DB, else `sqlite:///bnsweep.db`).

        Schema rule: a database without any bnsweep tables (a new SQLite file, an empty
        PostgreSQL database) gets the current schema when `create` is true, and is an error
        otherwise. A database whose schema is older than this bnsweep is never migrated
        implicitly (a running sweep of the older version may share it): StoreError says to run
        `bnsweep db upgrade`. A newer or unknown revision is an error too. `check_schema=False`
        skips all of this; it is for `Store.upgrade()` callers such as `bnsweep db upgrade`.

        An existing SQLite file is first read through a read-only connection: a file of another
        program (tables, but no bnsweep version table), a file that is not SQLite and a newer
        schema are refused before anything could change it (WAL mode is only switched on for
        bnsweep's own files). `read_only` (status, query, tables, plots, a dry run) implies
        `create=False` and keeps every connection read-only, so the file's bytes stay the same.

        Opening connects once, without retries, so a wrong URL fails at once.
        """
        parsed = _parse_url(resolve_url(url))
        shown = redact_url(parsed)
        create = create and not read_only
        if parsed.get_backend_name() == "sqlite" and not _is_sqlite_memory(parsed):
            path = Path(str(parsed.database)).expanduser()
            if path.is_dir():
                raise StoreFailure(f"{path}: is a folder, expected a SQLite file (--db {shown})")
            if not path.exists():
                if not create:
                    raise NoStoreYet(
                        f"no results database at {path}: launch a sweep or run "
                        f"`bnsweep db upgrade --db {shown}` first"
                    )
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                except OSError as err:
                    raise StoreFailure(
                        f"cannot create the folder of {path}: {err.strerror or err}"
                    ) from None
            else:
                _probe_sqlite(path)
        store = cls(_make_engine(parsed, read_only=read_only), parsed, retry_seconds)
        try:
            if check_schema:
                store._check_schema(create=create)
            else:
                store._run(
                    lambda conn: conn.execute(sa.text("SELECT 1")), "connecting", retry=False
                )
        except BaseException:
            store.close()
            raise
        return store

    def _check_schema(self, *, create: bool) -> None:
        def inspect(conn: sa.Connection) -> tuple[str | None, bool]:
            revision = _current_revision(conn)
            has_tables = revision is None and bool(sa.inspect(conn).get_table_names())
            return revision, has_tables

        current, has_tables = self._run(inspect, "reading the schema version", retry=False)
        head = head_revision()
        if current == head:
            return
        shown = self.url
        if current is None:
            if has_tables:
                raise StoreFailure(_foreign(shown))
            if not create:
                raise NoStoreYet(
                    f"no bnsweep results in {shown}: launch a sweep or run "
                    f"`bnsweep db upgrade --db {shown}` first"
                )
            log.info("creating the results schema (revision %s) in %s", head, shown)
            self.upgrade()
            return
        if current not in _known_revisions():
            raise StoreFailure(_newer(shown, current))
        raise StoreFailure(
            f"{shown} is at schema revision {current}, this bnsweep needs {head}: "
            f"run `bnsweep db upgrade --db {shown}`"
        )

    def upgrade(self) -> tuple[str | None, str]:
        """Run `alembic upgrade head` on this database; returns (revision before, after).

        Concurrent upgrades of one PostgreSQL database serialise on an advisory lock, and the
        migration runs in this transaction, so a failure leaves the schema as it was.
        """
        from alembic import command

        def migrate(conn: sa.Connection) -> tuple[str | None, str]:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_MIGRATION_LOCK_KEY)))
            before = _current_revision(conn)
            if before is not None and before not in _known_revisions():
                raise StoreFailure(_newer(self.url, before))
            if before is None and sa.inspect(conn).get_table_names():
                raise StoreFailure(_foreign(self.url))
            config = _alembic_config(_script_location())
            config.attributes["connection"] = conn
            command.upgrade(config, "head")
            after = _current_revision(conn)
            assert after is not None
            return before, after

        before, after = self._run(migrate, "upgrading the schema", write=True)
        if before != after:
            log.info("upgraded %s from schema revision %s to %s", self.url, before, after)
        return before, after

    def schema_revision(self) -> str | None:
        """The database's schema revision (None for a database without the bnsweep schema)."""
        return self._run(_current_revision, "reading the schema version")

    @property
    def url(self) -> str:
        """The database URL, password redacted."""
        return redact_url(self._url)

    @property
    def dialect(self) -> str:
        """`sqlite` or `postgresql`."""
        return self._engine.dialect.name

    def close(self) -> None:
        self._engine.dispose()

    @contextlib.contextmanager
    def launch_lock(self, sweep: str) -> Iterator[None]:
        """Hold the store's lock for launching `sweep`, or fail at once with one line.

        Taken in the store rather than in a checkpoint folder, so two launches of one sweep from
        two folders (or machines) into one store cannot both train its missing cells. PostgreSQL:
        a session advisory lock on a connection held for the launch (the server drops it with
        a killed driver's connection). SQLite: an exclusive `flock` on a file beside the
        database, dropped by the kernel with a killed driver."""
        key = int.from_bytes(hashlib.sha256(f"bnsweep launch {sweep}".encode()).digest()[:8], "big")
        key -= 1 << 63 if key >= 1 << 63 else 0  # PostgreSQL's bigint is signed
        busy = (
            f"sweep {sweep} is being launched already into this store ({self.url}); wait for "
            "that launch to end or stop it"
        )
        if self.dialect == "postgresql":
            with self._engine.connect() as conn:
                if not conn.execute(
                    sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": key}
                ).scalar():
                    conn.rollback()
                    raise StoreError(busy)
                conn.commit()
                try:
                    yield
                finally:
                    with contextlib.suppress(sa_exc.DBAPIError):
                        conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                        conn.commit()
            return
        database = self._url.database
        if self.dialect != "sqlite" or _is_sqlite_memory(self._url) or not database:
            yield  # one process owns an in-memory store
            return
        import fcntl

        path = Path(str(database)).expanduser()
        lock = path.with_name(f"{path.name}.launch-{key & 0xFFFFFFFFFFFF:012x}.lock")
        with open(lock, "a+", encoding="utf-8") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StoreError(busy) from None
            yield

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    # -- the retry loop ------------------------------------------------------------------------

    def _run(
        self,
        work: Callable[[sa.Connection], T],
        what: str,
        *,
        write: bool = False,
        retry: bool = True,
    ) -> T:
        """Run `work` in one transaction; on a transient failure, run it again from the start.

        Safe because every write of the store is idempotent: when a connection dies after
        COMMIT was sent, the transaction may or may not have landed, and running it again
        gives the same rows either way.
        """
        if self._file is not None:
            self._file.check()
        if self._shm is not None:
            self._shm.check()
        deadline = time.monotonic() + (self.retry_seconds if retry else 0.0)
        delay = 0.05
        failures = 0
        while True:
            try:
                with self._engine.connect() as conn:
                    if write:
                        conn.execution_options(bnsweep_write=True)
                    with conn.begin():
                        return work(conn)
            except sa_exc.DBAPIError as err:
                message = _db_message(err, self._url)
                if not _is_transient(err):
                    if "not a database" in message or "malformed" in message:
                        raise StoreFailure(
                            f"{self.url}: not a SQLite database, or a damaged one ({message})"
                        ) from None
                    if isinstance(err, (sa_exc.OperationalError, sa_exc.InterfaceError)):
                        raise StoreFailure(f"{self.url}: {what} failed: {message}") from None
                    raise  # integrity or programming errors are bugs: keep the traceback
                failures += 1
                left = deadline - time.monotonic()
                if left <= 0:
                    if not retry:
                        raise StoreFailure(f"cannot reach {self.url} ({what}): {message}") from None
                    raise StoreFailure(
                        f"{self.url} unavailable for {self.retry_seconds:.0f} s "
                        f"({failures} tries) while {what}: {message}"
                    ) from None
                pause = min(delay * random.uniform(0.5, 1.5), left)
                log.warning(
                    "database %s unavailable while %s (%s); retrying in %.2f s, %.0f s left",
                    self.url,
                    what,
                    message,
                    pause,
                    left,
                )
                time.sleep(pause)
                delay = min(delay * 2, 2.0)

    # -- writes --------------------------------------------------------------------------------

    def register_sweep(self, name: str, spec_text: str, specs: Sequence[TrialSpec]) -> SweepInfo:
        """Record a sweep and its cells; trials that do not exist yet are added as pending.

        Idempotent. Registering an existing name with different `spec_text` replaces the text
        and keeps every link made before, so a sweep's cells are the union of all the specs
        registered under its name (give a changed experiment a new name to start clean).
        """
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            raise StoreError(f"sweep name: expected 1-200 characters, got {name!r}")
        now = _now()
        rows: dict[tuple[str, int], dict[str, object]] = {}
        for spec in specs:
            if not isinstance(spec, TrialSpec):
                raise StoreError(f"register_sweep: expected TrialSpec values, got {spec!r}")
            values = {column: getattr(spec, column) for column in SPEC_COLUMNS}
            rows[(spec.spec_hash, spec.seed)] = {
                "spec_hash": spec.spec_hash,
                "seed": spec.seed,
                **values,
                # The recipe its spec_hash was computed with (read now, like the hash).
                "recipe": workers.spec.RECIPE,
                "status": "pending",
                "attempts": 0,
                "created_at": now,
                "updated_at": now,
            }
        insert = self._insert

        def work(conn: sa.Connection) -> SweepInfo:
            sweep_insert = insert(Sweep.__table__).values(
                name=name, spec_text=spec_text, created_at=now, updated_at=now
            )
            conn.execute(
                sweep_insert.on_conflict_do_update(
                    index_elements=["name"],
                    set_={"spec_text": spec_text, "updated_at": now},
                    where=Sweep.__table__.c.spec_text != spec_text,
                )
            )
            sweep_id = conn.scalar(sa.select(Sweep.id).where(Sweep.name == name))
            if rows:
                conn.execute(
                    insert(Trial.__table__).on_conflict_do_nothing(
                        index_elements=["spec_hash", "seed"]
                    ),
                    list(rows.values()),
                )
                ids = self._trial_ids(conn, rows)
                conn.execute(
                    insert(SweepTrial.__table__).on_conflict_do_nothing(
                        index_elements=["sweep_id", "trial_id"]
                    ),
                    [{"sweep_id": sweep_id, "trial_id": ids[cell]} for cell in rows],
                )
            return self._sweep_infos(conn, name)[0]

        info = self._run(work, f"registering sweep {name!r}", write=True)
        log.info("registered sweep %r: %d cells in %s", name, info.cells, self.url)
        return info

    @property
    def _insert(self) -> Callable[..., Any]:
        # `INSERT ... ON CONFLICT` is spelled the same on both backends but built per dialect.
        return pg_dialect.insert if self.dialect == "postgresql" else sqlite_dialect.insert

    @staticmethod
    def _trial_ids(
        conn: sa.Connection, cells: Iterable[tuple[str, int]]
    ) -> dict[tuple[str, int], int]:
        wanted = set(cells)
        hashes = sorted({spec_hash for spec_hash, _ in wanted})
        ids: dict[tuple[str, int], int] = {}
        for chunk in _chunks(hashes):
            query = sa.select(Trial.id, Trial.spec_hash, Trial.seed).where(
                Trial.spec_hash.in_(chunk)
            )
            for trial_id, spec_hash, seed in conn.execute(query):
                if (spec_hash, seed) in wanted:
                    ids[(spec_hash, seed)] = trial_id
        return ids

    def apply(self, events: Sequence[Event]) -> None:
        """Apply events in order, all in one transaction (retried as a whole when the database
        drops out). Every cell named must have been registered with `register_sweep`."""
        events = list(events)
        for item in events:
            if not isinstance(item, _EVENT_TYPES):
                raise TypeError(f"apply: not a store event: {item!r}")
        if not events:
            return
        cells = {(item.spec_hash, item.seed) for item in events}
        self._run(lambda conn: self._apply(conn, events, cells), "recording results", write=True)

    def _apply(
        self, conn: sa.Connection, events: Sequence[Event], cells: set[tuple[str, int]]
    ) -> None:
        state = self._lock_cells(conn, cells)
        unknown = sorted(cells - state.keys())
        if unknown:
            shown = ", ".join(f"{h}/seed {s}" for h, s in unknown[:5])
            raise StoreError(
                f"{len(unknown)} cell(s) not in the store ({shown}); register the sweep first"
            )
        now = _now()
        upserts: dict[tuple[int, int], dict[str, object]] = {}
        fills: dict[tuple[int, int], dict[str, object]] = {}
        layer_upserts: dict[tuple[int, int, str], dict[str, object]] = {}
        layer_fills: dict[tuple[int, int, str], dict[str, object]] = {}
        trials = Trial.__table__
        for item in events:
            cell = state[(item.spec_hash, item.seed)]
            if isinstance(item, EpochRecorded):
                row = {"trial_id": cell.id, **vars(item.values)}
                # Once final, a trial's epochs are kept as they are; a gap may still be filled.
                target = fills if cell.status in FINAL_STATUSES else upserts
                target[(cell.id, item.values.epoch)] = row
                continue
            if isinstance(item, DiagnosticsRecorded):
                # The same rule as epochs: a final trial's rows are kept, gaps may be filled.
                layer_target = layer_fills if cell.status in FINAL_STATUSES else layer_upserts
                for layer in item.values:
                    layer_target[(cell.id, item.epoch, layer.layer)] = {
                        "trial_id": cell.id,
                        "epoch": item.epoch,
                        **vars(layer),
                    }
                continue
            if cell.status in FINAL_STATUSES:
                log.debug("ignoring %s for %s trial %d", type(item).__name__, cell.status, cell.id)
                continue
            values: dict[str, object]
            if isinstance(item, TrialStarted):
                if cell.started_at is not None and item.started_at <= cell.started_at:
                    continue  # a replay of this attempt's start, or a stale earlier one
                values = {
                    "status": "running",
                    "attempts": trials.c.attempts + 1,
                    "started_at": item.started_at,
                    "host": item.host,
                    "device": item.device,
                    "package_version": item.package_version,
                    "git_commit": item.git_commit,
                    "threads": item.threads,
                    "runtime": _runtime_text(item.runtime),
                    "finished_at": None,
                    "error": None,
                }
                cell.started_at = item.started_at
            elif isinstance(item, TrialFinished):
                values = {name: getattr(item, name) for name in (*RESULT_FIELDS, "finished_at")}
            else:
                if cell.started_at is not None and item.finished_at < cell.started_at:
                    continue  # the failure of an attempt older than the one now running
                values = {"status": "failed", "error": item.error, "finished_at": item.finished_at}
            conn.execute(
                sa.update(trials)
                .where(trials.c.id == cell.id, trials.c.status.not_in(FINAL_STATUSES))
                .values(updated_at=now, **values)
            )
            cell.status = str(values["status"])
        epochs = Epoch.__table__
        if upserts:
            statement = self._insert(epochs)
            metric_names = [c.name for c in epochs.c if c.name not in ("trial_id", "epoch")]
            conn.execute(
                statement.on_conflict_do_update(
                    index_elements=["trial_id", "epoch"],
                    set_={name: statement.excluded[name] for name in metric_names},
                ),
                list(upserts.values()),
            )
        if fills:
            conn.execute(
                self._insert(epochs).on_conflict_do_nothing(index_elements=["trial_id", "epoch"]),
                list(fills.values()),
            )
        self._write_layers(conn, layer_upserts, layer_fills)

    def _write_layers(
        self,
        conn: sa.Connection,
        upserts: Mapping[tuple[int, int, str], dict[str, object]],
        fills: Mapping[tuple[int, int, str], dict[str, object]],
    ) -> None:
        table = Diagnostic.__table__
        key = ["trial_id", "epoch", "layer"]
        if upserts:
            statement = self._insert(table)
            names = [c.name for c in table.c if c.name not in key]
            conn.execute(
                statement.on_conflict_do_update(
                    index_elements=key, set_={name: statement.excluded[name] for name in names}
                ),
                list(upserts.values()),
            )
        if fills:
            conn.execute(
                self._insert(table).on_conflict_do_nothing(index_elements=key),
                list(fills.values()),
            )

    @staticmethod
    def _lock_cells(
        conn: sa.Connection, cells: set[tuple[str, int]]
    ) -> dict[tuple[str, int], _Cell]:
        # FOR UPDATE (PostgreSQL; SQLite's BEGIN IMMEDIATE already locks the file) keeps the
        # statuses read here valid until commit, so the transition rules hold under concurrency.
        hashes = sorted({spec_hash for spec_hash, _ in cells})
        state: dict[tuple[str, int], _Cell] = {}
        for chunk in _chunks(hashes):
            query = (
                sa.select(Trial.id, Trial.spec_hash, Trial.seed, Trial.status, Trial.started_at)
                .where(Trial.spec_hash.in_(chunk))
                .order_by(Trial.id)
                .with_for_update()
            )
            for trial_id, spec_hash, seed, status, started_at in conn.execute(query):
                if (spec_hash, seed) in cells:
                    state[(spec_hash, seed)] = _Cell(trial_id, status, started_at)
        return state

    # -- reads ---------------------------------------------------------------------------------

    def completed_cells(self, cells: Iterable[TrialSpec | tuple[str, int]]) -> set[tuple[str, int]]:
        """Those of `cells` (specs or (spec_hash, seed) pairs) that have a final result.

        Final means completed or diverged: a diverged seed is a result of its arm (training it
        again would diverge again), so a relaunch must not run it either.
        """
        wanted = {_cell_of(cell) for cell in cells}
        if not wanted:
            return set()
        hashes = sorted({spec_hash for spec_hash, _ in wanted})

        def work(conn: sa.Connection) -> set[tuple[str, int]]:
            done: set[tuple[str, int]] = set()
            for chunk in _chunks(hashes):
                query = sa.select(Trial.spec_hash, Trial.seed).where(
                    Trial.spec_hash.in_(chunk), Trial.status.in_(FINAL_STATUSES)
                )
                done.update((spec_hash, seed) for spec_hash, seed in conn.execute(query))
            return done & wanted

        return self._run(work, "reading completed cells")

    def requeue_stale(self, cells: Iterable[TrialSpec | tuple[str, int]]) -> int:
        """Set those of `cells` that are still `running` back to `pending`; return how many.

        Called by a launch that holds the sweep's lock: a row still running then belongs to a
        launch that was killed or interrupted, and no trial is training it any more."""
        wanted = {_cell_of(cell) for cell in cells}
        hashes = sorted({spec_hash for spec_hash, _ in wanted})

        def work(conn: sa.Connection) -> int:
            stale: list[int] = []
            for chunk in _chunks(hashes):
                query = sa.select(Trial.id, Trial.spec_hash, Trial.seed).where(
                    Trial.spec_hash.in_(chunk), Trial.status == "running"
                )
                stale += [i for i, h, seed in conn.execute(query) if (h, seed) in wanted]
            for chunk in _chunks(stale):
                conn.execute(
                    sa.update(Trial)
                    .where(Trial.id.in_(chunk))
                    .values(status="pending", updated_at=_now())
                )
            return len(stale)

        return self._run(work, "requeueing stale running trials", write=True) if hashes else 0

    def _sweep_infos(self, conn: sa.Connection, name: str | None = None) -> list[SweepInfo]:
        cells = sa.func.count(SweepTrial.trial_id)
        query = (
            sa.select(Sweep.name, Sweep.spec_text, Sweep.created_at, Sweep.updated_at, cells)
            .outerjoin(SweepTrial, SweepTrial.sweep_id == Sweep.id)
            .group_by(Sweep.id, Sweep.name, Sweep.spec_text, Sweep.created_at, Sweep.updated_at)
            .order_by(Sweep.name)
        )
        if name is not None:
            query = query.where(Sweep.name == name)
        return [SweepInfo(*row) for row in conn.execute(query)]

    def sweeps(self) -> list[SweepInfo]:
        """Every registered sweep, by name."""
        return self._run(self._sweep_infos, "listing sweeps")

    def get_sweep(self, name: str) -> SweepInfo:
        """The sweep called `name`; StoreError naming the known sweeps when there is none."""
        infos = self._run(lambda conn: self._sweep_infos(conn, name), f"reading sweep {name!r}")
        if infos:
            return infos[0]
        known = [info.name for info in self.sweeps()]
        raise StoreFailure(
            f"no sweep named {name!r} in {self.url}; known sweeps: "
            + (", ".join(known) if known else "none")
        )

    def _select(
        self,
        columns: list[sa.ColumnElement[Any]],
        sweep: str | None,
        checked: Mapping[str, tuple[object, ...]],
        statuses: tuple[str, ...] = (),
        from_: sa.FromClause | None = None,
        diagnostics: bool = False,
    ) -> sa.Select[Any]:
        query = sa.select(*columns)
        if from_ is not None:
            query = query.select_from(from_)
        if sweep is not None:
            query = (
                query.join(SweepTrial, SweepTrial.trial_id == Trial.id)
                .join(Sweep, Sweep.id == SweepTrial.sweep_id)
                .where(Sweep.name == sweep)
            )
        query = query.where(*_where_clauses(checked, diagnostics))
        if statuses:
            query = query.where(Trial.status.in_(statuses))
        return query

    def trials(
        self,
        sweep: str | None = None,
        where: Mapping[str, object] | None = None,
        status: str | Sequence[str] | None = None,
        columns: Sequence[str] | None = None,
    ) -> pd.DataFrame:
        """One row per trial (columns and dtypes: `TRIAL_COLUMNS`), in spec then seed order.

        `where` maps a field (`TRIAL_FILTER_FIELDS`) to a value or a list of values; values are
        coerced to the column's type, so strings from a command line work. `columns` reads only
        those of `TRIAL_COLUMNS` (e.g. `RESULT_COLUMNS`, what the tables need).
        """
        names = tuple(TRIAL_COLUMNS) if columns is None else tuple(columns)
        unknown = sorted(set(names) - set(TRIAL_COLUMNS))
        if unknown:
            raise StoreError(
                f"unknown trial column(s) {', '.join(unknown)}; allowed: {', '.join(TRIAL_COLUMNS)}"
            )
        checked = check_where(where)
        statuses = _status_values(status)
        # Sorted here rather than by the database: an ORDER BY over the 14 spec columns is most
        # of a large read on SQLite, and the order is then the same on every backend (byte
        # order for strings, whatever the server's collation).
        query = self._select(_trial_select_columns(names), sweep, checked, statuses)
        rows = self._run(lambda conn: conn.execute(query).all(), "querying trials")
        if not rows and sweep is not None:
            self.get_sweep(sweep)  # an unknown sweep is an error, not an empty result
        frame = _frame(rows, {name: TRIAL_COLUMNS[name] for name in names})
        order = [n for n in (*SPEC_COLUMNS, "seed", "trial_id") if n in frame.columns]
        return frame.sort_values(order, kind="stable", ignore_index=True)

    def epochs(
        self, sweep: str | None = None, where: Mapping[str, object] | None = None
    ) -> pd.DataFrame:
        """One row per (trial, epoch) with the trial's spec_hash, seed and spec columns
        (columns and dtypes: `EPOCH_COLUMNS`); `where` also accepts `epoch`."""
        checked = check_where(where, epochs=True)
        trial_table, epoch_table = Trial.__table__, Epoch.__table__
        columns = _epoch_select_columns()
        query = self._select(
            columns,
            sweep,
            checked,
            from_=epoch_table.join(trial_table, trial_table.c.id == epoch_table.c.trial_id),
        ).order_by(
            *(trial_table.c[name] for name in SPEC_COLUMNS),
            trial_table.c.seed,
            epoch_table.c.epoch,
        )
        rows = self._run(lambda conn: conn.execute(query).all(), "querying epochs")
        if not rows and sweep is not None:
            self.get_sweep(sweep)
        return _frame(rows, EPOCH_COLUMNS)

    def diagnostics(
        self, sweep: str | None = None, where: Mapping[str, object] | None = None
    ) -> pd.DataFrame:
        """One row per (trial, epoch, BN layer) with the trial's spec_hash, seed and spec
        columns (columns and dtypes: `DIAGNOSTIC_COLUMNS`), in spec, seed, epoch, depth order.
        `where` also accepts `epoch`, `layer`, `depth` and `module`."""
        checked = check_where(where, diagnostics=True)
        trial_table, diag_table = Trial.__table__, Diagnostic.__table__
        query = self._select(
            _diagnostic_select_columns(),
            sweep,
            checked,
            from_=diag_table.join(trial_table, trial_table.c.id == diag_table.c.trial_id),
            diagnostics=True,
        ).order_by(
            *(trial_table.c[name] for name in SPEC_COLUMNS),
            trial_table.c.seed,
            diag_table.c.epoch,
            diag_table.c.depth,
            diag_table.c.layer,
        )
        rows = self._run(lambda conn: conn.execute(query).all(), "querying diagnostics")
        if not rows and sweep is not None:
            self.get_sweep(sweep)
        return _frame(rows, DIAGNOSTIC_COLUMNS)

    def sweep_status(self, name: str) -> SweepStatus:
        """Counts by status and the seeds each arm still lacks, for the sweep called `name`.

        Only trials of the current training recipe count; those of other recipes are in
        `older_recipes` (a launch trains their cells again under new hashes).
        """
        table = Trial.__table__
        columns = [table.c.spec_hash, table.c.seed, table.c.status, table.c.recipe] + [
            table.c[column] for column in SPEC_COLUMNS
        ]
        query = self._select(columns, name, {})
        every = self._run(lambda conn: conn.execute(query).all(), f"reading sweep {name!r}")
        if not every:
            self.get_sweep(name)
        current = workers.spec.RECIPE
        rows = [row for row in every if row.recipe == current]
        others: dict[int, int] = {}
        for row in every:
            if row.recipe != current:
                others[row.recipe] = others.get(row.recipe, 0) + 1
        counts = dict.fromkeys(STATUSES, 0)
        arms: dict[str, dict[str, Any]] = {}
        for row in rows:
            counts[row.status] += 1
            arm = arms.setdefault(
                row.spec_hash,
                {"values": {c: getattr(row, c) for c in SPEC_COLUMNS}, "seeds": {}},
            )
            arm["seeds"][row.seed] = row.status
        varying = [
            column
            for column in SPEC_COLUMNS
            if len({arm["values"][column] for arm in arms.values()}) > 1
        ]
        ordered = sorted(
            arms.items(), key=lambda item: tuple(item[1]["values"][c] for c in SPEC_COLUMNS)
        )
        arm_statuses = tuple(
            ArmStatus(
                spec_hash=spec_hash,
                label=arm_label(arm["values"], varying),
                seeds=tuple(sorted(arm["seeds"])),
                missing_seeds=tuple(
                    sorted(s for s, st in arm["seeds"].items() if st not in FINAL_STATUSES)
                ),
                failed_seeds=tuple(sorted(s for s, st in arm["seeds"].items() if st == "failed")),
                running_seeds=tuple(sorted(s for s, st in arm["seeds"].items() if st == "running")),
            )
            for spec_hash, arm in ordered
        )
        return SweepStatus(
            name=name,
            total=len(rows),
            arms=arm_statuses,
            older_recipes=tuple(sorted(others.items())),
            **counts,
        )

    def older_recipes(self, sweep: str | None = None) -> dict[int, int]:
        """{recipe: trials} of the trials of another training recipe than this bnsweep's
        (`workers.spec.RECIPE`), linked to `sweep` (the whole store when None)."""
        table = Trial.__table__
        query = (
            self._select([table.c.recipe, sa.func.count()], sweep, {})
            .where(table.c.recipe != workers.spec.RECIPE)
            .group_by(table.c.recipe)
            .order_by(table.c.recipe)
        )
        rows = self._run(lambda conn: conn.execute(query).all(), "counting older recipes")
        if sweep is not None and not rows:
            self.get_sweep(sweep)
        return {int(recipe): int(count) for recipe, count in rows}

    # -- deleting, on request only ----------------------------------------------------------------

    def forget(
        self,
        sweep: str | None = None,
        where: Mapping[str, object] | None = None,
        *,
        dry_run: bool = False,
    ) -> ForgetCount:
        """Delete the trials `trials(sweep, where)` would return, with their epochs, diagnostics
        and sweep links; a later launch trains those cells again. `dry_run` only counts.

        A trial belongs to every sweep that registered it, so forgetting it through one sweep
        forgets it for all of them (`ForgetCount.shared` says how many). Running trials are
        refused, since a launch is still writing them: StoreError, nothing deleted (a dry run
        counts them in `ForgetCount.running`). At least one filter is required; the whole store
        is never forgotten by omission.
        """
        checked = check_where(where)
        if sweep is None and not checked:
            raise StoreError(
                "forget: name the trials with a sweep and/or where filters "
                "(e.g. --sweep NAME, --where recipe=1); nothing was deleted"
            )
        trials, links = Trial.__table__, SweepTrial.__table__
        ids_query = self._select([trials.c.id, trials.c.status], sweep, checked)

        def work(conn: sa.Connection) -> ForgetCount:
            # Locked until commit (PostgreSQL), so no start slips in between check and delete.
            query = ids_query if dry_run else ids_query.with_for_update(of=trials)
            found = conn.execute(query).all()
            ids = [row.id for row in found]
            running = sum(row.status == "running" for row in found)
            if running and not dry_run:
                raise StoreError(
                    f"forget: {running} of the {len(ids)} matching trials are running (a launch "
                    "is writing them); wait for it, or leave them out with --where status=... "
                    "naming the other statuses; nothing was deleted"
                )
            count = ForgetCount(trials=len(ids), epochs=0, shared=0, running=running)
            for chunk in _chunks(ids):
                epochs = conn.scalar(
                    sa.select(sa.func.count()).where(Epoch.__table__.c.trial_id.in_(chunk))
                )
                shared = 0
                if sweep is not None:
                    shared = conn.scalar(
                        sa.select(sa.func.count(sa.distinct(links.c.trial_id))).where(
                            links.c.trial_id.in_(chunk),
                            links.c.sweep_id.not_in(sa.select(Sweep.id).where(Sweep.name == sweep)),
                        )
                    )
                count = dataclasses.replace(
                    count,
                    epochs=count.epochs + int(epochs or 0),
                    shared=count.shared + int(shared or 0),
                )
                if not dry_run:
                    # Epochs, diagnostics and sweep links go by ON DELETE CASCADE.
                    conn.execute(sa.delete(trials).where(trials.c.id.in_(chunk)))
            return count

        what = "counting trials to forget" if dry_run else "forgetting trials"
        result = self._run(work, what, write=not dry_run)
        if not result.trials and sweep is not None:
            self.get_sweep(sweep)  # an unknown sweep is an error, not "0 trials"
        if not dry_run:
            log.info(
                "forgot %d trials (%d epoch rows) in %s", result.trials, result.epochs, self.url
            )
        return result


@dataclass(frozen=True)
class StoreFingerprint:
    """What changes whenever the store's content does: row counts and the latest update times.

    Every event changes one of them: a start, failure or finish updates `trials.updated_at`, a
    new epoch or diagnostics row adds to a count, registering a sweep adds rows or moves
    `sweeps.updated_at`. Readers (the dashboard) cache what they computed under it.
    """

    sweeps: int
    sweeps_updated: datetime | None
    trials: int
    trials_updated: datetime | None
    links: int
    epochs: int
    diagnostics: int


def store_fingerprint(store: Store) -> StoreFingerprint:
    """The store's fingerprint, read in one statement (five aggregate subqueries)."""
    sweeps, trials = Sweep.__table__, Trial.__table__

    def count(table: sa.Table) -> sa.ScalarSelect[Any]:
        return sa.select(sa.func.count()).select_from(table).scalar_subquery()

    query = sa.select(
        count(sweeps),
        sa.select(sa.func.max(sweeps.c.updated_at)).scalar_subquery(),
        count(trials),
        sa.select(sa.func.max(trials.c.updated_at)).scalar_subquery(),
        count(SweepTrial.__table__),
        count(Epoch.__table__),
        count(Diagnostic.__table__),
    )
    row = store._run(lambda conn: conn.execute(query).one(), "reading the store's fingerprint")
    return StoreFingerprint(*row)
