"""The origin segmenter: decides HLS segment boundaries for one rendition. Pure.

The origin decides and numbers segments; edges only packetise what they are told, so every edge
cuts identical segments (DESIGN §3). A segment starts at the first video keyframe whose DTS is at
least the target duration after the current segment's start. Audio-only streams cut on audio
frames instead. Nothing is emitted before the first keyframe: a segment must start decodable.

It also cuts LL-HLS parts (issue 14), marked with ``FLAG_PART_START``: a segment start is a part
start, and within a segment a new part starts on the first frame of the cutting track (video, or
audio for audio-only streams) at which the open part has reached the part target, or would pass it
(by more than a millisecond of timestamp jitter) with one more frame of the last frame's length.
So parts end on frame boundaries and stay within the target whenever frames come at a steady rate
(30 fps and 200 ms: six frames), and every edge cuts the same parts.

Timestamps are also made safe here, once, for everyone downstream: DTS never goes backwards on a
track and PTS is never below DTS (encoders and RTMP relays do produce such packets).

Numbers are reserved in the registry before they are used (see :mod:`mesh.registry`): ``limit``
is the first number this segmenter may not start. At a boundary beyond it the segment is not cut
and ``starved`` is set; the live stream then stops rather than list a number a successor may use.

``push(au)`` stamps an :class:`AccessUnit`; ``stamp(track, pts, dts, key)`` is the same decision on
plain values, for the ingest's per-packet path.
"""
from __future__ import annotations

from dataclasses import dataclass

from mesh_codecs.media import AUDIO, CLOCK_HZ, VIDEO, AccessUnit

from ..broker.wire import FLAG_KEY, FLAG_PART_START, FLAG_SEG_START

AUDIO_ONLY_AFTER_TICKS = CLOCK_HZ  # this much audio without any video config: treat as audio-only
PART_JITTER_TICKS = 90  # 1 ms: RTMP timestamps are whole milliseconds


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
    def __init__(self, target_s: float = 2.0, first_seq: int = 0, part_target_s: float = 0.2,
                 limit: int | None = None, first_target_s: float | None = None):
        self.target_ticks = int(target_s * CLOCK_HZ)
        # The first segment may be cut sooner (after a takeover: viewers wait for it to close)
        self._cut_ticks = int(first_target_s * CLOCK_HZ) if first_target_s else self.target_ticks
        self.part_target_ticks = max(1, int(round(part_target_s * CLOCK_HZ)))
        self.part = 0  # the open part's number within its segment (0, 1, 2 ...)
        self._part_start_dts = 0
        self._last_cut_dts: int | None = None  # previous frame of the cutting track
        self._cut_step = 0  # the cutting track's last frame interval (for part_due_ms)
        self.next_seq = first_seq  # number the next segment will take
        self.limit = limit  # first number not reserved (None: no limit)
        self.starved = False  # a boundary came and the next number was not reserved
        self.has_video = False
        self.current: int | None = None  # open segment's number
        self._start_dts = 0
        self._last_dts: list[int | None] = [None, None]  # by track (VIDEO 0, AUDIO 1)
        self._first_audio_dts: int | None = None
        self.dropped_before_start = 0
        self.timestamp_fixes = 0

    def video_present(self) -> None:
        """The stream carries video (its config arrived): cut on video keyframes."""
        self.has_video = True

    def cut_due_ms(self) -> int | None:
        """The millisecond (the publisher's clock: DTS / 90) from which a video keyframe closes
        the open segment; -1 while no segment is open (the next keyframe starts one); None when
        keyframes do not cut (no video). The RTMP ingest reads eagerly from a little before it."""
        if not self.has_video:
            return None
        if self.current is None:
            return -1
        return (self._start_dts + self._cut_ticks) // (CLOCK_HZ // 1000)

    def part_due_ms(self) -> int | None:
        """The millisecond (the publisher's clock) of the frame expected to start the next
        LL-HLS part, closing the open one: the first frame at the cutting track's last frame
        interval that :meth:`_inside` would start a part on. None while no segment is open. The
        RTMP ingest reads a publisher when that frame should have arrived."""
        last = self._last_cut_dts
        if self.current is None or last is None:
            return None
        start, target, step = self._part_start_dts, self.part_target_ticks, self._cut_step
        if step <= 0:
            return (start + target) // (CLOCK_HZ // 1000)
        # frame last + k*step starts a part once it has reached the target (k_reach), or once
        # one more frame would pass it by more than the jitter (k_pass); the sooner one wins
        k_reach = -((last - start - target) // step)
        k_pass = (start + target + PART_JITTER_TICKS - step - last) // step + 1
        return (last + max(1, min(k_reach, k_pass)) * step) // (CLOCK_HZ // 1000)

    def push(self, au: AccessUnit) -> Stamp | None:
        """Stamp one access unit (mutating its timestamps if they were unsafe), or None to drop it."""
        au.pts, au.dts, seg, flags, closed = self.stamp(au.track, au.pts, au.dts, au.key)
        if seg is None:
            return None
        return Stamp(seg, flags, closed)

    def stamp(self, track: int, pts: int, dts: int, key: bool
              ) -> tuple[int, int, int | None, int, ClosedSegment | None]:
        """:meth:`push` on plain values, for the ingest hot path (no AccessUnit, no Stamp):
        ``(pts, dts, seg, flags, closed)`` with the timestamps made safe; ``seg`` is None when
        the unit is dropped (nothing before the first segment start)."""
        last_dts = self._last_dts
        last = last_dts[track]
        if last is not None and dts <= last:
            # Equal DTS is legal only for B-frame-free streams with duplicate frames; a step
            # back is never playable. One tick forward keeps order without shifting others.
            if dts < last or track == VIDEO:
                self.timestamp_fixes += 1
                dts = last + 1
        if pts < dts:
            pts = dts
        last_dts[track] = dts
        current = self.current
        if self.has_video:
            boundary = track == VIDEO and key and (current is None or dts - self._start_dts >= self._cut_ticks)
        elif track == AUDIO:
            if self._first_audio_dts is None:
                self._first_audio_dts = dts
            if current is None:
                boundary = dts - self._first_audio_dts >= AUDIO_ONLY_AFTER_TICKS
            else:
                boundary = dts - self._start_dts >= self._cut_ticks
        else:
            boundary = False
        if not boundary:
            if current is None:
                self.dropped_before_start += 1
                return pts, dts, None, 0, None
            return self._inside(track, pts, dts, key, current)
        limit = self.limit
        if limit is not None and self.next_seq >= limit:
            self.starved = True  # never cut a number a successor may be given
            if current is None:
                self.dropped_before_start += 1
                return pts, dts, None, 0, None
            return self._inside(track, pts, dts, key, current)
        closed = None
        if current is not None:
            closed = ClosedSegment(current, dts - self._start_dts)
            self._cut_ticks = self.target_ticks
        self.current = self.next_seq
        self.next_seq += 1
        self._start_dts = self._part_start_dts = self._last_cut_dts = dts
        self.part = 0
        return pts, dts, self.current, FLAG_KEY | FLAG_SEG_START | FLAG_PART_START, closed

    def _inside(self, track: int, pts: int, dts: int, key: bool, current: int
                ) -> tuple[int, int, int | None, int, ClosedSegment | None]:
        """The stamp of a unit inside the open segment: a part starts on a frame of the cutting
        track once the part target has passed (or the next frame would pass it too far)."""
        flags = FLAG_KEY if key else 0
        if track == (VIDEO if self.has_video else AUDIO):
            last_cut, self._last_cut_dts = self._last_cut_dts, dts
            elapsed = dts - self._part_start_dts
            step = dts - last_cut if last_cut is not None else 0
            if step > 0:
                self._cut_step = step
            if elapsed >= self.part_target_ticks or elapsed + step > self.part_target_ticks + PART_JITTER_TICKS:
                self.part += 1
                self._part_start_dts = dts
                flags |= FLAG_PART_START
        return pts, dts, current, flags, None
