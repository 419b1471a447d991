"""A live stream's renditions on the bus: the ladder's owner on the event loop.

:class:`Renditions` starts a :class:`~.transcode.Transcoder` once the source's video config is
known (rungs taller than the source are skipped), gives it every stamped source entry, and
publishes what it returns: each rung on its own topic ``s/{id}/{rung}/`` with its own snapshot
window, its config first (the rung's SPS/PPS and the source's audio config). It measures each
rendition's segments (peak and average bitrate of the MPEG-TS an edge will cut, bounded from the
access units; see :func:`ts_packets_bound`) for the stream document, and drops rungs the worker
says it cannot keep up with: a log line naming stream and rung, a counter, and the stream
document's ``dropped_renditions``.

When its owner sets :attr:`Renditions.record` (the origin records rungs), each rung gets a
recorder from that factory when its config arrives, fed exactly what the rung's channel is sent;
a dropped rung, a restarted ladder and the stream's end close it and hand it to
:attr:`Renditions.on_record_end` (which waits for its file and notes it in the registry).
"""
from __future__ import annotations

import asyncio
import logging
import statistics
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Callable

from mesh_codecs.media import VIDEO, AudioConfig, VideoConfig, audio_to_dict, video_to_dict

from .. import metrics
from ..broker.wire import FLAG_KEY, FLAG_SEG_START
from ..ladder import Rung, rungs_for_source
from .transcode import CONFIG, DRAINED, DROPPED, FAILED, MEDIA, Out, Transcoder

if TYPE_CHECKING:
    from ..broker.publisher import BusPublisher, Channel

log = logging.getLogger("mesh.ladder")

METER_SEGMENTS = 8  # segments each rendition's bitrate figures cover
# Frame rates a source most likely has: a measured rate this close to one of them is that one.
COMMON_RATES = (24000 / 1001, 24.0, 25.0, 30000 / 1001, 30.0, 48.0, 50.0, 60000 / 1001, 60.0)
COMMON_RATE_TOLERANCE = 0.005
FPS_SAMPLE = 10  # source frame intervals measured before the ladder starts (x264 needs the rate)
PENDING_MAX = 400  # entries held meanwhile at most (a source without steady video starts anyway)
DRAIN_MAX_S = 30.0  # how long an ended stream's recorded rungs may take to encode what is queued


def ts_packets_bound(nbytes: int, video: bool, key: bool, psets_bytes: int) -> int:
    """The MPEG-TS packets an edge's packetiser (:mod:`mesh_codecs.ts`) spends on one access unit,
    at most: the unit in its own PES, split into 184-byte payloads. Video: PES header with PTS and
    DTS (19), access unit delimiter (6), SPS/PPS before a keyframe (``psets_bytes``, the avcC
    record, longer than their Annex B form), the PCR adaptation field on the first packet (8).
    Audio: PES header with PTS (14), ADTS header (7), the random-access adaptation field (2).
    Deterministic, so every node computes the same figure; exact but for the DTS and the SPS/PPS
    framing, so BANDWIDTH stays an upper bound without charging each unit a spare packet."""
    if video:
        size = nbytes + 19 + 6 + (psets_bytes if key else 0) + 8
    else:
        size = nbytes + 14 + 7 + 2
    return -(-size // 184)


class Meter:
    """Peak and average bitrate over the last segments of one rendition."""

    def __init__(self) -> None:
        self.segments: deque[tuple[int, float]] = deque(maxlen=METER_SEGMENTS)  # (bits, seconds)
        self._seg = -1
        self._start_dts = 0
        self._packets = 0

    def add(self, seg: int, dts: int, nbytes: int, video: bool, key: bool, psets_bytes: int) -> None:
        if seg != self._seg:
            if self._seg >= 0 and dts > self._start_dts:
                bits = (self._packets + 2) * 188 * 8  # + PAT and PMT
                self.segments.append((bits, (dts - self._start_dts) / 90000))
            self._seg, self._start_dts = seg, dts
            self._packets = 0
        self._packets += ts_packets_bound(nbytes, video, key, psets_bytes)

    def figures(self) -> tuple[int, int]:
        """(peak bits/s, average bits/s) of the measured segments; (0, 0) before the first."""
        if not self.segments:
            return 0, 0
        peak = max(bits / seconds for bits, seconds in self.segments if seconds > 0)
        total_s = sum(seconds for _, seconds in self.segments)
        return int(peak + 0.5), int(sum(bits for bits, _ in self.segments) / total_s + 0.5)


class Renditions:
    def __init__(self, stream_id: str, rungs: list[Rung], bus: "BusPublisher", epoch: int, disc: int, *,
                 preset: str, threads: int, segment_target_s: float,
                 on_change: Callable[[], None]):
        self.stream_id = stream_id
        self.wanted = list(rungs)
        self.bus, self.epoch, self.disc = bus, epoch, disc
        self.preset, self.threads = preset, threads
        self.segment_target_s = segment_target_s
        self.on_change = on_change
        # rung recording (mesh/ingest/record.py), set by the origin when it records rungs:
        # record(rung name, rung config) -> a recorder (push/close) or None
        self.record: Callable[[str, VideoConfig], Any] | None = None
        self.on_record_end: Callable[[Any], None] | None = None
        self.recorders: dict[str, Any] = {}  # rung name -> its running recorder
        self.transcoder: Transcoder | None = None
        self._draining: str | None = None  # the eos reason while an ended stream's ladder drains
        self._drained = asyncio.Event()
        self._drained.set()
        self.channels: dict[str, "Channel"] = {}
        self.configs: dict[str, VideoConfig] = {}
        self.meters: dict[str, Meter] = {}
        self.dropped: dict[str, str] = {}  # rung name -> why
        self.source: VideoConfig | None = None
        self.audio: AudioConfig | None = None
        self._rungs: list[Rung] = []
        self._src_deltas: deque[int] = deque(maxlen=60)
        self._last_video_dts: int | None = None
        self._pending: list[tuple] | None = None  # a list while the ladder waits to start
        self._loop = asyncio.get_running_loop()

    # -- from the live stream (on the loop) ---------------------------------------------------
    def set_source(self, video: VideoConfig | None, audio: AudioConfig | None) -> None:
        """The source's codec configs changed: (re)start the ladder for them."""
        self.audio = audio
        if video is None or video == self.source:
            for name, channel in self.channels.items():
                self._send_config(name, channel)
            return
        self.stop()
        self.source = video
        self._rungs = rungs_for_source(self.wanted, video.height)
        skipped = [r.name for r in self.wanted if r not in self._rungs]
        if skipped:
            log.info("%s: %dp source, so no %s", self.stream_id, video.height, ", ".join(skipped))
        self._pending = []  # entries held until the source's frame rate is known
        self._src_deltas.clear()
        self._last_video_dts = None

    def _start(self) -> None:
        """Start the worker once the source's frame rate is measured (x264 needs it), feeding it
        what arrived meanwhile."""
        rungs = [r for r in self._rungs if r.name not in self.dropped]
        pending, self._pending = self._pending, None
        if not rungs or self.source is None:
            return
        fps = self.frame_rate() or 30.0
        self.transcoder = Transcoder(self.stream_id, self.source, rungs, self._from_worker, fps=fps,
                                     preset=self.preset, threads=self.threads, drop_after_s=self.segment_target_s)
        self.transcoder.start()
        log.info("%s: transcoding to %s (%.3g fps source)", self.stream_id, ", ".join(r.name for r in rungs), fps)
        for entry in pending or []:
            self.push(*entry)

    def push(self, track: int, pts: int, dts: int, flags: int, seg: int, data: bytes | memoryview,
             extra: dict[str, Any] | None) -> None:
        if track == VIDEO:  # the source's frame rate (replayed entries are not counted twice)
            if self._last_video_dts is not None and dts > self._last_video_dts:
                self._src_deltas.append(dts - self._last_video_dts)
                self._last_video_dts = dts
            elif self._last_video_dts is None:
                self._last_video_dts = dts
        if self._pending is not None:
            self._pending.append((track, pts, dts, flags, seg, bytes(data), extra))
            if len(self._src_deltas) >= FPS_SAMPLE or len(self._pending) > PENDING_MAX:
                self._start()
            return
        t = self.transcoder
        if t is None:
            return
        if not t.submit(track, pts, dts, flags, seg, data, extra):
            log.warning("%s: the ladder is hopelessly behind (queue full); dropping every rung",
                        self.stream_id)
            for rung in list(self.configs):
                self._drop(rung, "queue full")
            self.stop()

    def finish(self, eos_reason: str) -> None:
        """The source ended. A ladder whose rungs are recorded first encodes what is queued (the
        rungs' tails, at most :data:`DRAIN_MAX_S`), so each file ends where ``src`` ends; any
        other stops at once."""
        t = self.transcoder
        if not self.recorders or t is None or self._draining is not None or not t.drain():
            self.stop(eos_reason)
            return
        self._pending = None
        self._draining = eos_reason
        self._drained.clear()
        self._loop.call_later(DRAIN_MAX_S, self._drain_timeout, t)

    def _drain_timeout(self, t: Transcoder) -> None:
        if self.transcoder is t and self._draining is not None:
            log.warning("%s: the ladder did not finish its rungs within %.0f s; cutting them here",
                        self.stream_id, DRAIN_MAX_S)
            self.stop(self._draining)

    async def wait_drained(self) -> None:
        """Until a :meth:`finish` drain is over (immediately when none runs)."""
        await self._drained.wait()

    def stop(self, eos_reason: str | None = None) -> None:
        if self._draining is not None:
            eos_reason = eos_reason or self._draining
            self._draining = None
        self._drained.set()
        self._pending = None
        t, self.transcoder = self.transcoder, None
        if t is not None:
            t.stop(wait=False)
        for channel in self.channels.values():
            if eos_reason is not None:
                channel.eos(eos_reason)
            self.bus.close_channel(channel)
        self.channels.clear()
        for rung in list(self.recorders):
            self._end_record(rung)

    def _end_record(self, rung: str) -> None:
        recorder = self.recorders.pop(rung, None)
        if recorder is None:
            return
        recorder.close()
        if self.on_record_end is not None:
            self.on_record_end(recorder)

    # -- from the worker ------------------------------------------------------------------
    def _from_worker(self, kind: str, rung: str, payload: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(self._apply, kind, rung, payload)
        except RuntimeError:  # the loop has closed
            pass

    def _apply(self, kind: str, rung: str, payload: Any) -> None:
        if self.transcoder is None:
            return  # stopped meanwhile
        if kind == CONFIG:
            self.configs[rung] = payload
            self.meters[rung] = Meter()
            channel = self.channels[rung] = self.bus.open_channel(self.stream_id, rung, self.epoch)
            self._send_config(rung, channel)
            if self.record is not None:
                self._end_record(rung)  # a new config: a new file
                self._start_record(rung, payload)
            self.on_change()
        elif kind == MEDIA:
            channel = self.channels.get(rung)
            if channel is None:
                return
            meter, psets = self.meters[rung], len(self.configs[rung].avcc)
            recorder = self.recorders.get(rung)
            for o in payload:
                o: Out
                channel.media(o.track, o.pts, o.dts, o.flags, o.seg, o.data,
                              o.extra if o.flags & FLAG_SEG_START else None)
                video = o.track == VIDEO
                meter.add(o.seg, o.dts, len(o.data), video, bool(video and o.flags & FLAG_KEY), psets)
                if recorder is not None:
                    recorder.push(o.track, o.pts, o.dts, o.flags, o.seg, o.data)
        elif kind == DROPPED:
            self._drop(rung, f"{payload} s behind real time")
        elif kind == DRAINED:
            self.stop(self._draining)
        elif kind == FAILED:
            for name in list(self.configs):
                self._drop(name, f"transcoder failed: {payload}")
            self.stop()

    def _drop(self, rung: str, why: str) -> None:
        log.warning("stream %s: dropping rung %s (%s); the other renditions go on", self.stream_id, rung, why)
        metrics.RUNGS_DROPPED.inc()
        self.dropped[rung] = why
        channel = self.channels.pop(rung, None)
        if channel is not None:
            channel.eos("dropped")
            self.bus.close_channel(channel)
        self.configs.pop(rung, None)
        self.meters.pop(rung, None)
        self._end_record(rung)
        if self.transcoder is not None and all(r.name in self.dropped for r in self._rungs):
            self.stop()  # nothing left to make: stop feeding the worker
        self.on_change()

    def _start_record(self, rung: str, cfg: VideoConfig) -> None:
        assert self.record is not None
        try:
            recorder = self.record(rung, cfg)
        except Exception as exc:  # a recording never stops the ladder
            log.warning("stream %s: cannot record rung %s: %s", self.stream_id, rung, exc)
            return
        if recorder is not None:
            self.recorders[rung] = recorder

    def _send_config(self, rung: str, channel: "Channel") -> None:
        channel.config({"video": video_to_dict(self.configs[rung]),
                        "audio": audio_to_dict(self.audio) if self.audio else None,
                        "disc": self.disc, "epoch": self.epoch})

    # -- figures ----------------------------------------------------------------------------
    @property
    def lag_s(self) -> float:
        return self.transcoder.lag_s if self.transcoder is not None else 0.0

    def frame_rate(self) -> float | None:
        return frame_rate_of(self._src_deltas)

    def documents(self) -> list[dict[str, Any]]:
        """The live rungs as the stream document lists them."""
        fps = self.frame_rate()
        docs = []
        for rung in self._rungs:
            cfg = self.configs.get(rung.name)
            if cfg is None:
                continue
            peak, average = self.meters[rung.name].figures()
            codecs = ",".join(c.codec_string for c in (cfg, self.audio) if c is not None)
            docs.append({"name": rung.name, "width": cfg.width, "height": cfg.height,
                         "bitrate_kbps": rung.video_kbps, "codecs": codecs,
                         "frame_rate": min(fps, rung.fps) if fps and rung.fps else (rung.fps or fps),
                         "peak_bps": peak, "average_bps": average})
        return docs


def frame_rate_of(deltas: Iterable[int]) -> float | None:
    """Frames per second from the source's frame intervals (90 kHz ticks); None below 5 intervals.

    RTMP stamps whole milliseconds, so a 30 fps source arrives as 33, 33, 34 ms: the median
    alone says 30.303. The mean of the intervals near the median (a dropped frame or a pause
    left out) says 30.0; a rate within 0.5 % of a common one is reported as that one."""
    xs = list(deltas)
    if len(xs) < 5:
        return None
    mid = statistics.median(xs)
    if mid <= 0:
        return None
    near = [x for x in xs if 0.5 * mid <= x <= 1.5 * mid]
    fps = 90000 / (sum(near) / len(near))
    rate = min(COMMON_RATES, key=lambda r: abs(fps - r))
    return round(rate if abs(fps - rate) <= rate * COMMON_RATE_TOLERANCE else fps, 3)
