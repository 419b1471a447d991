"""FLV tag bodies as RTMP carries them (video = message type 9, audio = type 8).

Pure and I/O-free (imported as ``mesh_codecs.flv``; never imports ``mesh``). The parsers
return small dataclasses whose ``data`` is a zero-copy ``memoryview`` of the input, so
a caller that keeps it must keep (or copy) the input too.

Video: ``[frame type:4 | codec id:4]`` then, for AVC (codec 7), ``[packet type:8]``
``[composition time offset: signed 24]`` and the payload (packet type 0: the
AVCDecoderConfigurationRecord, 1: length-prefixed NAL units, 2: end of sequence).
Enhanced RTMP sets the top bit of the first byte and names the codec by FourCC
(``hvc1``, ``av01``, ``vp09``); we recognise it and raise :class:`FlvUnsupportedCodec`.

Audio: ``[sound format:4 | rate:2 | size:1 | type:1]`` then, for AAC (format 10),
``[packet type:8]`` (0: AudioSpecificConfig, 1: a raw AAC frame). Other formats are
reported with ``packet_type = -1`` so the caller can refuse them by name.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

# video
FRAME_KEY = 1
FRAME_INTER = 2
FRAME_DISPOSABLE = 3
FRAME_GENERATED_KEY = 4
FRAME_COMMAND = 5  # "video info/command frame": one byte, no picture
CODEC_AVC = 7
AVC_SEQUENCE_HEADER = 0
AVC_NALU = 1
AVC_END_OF_SEQUENCE = 2
VIDEO_CODEC_NAMES = {2: "Sorenson H.263", 3: "screen video", 4: "On2 VP6", 5: "On2 VP6 alpha",
                     6: "screen video 2", 7: "H.264/AVC", 12: "HEVC (non-standard codec id 12)"}

# audio
SOUND_AAC = 10
SOUND_EX_HEADER = 9  # enhanced RTMP v2 audio (FourCC follows)
AAC_SEQUENCE_HEADER = 0
AAC_RAW = 1
SOUND_FORMAT_NAMES = {0: "linear PCM (platform endian)", 1: "ADPCM", 2: "MP3",
                      3: "linear PCM (little endian)",
                      4: "Nellymoser 16 kHz mono", 5: "Nellymoser 8 kHz mono", 6: "Nellymoser",
                      7: "G.711 A-law", 8: "G.711 mu-law", 10: "AAC", 11: "Speex", 14: "MP3 8 kHz",
                      15: "device-specific"}


class FlvError(ValueError):
    """A tag body is truncated or invalid."""


class FlvUnsupportedCodec(FlvError):
    """A well-formed tag in a codec this code does not parse (enhanced RTMP FourCC)."""

    def __init__(self, message: str, fourcc: str = "") -> None:
        super().__init__(message)
        self.fourcc = fourcc


@dataclass(frozen=True, slots=True)
class FlvVideo:
    frame_type: int  # FRAME_KEY, FRAME_INTER, ...
    codec_id: int
    packet_type: int  # AVC_*; -1 for non-AVC codecs and command frames
    cts_ms: int  # composition time offset (pts - dts), may be negative
    data: memoryview

    @property
    def key(self) -> bool:
        return self.frame_type == FRAME_KEY or self.frame_type == FRAME_GENERATED_KEY


@dataclass(frozen=True, slots=True)
class FlvAudio:
    sound_format: int  # SOUND_AAC, ...
    packet_type: int  # AAC_*; -1 for other formats
    data: memoryview
    rate_index: int = 3  # 0: 5.5 kHz, 1: 11 kHz, 2: 22 kHz, 3: 44 kHz (AAC always says 3)
    sample_16bit: bool = True
    stereo: bool = True


def parse_video(body: bytes | bytearray | memoryview) -> FlvVideo:
    """Parse one FLV video tag body. Raises :class:`FlvError` when it is malformed."""
    view = memoryview(body)
    n = len(view)
    if n < 1:
        raise FlvError("empty video tag")
    b0 = view[0]
    if b0 & 0x80:
        fourcc = bytes(view[1:5]).decode("latin-1") if n >= 5 else "?"
        raise FlvUnsupportedCodec(f"enhanced RTMP video with FourCC {fourcc!r} is not supported; "
                                  "publish H.264 (AVC)", fourcc)
    frame_type = b0 >> 4
    codec_id = b0 & 0x0F
    if frame_type < 1 or frame_type > 5:
        raise FlvError(f"invalid video frame type {frame_type}")
    if codec_id != CODEC_AVC or frame_type == FRAME_COMMAND:
        return FlvVideo(frame_type, codec_id, -1, 0, view[1:])
    if n < 5:
        raise FlvError(f"AVC video tag of {n} bytes is shorter than its 5-byte header")
    packet_type = view[1]
    if packet_type > AVC_END_OF_SEQUENCE:
        raise FlvError(f"invalid AVC packet type {packet_type}")
    cts = (view[2] << 16) | (view[3] << 8) | view[4]
    if cts & 0x800000:
        cts -= 0x1000000
    if packet_type == AVC_SEQUENCE_HEADER and n < 5 + 7:  # a record is at least 7 bytes
        raise FlvError("AVC sequence header too short to hold an AVCDecoderConfigurationRecord")
    return FlvVideo(frame_type, codec_id, packet_type, cts, view[5:])


def parse_audio(body: bytes | bytearray | memoryview) -> FlvAudio:
    """Parse one FLV audio tag body. Raises :class:`FlvError` when it is malformed."""
    view = memoryview(body)
    n = len(view)
    if n < 1:
        raise FlvError("empty audio tag")
    b0 = view[0]
    fmt = b0 >> 4
    rate, size16, stereo = (b0 >> 2) & 3, bool(b0 & 2), bool(b0 & 1)
    if fmt == SOUND_EX_HEADER:
        fourcc = bytes(view[1:5]).decode("latin-1") if n >= 5 else "?"
        raise FlvUnsupportedCodec(f"enhanced RTMP audio with FourCC {fourcc!r} is not supported; "
                                  "publish AAC", fourcc)
    if fmt != SOUND_AAC:
        return FlvAudio(fmt, -1, view[1:], rate, size16, stereo)
    if n < 2:
        raise FlvError("AAC audio tag shorter than its 2-byte header")
    packet_type = view[1]
    if packet_type > AAC_RAW:
        raise FlvError(f"invalid AAC packet type {packet_type}")
    if packet_type == AAC_SEQUENCE_HEADER and n < 4:  # an AudioSpecificConfig is at least 2 bytes
        raise FlvError("AAC sequence header too short to hold an AudioSpecificConfig")
    return FlvAudio(fmt, packet_type, view[2:], rate, size16, stereo)


@dataclass(frozen=True, slots=True)
class FlvTag:
    """One tag of FLV file framing (as inside an RTMP aggregate message)."""

    tag_type: int  # 8 audio, 9 video, 18 script data
    timestamp_ms: int  # 32-bit (24 bits + 8 extension bits)
    data: memoryview


def iter_tags(data: bytes | bytearray | memoryview) -> Iterator[FlvTag]:
    """Split back-to-back FLV tags ``[type:8 size:24 ts:24 ts_ext:8 stream:24 body prev_size:32]``.

    RTMP aggregate messages (type 22) carry exactly this; raises :class:`FlvError` if a
    header or body runs past the end.
    """
    view = memoryview(data)
    pos, end = 0, len(view)
    while pos < end:
        if pos + 11 > end:
            raise FlvError(f"FLV tag header truncated at offset {pos}")
        size = int.from_bytes(view[pos + 1:pos + 4], "big")
        ts = int.from_bytes(view[pos + 4:pos + 7], "big") | (view[pos + 7] << 24)
        body_end = pos + 11 + size
        if body_end + 4 > end:
            raise FlvError(f"FLV tag of {size} bytes at offset {pos} runs past the end")
        yield FlvTag(view[pos], ts, view[pos + 11:body_end])
        pos = body_end + 4


def video_tag(key: bool, packet_type: int, cts_ms: int, data: bytes, codec_id: int = CODEC_AVC) -> bytes:
    """Build an FLV video tag body (AVC when ``codec_id`` is 7)."""
    head = bytes((((FRAME_KEY if key else FRAME_INTER) << 4) | codec_id,))
    if codec_id != CODEC_AVC:
        return head + data
    if not -0x800000 <= cts_ms <= 0x7FFFFF:
        raise ValueError(f"composition time offset {cts_ms} does not fit in 24 signed bits")
    return head + bytes((packet_type,)) + (cts_ms & 0xFFFFFF).to_bytes(3, "big") + data


def audio_tag(packet_type: int, data: bytes, sound_format: int = SOUND_AAC, rate_index: int = 3,
              sample_16bit: bool = True, stereo: bool = True) -> bytes:
    """Build an FLV audio tag body (AAC by default; AAC always signals 44 kHz/16-bit/stereo)."""
    head = bytes(((sound_format << 4) | (rate_index << 2) | (int(sample_16bit) << 1) | int(stereo),))
    if sound_format != SOUND_AAC:
        return head + data
    return head + bytes((packet_type,)) + data


def describe_video_codec(codec_id: int) -> str:
    return VIDEO_CODEC_NAMES.get(codec_id, f"unknown video codec {codec_id}")


def describe_sound_format(sound_format: int) -> str:
    return SOUND_FORMAT_NAMES.get(sound_format, f"unknown sound format {sound_format}")
