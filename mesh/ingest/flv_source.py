"""An RTMP publish as a source: FLV tag bodies in, the bus's media model out.

H.264 arrives as AVCC with the publisher's NAL length size (re-framed to 4 bytes when it differs);
its sequence header is the avcC record. AAC arrives as raw frames; its sequence header is the
AudioSpecificConfig. RTMP milliseconds become the 90 kHz bus clock. Anything else (another codec,
a malformed tag) ends this publish with a clear reason; other publishers are unaffected.

The RTMP server hands media over a read at a time (:meth:`FlvPublish.on_media`): the common tags
(an AVC picture, a raw AAC frame) are read from their first bytes in place, exactly as
:func:`mesh_codecs.flv.parse_video`/``parse_audio`` would read them; everything else goes through
those parsers. Payloads are cut as ``bytes`` slices (not memoryviews): cheaper to make, and not
tracked by the garbage collector while the bus's snapshot window holds them.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from mesh_codecs import flv
from mesh_codecs.aac import AacError, audio_config_from_asc
from mesh_codecs.h264 import H264Error, normalize_nal_length_size, parse_avcc, video_config_from_avcc
from mesh_codecs.media import AUDIO, VIDEO

from .rtmp_server import PublishAborted

if TYPE_CHECKING:
    from .live import LiveStream

log = logging.getLogger("mesh.ingest")

_AVC_NALU, _SOUND_AAC, _AAC_RAW = flv.AVC_NALU, flv.SOUND_AAC, flv.AAC_RAW
# Payloads below this size are sliced by copying: a bytes object is cheaper to make than a
# memoryview and, unlike one, is not tracked by the garbage collector while the bus's snapshot
# window holds it (every access unit of the last segments of every stream).
_COPY_BELOW = 16 << 10


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
            raise PublishAborted("fenced", self.live.fence_reason or (
                f"stream {self.live.stream_id} was taken over by another origin; "
                f"this publisher is no longer the source"))

    def on_media(self, batch: list[tuple[int, int, bytes]]) -> None:
        """A read's worth of media, ``(type_id, timestamp_ms, payload)`` each (9 video, 8 audio):
        the fast paths of on_video/on_audio inlined, anything else handed to them."""
        live = self.live
        if live.fenced:
            self._check_owner()
        push = live.push_media
        plain_avcc = self._nal_length_size == 4
        for type_id, timestamp_ms, payload in batch:
            if type_id == 9:
                b0 = payload[0] if payload else 0
                if (b0 == 0x17 or b0 == 0x27) and len(payload) >= 5 and payload[1] == _AVC_NALU and plain_avcc:
                    cts = (payload[2] << 16) | (payload[3] << 8) | payload[4]
                    if cts & 0x800000:
                        cts -= 0x1000000
                    dts = timestamp_ms * 90
                    push(VIDEO, dts + cts * 90, dts, b0 == 0x17,
                         payload[5:] if len(payload) < _COPY_BELOW else memoryview(payload)[5:])
                else:
                    self.on_video(timestamp_ms, payload)
                    plain_avcc = self._nal_length_size == 4  # a sequence header may change it
            elif len(payload) >= 2 and payload[0] >> 4 == _SOUND_AAC and payload[1] == _AAC_RAW:
                ts = timestamp_ms * 90
                push(AUDIO, ts, ts, True, payload[2:] if len(payload) < _COPY_BELOW else memoryview(payload)[2:])
            else:
                self.on_audio(timestamp_ms, payload)

    def cut_due_ms(self) -> int | None:
        """When a keyframe would close the open segment, in RTMP milliseconds (see
        :meth:`mesh.ingest.segmenter.Segmenter.cut_due_ms`): the RTMP server's cue to wake for one."""
        return self.live.segmenter.cut_due_ms()

    def part_due_ms(self) -> int | None:
        """When the frame that closes the open LL part should come, in RTMP milliseconds (see
        :meth:`mesh.ingest.segmenter.Segmenter.part_due_ms`): the RTMP server reads us then.
        None while no edge follows the stream (none of its renditions' topics is subscribed on
        the bus): nobody waits for its parts, so it is read at the server's max interval, and
        its segment-closing keyframes still as they arrive."""
        live = self.live
        if live.stream_id not in live.bus.followed_streams:
            return None
        return live.segmenter.part_due_ms()

    def on_video(self, timestamp_ms: int, payload: bytes) -> None:
        live = self.live
        if live.fenced:
            self._check_owner()
        # Fast path: an AVC picture (key or inter frame, packet type 1). Exactly what
        # flv.parse_video would return for it, without building an FlvVideo.
        b0 = payload[0] if payload else 0
        if (b0 == 0x17 or b0 == 0x27) and len(payload) >= 5 and payload[1] == _AVC_NALU:
            cts = (payload[2] << 16) | (payload[3] << 8) | payload[4]
            if cts & 0x800000:
                cts -= 0x1000000
            data = payload[5:] if len(payload) < _COPY_BELOW else memoryview(payload)[5:]
            if self._nal_length_size != 4:
                data = normalize_nal_length_size(data, self._nal_length_size)
            live.push_media(VIDEO, (timestamp_ms + cts) * 90, timestamp_ms * 90, b0 == 0x17, data)
            return
        try:
            tag = flv.parse_video(payload)
        except flv.FlvError as exc:
            raise PublishAborted("flv", f"bad video tag: {exc}") from None
        if tag.packet_type == flv.AVC_NALU:
            data = tag.data if self._nal_length_size == 4 else \
                normalize_nal_length_size(tag.data, self._nal_length_size)
            live.push_media(VIDEO, (timestamp_ms + tag.cts_ms) * 90, timestamp_ms * 90, tag.key, data)
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
        live = self.live
        if live.fenced:
            self._check_owner()
        # Fast path: a raw AAC frame (sound format 10, packet type 1), as flv.parse_audio reads it.
        if len(payload) >= 2 and payload[0] >> 4 == _SOUND_AAC and payload[1] == _AAC_RAW:
            ts = timestamp_ms * 90
            data = payload[2:] if len(payload) < _COPY_BELOW else memoryview(payload)[2:]
            live.push_media(AUDIO, ts, ts, True, data)
            return
        try:
            tag = flv.parse_audio(payload)
        except flv.FlvError as exc:
            raise PublishAborted("flv", f"bad audio tag: {exc}") from None
        if tag.packet_type == flv.AAC_RAW:
            ts = timestamp_ms * 90
            live.push_media(AUDIO, ts, ts, True, tag.data)
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
