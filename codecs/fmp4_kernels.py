"""Numba kernels behind :class:`mesh_codecs.fmp4.Fmp4Packetiser`.

One call to :func:`fragment_boxes` writes every box of every part of a segment (or of one part)
-- ``moof`` with its ``trun`` sample tables, and the ``mdat`` header -- from an int64 table with
one row per access unit (the same table the MPEG-TS kernel takes) and the rows where each part
starts: pass 1 validates every row (track, DTS order, 32-bit ranges) and sizes every fragment
exactly, pass 2 writes. The caller then lays out each part's boxes followed by its samples with
one ``bytes.join`` -- the single copy of every payload byte -- and :func:`check_video_samples`
walks the NAL length fields of the video samples in place.

Why the samples are not copied here: bus video is already AVCC with 4-byte NAL lengths, the
framing ISO/IEC 14496-15 stores in an ``avc1`` sample, and AAC frames are stored raw, so there
is nothing to convert. Copying them in a kernel needs them joined into one input buffer first and
the kernel's output turned into ``bytes`` after: three copies of every byte where ``join`` makes
one.

Box layout (ISO/IEC 14496-12), sizes in bytes::

    moof 8                         traf (video) 8          traf (audio) 8
      mfhd 16                        tfhd 16                 tfhd 24 (default duration, flags)
      traf (video), traf (audio)     tfdt 20 (version 1)     tfdt 20 (version 1)
    mdat 8 + samples                 trun 20 + 16 / sample   trun 20 + 4 / sample

Compiled with :mod:`mesh_codecs.jit`'s decorators (``nogil=True``, ``cache=True``).
"""
from __future__ import annotations

import numpy as np

from .jit import inline, jit

# The access-unit table's rows and tracks (``meta``): see :mod:`mesh_codecs.media`.
from .media import COL_DTS, COL_KEY, COL_LEN, COL_PTS, COL_TRACK, META_COLS, TRACK_AUDIO, TRACK_VIDEO  # noqa: F401

# Error codes returned by :func:`fragment` (with the index of the access unit).
OK = 0
ERR_AVCC = 1  # a NAL length runs past the end of the access unit
ERR_TRACK = 2  # an unknown track, or a track this packetiser has no config for
ERR_DTS_ORDER = 3  # a DTS below the previous one of the same track
ERR_RANGE = 4  # a DTS, duration or composition offset that does not fit the box fields
ERR_NEXT_DTS = 5  # next_dts is below the last video DTS
ERR_TOO_BIG = 6  # the fragment would not fit 32-bit box sizes and data offsets
ERR_EMPTY = 7  # a part with no access units

DTS_LIMIT = 1 << 44  # 6 years of 90 kHz ticks; keeps DTS * audio rate inside int64
U32 = (1 << 32) - 1
I32_MIN = -(1 << 31)
I32_MAX = (1 << 31) - 1
HALF_TICK = 45_000  # 90 kHz -> audio rate rounds to nearest
CLOCK_HZ = 90_000

# Sample flags (ISO/IEC 14496-12 8.8.3.1): sample_depends_on 2 (an I-frame) and sync, or
# sample_depends_on 1 and sample_is_non_sync_sample.
FLAGS_SYNC = 0x02000000
FLAGS_NON_SYNC = 0x01010000

TFHD_BASE_IS_MOOF = 0x020000
TFHD_DEFAULT_DURATION = 0x000008
TFHD_DEFAULT_FLAGS = 0x000020
TRUN_VIDEO = 0x000F01  # data offset, duration, size, flags, composition offset
TRUN_AUDIO = 0x000201  # data offset, size

_MOOF = 0x6D6F6F66
_MFHD = 0x6D666864
_TRAF = 0x74726166
_TFHD = 0x74666864
_TFDT = 0x74666474
_TRUN = 0x7472756E
_MDAT = 0x6D646174

MFHD_SIZE = 16
TFHD_SIZE = 16
TFHD_AUDIO_SIZE = 24
TFDT_SIZE = 20
TRUN_HEAD = 20
VIDEO_ROW = 16
AUDIO_ROW = 4


@inline
def _put32(out, p, v):
    out[p] = (v >> 24) & 0xFF
    out[p + 1] = (v >> 16) & 0xFF
    out[p + 2] = (v >> 8) & 0xFF
    out[p + 3] = v & 0xFF


@inline
def _box(out, p, size, kind):
    _put32(out, p, size)
    _put32(out, p + 4, kind)
    return p + 8


@inline
def _full_box(out, p, size, kind, version, flags):
    p = _box(out, p, size, kind)
    _put32(out, p, (version << 24) | flags)
    return p + 4


@inline
def _be32(buf, p):
    """A big-endian 32-bit NAL length as int64 (uint8 arithmetic would not stay integral)."""
    hi = (np.int64(buf[p]) << 24) | (np.int64(buf[p + 1]) << 16)
    return hi | (np.int64(buf[p + 2]) << 8) | np.int64(buf[p + 3])


@inline
def _is_avcc(payload, off, length):
    """True when the 4-byte length fields tile ``payload[off:off+length]`` exactly."""
    pos = off
    end = off + length
    while pos < end:
        if pos + 4 > end:
            return False
        size = _be32(payload, pos)
        pos += 4
        if size > end - pos:
            return False
        pos += size
    return True


@inline
def _tfdt(out, p, base):
    p = _full_box(out, p, TFDT_SIZE, _TFDT, 1, 0)
    _put32(out, p, base >> 32)
    _put32(out, p + 4, base & U32)
    return p + 8


@inline
def _part_sizes(meta, lo, hi, next_dts, video_id, audio_id):
    """Validate rows ``lo:hi`` (one part); returns (error, index, video count, audio count,
    video bytes, audio bytes)."""
    nv = 0
    na = 0
    vbytes = 0
    abytes = 0
    last_v = 0
    last_a = 0
    for i in range(lo, hi):
        track = meta[i, COL_TRACK]
        length = meta[i, COL_LEN]
        dts = meta[i, COL_DTS]
        if dts < 0 or dts >= DTS_LIMIT:
            return ERR_RANGE, i, 0, 0, 0, 0
        if track == TRACK_VIDEO and video_id > 0:
            if nv > 0 and dts < last_v:
                return ERR_DTS_ORDER, i, 0, 0, 0, 0
            if nv > 0 and dts - last_v > U32:
                return ERR_RANGE, i, 0, 0, 0, 0
            cto = meta[i, COL_PTS] - dts
            if cto < I32_MIN or cto > I32_MAX:
                return ERR_RANGE, i, 0, 0, 0, 0
            last_v = dts
            nv += 1
            vbytes += length
        elif track == TRACK_AUDIO and audio_id > 0:
            if na > 0 and dts < last_a:
                return ERR_DTS_ORDER, i, 0, 0, 0, 0
            last_a = dts
            na += 1
            abytes += length
        else:
            return ERR_TRACK, i, 0, 0, 0, 0
    if nv > 0 and next_dts >= 0 and (next_dts < last_v or next_dts - last_v > U32):
        return ERR_NEXT_DTS, hi - 1, 0, 0, 0, 0
    return OK, 0, nv, na, vbytes, abytes


@inline
def _moof_size(nv, na):
    traf_v = 0
    if nv > 0:
        traf_v = 8 + TFHD_SIZE + TFDT_SIZE + TRUN_HEAD + VIDEO_ROW * nv
    traf_a = 0
    if na > 0:
        traf_a = 8 + TFHD_AUDIO_SIZE + TFDT_SIZE + TRUN_HEAD + AUDIO_ROW * na
    return traf_v, traf_a, 8 + MFHD_SIZE + traf_v + traf_a


@jit
def fragment_boxes(meta, bounds, first_sequence, next_dts, video_id, audio_id, audio_rate, audio_duration,
                   default_video_duration):
    """The boxes of consecutive fragments, one per part, up to each ``mdat``'s payload.

    Returns ``(boxes, box_bounds, error, index)``: part ``j``'s ``moof`` and ``mdat`` header are
    ``boxes[box_bounds[j]:box_bounds[j + 1]]``, to be followed by the part's video samples, then
    its audio samples, each in input order.

    ``meta``: int64 (n, 5) rows of track, pts, dts, key, length (90 kHz); part ``j`` is rows
    ``bounds[j]:bounds[j + 1]``, numbered ``first_sequence + j`` in its ``mfhd``; ``next_dts``: the DTS
    of the video access unit after the last part (-1: unknown) -- for the other parts it is the
    first video DTS of the parts after them, so the output is exactly the parts' fragments built
    one by one; ``video_id`` / ``audio_id``: track IDs (0: no such track); ``audio_rate``: the
    audio timescale; ``audio_duration``: ticks per audio sample; ``default_video_duration``: a
    lone video sample's duration when nothing follows it.

    On error ``index`` is the offending row (the part's last row for a ``next_dts`` error).
    """
    n = meta.shape[0]
    nparts = bounds.shape[0] - 1
    box_bounds = np.zeros(nparts + 1, np.int64)
    # The DTS that follows each part's video.
    follow = np.empty(nparts, np.int64)
    nxt = next_dts
    for j in range(nparts - 1, -1, -1):
        follow[j] = nxt
        for i in range(bounds[j], bounds[j + 1]):
            if meta[i, COL_TRACK] == TRACK_VIDEO:
                nxt = meta[i, COL_DTS]
                break
    counts = np.empty((nparts, 4), np.int64)  # video count, audio count, video bytes, audio bytes
    total = 0
    for j in range(nparts):
        lo = bounds[j]
        hi = bounds[j + 1]
        if hi <= lo:
            return np.empty(0, np.uint8), box_bounds, ERR_EMPTY, lo
        err, at, nv, na, vbytes, abytes = _part_sizes(meta, lo, hi, follow[j], video_id, audio_id)
        if err != OK:
            return np.empty(0, np.uint8), box_bounds, err, at
        counts[j, 0] = nv
        counts[j, 1] = na
        counts[j, 2] = vbytes
        counts[j, 3] = abytes
        moof = _moof_size(nv, na)[2]
        box_bounds[j + 1] = box_bounds[j] + moof + 8
        total += moof + 8 + vbytes + abytes
        if total > I32_MAX:
            return np.empty(0, np.uint8), box_bounds, ERR_TOO_BIG, hi - 1

    out = np.empty(box_bounds[nparts], np.uint8)
    order = np.empty(n, np.int64)  # per part: video rows first, then audio rows, each in input order
    p = 0
    for j in range(nparts):
        lo = bounds[j]
        hi = bounds[j + 1]
        nv = counts[j, 0]
        na = counts[j, 1]
        vbytes = counts[j, 2]
        abytes = counts[j, 3]
        vi = lo
        ai = lo + nv
        for i in range(lo, hi):
            if meta[i, COL_TRACK] == TRACK_VIDEO:
                order[vi] = i
                vi += 1
            else:
                order[ai] = i
                ai += 1
        traf_v, traf_a, moof = _moof_size(nv, na)
        data_at = moof + 8  # the first sample's offset from the moof's first byte
        p = _box(out, p, moof, _MOOF)
        p = _full_box(out, p, MFHD_SIZE, _MFHD, 0, 0)
        _put32(out, p, first_sequence + j)
        p += 4
        if nv > 0:
            p = _box(out, p, traf_v, _TRAF)
            p = _full_box(out, p, TFHD_SIZE, _TFHD, 0, TFHD_BASE_IS_MOOF)
            _put32(out, p, video_id)
            p = _tfdt(out, p + 4, meta[order[lo], COL_DTS])
            p = _full_box(out, p, TRUN_HEAD + VIDEO_ROW * nv, _TRUN, 1, TRUN_VIDEO)
            _put32(out, p, nv)
            _put32(out, p + 4, data_at)
            p += 8
            duration = default_video_duration
            for k in range(lo, lo + nv):
                i = order[k]
                dts = meta[i, COL_DTS]
                if k + 1 < lo + nv:
                    duration = meta[order[k + 1], COL_DTS] - dts
                elif follow[j] >= 0:
                    duration = follow[j] - dts
                # else: the previous sample's duration (or the default for a lone sample) stays
                _put32(out, p, duration)
                _put32(out, p + 4, meta[i, COL_LEN])
                _put32(out, p + 8, FLAGS_SYNC if meta[i, COL_KEY] != 0 else FLAGS_NON_SYNC)
                _put32(out, p + 12, (meta[i, COL_PTS] - dts) & U32)
                p += VIDEO_ROW
        if na > 0:
            p = _box(out, p, traf_a, _TRAF)
            tfhd_flags = TFHD_BASE_IS_MOOF | TFHD_DEFAULT_DURATION | TFHD_DEFAULT_FLAGS
            p = _full_box(out, p, TFHD_AUDIO_SIZE, _TFHD, 0, tfhd_flags)
            _put32(out, p, audio_id)
            _put32(out, p + 4, audio_duration)
            _put32(out, p + 8, FLAGS_SYNC)
            base = (meta[order[lo + nv], COL_DTS] * audio_rate + HALF_TICK) // CLOCK_HZ
            p = _tfdt(out, p + 12, base)
            p = _full_box(out, p, TRUN_HEAD + AUDIO_ROW * na, _TRUN, 0, TRUN_AUDIO)
            _put32(out, p, na)
            _put32(out, p + 4, data_at + vbytes)
            p += 8
            for k in range(lo + nv, hi):
                _put32(out, p, meta[order[k], COL_LEN])
                p += AUDIO_ROW
        p = _box(out, p, 8 + vbytes + abytes, _MDAT)
    return out, box_bounds, OK, 0


@jit
def check_video_samples(data, meta, bounds, box_bounds):
    """Walk the NAL length fields of every video sample in ``data`` (the assembled fragments).

    Returns the row of the first video access unit that is not AVCC with 4-byte lengths, or -1.
    """
    base = 0
    for j in range(bounds.shape[0] - 1):
        p = base + box_bounds[j + 1] - box_bounds[j]  # the part's first sample
        size = 0
        for i in range(bounds[j], bounds[j + 1]):
            length = meta[i, COL_LEN]
            size += length
            if meta[i, COL_TRACK] == TRACK_VIDEO:
                if not _is_avcc(data, p, length):
                    return i
                p += length
        base += box_bounds[j + 1] - box_bounds[j] + size
    return -1
