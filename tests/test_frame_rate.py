"""The source's frame rate, as the master playlist's FRAME-RATE and x264's rate control see it."""
from __future__ import annotations

import pytest

from mesh.ingest.abr import frame_rate_of


@pytest.mark.parametrize("deltas_ms, expected", [
    ([33, 33, 34] * 10, 30.0),  # RTMP's whole milliseconds for 30 fps (the median says 30.303)
    ([40] * 12, 25.0),
    ([42, 42, 41] * 7 + [42, 42, 42], 23.976),  # 24000/1001: 1001 ms for 24 frames
    ([33, 34, 33, 33, 34, 33, 34, 33, 33, 34], 29.97),  # 30000/1001: 33.367 ms
    ([17, 16, 17] * 10, 60.0),
    ([33, 33, 34] * 10 + [500], 30.0),  # a pause is not a frame interval
    ([33, 33, 34, 0, 33, 33, 34, 33], 30.0),  # nor is a duplicate timestamp
    ([71] * 10, 14.085),  # an uncommon rate stays as measured
])
def test_frame_rate_from_millisecond_intervals(deltas_ms: list[int], expected: float) -> None:
    assert frame_rate_of([d * 90 for d in deltas_ms]) == expected


def test_too_few_intervals_say_nothing() -> None:
    assert frame_rate_of([3000] * 4) is None
    assert frame_rate_of([]) is None
