"""Per-rendition bitrate accounting for the master playlist (RFC 8216 BANDWIDTH, AVERAGE-BANDWIDTH).

RFC 8216 section 4.1 defines, over the segments of a Media Playlist:

* the **segment bit rate**: a segment's size in bits over its EXTINF duration;
* the **peak segment bit rate**: the largest bit rate of any *contiguous* set of segments whose
  total duration is between 0.5 and 1.5 times the target duration, the bit rate of a set being
  its total bits over its total duration;
* the **average segment bit rate**: all the segments' bits over their total duration.

``BANDWIDTH`` (section 4.3.4.2) is the peak segment bit rate and ``AVERAGE-BANDWIDTH`` the
average one. :class:`BitrateMeter` keeps the last ``window`` segments of one rendition (the
playlist's sliding window) and answers both. Pass the playlist's ``EXT-X-TARGETDURATION`` as
``target_duration_s``: every segment is at most that long, so each segment of at least half of it
is a qualifying set on its own and the peak is never below its bit rate.

Two cases the RFC's definition leaves open, and what we do: a segment longer than 1.5 target
durations belongs to no qualifying set, so it counts as a set on its own (BANDWIDTH must not
undershoot a segment a player will fetch); and while no set qualifies yet (only short segments
so far), the peak is the largest single-segment bit rate, which is at least the true figure.
:meth:`BitrateMeter.max_segment_bps` is the largest single-segment bit rate in the window, for a
caller that wants the stricter bound.

Plain Python: with a window of 5-20 segments a query costs a few microseconds (`mesh bench scale`
prints the figure), far less than a Numba call's own overhead would be worth.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class Segment:
    seq: int
    bits: int
    duration_s: float


def peak_bps(segments: list[Segment], target_duration_s: float) -> float:
    """RFC 8216's peak segment bit rate of ``segments`` (contiguous in ``seq``), in bits/s.

    Sets never span a gap in ``seq`` (those segments are not contiguous). See the module
    docstring for over-long segments and for when no set qualifies.
    """
    lo, hi = 0.5 * target_duration_s, 1.5 * target_duration_s
    best = 0.0
    found = False
    n = len(segments)
    for i in range(n):
        bits = 0
        dur = 0.0
        for j in range(i, n):
            if j > i and segments[j].seq != segments[j - 1].seq + 1:
                break
            bits += segments[j].bits
            dur += segments[j].duration_s
            if dur > hi:
                if j == i:  # too long for any set: it stands alone
                    best = max(best, bits / dur)
                    found = True
                break
            if dur >= lo:
                best = max(best, bits / dur)
                found = True
    if not found:
        return max_bps(segments)
    return best


def max_bps(segments: list[Segment]) -> float:
    """The largest single-segment bit rate, bits/s (0 for no segments)."""
    return max((seg.bits / seg.duration_s for seg in segments), default=0.0)


def average_bps(segments: list[Segment]) -> float:
    """RFC 8216's average segment bit rate: total bits over total duration (0 for none)."""
    dur = sum(seg.duration_s for seg in segments)
    return sum(seg.bits for seg in segments) / dur if dur > 0 else 0.0


class BitrateMeter:
    """The bit rates of one rendition over its last ``window`` segments.

    Feed each finished segment with :meth:`add` (in ``seq`` order); ask :meth:`peak_bps` for
    ``BANDWIDTH`` and :meth:`average_bps` for ``AVERAGE-BANDWIDTH`` (both bits/s, round up with
    ``math.ceil`` when writing the attribute). ``lifetime_peak_bps`` is the largest peak seen
    since the meter was made, for a master playlist that should not lower a variant's BANDWIDTH
    when a busy segment leaves the window.
    """

    def __init__(self, target_duration_s: float, window: int = 5) -> None:
        if not target_duration_s > 0:
            raise ValueError(f"target_duration_s must be > 0, got {target_duration_s}")
        if window < 1:
            raise ValueError(f"window must be >= 1 segment, got {window}")
        self.target_duration_s = float(target_duration_s)
        self._segments: deque[Segment] = deque(maxlen=window)
        self.lifetime_peak_bps = 0.0

    def add(self, seq: int, nbytes: int, duration_s: float) -> None:
        """Account one finished segment: its sequence number, size in bytes and EXTINF duration.

        Raises ValueError for a ``seq`` not above the last one, a negative size or a
        non-positive duration (all bugs in the caller: segments come from our own segmenter).
        """
        if nbytes < 0:
            raise ValueError(f"segment {seq}: size must be >= 0 bytes, got {nbytes}")
        if not duration_s > 0:
            raise ValueError(f"segment {seq}: duration must be > 0 s, got {duration_s}")
        if self._segments and seq <= self._segments[-1].seq:
            raise ValueError(f"segment {seq} is not after segment {self._segments[-1].seq}; "
                             f"feed segments once each, in order")
        self._segments.append(Segment(seq, 8 * nbytes, float(duration_s)))
        self.lifetime_peak_bps = max(self.lifetime_peak_bps, self.peak_bps())

    def peak_bps(self) -> float:
        """BANDWIDTH: the peak segment bit rate over the window (0 before any segment)."""
        return peak_bps(list(self._segments), self.target_duration_s)

    def average_bps(self) -> float:
        """AVERAGE-BANDWIDTH: the average segment bit rate over the window."""
        return average_bps(list(self._segments))

    def max_segment_bps(self) -> float:
        """The largest single-segment bit rate in the window."""
        return max_bps(list(self._segments))

    def __len__(self) -> int:
        return len(self._segments)


__all__ = ["BitrateMeter", "Segment", "average_bps", "max_bps", "peak_bps"]
