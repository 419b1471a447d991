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

# The access-unit table the packetising kernels read (``meta``: one int64 row per unit), shared
# by :mod:`mesh_codecs.ts_kernels` and :mod:`mesh_codecs.fmp4_kernels`.
COL_TRACK = 0
COL_PTS = 1
COL_DTS = 2
COL_KEY = 3
COL_LEN = 4
META_COLS = 5
TRACK_VIDEO = VIDEO
TRACK_AUDIO = AUDIO
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


def _field(params: dict, name: str, kind: type, lo: int | None = None, hi: int | None = None):
    value = params.get(name)
    if type(value) is not kind:
        raise ValueError(f"codec parameter {name!r} missing or not {kind.__name__}")
    if lo is not None and not lo <= value <= (hi if hi is not None else value):
        raise ValueError(f"codec parameter {name!r}={value} out of range")
    return value


def video_to_dict(cfg: VideoConfig) -> dict:
    return {"codec": cfg.codec, "avcc": cfg.avcc, "width": cfg.width, "height": cfg.height,
            "codec_string": cfg.codec_string}


def video_from_dict(params: object) -> VideoConfig:
    """Rebuild a :class:`VideoConfig` from bus parameters; ``ValueError`` on anything malformed."""
    if not isinstance(params, dict) or params.get("codec") != "h264":
        raise ValueError("video parameters are not an h264 map")
    return VideoConfig(_field(params, "avcc", bytes), _field(params, "width", int, 1, 16384),
                       _field(params, "height", int, 1, 16384), _field(params, "codec_string", str))


def audio_to_dict(cfg: AudioConfig) -> dict:
    return {"codec": cfg.codec, "asc": cfg.asc, "sample_rate": cfg.sample_rate,
            "channels": cfg.channels, "codec_string": cfg.codec_string}


def audio_from_dict(params: object) -> AudioConfig:
    if not isinstance(params, dict) or params.get("codec") != "aac":
        raise ValueError("audio parameters are not an aac map")
    return AudioConfig(_field(params, "asc", bytes), _field(params, "sample_rate", int, 1, 384000),
                       _field(params, "channels", int, 1, 8), _field(params, "codec_string", str))


# A real 640x360 High-profile x264 SPS/PPS and AAC-LC config: tiny media that exercises a
# packetiser's whole path, so a node compiles (or loads) its kernels at start, not on a viewer.
_WARM_AVCC = bytes.fromhex(
    "0164001effe100196764001eacd940a02ff9610000030001000003003c0f162d9601000468efbcb0"
)


def warm_sample() -> tuple[VideoConfig, AudioConfig, list[AccessUnit]]:
    """(video config, audio config, three access units: video key, audio, video) for warm-ups."""
    video = VideoConfig(avcc=_WARM_AVCC, width=640, height=360, codec_string="avc1.64001e")
    audio = AudioConfig(asc=b"\x11\x90", sample_rate=48000, channels=2, codec_string="mp4a.40.2")
    aus = [
        AccessUnit(VIDEO, 3000, 0, True, b"\x00\x00\x00\x02\x65\x88"),
        AccessUnit(AUDIO, 0, 0, True, b"\x21\x00"),
        AccessUnit(VIDEO, 6000, 3000, False, b"\x00\x00\x00\x02\x41\x9a"),
    ]
    return video, audio, aus
