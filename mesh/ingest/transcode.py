"""The ABR ladder of one stream: decode once, scale per rung, encode per rung, on one worker thread.

The origin's segmenter has already stamped every access unit of the source (segment number,
segment start, key). The :class:`Transcoder` decodes the source video once (PyAV), scales each
picture once per rung and encodes it with libx264 (``tune=zerolatency``, no B-frames, scenecut
off, a keyframe forced exactly where the source has one, the source's timestamps), so each rung's
frames carry the very stamps of the source frames they came from: every rendition has the same
segment boundaries and numbers, decided once. Audio is passed through unchanged into every rung.

Order on the bus matters to edges: a segment's entries must follow its segment start. A source
with B-frames is decoded in display order, a little after its audio, so each rung has an
:class:`Interleaver` that holds audio back until the rung's video has passed it.

Codec work runs on the worker thread (PyAV releases the GIL while it decodes, scales and
encodes); results go back to the event loop through ``emit``, which the owner makes thread-safe.
The input queue is bounded. The worker measures how far behind real time it is: a ladder that
is more than ``drop_after_s`` (one segment) behind and not catching up (:class:`Pace`) drops its
most expensive rung, and so on.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable

from mesh_codecs.h264 import H264Error, annexb_to_avcc, video_config_from_annexb
from mesh_codecs.media import AUDIO, VIDEO, VideoConfig
from mesh_codecs.scale_av import FrameScaler

from ..broker.wire import FLAG_KEY, FLAG_PART_START, FLAG_SEG_START
from ..ladder import Rung

log = logging.getLogger("mesh.ladder")

CLOCK = Fraction(1, 90000)
QUEUE_MAX = 2000  # access units waiting for the worker (~20 s of 30 fps video + 48 kHz AAC)
AUDIO_HOLD_MAX = 400  # audio frames a rung holds back while its video catches up


@dataclass(slots=True)
class Out:
    """One entry for a rung's channel, stamped like the source entry it came from."""

    track: int
    pts: int
    dts: int
    flags: int
    seg: int
    data: bytes
    extra: dict[str, Any] | None


# Events the worker emits (on its thread): (kind, rung name, payload); DRAINED (rung "") after
# :meth:`Transcoder.drain` once everything queued before it is out
CONFIG, MEDIA, DROPPED, FAILED, DRAINED = "config", "media", "dropped", "failed", "drained"
Emit = Callable[[str, str, Any], None]


class Interleaver:
    """Releases a rung's entries in an order edges can cut: audio never ahead of the segment
    start of its own segment, and not far ahead of the video."""

    def __init__(self) -> None:
        self.audio: list[Out] = []
        self.seg = -1  # the segment the rung's video is in
        self.pts = -1  # the last video pts released

    def add_audio(self, out: Out, released: list[Out]) -> None:
        self.audio.append(out)
        if len(self.audio) > AUDIO_HOLD_MAX:  # video stalled or gone: release what may go
            self._release(released, force=True)
        else:
            self._release(released)

    def add_video(self, out: Out, released: list[Out]) -> None:
        if out.flags & FLAG_SEG_START:
            self.seg = out.seg
            self._release(released, below=out.seg)  # the previous segment's audio first
        elif out.seg > self.seg:
            self.seg = out.seg
        released.append(out)
        self.pts = out.pts
        self._release(released)

    def flush(self, released: list[Out]) -> None:
        released.extend(a for a in self.audio if a.seg <= self.seg)
        self.audio.clear()

    def _release(self, released: list[Out], *, below: int | None = None, force: bool = False) -> None:
        keep: list[Out] = []
        for a in self.audio:
            if below is not None:
                go = a.seg < below
            else:
                go = a.seg < self.seg or (a.seg == self.seg and (force or a.dts <= self.pts))
            (released if go else keep).append(a)
        self.audio = keep


class _RungEncoder:
    def __init__(self, rung: Rung, src: VideoConfig, preset: str, threads: int, fps: float):
        import av

        self.rung = rung
        self.width = rung.width_for(src.width, src.height)
        self.height = rung.height
        ctx = av.CodecContext.create("libx264", "w")
        ctx.width, ctx.height, ctx.pix_fmt = self.width, self.height, "yuv420p"
        ctx.time_base = CLOCK
        # x264's rate control budgets bits per frame from the frame rate: without it, it would
        # take the 90 kHz time base for 90,000 frames a second and starve every picture
        ctx.framerate = Fraction(min(rung.fps, fps) if rung.fps else fps).limit_denominator(1001)
        ctx.bit_rate = rung.video_kbps * 1000
        ctx.thread_count = threads
        ctx.flags |= av.codec.context.Flags.global_header
        kbps = rung.video_kbps
        ctx.options = {
            "preset": preset, "tune": "zerolatency",
            # keyframes only where the source has them (forced, as IDR); a VBV keeps each
            # segment near the rung's bitrate so the master playlist's figures hold
            "x264-params": (f"keyint=100000:min-keyint=1:scenecut=0:bframes=0:forced-idr=1:"
                            f"vbv-maxrate={int(kbps * 1.1)}:vbv-bufsize={kbps * 2}"),
        }
        ctx.open()
        self.ctx = ctx
        # one scaler per rung and source size, kept: the Numba area scaler where it beats swscale
        # (exact 3:2, e.g. 1080p to 720p: bench/RESULTS.md, "scale"), swscale elsewhere
        self._scaler: FrameScaler | None = None

        self.config = video_config_from_annexb(bytes(ctx.extradata or b""))
        self.frames = 0
        # a lower frame rate than the source's: pictures closer than this are skipped (never a keyframe)
        self.min_step = int(90000 / rung.fps * 0.9) if rung.fps else 0
        self.next_pts = -(1 << 62)

    def scale(self, frame: Any) -> Any:
        scaler = self._scaler
        if scaler is None or scaler.src_size != (frame.width, frame.height):
            scaler = self._scaler = FrameScaler(frame.width, frame.height, self.width, self.height)
        return scaler(frame)

    def wants(self, pts: int, key: bool) -> bool:
        if key or not self.min_step or pts >= self.next_pts:
            self.next_pts = pts + self.min_step
            return True
        return False

    def encode(self, frame: Any) -> list[Any]:
        return list(self.ctx.encode(frame))


class Pace:
    """Is the ladder keeping real time? Pure: the worker passes its clock and its lag.

    Behind means more than ``drop_after_s`` (one segment) behind real time *and not catching up*:
    over the last ``drop_after_s`` the lag did not shrink by at least ``CATCH_UP`` of that time.
    A ladder that starts with a backlog (the frames queued while its encoders opened, the frame
    rate sample) and works it off faster than real time keeps its rungs; one whose lag holds or
    grows loses its most expensive rung, and the lighter ladder gets the same chance again."""

    CATCH_UP = 0.1  # the lag must shrink by 10 % of the elapsed time: 1.1x real time at least

    def __init__(self, drop_after_s: float, now: float):
        self.drop_after_s = drop_after_s
        self.grace_until = now + drop_after_s  # opening the encoders took a while
        self._mark: tuple[float, float] | None = None  # (when, lag) the ladder was first seen behind

    def behind(self, now: float, lag_s: float) -> bool:
        if lag_s <= self.drop_after_s or now < self.grace_until:
            self._mark = None
            return False
        if self._mark is None:
            self._mark = (now, lag_s)
            return False
        since, lag_then = self._mark
        if now - since < self.drop_after_s:
            return False
        if lag_s < lag_then - self.CATCH_UP * (now - since):
            self._mark = (now, lag_s)  # catching up: judge the next stretch
            return False
        return True

    def dropped(self, now: float) -> None:
        """A rung went: the lighter ladder gets a fresh grace period."""
        self.grace_until = now + self.drop_after_s
        self._mark = None


class Transcoder:
    def __init__(self, stream_id: str, source: VideoConfig, rungs: list[Rung], emit: Emit, *,
                 fps: float = 30.0, preset: str = "veryfast", threads: int = 1, drop_after_s: float = 2.0,
                 clock: Callable[[], float] = time.monotonic):
        self.stream_id = stream_id
        self.source = source
        self.rungs = list(rungs)  # highest first: the first to go when falling behind
        self.emit = emit
        self.preset, self.threads = preset, threads
        self.fps = fps  # the source's frame rate (x264's rate control needs it)
        self.drop_after_s = drop_after_s
        self.clock = clock
        self._queue: queue.Queue[tuple | None] = queue.Queue(QUEUE_MAX)
        self._thread = threading.Thread(target=self._run, name=f"ladder-{stream_id}", daemon=True)
        self._stopping = threading.Event()
        self.lag_s = 0.0  # how far behind real time the worker is (read by the loop for metrics)
        self.dropped: list[str] = []

    def start(self) -> None:
        self._thread.start()

    def submit(self, track: int, pts: int, dts: int, flags: int, seg: int, data: bytes | memoryview,
               extra: dict[str, Any] | None) -> bool:
        """Queue one stamped source entry (on the loop; never blocks). False when the queue is
        full: the worker is hopelessly behind, and the caller stops the ladder."""
        try:
            self._queue.put_nowait((self.clock(), track, pts, dts, flags, seg, bytes(data), extra))
        except queue.Full:
            return False
        return True

    def finish(self, timeout_s: float = 600.0) -> None:
        """Let the worker work through what is queued, then end (benchmarks and tests)."""
        self._queue.put(None)
        self._thread.join(timeout_s)

    def drain(self) -> bool:
        """End once what is queued is encoded and emitted, then emit DRAINED (on the loop; never
        blocks). False when the queue is full: the caller stops instead."""
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            return False
        return True

    def stop(self, wait: bool = True) -> None:
        self._stopping.set()
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass
        if wait and self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(10)

    # -- the worker ------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._work()
        except Exception as exc:  # a codec failure ends the ladder, never the stream
            log.exception("ladder of %s failed", self.stream_id)
            self.emit(FAILED, "", str(exc))

    def _work(self) -> None:
        import av

        decoder = av.CodecContext.create("h264", "r")
        decoder.extradata = self.source.avcc
        decoder.thread_count = 1
        encoders = [_RungEncoder(r, self.source, self.preset, self.threads, self.fps) for r in self.rungs]
        lanes = {e.rung.name: Interleaver() for e in encoders}
        for enc in encoders:
            self.emit(CONFIG, enc.rung.name, enc.config)
        stamps: dict[int, tuple[int, int, dict[str, Any] | None]] = {}  # pts -> (flags, seg, extra)
        # Opening the encoders took a while: what queued meanwhile is not a measure of speed.
        pace = Pace(self.drop_after_s, self.clock())
        while not self._stopping.is_set():
            item = self._queue.get()
            if item is None:
                break
            arrived, track, pts, dts, flags, seg, data, extra = item
            out: dict[str, list[Out]] = {e.rung.name: [] for e in encoders}
            if track == AUDIO:
                entry = Out(AUDIO, pts, dts, flags, seg, data, extra)
                for enc in encoders:
                    lanes[enc.rung.name].add_audio(entry, out[enc.rung.name])
            elif track == VIDEO:
                stamps[pts] = (flags, seg, extra)
                packet = av.Packet(data)
                packet.pts, packet.dts, packet.time_base = pts, dts, CLOCK
                try:
                    frames = decoder.decode(packet)
                except av.error.InvalidDataError:
                    frames = []  # a damaged picture: the rungs skip it, as players would
                for frame in frames:
                    stamp = stamps.pop(frame.pts, None) if frame.pts is not None else None
                    if stamp is None:
                        continue
                    self._encode(frame, stamp, encoders, lanes, out)
                if len(stamps) > 64:  # pictures the decoder never returned
                    for old in sorted(stamps)[:-16]:
                        del stamps[old]
            for name, entries in out.items():
                if entries:
                    self.emit(MEDIA, name, entries)
            now = self.clock()
            self.lag_s = now - arrived
            if encoders and pace.behind(now, self.lag_s):
                gone = encoders.pop(0)
                lanes.pop(gone.rung.name)
                self.dropped.append(gone.rung.name)
                self.emit(DROPPED, gone.rung.name, round(self.lag_s, 2))
                pace.dropped(now)  # let the lighter ladder catch up first
            if not encoders:
                break
        for enc in encoders:
            rest: list[Out] = []
            lanes[enc.rung.name].flush(rest)
            if rest:
                self.emit(MEDIA, enc.rung.name, rest)
        if not self._stopping.is_set():
            self.emit(DRAINED, "", None)

    def _encode(self, frame: Any, stamp: tuple[int, int, dict[str, Any] | None],
                encoders: list[_RungEncoder], lanes: dict[str, Interleaver], out: dict[str, list[Out]]) -> None:
        from av.video.frame import PictureType

        flags, seg, extra = stamp
        key = bool(flags & FLAG_KEY)
        pts = frame.pts
        for enc in encoders:
            if not enc.wants(pts, key):
                continue
            picture = enc.scale(frame)
            picture.pts = pts
            picture.time_base = CLOCK
            picture.pict_type = PictureType.I if key else PictureType.NONE
            for packet in enc.encode(picture):
                try:
                    payload = annexb_to_avcc(bytes(packet))
                except H264Error:
                    continue
                enc.frames += 1
                rung_flags = (flags & (FLAG_SEG_START | FLAG_PART_START)) | (FLAG_KEY if packet.is_keyframe else 0)
                lanes[enc.rung.name].add_video(Out(VIDEO, pts, pts, rung_flags, seg, payload, extra),
                                               out[enc.rung.name])
