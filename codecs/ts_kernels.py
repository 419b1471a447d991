"""Numba kernels behind :class:`mesh_codecs.ts.TsPacketiser`.

One call to :func:`packetise` builds a whole HLS segment from flat arrays: the
access units' payloads concatenated into one uint8 buffer plus an int64 table
with one row per access unit. It runs two passes -- the first sizes every PES
exactly (walking the AVCC length fields, validating them), the second writes
the 188-byte packets straight into one preallocated output, so each payload
byte is copied once. No Python runs per TS packet.

Kernels are compiled with :mod:`mesh_codecs.jit`'s decorators (``nogil=True``,
``cache=True``), so a node start loads the machine code instead of compiling it.
"""
from __future__ import annotations

import numpy as np

from .jit import inline, jit

TS_SIZE = 188
TS_PAYLOAD = 184

# The access-unit table's rows and tracks (``meta``): see :mod:`mesh_codecs.media`.
from .media import COL_DTS, COL_KEY, COL_LEN, COL_PTS, COL_TRACK, META_COLS, TRACK_AUDIO, TRACK_VIDEO  # noqa: F401

# Error codes returned by :func:`packetise` (with the index of the access unit).
OK = 0
ERR_AVCC = 1  # a NAL length runs past the end of the access unit
ERR_ADTS_SIZE = 2  # an AAC frame larger than an ADTS frame can hold
ERR_TRACK = 3  # an unknown track, or a track with no config in the PMT

MASK33 = (1 << 33) - 1
ADTS_MAX_PAYLOAD = (1 << 13) - 1 - 7

# Adaptation-field flags (ISO/IEC 13818-1 2.4.3.5).
AF_DISCONTINUITY = 0x80
AF_RANDOM_ACCESS = 0x40
AF_PCR = 0x10

_NAL_IDR = 5
_NAL_SPS = 7
_NAL_AUD = 9

# Per access unit, from pass 1.
_V_HAS_AUD = 1  # the AU already starts with an access unit delimiter
_V_PSETS = 2  # SPS/PPS must be inserted


@inline
def _begin_packet(out, pos, pid, pusi, cc, flags, pcr_base, has_pcr, left):
    """Write a TS header (+ adaptation field) at ``out[pos]``.

    ``left`` is how many PES bytes remain; when fewer than the packet can hold,
    the adaptation field is padded with 0xFF so the PES ends the packet
    exactly. Returns the payload position and how many payload bytes to write.
    """
    af_min = 0
    if flags != 0 or has_pcr:
        af_min = 8 if has_pcr else 2
    room = TS_PAYLOAD - af_min
    af_len = af_min
    if left < room:
        af_len = TS_PAYLOAD - left
        room = left
    out[pos] = 0x47
    out[pos + 1] = (0x40 if pusi else 0) | (pid >> 8)
    out[pos + 2] = pid & 0xFF
    out[pos + 3] = (0x30 if af_len > 0 else 0x10) | cc
    p = pos + 4
    if af_len > 0:
        out[p] = af_len - 1
        if af_len > 1:
            out[p + 1] = flags | (AF_PCR if has_pcr else 0)
            q = p + 2
            if has_pcr:
                # 33-bit base, 6 reserved bits, 9-bit extension (always 0: PCR = base * 300).
                out[q] = (pcr_base >> 25) & 0xFF
                out[q + 1] = (pcr_base >> 17) & 0xFF
                out[q + 2] = (pcr_base >> 9) & 0xFF
                out[q + 3] = (pcr_base >> 1) & 0xFF
                out[q + 4] = ((pcr_base & 1) << 7) | 0x7E
                out[q + 5] = 0
                q += 6
            for k in range(p + af_len - q):  # stuffing
                out[np.uint64(q + k)] = 0xFF
        p += af_len
    return p, room


@inline
def _emit(out, pos, room, left, cc, pid, src, start, n):
    """Copy ``src[start:start+n]`` into the PES being written, opening packets as they fill."""
    while n > 0:
        if room == 0:
            if left >= TS_PAYLOAD:
                # The common case, a full continuation packet: 4 header bytes, no adaptation field.
                out[pos] = 0x47
                out[pos + 1] = pid >> 8
                out[pos + 2] = pid & 0xFF
                out[pos + 3] = 0x10 | cc
                pos += 4
                room = TS_PAYLOAD
            else:
                pos, room = _begin_packet(out, pos, pid, False, cc, 0, 0, False, left)
            cc = (cc + 1) & 15
        c = n if n < room else room
        # Unsigned indexes skip Numba's negative-index wraparound, so LLVM vectorises the copy
        # (a slice assignment here costs several times more per packet).
        for k in range(c):
            out[np.uint64(pos + k)] = src[np.uint64(start + k)]
        pos += c
        start += c
        n -= c
        room -= c
        left -= c
    return pos, room, left, cc


@inline
def _put_timestamp(buf, at, prefix, t):
    """A 33-bit PTS/DTS in the 5-byte marker-bit layout of the PES header."""
    buf[at] = (prefix << 4) | (((t >> 30) & 7) << 1) | 1
    buf[at + 1] = (t >> 22) & 0xFF
    buf[at + 2] = (((t >> 15) & 0x7F) << 1) | 1
    buf[at + 3] = (t >> 7) & 0xFF
    buf[at + 4] = ((t & 0x7F) << 1) | 1


@inline
def _pes_header(hdr, stream_id, pts, dts, es_len, bounded):
    """Fill ``hdr`` with a PES header; returns its length (14 or 19)."""
    with_dts = dts != pts
    hdr_data = 10 if with_dts else 5
    length = 0
    if bounded:
        length = 3 + hdr_data + es_len
    hdr[0] = 0
    hdr[1] = 0
    hdr[2] = 1
    hdr[3] = stream_id
    hdr[4] = (length >> 8) & 0xFF
    hdr[5] = length & 0xFF
    hdr[6] = 0x84  # '10', not scrambled, data_alignment_indicator: every PES starts an AU
    hdr[7] = 0xC0 if with_dts else 0x80
    hdr[8] = hdr_data
    _put_timestamp(hdr, 9, 3 if with_dts else 2, pts)
    if with_dts:
        _put_timestamp(hdr, 14, 1, dts)
    return 9 + hdr_data


@inline
def _be32(buf, p):
    """A big-endian 32-bit NAL length as int64 (uint8 arithmetic would not stay integral)."""
    hi = (np.int64(buf[p]) << 24) | (np.int64(buf[p + 1]) << 16)
    return hi | (np.int64(buf[p + 2]) << 8) | np.int64(buf[p + 3])


@inline
def _packets_for(pes_len, af_first):
    """TS packets needed for a PES whose first packet carries ``af_first`` AF bytes."""
    cap = TS_PAYLOAD - af_first
    if pes_len <= cap:
        return 1
    return 1 + (pes_len - cap + TS_PAYLOAD - 1) // TS_PAYLOAD


@inline
def _scan_video(payload, off, length, key, have_psets):
    """Walk one AVCC access unit: (Annex B ES size without prefix, flags, ok)."""
    pos = off
    end = off + length
    es = 0
    first = True
    has_aud = False
    has_idr = False
    has_sps = False
    while pos < end:
        if pos + 4 > end:
            return 0, 0, False
        size = _be32(payload, pos)
        pos += 4
        if size > end - pos:
            return 0, 0, False
        if size > 0:
            t = np.int64(payload[pos]) & 0x1F
            if first and t == _NAL_AUD:
                has_aud = True
            first = False
            if t == _NAL_IDR:
                has_idr = True
            elif t == _NAL_SPS:
                has_sps = True
            es += 4 + size
        pos += size
    flags = 0
    if has_aud:
        flags |= _V_HAS_AUD
    if (key or has_idr) and not has_sps and have_psets:
        flags |= _V_PSETS
    return es, flags, True


@jit
def packetise(payload, meta, psets, adts, psi, aud, video_pid, audio_pid, pcr_pid, pcr_delay):
    """Build one segment. Returns ``(out, error, index)``.

    On success ``error`` is ``OK``, ``out`` holds exactly the segment and
    ``index`` its length; otherwise ``index`` is the offending access unit.

    ``payload``: all access units' bytes; ``meta``: int64 (n, 5) rows of
    track, pts, dts, key, length; ``psets``: SPS+PPS in Annex B (may be empty);
    ``adts``: 7-byte ADTS header template; ``psi``: the PAT+PMT packets;
    ``aud``: the Annex B access unit delimiter; pids < 0 mean "no such track".
    """
    n = meta.shape[0]
    es_len = np.empty(n, np.int64)
    vflags = np.zeros(n, np.int64)
    offsets = np.empty(n, np.int64)
    hdr = np.empty(19, np.uint8)
    adts_hdr = adts.copy()  # patched per frame; the caller's template stays shared
    sc = np.zeros(4, np.uint8)
    sc[3] = 1
    have_psets = psets.shape[0] > 0

    # Pass 1: validate, size every PES, count packets.
    total = psi.shape[0]
    off = 0
    seen_v = False
    seen_a = False
    for i in range(n):
        track = meta[i, COL_TRACK]
        length = meta[i, COL_LEN]
        key = meta[i, COL_KEY] != 0
        offsets[i] = off
        pts = meta[i, COL_PTS] & MASK33
        dts = meta[i, COL_DTS] & MASK33
        hdr_len = 19 if dts != pts else 14
        if track == TRACK_VIDEO and video_pid >= 0:
            es, fl, ok = _scan_video(payload, off, length, key, have_psets)
            if not ok:
                return np.empty(0, np.uint8), ERR_AVCC, i
            if fl & _V_HAS_AUD == 0:
                es += aud.shape[0]
            if fl & _V_PSETS:
                es += psets.shape[0]
            vflags[i] = fl
            first = not seen_v
            seen_v = True
            pid = video_pid
        elif track == TRACK_AUDIO and audio_pid >= 0:
            if length > ADTS_MAX_PAYLOAD:
                return np.empty(0, np.uint8), ERR_ADTS_SIZE, i
            es = 7 + length
            first = not seen_a
            seen_a = True
            pid = audio_pid
        else:
            return np.empty(0, np.uint8), ERR_TRACK, i
        es_len[i] = es
        af = 0
        if pid == pcr_pid:
            af = 8
        elif first or key:
            af = 2
        total += TS_SIZE * _packets_for(hdr_len + es, af)
        off += length

    # Pass 2: write.
    out = np.empty(total, np.uint8)
    out[: psi.shape[0]] = psi
    pos = psi.shape[0]
    cc_v = 0
    cc_a = 0
    seen_v = False
    seen_a = False
    for i in range(n):
        track = meta[i, COL_TRACK]
        length = meta[i, COL_LEN]
        key = meta[i, COL_KEY] != 0
        pts = meta[i, COL_PTS] & MASK33
        dts = meta[i, COL_DTS] & MASK33
        off = offsets[i]
        es = es_len[i]
        if track == TRACK_VIDEO:
            pid = video_pid
            cc = cc_v
            first = not seen_v
            seen_v = True
            h = _pes_header(hdr, 0xE0, pts, dts, es, False)
        else:
            pid = audio_pid
            cc = cc_a
            first = not seen_a
            seen_a = True
            h = _pes_header(hdr, 0xC0, pts, dts, es, True)
        flags = 0
        if first:
            flags |= AF_DISCONTINUITY
        if key:
            flags |= AF_RANDOM_ACCESS
        has_pcr = pid == pcr_pid
        pcr_base = dts - pcr_delay
        if pcr_base < 0:
            pcr_base = 0
        left = h + es
        pos, room = _begin_packet(out, pos, pid, True, cc, flags, pcr_base, has_pcr, left)
        cc = (cc + 1) & 15
        pos, room, left, cc = _emit(out, pos, room, left, cc, pid, hdr, 0, h)
        if track == TRACK_VIDEO:
            fl = vflags[i]
            if fl & _V_HAS_AUD == 0:
                pos, room, left, cc = _emit(out, pos, room, left, cc, pid, aud, 0, aud.shape[0])
                if fl & _V_PSETS:
                    pos, room, left, cc = _emit(out, pos, room, left, cc, pid, psets, 0, psets.shape[0])
            p = off
            end = off + length
            nal_index = 0
            while p < end:
                size = _be32(payload, p)
                p += 4
                if size > 0:
                    pos, room, left, cc = _emit(out, pos, room, left, cc, pid, sc, 0, 4)
                    pos, room, left, cc = _emit(out, pos, room, left, cc, pid, payload, p, size)
                    if nal_index == 0 and fl & _V_HAS_AUD and fl & _V_PSETS:
                        pos, room, left, cc = _emit(out, pos, room, left, cc, pid, psets, 0, psets.shape[0])
                    nal_index += 1
                p += size
            cc_v = cc
        else:
            frame_len = 7 + length
            adts_hdr[3] = (adts_hdr[3] & 0xFC) | (frame_len >> 11)
            adts_hdr[4] = (frame_len >> 3) & 0xFF
            adts_hdr[5] = ((frame_len & 7) << 5) | 0x1F
            pos, room, left, cc = _emit(out, pos, room, left, cc, pid, adts_hdr, 0, 7)
            pos, room, left, cc = _emit(out, pos, room, left, cc, pid, payload, off, length)
            cc_a = cc
    return out, OK, pos
