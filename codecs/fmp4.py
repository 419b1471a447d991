"""Fragmented MP4 (CMAF-style) packetiser for LL-HLS parts and segments (ISO/IEC 14496-12/-14/-15).

It takes what the MPEG-TS packetiser takes -- a :class:`VideoConfig` and/or :class:`AudioConfig`
and access units with 90 kHz timestamps, video as AVCC with 4-byte NAL lengths, audio as raw AAC
frames -- and returns

* :attr:`Fmp4Packetiser.init`: the initialisation segment, ``ftyp`` + ``moov`` (``mvhd``; per
  track ``tkhd``, ``mdia`` with an ``avc1``/``avcC`` or ``mp4a``/``esds`` sample entry and empty
  sample tables; ``mvex``/``trex``);
* :meth:`Fmp4Packetiser.fragment`: one ``moof`` + ``mdat`` for one LL-HLS part;
* :meth:`Fmp4Packetiser.segment`: a segment, which is exactly its parts' fragments concatenated.

Decisions, and why:

* **Everything is a function of the inputs.** No wall-clock time is written (creation and
  modification times are 0, durations 0 as for a live stream), the ``mfhd`` sequence number is the
  caller's, and each ``tfdt`` comes from the DTS of the fragment's first access unit of that
  track. Two edges given the same access units therefore write the same bytes, whenever they joined.
* **Fixed track IDs**: video 1, audio 2 (also when only one track exists), so renditions and
  audio-only/video-only streams keep one numbering.
* **Timescales**: video 90 000 (the bus clock, so video timestamps are copied, not rescaled);
  audio the sample rate of the :class:`AudioConfig`. An audio ``tfdt`` is the first audio DTS
  converted with round-half-up integer arithmetic (``(dts * rate + 45000) // 90000``), so a DTS
  that was itself rounded to 90 kHz maps back to its exact sample count. Every AAC sample lasts
  1024 samples of the core decoder (2048 at the output rate when SBR is signalled explicitly).
  Where the bus DTS of audio carries jitter (RTMP's milliseconds), each fragment's ``tfdt``
  follows the DTS, so fragment joins may be off by under a millisecond; the bus is the truth.
* **Video sample durations** are the DTS differences of consecutive video access units; the
  last one's is ``next_dts - dts`` where the caller passes ``next_dts``, the DTS of the first video
  access unit after this part (known at the origin when the part closes), else the previous
  sample's duration, else ``default_video_duration_90k``. :meth:`segment` passes each part the
  first video DTS of the parts after it, so a segment equals its parts only when the caller
  passed the same ``next_dts`` to each part.
* **Composition offsets** (``pts - dts``) are written as signed (``trun`` version 1); there is no
  edit list, so a player's presentation time is the bus PTS.
* **Samples are copied as they are**: bus video is already the AVCC framing ``avc1`` stores,
  SPS/PPS live in ``avcC`` (in-band copies, if a publisher sends them, are kept, as ``avc1``
  allows). One ``traf`` per track with samples in the part, video first; in the ``mdat`` all video
  samples, then all audio samples; ``default-base-is-moof`` makes each fragment self-contained.
* Sample flags: a keyframe is a sync sample that depends on no other; other video samples depend
  on others and are non-sync; audio samples are all sync (``tfhd`` defaults).

The boxes and sample tables are written by :mod:`mesh_codecs.fmp4_kernels` (Numba), one call per
fragment or segment; the samples follow their boxes through one ``bytes.join``, the only copy of
the payload (see that module for why). :class:`Fmp4Packetiser` keeps no state between calls,
releases the GIL in its kernels and may be called from several threads.
"""
from __future__ import annotations

import bisect
import struct
from collections.abc import Sequence

import numpy as np

from . import fmp4_kernels as _k
from .aac import AacError, parse_asc
from .h264 import H264Error, parse_avcc
from .media import CLOCK_HZ, VIDEO, AccessUnit, AudioConfig, VideoConfig, warm_sample

VIDEO_TRACK_ID = 1
AUDIO_TRACK_ID = 2
VIDEO_TIMESCALE = CLOCK_HZ
AAC_FRAME_SAMPLES = 1024
MOVIE_TIMESCALE = 1000
DEFAULT_VIDEO_DURATION_90K = 3000  # one frame at 30 fps: a lone sample with nothing after it
_U32 = (1 << 32) - 1
_UNITY_MATRIX = struct.pack(">9I", 0x00010000, 0, 0, 0, 0x00010000, 0, 0, 0, 0x40000000)
_LANGUAGE_UND = 0x55C4  # ISO-639-2/T "und", 5 bits per letter


class Fmp4Error(ValueError):
    """The configs or access units cannot be packetised (malformed, unconfigured or out of range)."""


# --------------------------------------------------------------------------- boxes


def box(kind: bytes, *payload: bytes) -> bytes:
    body = b"".join(payload)
    return struct.pack(">I4s", 8 + len(body), kind) + body


def full_box(kind: bytes, version: int, flags: int, *payload: bytes) -> bytes:
    return box(kind, struct.pack(">I", (version << 24) | flags), *payload)


def _descriptor(tag: int, body: bytes) -> bytes:
    """An MPEG-4 descriptor (14496-1 8.3.3) with the 4-byte size form most muxers write."""
    n = len(body)
    if n >= 1 << 28:
        raise Fmp4Error(f"descriptor of {n} bytes is too large")
    size = bytes([0x80 | (n >> 21) & 0x7F, 0x80 | (n >> 14) & 0x7F, 0x80 | (n >> 7) & 0x7F, n & 0x7F])
    return bytes([tag]) + size + body


def _tkhd(track_id: int, volume: int, width: int, height: int) -> bytes:
    return full_box(b"tkhd", 0, 0x000003,  # enabled, in movie
                    struct.pack(">IIIII", 0, 0, track_id, 0, 0), bytes(8),
                    struct.pack(">hhhH", 0, 0, volume, 0), _UNITY_MATRIX,
                    struct.pack(">II", width << 16, height << 16))


def _mdia(timescale: int, handler: bytes, name: bytes, media_header: bytes, entry: bytes) -> bytes:
    mdhd = full_box(b"mdhd", 0, 0, struct.pack(">IIIIHH", 0, 0, timescale, 0, _LANGUAGE_UND, 0))
    hdlr = full_box(b"hdlr", 0, 0, struct.pack(">I4s", 0, handler), bytes(12), name + b"\x00")
    dinf = box(b"dinf", full_box(b"dref", 0, 0, struct.pack(">I", 1), full_box(b"url ", 0, 1)))
    stbl = box(b"stbl", full_box(b"stsd", 0, 0, struct.pack(">I", 1), entry),
               full_box(b"stts", 0, 0, bytes(4)), full_box(b"stsc", 0, 0, bytes(4)),
               full_box(b"stsz", 0, 0, bytes(8)), full_box(b"stco", 0, 0, bytes(4)))
    return box(b"mdia", mdhd, hdlr, box(b"minf", media_header, dinf, stbl))


def _video_trak(cfg: VideoConfig) -> bytes:
    if not (0 < cfg.width < 1 << 16 and 0 < cfg.height < 1 << 16):
        raise Fmp4Error(f"video config: {cfg.width}x{cfg.height} does not fit a sample entry")
    avc1 = box(b"avc1", bytes(6), struct.pack(">H", 1),  # SampleEntry: data_reference_index 1
               bytes(16), struct.pack(">HHIIIH", cfg.width, cfg.height, 0x00480000, 0x00480000, 0, 1),
               bytes(32), struct.pack(">Hh", 0x0018, -1), box(b"avcC", cfg.avcc))
    vmhd = full_box(b"vmhd", 0, 1, bytes(8))
    mdia = _mdia(VIDEO_TIMESCALE, b"vide", b"VideoHandler", vmhd, avc1)
    return box(b"trak", _tkhd(VIDEO_TRACK_ID, 0, cfg.width, cfg.height), mdia)


def _audio_trak(cfg: AudioConfig) -> bytes:
    rate_field = cfg.sample_rate << 16 if cfg.sample_rate < 1 << 16 else 0  # 16.16 fixed point
    es = (struct.pack(">HB", 0, 0)  # ES_ID (0 in a file), no dependence/URL/OCR
          + _descriptor(0x04, bytes([0x40, 0x15]) + bytes(11)  # MPEG-4 audio, AudioStream
                        + _descriptor(0x05, cfg.asc))
          + _descriptor(0x06, b"\x02"))  # SLConfig: predefined for MP4
    esds = full_box(b"esds", 0, 0, _descriptor(0x03, es))
    mp4a = box(b"mp4a", bytes(6), struct.pack(">H", 1), bytes(8),
               struct.pack(">HHHHI", cfg.channels, 16, 0, 0, rate_field), esds)
    smhd = full_box(b"smhd", 0, 0, bytes(4))
    mdia = _mdia(cfg.sample_rate, b"soun", b"SoundHandler", smhd, mp4a)
    return box(b"trak", _tkhd(AUDIO_TRACK_ID, 0x0100, 0, 0), mdia)


def init_segment(video: VideoConfig | None, audio: AudioConfig | None) -> bytes:
    """``ftyp`` + ``moov`` for the tracks given (at least one)."""
    if video is None and audio is None:
        raise Fmp4Error("an init segment needs a video or an audio config")
    brands = [b"iso6", b"mp41"] + ([b"cmfc"] if (video is None) != (audio is None) else [])
    ftyp = box(b"ftyp", b"iso6", struct.pack(">I", 0), *brands)
    mvhd = full_box(b"mvhd", 0, 0, struct.pack(">IIIIIH", 0, 0, MOVIE_TIMESCALE, 0, 0x00010000, 0x0100),
                    bytes(10), _UNITY_MATRIX, bytes(24), struct.pack(">I", AUDIO_TRACK_ID + 1))
    traks, trexs = [], []
    for cfg, track_id, build in ((video, VIDEO_TRACK_ID, _video_trak), (audio, AUDIO_TRACK_ID, _audio_trak)):
        if cfg is not None:
            traks.append(build(cfg))
            trexs.append(full_box(b"trex", 0, 0, struct.pack(">IIIII", track_id, 1, 0, 0, 0)))
    return ftyp + box(b"moov", mvhd, *traks, box(b"mvex", *trexs))


# --------------------------------------------------------------------------- packetiser

_META_ROW = struct.Struct("=5q")  # track, pts, dts, key, length: one row of the kernel's table
_ERRORS = {
    _k.ERR_AVCC: "video access unit #{i} is not AVCC with 4-byte NAL lengths",
    _k.ERR_TRACK: "access unit #{i} belongs to a track that is unknown or has no config in this packetiser",
    _k.ERR_DTS_ORDER: "access unit #{i} has a DTS below the previous one of its track",
    _k.ERR_RANGE: "access unit #{i} has a DTS, DTS step or PTS-DTS offset outside what fMP4 fields hold",
    _k.ERR_NEXT_DTS: "the next video DTS (next_dts, or the next part's first) is below the part's last "
                     "video DTS, or more than 2**32 after it",
    _k.ERR_TOO_BIG: "the access units add up to more than a 2 GB fragment",
    _k.ERR_EMPTY: "a fragment needs at least one access unit",
}


class Fmp4Packetiser:
    """Turns the access units of one stream rendition into an init segment and fMP4 fragments."""

    __slots__ = (
        "_audio_duration",
        "_audio_id",
        "_default_duration",
        "_video_id",
        "audio_timescale",
        "init",
        "video_timescale",
    )

    def __init__(self, video: VideoConfig | None, audio: AudioConfig | None, *,
                 default_video_duration_90k: int = DEFAULT_VIDEO_DURATION_90K) -> None:
        if not 0 < default_video_duration_90k <= _U32:
            raise Fmp4Error(f"default_video_duration_90k={default_video_duration_90k} must be 1..2**32-1")
        self._default_duration = default_video_duration_90k
        self._video_id = self._audio_id = 0
        self._audio_duration = AAC_FRAME_SAMPLES
        self.video_timescale = VIDEO_TIMESCALE
        self.audio_timescale = 0
        if video is not None:
            try:
                avc = parse_avcc(video.avcc)
            except H264Error as exc:
                raise Fmp4Error(f"video config: {exc}") from exc
            if avc.nal_length_size != 4:
                raise Fmp4Error(f"video config: avcC declares {avc.nal_length_size}-byte NAL lengths; "
                                "the bus carries 4-byte lengths (see h264.video_config_from_avcc)")
            self._video_id = VIDEO_TRACK_ID
        if audio is not None:
            try:
                asc = parse_asc(audio.asc)
            except AacError as exc:
                raise Fmp4Error(f"audio config: {exc}") from exc
            if not 1 <= asc.core_object_type <= 4:  # the AAC cores whose frames hold 1024 samples
                raise Fmp4Error(f"audio config: audio object type {asc.core_object_type} is not supported; "
                                "AAC Main/LC/SSR/LTP, with or without SBR/PS, is")
            samples, rest = divmod(AAC_FRAME_SAMPLES * audio.sample_rate, asc.sample_rate)
            if rest or audio.sample_rate > 384_000:
                raise Fmp4Error(f"audio config: sample rate {audio.sample_rate} Hz does not fit the "
                                f"AudioSpecificConfig's {asc.sample_rate} Hz core")
            self._audio_id = AUDIO_TRACK_ID
            self._audio_duration = samples
            self.audio_timescale = audio.sample_rate
        self.init: bytes = init_segment(video, audio)

    def fragment(self, aus: Sequence[AccessUnit], sequence: int, next_dts: int | None = None) -> bytes:
        """One ``moof`` + ``mdat`` holding ``aus`` (a part), numbered ``sequence`` (0..2**32-1).

        ``next_dts``: the 90 kHz DTS of the first video access unit after this part, which
        sets the duration of the part's last video sample; ``None`` when not known.
        """
        return self._fragments([aus], sequence, next_dts, False)

    def segment(self, parts: Sequence[Sequence[AccessUnit]], first_sequence: int,
                next_dts: int | None = None) -> bytes:
        """A segment: the fragments of ``parts`` numbered from ``first_sequence``, concatenated.

        Part ``j`` gets, as :meth:`fragment` would, the sequence number ``first_sequence + j``
        and as its ``next_dts`` the first video DTS in the parts after it, else ``next_dts`` (the
        first video DTS after the segment). Built with one call of each kernel for all parts.
        """
        return self._fragments(parts, first_sequence, next_dts, True)

    def _fragments(self, parts: Sequence[Sequence[AccessUnit]], first_sequence: int, next_dts: int | None,
                   name_parts: bool) -> bytes:
        nparts = len(parts)
        if not (0 <= first_sequence and first_sequence + max(nparts, 1) - 1 <= _U32):
            raise Fmp4Error(f"sequence numbers {first_sequence}.. are outside 0..2**32-1")
        if next_dts is not None and not 0 <= next_dts < _k.DTS_LIMIT:
            raise Fmp4Error(f"next_dts {next_dts} is outside 0..2**44")
        bounds = [0]
        for j, part in enumerate(parts):
            if not part:
                message = _ERRORS[_k.ERR_EMPTY]
                raise Fmp4Error(f"part #{j}: {message}" if name_parts else message)
            bounds.append(bounds[-1] + len(part))
        if nparts == 0:
            return b""
        pack = _META_ROW.pack
        try:
            # struct rows joined into one buffer: the cheapest way found to tabulate ~150 AUs.
            rows = b"".join([pack(au.track, au.pts, au.dts, au.key, len(au.data))
                             for part in parts for au in part])
        except struct.error as exc:
            raise Fmp4Error(f"access unit field out of range: {exc}") from exc
        meta = np.frombuffer(rows, np.int64).reshape(bounds[-1], _k.META_COLS)
        starts = np.array(bounds, np.int64)
        boxes, box_bounds, err, at = _k.fragment_boxes(
            meta, starts, first_sequence, -1 if next_dts is None else next_dts, self._video_id, self._audio_id,
            self.audio_timescale, self._audio_duration, self._default_duration)
        if err:
            self._raise(err, at, bounds, name_parts)
        # Each part's boxes, then its video samples, then its audio samples: one copy of each byte.
        view = memoryview(boxes)
        ends = box_bounds.tolist()
        pieces = []
        both = self._video_id and self._audio_id
        for j, part in enumerate(parts):
            pieces.append(view[ends[j] : ends[j + 1]])
            if both:
                pieces += [au.data for au in part if au.track == VIDEO]
                pieces += [au.data for au in part if au.track != VIDEO]
            else:
                pieces += [au.data for au in part]
        data = b"".join(pieces)
        if self._video_id:
            bad = _k.check_video_samples(np.frombuffer(data, np.uint8), meta, starts, box_bounds)
            if bad >= 0:
                self._raise(_k.ERR_AVCC, bad, bounds, name_parts)
        return data

    @staticmethod
    def _raise(err: int, at: int, bounds: list[int], name_parts: bool) -> None:
        part = max(0, bisect.bisect_right(bounds, at) - 1)
        message = _ERRORS[err].format(i=at - bounds[part])
        raise Fmp4Error(f"part #{part}: {message}" if name_parts else message)


def next_video_dts(aus: Sequence[AccessUnit]) -> int | None:
    """The DTS of the first video access unit in ``aus`` (what a part's ``next_dts`` is)."""
    return next((au.dts for au in aus if au.track == VIDEO), None)


def warm_up() -> None:
    """Load (or, on a cold cache, compile) the kernel; call once at node start."""
    video, audio, aus = warm_sample()
    Fmp4Packetiser(video, audio).fragment(aus, 1, 6000)
    Fmp4Packetiser(None, audio).fragment(aus[1:2], 1)


__all__ = [
    "AUDIO_TRACK_ID",
    "VIDEO_TRACK_ID",
    "Fmp4Error",
    "Fmp4Packetiser",
    "init_segment",
    "next_video_dts",
    "warm_up",
]
