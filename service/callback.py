"""The driver-side callback: Tune's results and the trials' queued records become store events.

`StoreCallback` writes them in batches from the driver loop; the `EventSink` actor holds the
bulky records trials put beside Tune's results until the callback drains it; `LaunchSummary`
counts what the launch did.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import ray
from ray import tune

from bnsweep.plan import Cell, cell_label, cell_of
from bnsweep.progress import Progress
from bnsweep.store.api import Store
from bnsweep.store.errors import StoreError
from bnsweep.store.events import (
    DiagnosticsRecorded,
    EpochRecorded,
    TrialFailed,
    TrialFinished,
    TrialStarted,
)
from bnsweep.workers.results import EpochMetrics, TrialResult
from bnsweep.workers.spec import TrialSpec

log = logging.getLogger(__name__)


@dataclass
class LaunchSummary:
    """What one launch did, for the CLI and the tests."""

    ran: int = 0  # cells that started training (each counted once, whatever its retries)
    starts: int = 0  # trial starts, retries and resumptions included
    completed: int = 0
    diverged: int = 0
    failed: int = 0
    resumed: dict[Cell, int] = field(default_factory=dict)  # cell → epoch it resumed after
    attempted: set[Cell] = field(default_factory=set)
    ended: set[Cell] = field(default_factory=set)  # cells with an outcome: a result or a failure
    results: set[Cell] = field(default_factory=set)  # cells that ended completed or diverged
    requeued: int = 0  # rows a killed or interrupted launch had left `running`
    interrupted: bool = False  # the launch stopped (Ctrl-C) before every cell had an outcome

    @property
    def unsuccessful(self) -> int:
        """Cells that ended without a usable result in this launch: failed or diverged."""
        return self.failed + self.diverged


class StoreCallback(tune.Callback):
    """Tune results → store events, buffered and written in batches from the driver loop.

    Tune calls callbacks synchronously in its event loop, so writes are batched: a flush at most
    every `flush_seconds`, and always when a trial ends. Every event is an idempotent upsert,
    so the epochs Ray replays after a retry overwrite themselves. The bulky records (BN
    diagnostics, the epochs a resumed cell sends again) arrive on `events`, drained as often.
    """

    def __init__(
        self,
        store: Store,
        summary: LaunchSummary,
        progress: Progress,
        flush_seconds: float = 2.0,
        events: Callable[[], Sequence[Any]] | None = None,
    ) -> None:
        self.store, self.summary, self.progress = store, summary, progress
        self.flush_seconds = flush_seconds
        self.events = events  # takes what trials queued: (cell, kind, records) items
        self._pending: list[Any] = []
        self._last_flush = time.monotonic()
        self._package_version = _package_version()
        self.failure: StoreError | None = None  # the store gave up: the launch stops with this

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its RunConfig (callbacks included) into the experiment folder; the store's
        # engine cannot travel, and a restored experiment gets a fresh callback (`_attach`).
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        spec = TrialSpec.from_dict(trial.config["cell"])
        key, kind, now = cell_of(spec), result.get("kind"), _now()
        if kind == "started":
            self.summary.ran += key not in self.summary.attempted
            self.summary.starts += 1
            self.summary.attempted.add(key)
            resumed_from = int(result.get("resumed_from_epoch") or 0)
            if resumed_from:
                self.summary.resumed[key] = resumed_from
            self._pending.append(
                TrialStarted(
                    *key,
                    host=result.get("host"),
                    device=result.get("device"),
                    package_version=self._package_version,
                    started_at=now,
                    threads=result.get("threads"),
                    runtime=result.get("runtime"),
                )
            )
            self.progress.started(key, resumed_from)
        elif kind == "epoch":
            metrics = EpochMetrics(**{f.name: result[f.name] for f in fields(EpochMetrics)})
            self._pending.append(EpochRecorded(*key, metrics=metrics))
            self.progress.epoch(key, metrics.epoch)
        elif kind == "final":
            outcome = TrialResult(
                **{f.name: result[f.name] for f in fields(TrialResult) if f.name != "history"}
            )
            self.drain()  # the trial's last diagnostics were queued before this result
            self._pending.append(TrialFinished.from_result(*key, outcome, finished_at=now))
            if outcome.status == "diverged":
                self.summary.diverged += 1
            else:
                self.summary.completed += 1
            self.summary.ended.add(key)
            self.summary.results.add(key)
            self.progress.finished(key, outcome.status)
            self.flush()
        self.maybe_flush()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        spec = TrialSpec.from_dict(trial.config["cell"])
        error = _trial_error(trial)
        log.warning(
            "%s seed %d failed: %s (traceback in %s)",
            cell_label(spec),
            spec.seed,
            error,
            getattr(trial, "error_file", None) or "the Ray logs",
        )
        self.drain()
        self._pending.append(TrialFailed(*cell_of(spec), error=error, finished_at=_now()))
        self.summary.failed += 1
        self.summary.ended.add(cell_of(spec))
        self.progress.finished(cell_of(spec), "failed")
        self.flush()

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        spec = TrialSpec.from_dict(trial.config["cell"])
        log.warning(
            "%s seed %d failed (%s); retrying from its last checkpoint (failure %d)",
            cell_label(spec),
            spec.seed,
            _trial_error(trial),
            trial.num_failures,
        )

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self.maybe_flush()
        self.progress.refresh()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.drain()
        self.flush()

    def maybe_flush(self) -> None:
        if time.monotonic() - self._last_flush >= self.flush_seconds:
            self.drain()
            if self._pending:
                self.flush()

    def drain(self) -> None:
        """Take what the trials queued on `events` (one round trip) as store events."""
        if self.events is None:
            return
        for key, kind, items in self.events():
            cell = (str(key[0]), int(key[1]))
            self._pending += RECORD_EVENTS[kind](cell, items)

    def flush(self) -> None:
        if self._pending and self.failure is None:
            try:
                self.store.apply(self._pending)  # retried inside the store; idempotent
            except StoreError as err:
                # Raised inside Tune's loop, it reaches `launch` as a TuneError wrapping a
                # traceback; kept here, it is what the user is told.
                self.failure = err
                raise
            self._pending = []
        self._last_flush = time.monotonic()


@ray.remote(num_cpus=0)
class EventSink:
    """Where trials put the records Tune need not carry; the driver takes them all at once."""

    def __init__(self) -> None:
        self.items: list[Any] = []

    def put(self, item: Any) -> None:
        self.items.append(item)

    def drain(self) -> list[Any]:
        items, self.items = self.items, []
        return items


def _epoch_events(key: Cell, items: Sequence[Mapping[str, Any]]) -> list[EpochRecorded]:
    return [EpochRecorded(*key, metrics=EpochMetrics(**item)) for item in items]


def _diagnostics_events(key: Cell, items: Sequence[Mapping[str, Any]]) -> list[Any]:
    return [
        DiagnosticsRecorded(*key, epoch=item["epoch"], layers=tuple(item["layers"]))
        for item in items
    ]


#: What each kind of queued record becomes in the store.
RECORD_EVENTS = {"epochs": _epoch_events, "diagnostics": _diagnostics_events}


def _trial_error(trial: Any) -> str:
    """What went wrong in a trial, as one line ("DataError: ..."): the last line of the
    traceback text Tune wrote to the trial's error.txt on the driver (`local_path`, written just
    now; `Trial.get_error()` reads the storage copy, which may not be synced yet).

    Only the text is read. Tune also pickles the exception (error.pkl), and unpickling a file
    from a folder other people can write to would run whatever code they put in it."""
    text_file = getattr(trial, "error_file", None)
    if text_file and Path(text_file).is_file():
        text = Path(text_file).read_text(errors="replace")
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        if lines:
            # A traceback's last line says what happened; the exception's module path is noise.
            return _one_line(_QUALIFIED_ERROR.sub(r"\1", lines[-1]))
    return "the trial failed without an error message"


#: "bnsweep.workers.errors.DataError: ..." → "DataError: ..."
_QUALIFIED_ERROR = re.compile(r"^(?:[A-Za-z_][\w]*\.)+([A-Za-z_]\w*(?:Error|Exception|Exit)\b)")


def _one_line(text: str, limit: int = 2000) -> str:
    return " ".join(text.split())[:limit]


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("bnsweep")
    except PackageNotFoundError:
        return "unknown"


def _now() -> datetime:
    return datetime.now(timezone.utc)
