"""The progress display of a launch: the cells by state and an ETA, on a terminal or in a log."""

from __future__ import annotations

import math
import sys
import time
from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.live import Live

    from bnsweep.plan import Cell


def eta_from_rate(epochs_left: float, epochs_trained: float, elapsed: float) -> float | None:
    """Seconds until `epochs_left` more epochs are trained, at the rate so far: `epochs_trained`
    in `elapsed` seconds. None before the first epoch (no rate yet).

    The one rule of every ETA bnsweep shows: the launch's progress line (from its own events)
    and the dashboard's (from the store's epoch rows, `bnsweep.web.view.estimate_eta`).
    """
    if epochs_trained <= 0:
        return None
    return epochs_left * elapsed / epochs_trained


class Progress:
    """Cells done / running / pending / failed and an ETA, on a stream (stderr by default).

    A terminal gets one live line; anything else (a log file, `ray job logs`) gets a plain line
    when something changed, at most every `every` seconds, and a last one at the end. The ETA
    is the epochs still to train divided by the epochs trained per second so far in this
    launch, so it is there after the first epoch and does not wait for a whole cell.
    """

    def __init__(
        self,
        total: int,
        already_done: int,
        epochs: Mapping[Cell, int] | None = None,
        every: float = 10.0,
        stream: Any = None,
    ) -> None:
        self.total, self.already_done = total, already_done
        self.stream = stream or sys.stderr
        self.every = every
        self.planned: dict[Cell, int] = dict(epochs or {})  # cell → epochs it runs to
        self.reached: dict[Cell, int] = {}  # cell → last epoch seen (resumed ones start later)
        self.trained = 0  # epochs trained in this launch: the rate behind the ETA
        self.running: set[Cell] = set()
        self.outcomes: Counter[str] = Counter()
        self.started_at = time.monotonic()
        self._last = -math.inf
        self._changed = True
        self._live: Live | None = None
        if getattr(self.stream, "isatty", lambda: False)():
            # rich only for a terminal: the dashboard imports this module for `eta_from_rate`.
            from rich.console import Console
            from rich.live import Live

            self._live = Live(
                console=Console(file=self.stream), refresh_per_second=2, transient=False
            )
            self._live.start()

    def started(self, key: Cell, resumed_from: int = 0) -> None:
        self.running.add(key)
        self.reached[key] = max(self.reached.get(key, 0), resumed_from)
        self._changed = True

    def epoch(self, key: Cell, epoch: int) -> None:
        if epoch > self.reached.get(key, 0):
            self.trained += 1
        self.reached[key] = max(self.reached.get(key, 0), epoch)
        self._changed = True

    def finished(self, key: Cell, status: str) -> None:
        self.running.discard(key)
        self.outcomes[status] += 1
        self.reached[key] = self.planned.get(key, 0)  # nothing left to train for this cell
        self._changed = True

    def counts(self) -> dict[str, int]:
        # A skipped cell (a restored experiment's, completed meanwhile) is in `already_done`.
        done = self.already_done + self.outcomes["completed"]
        failed, diverged = self.outcomes["failed"], self.outcomes["diverged"]
        running = len(self.running)
        pending = max(self.total - done - failed - diverged - running, 0)
        return {
            "done": done,
            "running": running,
            "pending": pending,
            "failed": failed,
            "diverged": diverged,
        }

    def eta(self, elapsed: float) -> float | None:
        """Seconds left at the rate so far; None before the first epoch."""
        left = sum(max(n - self.reached.get(key, 0), 0) for key, n in self.planned.items())
        return eta_from_rate(left, self.trained, elapsed)

    #: The progress line fits a terminal of this many columns (and a Slurm log line).
    WIDTH = 80

    def line(self) -> str:
        """The cells by state and the ETA in at most WIDTH characters: the first form that
        fits, from the full one down to abbreviations; failed and diverged only when any."""
        c = self.counts()
        elapsed = time.monotonic() - self.started_at
        eta = self.eta(elapsed)
        left = "--" if eta is None else _clock(eta)
        bad = "".join(f", {c[k]} {k}" for k in ("failed", "diverged") if c[k])
        states = (
            f"cells {self.total}: {c['done']} done, {c['running']} running, {c['pending']} pending"
        )
        short_bad = "".join(f" {c[k]} {k[:4]}" for k in ("failed", "diverged") if c[k])
        forms = (
            f"{states}{bad} | {_clock(elapsed)} elapsed, ETA {left}",
            f"{states}{bad} | ETA {left}",
            f"{c['done']}/{self.total} done {c['running']} run {c['pending']} wait{short_bad}"
            f" | ETA {left}",
        )
        return next((f for f in forms if len(f) <= self.WIDTH), forms[-1][: self.WIDTH])

    def refresh(self, force: bool = False) -> None:
        if self._live is not None:
            from rich.text import Text

            self._live.update(Text(self.line()))  # Text: plain, no markup or number colouring
            return
        now = time.monotonic()
        if force or (self._changed and now - self._last >= self.every):
            self._last, self._changed = now, False
            self.stream.write(self.line() + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self._live is not None:
            from rich.text import Text

            self._live.update(Text(self.line()))
            self._live.stop()
        else:
            self.refresh(force=True)


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
