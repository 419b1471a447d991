"""Pull sources: an RTSP/RTMP/HLS URL or a media file read with PyAV and published like an RTMP stream.

PyAV's demuxing blocks, so each source runs in a worker thread that hands access units to the
event loop (``call_soon_threadsafe``) and stops on an event, in the manner of aiortc's media player.
Packets are re-framed into the bus's model: H.264 as AVCC with 4-byte lengths (Annex B sources
such as MPEG-TS, HLS and RTSP are converted), AAC as raw frames (ADTS headers stripped). Reading is
paced to real time, so a file plays out as a live stream would.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from fractions import Fraction
from typing import Callable

import av

from mesh_codecs.aac import AacError, asc_from_adts, audio_config_from_asc, split_adts
from mesh_codecs.h264 import (H264Error, annexb_to_avcc, normalize_nal_length_size, parse_avcc,
                              video_config_from_annexb, video_config_from_avcc)
from mesh_codecs.media import AUDIO, CLOCK_HZ, VIDEO, AccessUnit, AudioConfig, VideoConfig

log = logging.getLogger("mesh.pull")

OPEN_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 10.0
CLOCK = Fraction(1, CLOCK_HZ)


class PullError(RuntimeError):
    """The source cannot be published; the message says why."""


class _VideoFramer:
    """H.264 packets from PyAV → (VideoConfig | None, AVCC payload)."""

    def __init__(self, extradata: bytes | None):
        self.config: VideoConfig | None = None
        self.annexb = True
        self.nal_length_size = 4
        if extradata and extradata[0] == 1:  # an avcC record (MP4, FLV sources)
            self.annexb = False
            self.nal_length_size = parse_avcc(extradata).nal_length_size
            self.config = video_config_from_avcc(extradata)
        elif extradata:
            self._try_annexb_config(extradata)

    def _try_annexb_config(self, data: bytes) -> None:
        try:
            self.config = video_config_from_annexb(data)
        except H264Error:
            pass

    def frame(self, data: bytes, key: bool) -> bytes:
        if not self.annexb:
            return normalize_nal_length_size(data, self.nal_length_size)
        if self.config is None and key:
            self._try_annexb_config(data)  # in-band SPS/PPS (MPEG-TS, RTSP without sprop)
        return annexb_to_avcc(data)


class _AudioFramer:
    """AAC packets from PyAV → raw frames; ADTS-framed sources give their config in-band."""

    def __init__(self, extradata: bytes | None):
        self.config: AudioConfig | None = None
        if extradata:
            self.config = audio_config_from_asc(extradata)

    def frames(self, data: bytes) -> list[bytes]:
        if len(data) >= 2 and data[0] == 0xFF and (data[1] & 0xF0) == 0xF0:
            parts = split_adts(data)
            if self.config is None and parts:
                self.config = audio_config_from_asc(asc_from_adts(parts[0][0]))
            return [payload for _, payload in parts]
        return [data]


class PullSource:
    """Reads one URL in a worker thread; ``on_video_config``/``on_audio_config``/``on_au``/``on_end``
    are called in the event loop, in order."""

    def __init__(self, url: str, *, on_video_config: Callable[[VideoConfig], None],
                 on_audio_config: Callable[[AudioConfig], None], on_au: Callable[[AccessUnit], None],
                 on_end: Callable[[str], None], realtime: bool = True):
        self.url = url
        self._callbacks = (on_video_config, on_audio_config, on_au)
        self._on_end = on_end
        self.realtime = realtime
        self._stop = threading.Event()
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name=f"pull-{url[:40]}", daemon=True)
        self.error: str | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    async def wait(self, timeout_s: float = 5.0) -> None:
        await asyncio.to_thread(self._thread.join, timeout_s)

    def _post(self, fn: Callable, *args: object) -> None:
        self._loop.call_soon_threadsafe(fn, *args)

    def _run(self) -> None:
        reason = "finished"
        try:
            self._read()
        except PullError as exc:
            self.error, reason = str(exc), "error"
        except av.FFmpegError as exc:
            self.error, reason = f"{type(exc).__name__}: {exc}", "error"
        except (H264Error, AacError) as exc:
            self.error, reason = f"bad codec data: {exc}", "error"
        except Exception as exc:  # a worker thread must always report back
            log.exception("pull %s failed", self.url)
            self.error, reason = f"{type(exc).__name__}: {exc}", "error"
        if self._stop.is_set() and reason == "finished":
            reason = "stopped"
        try:
            self._post(self._on_end, reason)
        except RuntimeError:
            pass  # the loop is gone (node stopping)

    def _read(self) -> None:
        options = {"rtsp_transport": "tcp"} if self.url.startswith("rtsp") else {}
        container = av.open(self.url, options=options, timeout=(OPEN_TIMEOUT_S, READ_TIMEOUT_S))
        try:
            video = container.streams.video[0] if container.streams.video else None
            audio = container.streams.audio[0] if container.streams.audio else None
            if video is not None and video.codec_context.name != "h264":
                raise PullError(f"video codec {video.codec_context.name} is not supported; mesh "
                                f"publishes H.264 sources")
            if audio is not None and audio.codec_context.name != "aac":
                log.warning("pull %s: audio codec %s is not supported; publishing video only",
                            self.url, audio.codec_context.name)
                audio = None
            if video is None and audio is None:
                raise PullError("the source has neither H.264 video nor AAC audio")
            self._pump(container, video, audio)
        finally:
            container.close()

    def _pump(self, container: av.container.InputContainer, video: av.stream.Stream | None,
              audio: av.stream.Stream | None) -> None:
        on_video_config, on_audio_config, on_au = self._callbacks
        vf = _VideoFramer(video.codec_context.extradata) if video is not None else None
        af = _AudioFramer(audio.codec_context.extradata) if audio is not None else None
        sent_video = sent_audio = None
        base: int | None = None
        wall0 = 0.0
        streams = [s for s in (video, audio) if s is not None]
        for packet in container.demux(streams):
            if self._stop.is_set():
                return
            if packet.dts is None or packet.size == 0:
                continue
            tb = packet.time_base
            dts = int(packet.dts * tb / CLOCK)
            pts = int(packet.pts * tb / CLOCK) if packet.pts is not None else dts
            if base is None:
                base, wall0 = dts - CLOCK_HZ, time.monotonic()  # a second of headroom for early audio
            dts, pts = dts - base, pts - base
            if self.realtime:
                lag = (dts - CLOCK_HZ) / CLOCK_HZ - (time.monotonic() - wall0)
                if lag > 0 and self._stop.wait(min(lag, 1.0)):
                    return
            data = bytes(packet)
            if packet.stream is video and vf is not None:
                payload = vf.frame(data, packet.is_keyframe)
                if vf.config is not None and vf.config is not sent_video:
                    sent_video = vf.config
                    self._post(on_video_config, vf.config)
                self._post(on_au, AccessUnit(VIDEO, pts, dts, packet.is_keyframe, payload))
            elif af is not None:
                frames = af.frames(data)
                if af.config is not None and af.config is not sent_audio:
                    sent_audio = af.config
                    self._post(on_audio_config, af.config)
                step = 1024 * CLOCK_HZ // af.config.sample_rate if af.config else 0
                for i, frame in enumerate(frames):
                    ts = dts + i * step
                    self._post(on_au, AccessUnit(AUDIO, ts, ts, True, frame))

