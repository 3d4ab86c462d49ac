"""The view values the pages show: the ETA from the store alone, the table controls."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest

from bnsweep.web.view import TableQuery, duration_text, estimate_eta
from bnsweep.workers.errors import BnsweepError

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)


def frame(rows: list[tuple[str, float | None, float | None, float | None]]) -> pd.DataFrame:
    """(status, started minutes ago, finished minutes ago, seconds) per trial."""

    def at(minutes: float | None) -> pd.Timestamp | None:
        return None if minutes is None else pd.Timestamp(NOW - timedelta(minutes=minutes))

    return pd.DataFrame(
        {
            "status": [r[0] for r in rows],
            "started_at": pd.to_datetime([at(r[1]) for r in rows], utc=True),
            "finished_at": pd.to_datetime([at(r[2]) for r in rows], utc=True),
            "seconds": [r[3] for r in rows],
        }
    )


def test_eta_from_the_rate_since_the_running_cells_started() -> None:
    # Running since 10 min ago; 4 finished since then; 2 running + 6 pending = 8 left.
    rows = [("running", 10, None, None), ("running", 2, None, None)]
    rows += [("completed", 9, 8 - k, 60.0) for k in range(4)]
    rows += [("completed", 100, 90, 60.0)]  # an earlier launch's: not part of the rate
    rows += [("pending", None, None, None)] * 6
    eta, text = estimate_eta(frame(rows), NOW)
    assert eta == pytest.approx(8 * 600 / 4)
    assert text == "about 20 min left"


def test_eta_from_durations_before_two_cells_finished() -> None:
    rows = [("running", 1, None, None), ("running", 1, None, None)]
    rows += [("completed", 100, 90, 120.0), ("pending", None, None, None)]
    eta, _ = estimate_eta(frame(rows), NOW)
    assert eta == pytest.approx(120.0 * 3 / 2)


def test_no_eta_without_running_cells_and_done_when_nothing_is_left() -> None:
    assert estimate_eta(frame([("pending", None, None, None)] * 3), NOW) == (
        None,
        "not running (3 cells left)",
    )
    assert estimate_eta(frame([("completed", 5, 1, 60.0)]), NOW) == (0.0, "done")
    assert estimate_eta(frame([("running", 1, None, None)]), NOW) == (None, "estimating…")


@pytest.mark.parametrize(
    ("seconds", "text"), [(3, "3 s"), (240, "4 min"), (9000, "2.5 h"), (3 * 86400, "3.0 d")]
)
def test_durations_read_in_one_unit(seconds: float, text: str) -> None:
    assert duration_text(seconds) == text


def test_table_controls_validate_with_one_line() -> None:
    query = TableQuery.from_params({"test": "wilcoxon", "alpha": "0.01", "layout": ""})
    assert query == TableQuery(test="wilcoxon", alpha=0.01)
    assert query.params() == {"test": "wilcoxon", "alpha": "0.01"}
    for params, message in (
        ({"alpha": "x"}, "alpha: expected a number in (0, 1), got 'x'"),
        ({"alpha": "2"}, "alpha: must be a number in (0, 1), got 2.0"),
        ({"correction": "bonferroni"}, "correction: unknown value 'bonferroni'"),
        ({"layout": "grid"}, "layout: unknown value 'grid'; allowed: formulation, gamma, methods"),
    ):
        with pytest.raises(BnsweepError, match=message.replace("(", r"\(").replace(")", r"\)")):
            TableQuery.from_params(params)
