"""`mesh publish`: a test publisher for demos and tests.

By default it generates a moving test pattern with a tone (FFmpeg's ``testsrc2`` and ``sine``
through PyAV's lavfi input), encodes H.264 + AAC, and pushes FLV over RTMP in real time. Given a
file or URL it re-publishes that instead (copying H.264/AAC, transcoding anything else).
A status line shows time, frame rate and bitrate while it runs.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable

import av

PROGRESS_INTERVAL_S = 0.5


@dataclass
class PublishOptions:
    url: str
    source: str = ""  # "" = test pattern
    size: tuple[int, int] = (640, 360)
    fps: int = 30
    bitrate_kbps: int = 1500
    audio_kbps: int = 128
    gop_s: float = 2.0
    duration_s: float = 0.0  # 0 = until interrupted (or the end of the source)
    loop: bool = False
    realtime: bool = True


class Progress:
    def __init__(self, out=sys.stderr, enabled: bool = True):
        self.out, self.enabled = out, enabled
        self.start = time.monotonic()
        self.frames = 0
        self.bytes = 0
        self._last = 0.0
        self._mark = (self.start, 0, 0)

    def count(self, video_frame: bool, size: int) -> None:
        self.frames += video_frame
        self.bytes += size
        now = time.monotonic()
        if self.enabled and now - self._last >= PROGRESS_INTERVAL_S:
            t0, f0, b0 = self._mark
            dt = max(now - t0, 1e-6)
            elapsed = int(now - self.start)
            self.out.write(f"\r  {elapsed // 3600:02d}:{elapsed // 60 % 60:02d}:{elapsed % 60:02d}  "
                           f"{(self.frames - f0) / dt:5.1f} fps  {(self.bytes - b0) * 8 / dt / 1000:6.0f} kbps"
                           f"  {self.frames} frames ")
            self.out.flush()
            self._last = now
            self._mark = (now, self.frames, self.bytes)

    def done(self) -> None:
        if self.enabled:
            self.out.write("\n")
            self.out.flush()


def _pace(realtime: bool) -> Callable[[float], None]:
    start = time.monotonic()

    def wait(media_s: float) -> None:
        if realtime:
            delay = media_s - (time.monotonic() - start)
            if delay > 0:
                time.sleep(delay)
    return wait


def publish(opts: PublishOptions, progress: Progress | None = None) -> None:
    """Run until the duration, the end of the source, or KeyboardInterrupt."""
    progress = progress or Progress()
    out = av.open(opts.url, "w", format="flv")
    try:
        if opts.source:
            _republish(opts, out, progress)
        else:
            _generate(opts, out, progress)
    finally:
        progress.done()
        out.close()


def _generate(opts: PublishOptions, out: av.container.OutputContainer, progress: Progress) -> None:
    w, h = opts.size
    vstream = out.add_stream("libx264", rate=opts.fps)
    vstream.width, vstream.height, vstream.pix_fmt = w, h, "yuv420p"
    vstream.bit_rate = opts.bitrate_kbps * 1000
    gop = max(1, round(opts.gop_s * opts.fps))
    vstream.codec_context.gop_size = gop
    vstream.codec_context.options = {"preset": "veryfast", "tune": "zerolatency",
                                     "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0"}
    astream = out.add_stream("aac", rate=48000)
    astream.bit_rate = opts.audio_kbps * 1000
    astream.layout = "stereo"
    video_in = av.open(f"testsrc2=size={w}x{h}:rate={opts.fps}", format="lavfi")
    audio_in = av.open("sine=frequency=440:sample_rate=48000:beep_factor=4", format="lavfi")
    resampler = av.AudioResampler(format="fltp", layout="stereo", rate=48000)
    wait = _pace(opts.realtime)
    audio_frames = audio_in.decode(audio=0)
    audio_pts = 0
    try:
        for i, frame in enumerate(video_in.decode(video=0)):
            t = i / opts.fps
            if opts.duration_s and t >= opts.duration_s:
                break
            frame.pts, frame.time_base = i, Fraction(1, opts.fps)
            wait(t)
            for packet in vstream.encode(frame):
                out.mux(packet)
                progress.count(True, packet.size)
            while audio_pts < (i + 1) * 48000 / opts.fps:  # keep audio level with video
                for chunk in resampler.resample(next(audio_frames)):
                    chunk.pts, chunk.time_base = audio_pts, Fraction(1, 48000)
                    audio_pts += chunk.samples
                    for packet in astream.encode(chunk):
                        out.mux(packet)
                        progress.count(False, packet.size)
        for stream in (vstream, astream):
            for packet in stream.encode(None):
                out.mux(packet)
    finally:
        video_in.close()
        audio_in.close()


def _republish(opts: PublishOptions, out: av.container.OutputContainer, progress: Progress) -> None:
    offset_s = 0.0  # each loop continues the timeline where the last one ended
    wait = _pace(opts.realtime)
    while True:
        src = av.open(opts.source)
        try:
            streams = [s for s in (src.streams.video[:1] + src.streams.audio[:1])]
            if not streams:
                raise SystemExit(f"{opts.source} has no audio or video stream")
            copyable = all(s.codec_context.name in ("h264", "aac") for s in streams)
            if not copyable:
                raise SystemExit(f"{opts.source}: only H.264/AAC sources can be re-published as-is "
                                 f"(found {', '.join(s.codec_context.name for s in streams)}); "
                                 f"transcode it first, e.g. ffmpeg -i IN -c:v libx264 -c:a aac OUT.mp4")
            mapping = {s.index: out.add_stream_from_template(s) for s in streams} \
                if not out.streams else {s.index: out.streams[i] for i, s in enumerate(streams)}
            first = None
            last = 0.0
            for packet in src.demux(streams):
                if packet.dts is None:
                    continue
                tb = packet.time_base
                t = float(packet.dts * tb)
                first = t if first is None else first
                media_t = offset_s + t - first
                if opts.duration_s and media_t >= opts.duration_s:
                    return
                wait(media_t)
                shift = round((offset_s - first) / tb)
                packet.dts += shift
                if packet.pts is not None:
                    packet.pts += shift
                last = max(last, media_t)
                packet.stream = mapping[packet.stream.index]
                out.mux(packet)
                progress.count(packet.stream.type == "video", packet.size)
        finally:
            src.close()
        if not opts.loop or first is None:
            return
        offset_s = last + 0.05
