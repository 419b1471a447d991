"""Live HLS media playlists (RFC 8216). Pure: segments in, text out.

Everything in the text derives from what the origin decided (segment numbers, durations from
its timestamps, program date-times it stamped, the discontinuity numbers it took from the
registry), so two edges holding the same window render byte-identical playlists.
"""
from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import Sequence

SEQ_DIGITS = 9


@dataclass(frozen=True, slots=True)
class SegmentRef:
    seq: int
    duration_s: float
    disc: int  # discontinuity sequence number of this segment
    pdt_ms: int | None  # wall-clock time of its first frame, stamped by the origin


def segment_name(base: str, seq: int) -> str:
    return f"{base}{seq:0{SEQ_DIGITS}d}.ts"


def _pdt(ms: int) -> str:
    when = dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def target_duration(segments: Sequence[SegmentRef], configured_s: float) -> int:
    """The ceiling of the longest segment, never below the configured target (so it stays put)."""
    longest = max((s.duration_s for s in segments), default=configured_s)
    return max(math.ceil(configured_s), math.ceil(round(longest, 3)))


def render_media_playlist(base: str, segments: Sequence[SegmentRef], *, configured_target_s: float,
                          ended: bool, query: str = "") -> str:
    """``query`` (e.g. ``?token=...``) is appended to every segment URI."""
    lines = ["#EXTM3U", "#EXT-X-VERSION:3",
             f"#EXT-X-TARGETDURATION:{target_duration(segments, configured_target_s)}"]
    if segments:
        lines.append(f"#EXT-X-MEDIA-SEQUENCE:{segments[0].seq}")
        lines.append(f"#EXT-X-DISCONTINUITY-SEQUENCE:{segments[0].disc}")
    previous: SegmentRef | None = None
    for seg in segments:
        if previous is not None and seg.disc != previous.disc:
            lines.append("#EXT-X-DISCONTINUITY")
        if seg.pdt_ms is not None:
            lines.append(f"#EXT-X-PROGRAM-DATE-TIME:{_pdt(seg.pdt_ms)}")
        lines.append(f"#EXTINF:{seg.duration_s:.3f},")
        lines.append(segment_name(base, seg.seq) + query)
        previous = seg
    if ended:
        lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class Variant:
    """One rendition as a master playlist lists it (RFC 8216 section 4.3.4.2)."""

    uri: str
    bandwidth: int  # peak segment bitrate, bits/s
    average_bandwidth: int | None = None
    width: int | None = None
    height: int | None = None
    codecs: str | None = None
    frame_rate: float | None = None


def render_master_playlist(variants: Sequence[Variant], query: str = "") -> str:
    """A master playlist listing ``variants`` highest bandwidth first; ``query`` is appended to
    every variant URI."""
    lines = ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-INDEPENDENT-SEGMENTS"]
    for v in sorted(variants, key=lambda v: -v.bandwidth):
        attrs = [f"BANDWIDTH={max(v.bandwidth, 1)}"]
        if v.average_bandwidth:
            attrs.append(f"AVERAGE-BANDWIDTH={v.average_bandwidth}")
        if v.width and v.height:
            attrs.append(f"RESOLUTION={v.width}x{v.height}")
        if v.codecs:
            attrs.append(f'CODECS="{v.codecs}"')
        if v.frame_rate:
            attrs.append(f"FRAME-RATE={v.frame_rate:.3f}")
        lines.append(f"#EXT-X-STREAM-INF:{','.join(attrs)}")
        lines.append(v.uri + query)
    return "\n".join(lines) + "\n"
