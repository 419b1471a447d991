"""An RTMP publish as a source: FLV tag bodies in, the bus's media model out.

H.264 arrives as AVCC with the publisher's NAL length size (re-framed to 4 bytes when it differs);
its sequence header is the avcC record. AAC arrives as raw frames; its sequence header is the
AudioSpecificConfig. RTMP milliseconds become the 90 kHz bus clock. Anything else (another codec,
a malformed tag) ends this publish with a clear reason; other publishers are unaffected.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from mesh_codecs import flv
from mesh_codecs.aac import AacError, audio_config_from_asc
from mesh_codecs.h264 import H264Error, normalize_nal_length_size, parse_avcc, video_config_from_avcc
from mesh_codecs.media import AUDIO, VIDEO, AccessUnit

from .rtmp_server import PublishAborted

if TYPE_CHECKING:
    from .live import LiveStream

log = logging.getLogger("mesh.ingest")


class FlvPublish:
    """The :class:`~mesh.ingest.rtmp_server.PublishSink` of one accepted RTMP publish."""

    def __init__(self, live: "LiveStream", on_end: Callable[["LiveStream", str], Awaitable[None]]):
        self.live = live
        self._on_end = on_end
        self._nal_length_size = 4
        self.metadata: dict[str, Any] = {}
        self._warned_audio = False

    def _check_owner(self) -> None:
        if self.live.fenced:
            raise PublishAborted("fenced", f"stream {self.live.stream_id} was taken over by another "
                                           f"origin; this publisher is no longer the source")

    def on_video(self, timestamp_ms: int, payload: bytes) -> None:
        if self.live.fenced:
            self._check_owner()
        try:
            tag = flv.parse_video(payload)
        except flv.FlvError as exc:
            raise PublishAborted("flv", f"bad video tag: {exc}") from None
        if tag.packet_type == flv.AVC_NALU:
            data = tag.data if self._nal_length_size == 4 else \
                normalize_nal_length_size(tag.data, self._nal_length_size)
            self.live.push(AccessUnit(VIDEO, (timestamp_ms + tag.cts_ms) * 90, timestamp_ms * 90,
                                      tag.key, data))
        elif tag.packet_type == flv.AVC_SEQUENCE_HEADER:
            record = bytes(tag.data)
            try:
                self._nal_length_size = parse_avcc(record).nal_length_size
                self.live.set_video(video_config_from_avcc(record))
            except H264Error as exc:
                raise PublishAborted("avc", f"bad AVC sequence header: {exc}") from None
        elif tag.codec_id != flv.CODEC_AVC and tag.frame_type != flv.FRAME_COMMAND:
            raise PublishAborted("codec", f"video codec {flv.describe_video_codec(tag.codec_id)} is "
                                          f"not supported; publish H.264 (e.g. -c:v libx264)")

    def on_audio(self, timestamp_ms: int, payload: bytes) -> None:
        if self.live.fenced:
            self._check_owner()
        try:
            tag = flv.parse_audio(payload)
        except flv.FlvError as exc:
            raise PublishAborted("flv", f"bad audio tag: {exc}") from None
        if tag.packet_type == flv.AAC_RAW:
            ts = timestamp_ms * 90
            self.live.push(AccessUnit(AUDIO, ts, ts, True, tag.data))
        elif tag.packet_type == flv.AAC_SEQUENCE_HEADER:
            try:
                self.live.set_audio(audio_config_from_asc(bytes(tag.data)))
            except AacError as exc:
                raise PublishAborted("aac", f"bad AAC sequence header: {exc}") from None
        elif not self._warned_audio:
            # HLS players need AAC; other audio is dropped, the video goes on.
            self._warned_audio = True
            log.warning("stream %s: audio format %s is not supported (publish AAC); dropping audio",
                        self.live.stream_id, flv.describe_sound_format(tag.sound_format))

    def on_metadata(self, values: dict[str, Any]) -> None:
        self.metadata = dict(values)

    async def on_unpublish(self, reason: str) -> None:
        await self._on_end(self.live, reason)
