"""The edge's HLS window for one stream rendition. Pure: fed bus deliveries, it cuts TS segments.

It never chooses a boundary: a segment is the run of packets the origin numbered alike, closed
when the origin's next segment start arrives (or the stream ends). Closed segments are packetised
into MPEG-TS, listed in a sliding window, and kept fetchable for a while after they leave it, so a
slow player does not get 404.

Packetising may run elsewhere: with an ``offload`` (see :mod:`mesh.hls.packetiser`) a closed
segment is packetised on a worker thread while the event loop keeps serving. What the window shows
(its list, its bytes, whether it ended) changes only through an ordered queue of outcomes, applied
from the head as each packetising job finishes, so the result is the same, in the same order, as
packetising inline (which is what happens without an ``offload``, as in the tests).

Discontinuities come from the origin too: each epoch carries the discontinuity number the registry
gave it. A hole the bus could not repair (a :class:`Gap`) or a jump in numbering restarts the
window after the hole, so names and media sequence numbers always agree with every other edge.
The restart shows when the first segment after the hole is listed (the old window stays until
then), so the playlist never falls back to an empty one whose media sequence would read as 0.

Epochs only go up: entries of an epoch below the highest seen (a deposed "zombie" origin still
sending) are dropped. A takeover's new epoch starts above the numbers its predecessor reserved
(see :mod:`mesh.registry`), so it shows as a jump: the window restarts at the new epoch's first
segment with the discontinuity sequence one higher. ``EXT-X-MEDIA-SEQUENCE`` stays equal to the
first listed name's number, so a cold edge that only ever saw the new epoch renders the same
playlist as a warm one, and players see the media sequence move forward and one discontinuity.
"""
from __future__ import annotations

import logging
from collections import OrderedDict, deque
from concurrent.futures import Future
from typing import Callable, Iterable, Union

from mesh_codecs.media import (AUDIO, CLOCK_HZ, AccessUnit, AudioConfig, VideoConfig,
                               audio_from_dict, video_from_dict)

from .. import metrics
from ..broker.tracker import Gap
from ..broker.wire import CONFIG, EOS, MEDIA, Entry
from .playlist import SegmentRef, render_media_playlist

log = logging.getLogger("mesh.hls")

Packetiser = Callable[[VideoConfig | None, AudioConfig | None, list[AccessUnit]], bytes]
Job = Callable[[], bytes]
#: Runs a packetising job somewhere and calls ``done()`` on the window's own thread when it has
#: finished (see :class:`mesh.hls.packetiser.WorkerPool`).
Offload = Callable[[Job, Callable[[], None]], "Future[bytes]"]


class _Open:
    __slots__ = ("seq", "epoch", "disc", "start_dts", "last_dts", "pdt_ms", "aus", "video", "audio")

    def __init__(self, seq: int, epoch: int, disc: int, start_dts: int, pdt_ms: int | None,
                 video: VideoConfig | None, audio: AudioConfig | None):
        self.seq, self.epoch, self.disc = seq, epoch, disc
        self.start_dts = self.last_dts = start_dts
        self.pdt_ms = pdt_ms
        self.video, self.audio = video, audio
        self.aus: list[AccessUnit] = []


# Outcomes, applied in order: list a packetised segment, restart the window, set the end state.
_List = tuple[SegmentRef, "Future[bytes]"]
_RESET = "reset"
_Outcome = Union[_List, str, bool]


def _inline(job: Job) -> "Future[bytes]":
    done: Future[bytes] = Future()
    try:
        done.set_result(job())
    except Exception as exc:
        done.set_exception(exc)
    return done


class RenditionWindow:
    def __init__(self, base: str, packetise: Packetiser, *, window: int = 5, retired: int = 10,
                 target_s: float = 2.0, offload: Offload | None = None):
        self.base = base  # playlist base name: segment names are {base}{seq:09d}.ts
        self.packetise = packetise
        self.offload = offload
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
        self.version = 0  # changes whenever what the window shows changes (for reply caches)
        self._open: _Open | None = None
        self._run = False  # a segment was closed since the window last (re)started
        self.last_seq: int | None = None  # highest segment number ever closed (survives resets)
        self._outcomes: deque[_Outcome] = deque()
        self._listeners: list[Callable[[], None]] = []
        self.segments_cut = 0
        self.resets = 0
        self.dropped = 0
        self.stale = 0  # entries of a lower epoch than the highest seen
        self._announce = False
        self._restart = False  # a hole restarted the window: clear it when the next segment lists

    # -- observers -------------------------------------------------------------------------
    def on_change(self, callback: Callable[[], None]) -> None:
        """Called after a segment is listed or the stream ends (long-poll waiters, tests)."""
        self._listeners.append(callback)

    @property
    def pending(self) -> int:
        """Closed segments (and state changes behind them) not applied yet."""
        return len(self._outcomes)

    # -- input -----------------------------------------------------------------------------
    def feed(self, deliveries: Iterable[Entry | Gap]) -> None:
        for d in deliveries:
            if isinstance(d, Gap):
                self._hole(f"bus gap of {d.lost}")
                continue
            if d.epoch != self.epoch:
                if d.epoch < self.epoch:
                    self.stale += 1  # a deposed origin's packet: never follow it back
                    continue
                self._new_epoch(d.epoch)
            kind = d.kind
            if kind == MEDIA:
                if d.flags & 2:  # segment start
                    self._close(d)
                    self._start(d)
                elif self._open is not None and d.seg == self._open.seq and d.epoch == self._open.epoch:
                    self._add(d)
                else:
                    self.dropped += 1  # the tail of a segment we did not see start
            elif kind == CONFIG:
                self._config(d)
            elif kind == EOS:
                self._close(None)
                self._outcomes.append(True)
        self.settle()

    def end(self) -> None:
        """The stream ended without its end of stream reaching us (the registry says so)."""
        self._open = None  # never list what its origin did not close: edges would disagree
        self._outcomes.append(True)
        self.settle()

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
        self._outcomes.append(False)

    def _new_epoch(self, epoch: int) -> None:
        """A higher epoch (a new origin, or a republish) begins: the old epoch's open segment was
        never closed by its origin, so it is never listed (edges would disagree on its tail)."""
        o, self._open = self._open, None
        if o is not None:
            self.dropped += len(o.aus)
        if self.epoch:
            log.info("%s: epoch %d follows %d", self.base, epoch, self.epoch)
        self.epoch = epoch
        self._announce = True  # log this epoch's first listed segment (a takeover's timing)
        self._outcomes.append(False)

    def _start(self, entry: Entry) -> None:
        if self.video is None and self.audio is None:
            self.dropped += 1
            return  # no codec config yet: nothing we could packetise
        last = self.last_seq
        if last is not None and entry.seg <= last:
            # A new origin reused numbers an old one listed (it died before recording them):
            # skip until it passes them, never list one name twice.
            self.dropped += 1
            self._open = None
            return
        if self._run and entry.seg != last + 1:
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

    def _close(self, next_start: Entry | None) -> None:
        """Packetise the open segment (here or on a worker) and queue its listing; its duration
        runs to ``next_start``'s DTS (or, at the end of a stream or an epoch, one frame past its
        last packet)."""
        o, self._open = self._open, None
        if o is None or not o.aus:
            return
        if next_start is not None and next_start.epoch != o.epoch:
            # Its origin never closed it (it died, or was deposed): how much of it each edge got
            # is luck, so listing it would break byte-identity. The new epoch takes the number.
            self.dropped += len(o.aus)
            return
        if next_start is not None and next_start.dts > o.start_dts:
            duration = next_start.dts - o.start_dts
        else:
            main = AUDIO if o.video is None else 0
            track = [a.dts for a in o.aus if a.track == main]
            step = (track[-1] - track[-2]) if len(track) >= 2 else CLOCK_HZ // 30
            duration = o.last_dts - o.start_dts + max(step, 1)
        video, audio, aus, packetise = o.video, o.audio, o.aus, self.packetise

        def job() -> bytes:
            return packetise(video, audio, aus)

        done = _inline(job) if self.offload is None else self.offload(job, self.settle)
        self._outcomes.append((SegmentRef(o.seq, duration / CLOCK_HZ, o.disc, o.pdt_ms), done))
        self.last_seq = o.seq
        self._run = True

    def _hole(self, why: str) -> None:
        """Restart the window after a hole; listed segments stay fetchable."""
        self._open = None
        if self._run:
            self._run = False
            self._outcomes.append(_RESET)
            log.info("%s: restarting the playlist window (%s)", self.base, why)

    # -- applying outcomes, in order -------------------------------------------------------
    def settle(self) -> None:
        """Apply finished outcomes from the head of the queue; tell listeners if anything shows."""
        outcomes, changed = self._outcomes, False
        while outcomes:
            head = outcomes[0]
            if type(head) is tuple:
                ref, done = head
                if not done.done():
                    break
                changed |= self._list(ref, done)
            elif head is _RESET:
                # Shown only with the first segment after the hole: until then the old window
                # stays (stale, but its media sequence never goes back to an empty playlist's 0).
                self._restart = bool(self.listed)
            elif head is not self.ended:
                self.ended = head  # type: ignore[assignment]
                self.version += 1
                changed |= head is True
            outcomes.popleft()
        if changed:
            for callback in list(self._listeners):
                callback()

    def _list(self, ref: SegmentRef, done: "Future[bytes]") -> bool:
        try:
            data = done.result()
        except Exception:
            log.exception("packetising segment %d of %s failed", ref.seq, self.base)
            return False
        if self._restart:
            self._restart = False
            self.resets += 1
            self.listed.clear()
        self.listed.append(ref)
        self.data[ref.seq] = data
        self.data.move_to_end(ref.seq)
        self.segments_cut += 1
        self.version += 1
        if self._announce:
            self._announce = False
            log.info("%s: first segment %d of epoch %d listed", self.base, ref.seq, self.epoch)
        while len(self.listed) > self.window:
            self.listed.popleft()
        while len(self.data) > self.keep:
            self.data.popitem(last=False)
        return True

    # -- output ----------------------------------------------------------------------------
    def playlist(self, query: str = "") -> str:
        return render_media_playlist(self.base, list(self.listed), configured_target_s=self.target_s,
                                     ended=self.ended, query=query)

    def segment(self, seq: int) -> bytes | None:
        return self.data.get(seq)

    @property
    def segment_count(self) -> int:
        return len(self.listed)

    def peak_and_average_bps(self) -> tuple[int, int]:
        """Measured bitrates of the segments held (listed and retired), for a master playlist:
        the largest listed segment's bits per second (RFC 8216 BANDWIDTH) and the mean over them."""
        peak, total_bits, total_s = 0, 0, 0.0
        for ref in self.listed:
            data, seconds = self.data.get(ref.seq), ref.duration_s
            if data is None or seconds <= 0:
                continue
            bits = len(data) * 8
            peak = max(peak, int(bits / seconds + 0.5))
            total_bits += bits
            total_s += seconds
        return peak, int(total_bits / total_s + 0.5) if total_s else 0
