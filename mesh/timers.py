"""Periodic work on one shared grid of the event loop's clock.

Waking an idle process costs about 0.1-0.2 ms of CPU on a small VM before any of our code runs
(bench/results/ingest.md, "Few publishers"). A node's periodic timers -- the node heartbeat, the
bus heartbeat, the registry watch, every RTMP connection's timeout check -- each used to fire at
its own phase (whenever it was started), so each woke the process on its own. Scheduled at
multiples of their period on ``loop.time()`` instead, timers whose periods divide one another
(0.5 s, 1 s, 5 s) fall due at the same instants and run in the same pass of the loop: one
wake-up instead of one each. (The RTMP media reads follow each publisher's LL parts instead:
mesh.ingest.rtmp_server.)

The period keeps its meaning: a timer on the grid runs at most one period after the previous
run (its first run comes sooner, at the next grid point).
"""
from __future__ import annotations

import asyncio
import math

_SLACK = 0.01  # of a period: a run this close to the next grid point waits for the one after


def next_tick(now: float, period: float) -> float:
    """The first multiple of ``period`` after ``now`` (and not within 1 % of a period of it);
    ``now`` itself for a period of 0 or less (no grid: at once)."""
    if period <= 0:
        return now
    return (math.floor((now + period * _SLACK) / period) + 1) * period


async def sleep_to_grid(period: float) -> None:
    """Sleep until the next multiple of ``period`` on the running loop's clock."""
    loop = asyncio.get_running_loop()
    now = loop.time()
    await asyncio.sleep(next_tick(now, period) - now)
