"""MPEG-TS packetiser for HLS segments (ISO/IEC 13818-1).

Every segment is self-contained: PAT and PMT first, then one PES per access
unit in the order given -- video as Annex B with an access unit delimiter and,
before each keyframe, the SPS/PPS; audio as ADTS frames.

Decisions, and why:

* **Continuity counters restart at 0 in every segment**, and the first packet
  of each PID in a segment (PAT and PMT included) carries an adaptation field
  with ``discontinuity_indicator`` set. A segment's bytes then depend only on
  its own access units and the stream configuration -- not on how many packets
  earlier segments had -- so every edge produces byte-identical segments no
  matter when it joined the stream, and a round-robin load balancer or shared
  cache in front of the edges is safe. The indicator tells demuxers that the
  counter jump at a segment boundary is intended, not packet loss, and keeps
  a same-value counter (the previous segment ended on 0) from being taken for
  a duplicate packet. (FFmpeg's HLS muxer instead keeps one MPEG-TS muxer for
  the whole stream, so its counters run on across segments.)
* **PCR on every PES start of the PCR PID** (the video PID, or the audio PID
  for audio-only streams), equal to ``DTS - PCR_DELAY_90K`` in 90 kHz units,
  clamped at 0, so it is deterministic and never later than the DTS. The 100 ms
  lead gives decoders a little buffering slack relative to audio interleaved
  slightly out of DTS order; the clamp means a stream starting at DTS 0 does not
  begin with a PCR just below 2**33.
* **random_access_indicator** on the first packet of every PES whose access
  unit is flagged key (for audio, ingest flags every AAC frame key).
* **SPS/PPS are inserted** after the delimiter of every access unit that is
  flagged key or holds an IDR slice, unless it already carries an SPS; an AUD
  is inserted at the start of every video access unit that lacks one.
* **One PES per AAC frame**, with PES_packet_length set; video PES use
  length 0 (unbounded), which 13818-1 allows for video in a transport stream.
* PTS/DTS are taken modulo 2**33; DTS is written only when it differs.

The per-byte work runs in :mod:`mesh_codecs.ts_kernels` (Numba); this module
builds the constant tables once per configuration and flattens the access
units into arrays. :meth:`TsPacketiser.segment` keeps no state between calls,
releases the GIL while packetising, and may be called from several threads.
"""
from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np

from . import ts_kernels as _k
from .aac import AacError, adts_fields, build_adts_header, parse_asc
from .h264 import H264Error, join_annexb, parse_avcc
from .media import AccessUnit, AudioConfig, VideoConfig, warm_sample

TS_PACKET_SIZE = 188
PROGRAM_NUMBER = 1
TRANSPORT_STREAM_ID = 1
PMT_PID = 0x1000
VIDEO_PID = 0x100
AUDIO_PID = 0x101
NULL_PID = 0x1FFF
STREAM_TYPE_H264 = 0x1B
STREAM_TYPE_AAC_ADTS = 0x0F
PCR_DELAY_90K = 9_000  # 100 ms

ACCESS_UNIT_DELIMITER = b"\x00\x00\x00\x01\x09\xf0"  # primary_pic_type 7: any slice type


class TsError(ValueError):
    """The access units cannot be packetised (malformed payload, unknown or unconfigured track)."""


# --------------------------------------------------------------------------- PSI


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else crc << 1
        table.append(crc & 0xFFFFFFFF)
    return table


_CRC_TABLE = _crc_table()


def crc32_mpeg2(data: bytes) -> int:
    """CRC-32/MPEG-2 (poly 0x04C11DB7, init 0xFFFFFFFF, not reflected, no final XOR)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _CRC_TABLE[(crc >> 24) ^ byte]
    return crc


def _section(table_id: int, id_field: int, body: bytes) -> bytes:
    """A long-form PSI section (version 0, current, single section) with its CRC."""
    length = 5 + len(body) + 4  # from after section_length through the CRC
    head = bytes([table_id, 0xB0 | (length >> 8), length & 0xFF]) + id_field.to_bytes(2, "big")
    section = head + bytes([0xC1, 0x00, 0x00]) + body
    return section + crc32_mpeg2(section).to_bytes(4, "big")


def pat_section() -> bytes:
    """The program association section: program 1 at the PMT PID."""
    body = PROGRAM_NUMBER.to_bytes(2, "big") + (0xE000 | PMT_PID).to_bytes(2, "big")
    return _section(0x00, TRANSPORT_STREAM_ID, body)


def pmt_section(video: bool, audio: bool) -> bytes:
    """The program map section for the tracks present (no descriptors)."""
    pcr_pid = VIDEO_PID if video else AUDIO_PID if audio else NULL_PID
    body = bytearray((0xE000 | pcr_pid).to_bytes(2, "big") + b"\xf0\x00")
    streams = ((video, STREAM_TYPE_H264, VIDEO_PID), (audio, STREAM_TYPE_AAC_ADTS, AUDIO_PID))
    for present, stream_type, pid in streams:
        if present:
            body += bytes([stream_type]) + (0xE000 | pid).to_bytes(2, "big") + b"\xf0\x00"
    return _section(0x02, PROGRAM_NUMBER, bytes(body))


def _psi_packet(pid: int, section: bytes) -> bytes:
    """One TS packet holding a section, CC 0, with the discontinuity indicator set."""
    head = bytes([0x47, 0x40 | (pid >> 8), pid & 0xFF, 0x30, 0x01, 0x80, 0x00])  # AF len 1, pointer 0
    packet = head + section
    if len(packet) > TS_PACKET_SIZE:
        raise AssertionError("PSI section larger than one TS packet")
    return packet + b"\xff" * (TS_PACKET_SIZE - len(packet))


# --------------------------------------------------------------------------- packetiser

_EMPTY = np.frombuffer(b"", np.uint8)
_AUD = np.frombuffer(ACCESS_UNIT_DELIMITER, np.uint8)
_META_ROW = struct.Struct("=5q")  # track, pts, dts, key, length: one row of the kernel's table
_ERRORS = {
    _k.ERR_AVCC: "video access unit #{i} is not AVCC with 4-byte NAL lengths",
    _k.ERR_ADTS_SIZE: "audio access unit #{i} is larger than one ADTS frame can carry (8184 bytes)",
    _k.ERR_TRACK: "access unit #{i} belongs to a track that is unknown or has no config in this packetiser",
}


class TsPacketiser:
    """Turns the access units of one stream rendition into HLS MPEG-TS segments."""

    __slots__ = ("_psi", "_psi_arr", "_psets", "_adts", "_video_pid", "_audio_pid", "_pcr_pid")

    def __init__(self, video: VideoConfig | None, audio: AudioConfig | None) -> None:
        self._psi = _psi_packet(0x0000, pat_section()) + _psi_packet(
            PMT_PID, pmt_section(video is not None, audio is not None)
        )
        self._psi_arr = np.frombuffer(self._psi, np.uint8)
        self._psets = _EMPTY
        self._adts = np.frombuffer(b"\xff\xf1\x00\x00\x00\x00\xfc", np.uint8)
        self._video_pid = VIDEO_PID if video is not None else -1
        self._audio_pid = AUDIO_PID if audio is not None else -1
        self._pcr_pid = VIDEO_PID if video is not None else AUDIO_PID if audio is not None else -1
        if video is not None:
            try:
                cfg = parse_avcc(video.avcc)
            except H264Error as exc:
                raise TsError(f"video config: {exc}") from exc
            self._psets = np.frombuffer(join_annexb(cfg.sps + cfg.pps), np.uint8)
        if audio is not None:
            try:
                asc = parse_asc(audio.asc)
                adts_fields(asc)
            except AacError as exc:
                raise TsError(f"audio config: {exc}") from exc
            self._adts = np.frombuffer(build_adts_header(asc, 0), np.uint8)

    def segment(self, aus: Sequence[AccessUnit]) -> bytes:
        """One HLS segment: PAT + PMT first, then the access units in the given order."""
        if not aus:
            return self._psi
        payload = np.frombuffer(b"".join([au.data for au in aus]), np.uint8)
        pack = _META_ROW.pack
        try:
            # struct rows joined into one buffer: the cheapest way found to tabulate ~150 AUs.
            rows = b"".join([pack(au.track, au.pts, au.dts, au.key, len(au.data)) for au in aus])
        except struct.error as exc:
            raise TsError(f"access unit field out of range: {exc}") from exc
        meta = np.frombuffer(rows, np.int64).reshape(len(aus), _k.META_COLS)
        out, err, at = _k.packetise(
            payload,
            meta,
            self._psets,
            self._adts,
            self._psi_arr,
            _AUD,
            self._video_pid,
            self._audio_pid,
            self._pcr_pid,
            PCR_DELAY_90K,
        )
        if err:
            raise TsError(_ERRORS[err].format(i=at))
        return out.tobytes()


def warm_up() -> None:
    """Load (or, on a cold cache, compile) the kernels; call once at node start.

    Runs a tiny segment through exactly the code path of :meth:`segment`, so
    the first real segment does not pay for compilation.
    """
    video, audio, aus = warm_sample()
    TsPacketiser(video, audio).segment(aus)
    TsPacketiser(None, audio).segment(aus[1:2])


__all__ = [
    "TsError",
    "TsPacketiser",
    "crc32_mpeg2",
    "pat_section",
    "pmt_section",
    "warm_up",
]
