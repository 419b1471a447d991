"""The benchmarks' one percentile rule (bench/_stats.py) and the latency summary built on it."""

from __future__ import annotations

import pytest
from mesh_bench._stats import percentile
from mesh_bench.latency import summarize


def test_nearest_rank_is_a_sample_never_below_the_median() -> None:
    assert percentile([4.8, 3.9], 0.9) == 4.8  # two samples: p90 is the larger
    assert percentile([4.8, 3.9], 0.5) == 3.9
    hundred = list(range(100, 0, -1))
    assert percentile(hundred, 0.5) == 50 and percentile(hundred, 0.9) == 90
    assert percentile(hundred, 0.99) == 99 and percentile(hundred, 1.0) == 100
    assert percentile([7], 0.01) == 7


def test_bad_percentile_questions_are_refused() -> None:
    with pytest.raises(ValueError, match="no samples"):
        percentile([], 0.5)
    for q in (0, -0.1, 1.5):
        with pytest.raises(ValueError, match="not in"):
            percentile([1.0], q)


def test_latency_summary_p90_is_at_least_the_median() -> None:
    rows = [{"delay_ms": d} for d in (40.0, 3.9, 4.8)]  # the first (cold) segment is left out
    s = summarize(rows)
    assert s["segments"] == 2 and s["first_ms"] == [40.0]
    assert s["median_ms"] == pytest.approx(4.35) and s["p90_ms"] == 4.8 >= s["median_ms"]
