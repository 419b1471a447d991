"""The media model shared by ingest, the bus and the edges.

Timestamps everywhere on the bus are integers in a 90 kHz clock (MPEG-TS's own),
so an edge never rescales. Video payloads are AVCC (4-byte big-endian NAL
lengths); audio payloads are raw AAC frames. Codec parameters travel separately
as a :class:`VideoConfig` / :class:`AudioConfig`.
"""
from __future__ import annotations

from dataclasses import dataclass

CLOCK_HZ = 90_000

VIDEO = 0
AUDIO = 1
TRACK_NAMES = {VIDEO: "video", AUDIO: "audio"}


@dataclass(slots=True)
class AccessUnit:
    """One encoded video frame or audio frame."""

    track: int  # VIDEO or AUDIO
    pts: int  # 90 kHz
    dts: int  # 90 kHz
    key: bool
    data: bytes


@dataclass(frozen=True, slots=True)
class VideoConfig:
    """H.264 parameters: the AVCDecoderConfigurationRecord plus what it implies."""

    avcc: bytes  # AVCDecoderConfigurationRecord (ISO 14496-15), NAL length size 4
    width: int
    height: int
    codec_string: str  # RFC 6381, e.g. "avc1.64001f"
    codec: str = "h264"


@dataclass(frozen=True, slots=True)
class AudioConfig:
    """AAC parameters: the AudioSpecificConfig plus what it implies."""

    asc: bytes  # AudioSpecificConfig (ISO 14496-3)
    sample_rate: int
    channels: int
    codec_string: str  # RFC 6381, e.g. "mp4a.40.2"
    codec: str = "aac"


def ms_to_clock(ms: int) -> int:
    """RTMP/FLV milliseconds to the 90 kHz bus clock."""
    return ms * 90
