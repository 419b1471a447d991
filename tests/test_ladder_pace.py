"""When a ladder drops a rung (issue 13 item 4): behind by more than a segment and not catching up."""
from __future__ import annotations

from mesh.ingest.transcode import Pace


def run(pace: Pace, lags: list[tuple[float, float]]) -> list[float]:
    """The times at which ``pace`` said the ladder is behind."""
    return [t for t, lag in lags if pace.behind(t, lag)]


def test_a_backlog_worked_off_faster_than_real_time_drops_nothing() -> None:
    # started 4 s behind (encoders opening, the frame-rate sample), works it off at 1.5x real time
    pace = Pace(2.0, now=0.0)
    lags = [(t / 10, max(0.0, 4.0 - 0.5 * t / 10)) for t in range(0, 100)]
    assert run(pace, lags) == []


def test_a_lag_that_holds_or_grows_drops_after_one_more_segment() -> None:
    pace = Pace(2.0, now=0.0)
    lags = [(t / 10, 2.5 + 0.05 * t / 10) for t in range(0, 100)]  # 0.95x real time
    behind = run(pace, lags)
    assert behind and 4.0 <= behind[0] <= 4.2  # the grace, then one segment's look at the trend


def test_barely_catching_up_is_not_enough() -> None:
    pace = Pace(2.0, now=0.0)
    lags = [(t / 10, 5.0 - 0.02 * t / 10) for t in range(0, 100)]  # 1.02x: the backlog stays for minutes
    assert run(pace, lags)


def test_after_a_drop_the_lighter_ladder_gets_a_fresh_grace() -> None:
    pace = Pace(2.0, now=0.0)
    pace.dropped(10.0)
    assert not pace.behind(11.9, 9.0)
    assert not pace.behind(12.0, 9.0)  # first seen behind: the trend is judged from here
    assert pace.behind(14.0, 9.0)


def test_under_a_segment_behind_is_fine_whatever_the_trend() -> None:
    pace = Pace(2.0, now=0.0)
    assert run(pace, [(t / 10, 1.9) for t in range(0, 200)]) == []
