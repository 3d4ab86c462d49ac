"""The view values the pages show: the ETA from the store alone, the table controls."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest

from bnsweep.progress import eta_from_rate
from bnsweep.web.view import TableQuery, duration_text, estimate_eta
from bnsweep.workers.errors import BnsweepError

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)


def frame(rows: list[tuple[str, float | None, float | None, int | None]]) -> pd.DataFrame:
    """(status, started minutes ago, finished minutes ago, epochs run) per trial; every trial
    plans 10 epochs."""

    def at(minutes: float | None) -> pd.Timestamp | None:
        return None if minutes is None else pd.Timestamp(NOW - timedelta(minutes=minutes))

    return pd.DataFrame(
        {
            "trial_id": range(len(rows)),
            "status": [r[0] for r in rows],
            "started_at": pd.to_datetime([at(r[1]) for r in rows], utc=True),
            "finished_at": pd.to_datetime([at(r[2]) for r in rows], utc=True),
            "epochs": [10] * len(rows),
            "epochs_run": pd.array([r[3] for r in rows], dtype="Int64"),
        }
    )


def test_eta_is_the_launch_lines_rule_over_the_stored_epochs() -> None:
    # The launch: running since 10 min ago (trials 0, 1), and 2 cells finished since then,
    # one of which started 12 min ago: the rate is timed from 12 min ago.
    rows = [("running", 10, None, None), ("running", 2, None, None)]
    rows += [("completed", 12, 8, 10), ("diverged", 9, 6, 4)]
    rows += [("completed", 100, 90, 10)]  # an earlier launch's: not part of the rate
    rows += [("pending", None, None, None)] * 3
    reached = {0: 6, 1: 2}
    trained = 10 + 4 + 6 + 2
    left = 3 * 10 + (10 - 6) + (10 - 2)
    eta, text = estimate_eta(frame(rows), NOW, reached)
    assert eta == pytest.approx(eta_from_rate(left, trained, 12 * 60))
    assert eta == pytest.approx(left * 720 / trained)
    assert text == "about 23 min left"


def test_eta_after_the_first_epoch_before_any_cell_finished() -> None:
    rows = [("running", 4, None, None), ("running", 4, None, None), ("pending", None, None, None)]
    assert estimate_eta(frame(rows), NOW)[1] == "estimating…"  # no epoch yet: no rate
    eta, _ = estimate_eta(frame(rows), NOW, {0: 1})
    assert eta == pytest.approx((9 + 10 + 10) * 240 / 1)


def test_no_eta_without_running_cells_and_done_when_nothing_is_left() -> None:
    assert estimate_eta(frame([("pending", None, None, None)] * 3), NOW) == (
        None,
        "not running (3 cells left)",
    )
    assert estimate_eta(frame([("completed", 5, 1, 10)]), NOW) == (0.0, "done")
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
