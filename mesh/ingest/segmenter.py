"""The origin segmenter: decides HLS segment boundaries for one rendition. Pure.

The origin decides and numbers segments; edges only packetise what they are told, so every edge
cuts identical segments (DESIGN §3). A segment starts at the first video keyframe whose DTS is at
least the target duration after the current segment's start. Audio-only streams cut on audio
frames instead. Nothing is emitted before the first keyframe: a segment must start decodable.

Timestamps are also made safe here, once, for everyone downstream: DTS never goes backwards on a
track and PTS is never below DTS (encoders and RTMP relays do produce such packets).
"""
from __future__ import annotations

from dataclasses import dataclass

from mesh_codecs.media import AUDIO, CLOCK_HZ, VIDEO, AccessUnit

from ..broker.wire import FLAG_KEY, FLAG_SEG_START

AUDIO_ONLY_AFTER_TICKS = CLOCK_HZ  # this much audio without any video config: treat as audio-only


@dataclass(frozen=True, slots=True)
class ClosedSegment:
    seq: int
    duration_ticks: int


@dataclass(slots=True)
class Stamp:
    """Where an access unit goes: its segment, its bus flags, and the segment it closed, if any."""

    seg: int
    flags: int
    closed: ClosedSegment | None = None


class Segmenter:
    def __init__(self, target_s: float = 2.0, first_seq: int = 0):
        self.target_ticks = int(target_s * CLOCK_HZ)
        self.next_seq = first_seq  # number the next segment will take
        self.has_video = False
        self.current: int | None = None  # open segment's number
        self._start_dts = 0
        self._last_dts = {VIDEO: None, AUDIO: None}
        self._first_audio_dts: int | None = None
        self.dropped_before_start = 0
        self.timestamp_fixes = 0

    def video_present(self) -> None:
        """The stream carries video (its config arrived): cut on video keyframes."""
        self.has_video = True

    def _fix_timestamps(self, au: AccessUnit) -> None:
        last = self._last_dts[au.track]
        if last is not None and au.dts <= last:
            # Equal DTS is legal only for B-frame-free streams with duplicate frames; a step
            # back is never playable. One tick forward keeps order without shifting others.
            if au.dts < last or au.track == VIDEO:
                self.timestamp_fixes += 1
                au.dts = last + 1
        if au.pts < au.dts:
            au.pts = au.dts
        self._last_dts[au.track] = au.dts

    def push(self, au: AccessUnit) -> Stamp | None:
        """Stamp one access unit (mutating its timestamps if they were unsafe), or None to drop it."""
        self._fix_timestamps(au)
        boundary = False
        if self.has_video:
            if au.track == VIDEO and au.key:
                boundary = self.current is None or au.dts - self._start_dts >= self.target_ticks
        elif au.track == AUDIO:
            if self._first_audio_dts is None:
                self._first_audio_dts = au.dts
            audio_only = au.dts - self._first_audio_dts >= AUDIO_ONLY_AFTER_TICKS
            if self.current is None:
                boundary = audio_only
            else:
                boundary = au.dts - self._start_dts >= self.target_ticks
        if not boundary:
            if self.current is None:
                self.dropped_before_start += 1
                return None
            return Stamp(self.current, FLAG_KEY if au.key else 0)
        closed = None
        if self.current is not None:
            closed = ClosedSegment(self.current, au.dts - self._start_dts)
        self.current = self.next_seq
        self.next_seq += 1
        self._start_dts = au.dts
        return Stamp(self.current, FLAG_KEY | FLAG_SEG_START, closed)
