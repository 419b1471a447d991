"""The edge's HLS window for one stream rendition. Pure: fed bus deliveries, it cuts TS segments.

It never chooses a boundary: a segment is the run of packets the origin numbered alike, closed
when the origin's next segment start arrives (or the stream ends). Closed segments are packetised
at once into MPEG-TS, listed in a sliding window, and kept fetchable for a while after they leave
it, so a slow player does not get 404.

Discontinuities come from the origin too: each epoch carries the discontinuity number the registry
gave it. A hole the bus could not repair (a :class:`Gap`) or a jump in numbering restarts the
window after the hole, so names and media sequence numbers always agree with every other edge.
"""
from __future__ import annotations

import logging
from collections import OrderedDict, deque
from typing import Any, Callable, Iterable

from mesh_codecs.media import (AUDIO, CLOCK_HZ, AccessUnit, AudioConfig, VideoConfig,
                               audio_from_dict, video_from_dict)

from .. import metrics
from ..broker.tracker import Gap
from ..broker.wire import CONFIG, EOS, MEDIA, Entry
from .playlist import SegmentRef, render_media_playlist

log = logging.getLogger("mesh.hls")

Packetiser = Callable[[VideoConfig | None, AudioConfig | None, list[AccessUnit]], bytes]


class _Open:
    __slots__ = ("seq", "epoch", "disc", "start_dts", "last_dts", "pdt_ms", "aus", "video", "audio")

    def __init__(self, seq: int, epoch: int, disc: int, start_dts: int, pdt_ms: int | None,
                 video: VideoConfig | None, audio: AudioConfig | None):
        self.seq, self.epoch, self.disc = seq, epoch, disc
        self.start_dts = self.last_dts = start_dts
        self.pdt_ms = pdt_ms
        self.video, self.audio = video, audio
        self.aus: list[AccessUnit] = []


class RenditionWindow:
    def __init__(self, base: str, packetise: Packetiser, *, window: int = 5, retired: int = 10,
                 target_s: float = 2.0):
        self.base = base  # playlist base name: segment names are {base}{seq:09d}.ts
        self.packetise = packetise
        self.window = window
        self.target_s = target_s
        self.listed: deque[SegmentRef] = deque()
        self.data: OrderedDict[int, bytes] = OrderedDict()  # listed + retired segments
        self.keep = window + retired
        self.video: VideoConfig | None = None
        self.audio: AudioConfig | None = None
        self.disc = 0
        self.epoch = 0
        self.ended = False
        self._open: _Open | None = None
        self.last_seq: int | None = None  # highest segment number ever listed (survives resets)
        self._listeners: list[Callable[[], None]] = []
        self.segments_cut = 0
        self.resets = 0
        self.dropped = 0

    # -- observers -------------------------------------------------------------------------
    def on_change(self, callback: Callable[[], None]) -> None:
        """Called after a segment is listed or the stream ends (long-poll waiters, tests)."""
        self._listeners.append(callback)

    def _changed(self) -> None:
        for callback in list(self._listeners):
            callback()

    # -- input -----------------------------------------------------------------------------
    def feed(self, deliveries: Iterable[Entry | Gap]) -> None:
        changed = False
        for d in deliveries:
            if isinstance(d, Gap):
                self._hole(f"bus gap of {d.lost}")
                continue
            kind = d.kind
            if kind == MEDIA:
                if d.flags & 2:  # segment start
                    changed |= self._close(d)
                    self._start(d)
                elif self._open is not None and d.seg == self._open.seq and d.epoch == self._open.epoch:
                    self._add(d)
                else:
                    self.dropped += 1  # the tail of a segment we did not see start
            elif kind == CONFIG:
                self._config(d)
            elif kind == EOS:
                changed |= self._close(None)
                self.ended = True
                changed = True
        if changed:
            self._changed()

    def _config(self, entry: Entry) -> None:
        extra = entry.extra or {}
        try:
            video = video_from_dict(extra["video"]) if extra.get("video") is not None else None
            audio = audio_from_dict(extra["audio"]) if extra.get("audio") is not None else None
            disc = extra.get("disc", 0)
            if type(disc) is not int or disc < 0:
                raise ValueError("disc is not a non-negative int")
        except (ValueError, KeyError) as exc:
            metrics.reject("bus", "config", "config of %s: %s", self.base, exc)
            return
        self.video, self.audio, self.disc = video, audio, disc
        self.ended = False

    def _start(self, entry: Entry) -> None:
        if self.video is None and self.audio is None:
            self.dropped += 1
            return  # no codec config yet: nothing we could packetise
        if entry.epoch != self.epoch:
            self.epoch = entry.epoch
            self.ended = False
        last = self.last_seq
        if last is not None and entry.seg <= last:
            # A new origin reused numbers an old one listed (it died before recording them):
            # skip until it passes them, never list one name twice.
            self.dropped += 1
            self._open = None
            return
        if self.listed and entry.seg != last + 1:
            self._hole(f"segment {entry.seg} follows {last}")
        pdt = entry.extra.get("t") if entry.extra else None
        self._open = _Open(entry.seg, entry.epoch, self.disc, entry.dts,
                           pdt if type(pdt) is int else None, self.video, self.audio)
        self._add(entry)

    def _add(self, entry: Entry) -> None:
        o = self._open
        assert o is not None
        o.aus.append(AccessUnit(entry.track, entry.pts, entry.dts, bool(entry.flags & 1),
                                bytes(entry.payload)))
        if entry.dts > o.last_dts:
            o.last_dts = entry.dts

    def _close(self, next_start: Entry | None) -> bool:
        """Packetise and list the open segment; its duration runs to ``next_start``'s DTS (or,
        at the end of a stream or an epoch, one frame past its last packet)."""
        o, self._open = self._open, None
        if o is None or not o.aus:
            return False
        if next_start is not None and next_start.epoch != o.epoch:
            # Its origin never closed it (it died, or was deposed): how much of it each edge got
            # is luck, so listing it would break byte-identity. The new epoch takes the number.
            self.dropped += len(o.aus)
            return False
        if next_start is not None and next_start.dts > o.start_dts:
            duration = next_start.dts - o.start_dts
        else:
            main = AUDIO if o.video is None else 0
            track = [a.dts for a in o.aus if a.track == main]
            step = (track[-1] - track[-2]) if len(track) >= 2 else CLOCK_HZ // 30
            duration = o.last_dts - o.start_dts + max(step, 1)
        try:
            data = self.packetise(o.video, o.audio, o.aus)
        except Exception:
            log.exception("packetising segment %d of %s failed", o.seq, self.base)
            return False
        self.listed.append(SegmentRef(o.seq, duration / CLOCK_HZ, o.disc, o.pdt_ms))
        self.last_seq = o.seq
        self.data[o.seq] = data
        self.segments_cut += 1
        while len(self.listed) > self.window:
            self.listed.popleft()
        while len(self.data) > self.keep:
            self.data.popitem(last=False)
        return True

    def _hole(self, why: str) -> None:
        """Restart the window after a hole; listed segments stay fetchable."""
        self._open = None
        if self.listed:
            self.resets += 1
            log.info("%s: restarting the playlist window (%s)", self.base, why)
            self.listed.clear()

    # -- output ----------------------------------------------------------------------------
    def playlist(self) -> str:
        return render_media_playlist(self.base, list(self.listed), configured_target_s=self.target_s,
                                     ended=self.ended)

    def segment(self, seq: int) -> bytes | None:
        return self.data.get(seq)

    @property
    def segment_count(self) -> int:
        return len(self.listed)

    def stats(self) -> dict[str, Any]:
        return {"listed": len(self.listed), "kept": len(self.data), "cut": self.segments_cut,
                "resets": self.resets, "dropped": self.dropped, "ended": self.ended}
