"""mesh.timers: periodic timers on one grid of the loop's clock."""
from __future__ import annotations

import asyncio

from hypothesis import given
from hypothesis import strategies as st

from mesh.timers import next_tick, sleep_to_grid

PERIODS = [0.04, 0.05, 0.2, 0.5, 1.0, 2.0, 5.0]


@given(now=st.floats(min_value=0, max_value=1e7, allow_nan=False), period=st.sampled_from(PERIODS))
def test_the_next_tick_is_a_grid_point_after_now_within_a_period(now: float, period: float) -> None:
    t = next_tick(now, period)
    assert now < t <= now + period * 1.01 + 1e-9
    k = t / period
    assert abs(k - round(k)) < 1e-6  # a multiple of the period


@given(now=st.floats(min_value=0, max_value=1e6, allow_nan=False))
def test_timers_whose_periods_divide_each_other_fall_due_together(now: float) -> None:
    # after one second of 40 ms ticks, the 1 s timer is due on one of the ticks
    ticks = set()
    t = now
    for _ in range(30):
        t = next_tick(t, 0.04)
        ticks.add(round(t, 6))
    assert round(next_tick(now, 1.0), 6) in ticks


def test_a_run_just_before_its_grid_point_does_not_fire_twice() -> None:
    assert next_tick(999.9999999, 1.0) == 1001.0  # woke a hair early: the next point, not this one
    assert next_tick(1000.0, 1.0) == 1001.0
    assert next_tick(1000.5, 1.0) == 1001.0


def test_no_grid_for_a_zero_period() -> None:
    assert next_tick(12.5, 0) == 12.5


def test_sleep_to_grid_sleeps_until_the_next_grid_point() -> None:
    async def main() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        due = next_tick(loop.time(), 0.05)
        await sleep_to_grid(0.05)
        return due, loop.time()

    due, woke = asyncio.run(main())
    assert woke >= due - 1e-6  # not before the grid point it aimed at
