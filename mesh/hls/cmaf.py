"""The edge's LL-HLS window for one stream rendition: CMAF parts and segments. Pure.

Fed the same bus deliveries as the MPEG-TS :class:`~mesh.hls.window.RenditionWindow`, it cuts
LL-HLS parts exactly where the origin marked them (``FLAG_PART_START``; a segment start is a part
start too) and numbers them within their segment 0, 1, 2 ... as they arrive. A part is closed,
and packetised into one fMP4 fragment (``moof`` + ``mdat``, :class:`mesh_codecs.fmp4.Fmp4Packetiser`),
when the origin's next part start arrives: the DTS of that next access unit is then known, so the
part's last sample gets its true duration and every edge writes the same bytes. A segment is its
parts' fragments concatenated (so it is byte-identical too), listed when the next segment starts.

Fragments are packetised inline, on the event loop: a part is a few frames (200 ms), and one
fragment of six 2.5 KB frames and nine AAC frames took 0.2 ms on the loaded 2-core machine (load
average 35-50; bench/RESULTS.md, "LL-HLS"), about what handing it to a worker thread and waking
the loop again costs there; inline also keeps the order of what the window shows trivial.

The window keeps the last ``window`` segments listed (as the TS window does) plus the open
segment's parts, and keeps bytes of ``retired`` more segments (and their parts) fetchable. The
init segment (``ftyp`` + ``moov``) is named after a CRC of its bytes, so a new codec
configuration gets a new name and every edge agrees on it.

Holes (a bus :class:`~mesh.broker.tracker.Gap`, a jump in segment numbers) restart the listing,
and a segment its origin never closed (a new epoch took over) is dropped with its parts, as in
the TS window.
"""
from __future__ import annotations

import logging
import zlib
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Callable, Iterable

from mesh_codecs.fmp4 import Fmp4Error, Fmp4Packetiser
from mesh_codecs.media import (AUDIO, CLOCK_HZ, VIDEO, AccessUnit, AudioConfig, VideoConfig,
                               audio_from_dict, video_from_dict)

from .. import metrics
from ..broker.tracker import Gap
from ..broker.wire import CONFIG, EOS, FLAG_KEY, FLAG_PART_START, FLAG_SEG_START, MEDIA, Entry

log = logging.getLogger("mesh.hls")

DEFAULT_PART_TICKS = 18_000  # 200 ms, when the origin's config does not say
MAX_PARTS = 1024  # parts numbered in one segment (a part's fragment number is seq * MAX_PARTS + part)
MAX_CONFIGS = 16  # packetisers (codec configurations) kept per window


@dataclass(frozen=True, slots=True)
class PartRef:
    index: int
    duration_s: float
    independent: bool  # starts with a video keyframe (or the stream is audio-only)


@dataclass(slots=True)
class LlSegment:
    """A segment as the LL playlist shows it: closed (``duration_s`` set) or still open."""

    seq: int
    disc: int
    pdt_ms: int | None
    init: str  # the init segment's name
    parts: list[PartRef] = field(default_factory=list)
    duration_s: float | None = None

    @property
    def closed(self) -> bool:
        return self.duration_s is not None


class _OpenPart:
    __slots__ = ("aus", "start_dts", "last_dts", "step")

    def __init__(self, start_dts: int):
        self.aus: list[AccessUnit] = []
        self.start_dts = self.last_dts = start_dts
        self.step = 0  # last DTS step of the cutting track (for a final part's duration)


def init_name(base: str, init: bytes) -> str:
    return f"{base}_ll_init{zlib.crc32(init):08x}.mp4"


def segment_name(base: str, seq: int) -> str:
    return f"{base}_ll{seq:09d}.m4s"


def part_name(base: str, seq: int, part: int) -> str:
    return f"{base}_ll{seq:09d}.{part}.m4s"


class LlWindow:
    def __init__(self, base: str, *, window: int = 5, retired: int = 10, target_s: float = 2.0,
                 part_target_s: float | None = None):
        self.base = base  # names: {base}_ll{seq:09d}.m4s, {base}_ll{seq:09d}.{part}.m4s
        self.window = window
        self.keep = window + retired
        self.target_s = target_s
        self.part_ticks = int(round(part_target_s * CLOCK_HZ)) if part_target_s else DEFAULT_PART_TICKS
        self.listed: deque[LlSegment] = deque()
        self.open: LlSegment | None = None
        self.segments: OrderedDict[int, bytes] = OrderedDict()
        self.parts: dict[tuple[int, int], bytes] = {}
        self.inits: OrderedDict[str, bytes] = OrderedDict()
        self.video: VideoConfig | None = None
        self.audio: AudioConfig | None = None
        self.disc = 0
        self.epoch = 0
        self.ended = False
        self.version = 0
        self.last_seq: int | None = None  # highest segment number ever closed (survives resets)
        self._packetisers: OrderedDict[tuple[object, object], tuple[Fmp4Packetiser, str]] = OrderedDict()
        self._current: tuple[Fmp4Packetiser, str] | None = None
        self._open_epoch = 0
        self._open_packetiser: Fmp4Packetiser | None = None
        self._open_start = 0
        self._open_last = 0
        self._part: _OpenPart | None = None
        self._part_data: list[bytes] = []
        self._run = False
        self._listeners: list[Callable[[], None]] = []
        self.parts_cut = 0
        self.segments_cut = 0
        self.resets = 0
        self.dropped = 0

    def on_change(self, callback: Callable[[], None]) -> None:
        """Called after a part or segment is listed or the stream ends (blocking requests)."""
        self._listeners.append(callback)

    # -- where the live edge is ------------------------------------------------------------
    def last_part(self) -> tuple[int, int] | None:
        """(segment number, part number) of the newest listed part, or None."""
        if self.open is not None and self.open.parts:
            return self.open.seq, self.open.parts[-1].index
        if self.listed:
            last = self.listed[-1]
            return last.seq, last.parts[-1].index if last.parts else 0
        return None

    def next_part(self) -> tuple[int, int] | None:
        """(segment number, part number) of the part the origin is cutting now, if known."""
        if self.open is not None:
            return self.open.seq, len(self.open.parts)
        if self.listed and not self.ended:
            return self.listed[-1].seq + 1, 0
        return None

    # -- input -----------------------------------------------------------------------------
    def feed(self, deliveries: Iterable[Entry | Gap]) -> None:
        before = self.version
        for d in deliveries:
            if isinstance(d, Gap):
                self._hole(f"bus gap of {d.lost}")
                continue
            kind = d.kind
            if kind == MEDIA:
                flags = d.flags
                if flags & FLAG_SEG_START:
                    self._close_part(d)
                    self._close_segment(d)
                    self._start_segment(d)
                elif self.open is not None and d.seg == self.open.seq and d.epoch == self._open_epoch:
                    if flags & FLAG_PART_START:
                        self._close_part(d)
                        self._part = _OpenPart(d.dts)
                    self._add(d)
                else:
                    self.dropped += 1  # the tail of a segment we did not see start
            elif kind == CONFIG:
                self._config(d)
            elif kind == EOS:
                self._close_part(None)
                self._close_segment(None)
                if not self.ended:
                    self.ended = True
                    self.version += 1
        if self.version != before:
            for callback in list(self._listeners):
                callback()

    def end(self) -> None:
        """The stream ended without its end of stream reaching us: never list what its origin
        did not close (edges would disagree)."""
        self._drop_open()
        if not self.ended:
            self.ended = True
            self.version += 1
            for callback in list(self._listeners):
                callback()

    def _config(self, entry: Entry) -> None:
        extra = entry.extra or {}
        try:
            video = video_from_dict(extra["video"]) if extra.get("video") is not None else None
            audio = audio_from_dict(extra["audio"]) if extra.get("audio") is not None else None
            disc = extra.get("disc", 0)
            if type(disc) is not int or disc < 0:
                raise ValueError("disc is not a non-negative int")
            part_ticks = extra.get("part_ticks", self.part_ticks)
            if type(part_ticks) is not int or not 450 <= part_ticks <= 30 * CLOCK_HZ:
                raise ValueError("part_ticks is not 5 ms .. 30 s of 90 kHz ticks")
        except (ValueError, KeyError) as exc:
            metrics.reject("bus", "config", "config of %s (LL): %s", self.base, exc)
            return
        self.video, self.audio, self.disc, self.part_ticks = video, audio, disc, part_ticks
        self._current = None

    def _packetiser(self) -> tuple[Fmp4Packetiser, str] | None:
        if self._current is None and (self.video is not None or self.audio is not None):
            key = (self.video, self.audio)
            found = self._packetisers.get(key)
            if found is None:
                try:
                    p = Fmp4Packetiser(self.video, self.audio)
                except Fmp4Error as exc:
                    metrics.reject("bus", "config", "config of %s cannot be fMP4: %s", self.base, exc)
                    return None
                found = (p, init_name(self.base, p.init))
                self.inits[found[1]] = p.init
                while len(self.inits) > MAX_CONFIGS:
                    self.inits.popitem(last=False)
                self._packetisers[key] = found
                while len(self._packetisers) > MAX_CONFIGS:
                    self._packetisers.popitem(last=False)
            self._current = found
        return self._current

    def _start_segment(self, entry: Entry) -> None:
        packetiser = self._packetiser()
        if packetiser is None:
            self.dropped += 1
            return  # no codec config yet: nothing we could packetise
        if entry.epoch != self.epoch:
            self.epoch = entry.epoch
        last = self.last_seq
        if last is not None and entry.seg <= last:
            self.dropped += 1  # a new origin reusing numbers already listed: skip until it passes them
            return
        if self._run and entry.seg != last + 1:
            self._hole(f"segment {entry.seg} follows {last}")
        pdt = entry.extra.get("t") if entry.extra else None
        self.open = LlSegment(entry.seg, self.disc, pdt if type(pdt) is int else None, packetiser[1])
        self._open_epoch = entry.epoch
        self._open_packetiser = packetiser[0]
        self._open_start = self._open_last = entry.dts
        self._part = _OpenPart(entry.dts)
        self._part_data = []
        self._add(entry)

    def _add(self, entry: Entry) -> None:
        part = self._part
        assert part is not None
        main = VIDEO if self.video is not None else AUDIO
        if entry.track == main and part.aus and entry.dts > part.last_dts:
            part.step = entry.dts - part.last_dts
        if entry.track == main or not part.aus:
            part.last_dts = max(part.last_dts, entry.dts)
        part.aus.append(AccessUnit(entry.track, entry.pts, entry.dts, bool(entry.flags & FLAG_KEY),
                                   bytes(entry.payload)))
        if entry.dts > self._open_last:
            self._open_last = entry.dts

    def _close_part(self, next_start: Entry | None) -> None:
        part, seg = self._part, self.open
        self._part = None
        if part is None or seg is None or not part.aus or self._open_packetiser is None:
            return
        if next_start is not None and next_start.epoch != self._open_epoch:
            self._drop_open()  # its origin never finished it: how much each edge got is luck
            return
        if next_start is not None and next_start.dts > part.start_dts:
            ticks = next_start.dts - part.start_dts
        else:
            ticks = part.last_dts - part.start_dts + max(part.step, 1)
        next_dts = next_start.dts if next_start is not None and next_start.track == VIDEO else None
        index = len(seg.parts)
        packetiser = self._open_packetiser  # the config the segment started with (its EXT-X-MAP)
        if index >= MAX_PARTS:
            self._drop_open()
            return
        try:
            data = packetiser.fragment(part.aus, (seg.seq * MAX_PARTS + index) & 0xFFFFFFFF, next_dts)
        except Fmp4Error as exc:
            metrics.reject("bus", "media", "part %d.%d of %s: %s", seg.seq, index, self.base, exc)
            self._drop_open()
            return
        main = VIDEO if self.video is not None else AUDIO
        first = next((au for au in part.aus if au.track == main), None)
        independent = main == AUDIO or (first is not None and first.key)
        seg.parts.append(PartRef(index, ticks / CLOCK_HZ, independent))
        self.parts[(seg.seq, index)] = data
        self._part_data.append(data)
        self.parts_cut += 1
        self.version += 1

    def _close_segment(self, next_start: Entry | None) -> None:
        seg, self.open = self.open, None
        if seg is None or not seg.parts:
            return
        if next_start is not None and next_start.epoch != self._open_epoch:
            self._forget_parts(seg)
            return
        if next_start is not None and next_start.dts > self._open_start:
            ticks = next_start.dts - self._open_start
        else:
            ticks = int(round(sum(p.duration_s for p in seg.parts) * CLOCK_HZ))
        seg.duration_s = ticks / CLOCK_HZ
        data = b"".join(self._part_data)
        self._part_data = []
        self.listed.append(seg)
        self.segments[seg.seq] = data
        self.segments.move_to_end(seg.seq)
        self.last_seq = seg.seq
        self._run = True
        self.segments_cut += 1
        self.version += 1
        while len(self.listed) > self.window:
            self.listed.popleft()
        while len(self.segments) > self.keep:
            old, _ = self.segments.popitem(last=False)
            for key in [k for k in self.parts if k[0] == old]:
                del self.parts[key]

    def _drop_open(self) -> None:
        seg, self.open, self._part = self.open, None, None
        if seg is not None:
            self.dropped += 1
            self._forget_parts(seg)

    def _forget_parts(self, seg: LlSegment) -> None:
        for p in seg.parts:
            self.parts.pop((seg.seq, p.index), None)
        self._part_data = []
        if seg.parts:
            self.version += 1

    def _hole(self, why: str) -> None:
        """Restart the listing after a hole; listed segments and parts stay fetchable."""
        self._drop_open()
        if self._run:
            self._run = False
            if self.listed:
                self.resets += 1
                self.listed.clear()
                self.version += 1
            log.info("%s: restarting the LL playlist window (%s)", self.base, why)

    # -- output ----------------------------------------------------------------------------
    def segment(self, seq: int) -> bytes | None:
        return self.segments.get(seq)

    def part(self, seq: int, index: int) -> bytes | None:
        return self.parts.get((seq, index))

    def init(self, name: str) -> bytes | None:
        return self.inits.get(name)

    def shown(self) -> list[LlSegment]:
        """The listed segments and, last, the open one (if it has a part)."""
        out = list(self.listed)
        if self.open is not None and self.open.parts:
            out.append(self.open)
        return out
