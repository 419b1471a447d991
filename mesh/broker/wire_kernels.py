"""A Numba kernel for the subscriber's hot path: parse a bus header in its canonical form.

The publisher always writes the header as ``{"v": 1, "e": epoch, "h": [[8 ints], ...]}`` (keys
in that order, msgpack's shortest encodings, no ``extra``). :func:`parse_canonical` reads exactly
that shape straight from the bytes, checks every field against the same bounds as
:func:`mesh.broker.wire.decode`, and fills an int64 table, so no Python object is made per field
and no Python check runs per field. Anything else -- a ninth element, other keys or key order,
a type the canonical form never has, any bound broken, trailing bytes -- returns -1 and the
caller takes the general msgpack path, which accepts every valid encoding and raises the exact
error for invalid ones. So this kernel can only make decoding faster, never stricter or looser.

Every read is bounds-checked by hand (Numba does not check indices). Compiled with the TS
kernels' decorators (:mod:`mesh_codecs.jit`): a process start loads the machine code instead of compiling.
"""
from __future__ import annotations

import numpy as np
from mesh_codecs.jit import inline, jit

MAX62 = 1 << 62
HEARTBEAT = 3

# Columns of the output table; column 7 holds the entry's end offset in the payload.
COL_END = 7
COLS = 8


@inline
def _read_int(buf, pos, size):
    """A msgpack integer at ``buf[pos]``: (value, next position, ok). Fails on any other type
    and on unsigned values above int64 (no field may be that large anyway)."""
    if pos >= size:
        return 0, pos, False
    b = buf[pos]
    if b <= 0x7F:
        return np.int64(b), pos + 1, True
    if b >= 0xE0:
        return np.int64(b) - 256, pos + 1, True
    if b == 0xCC or b == 0xD0:
        width = 1
    elif b == 0xCD or b == 0xD1:
        width = 2
    elif b == 0xCE or b == 0xD2:
        width = 4
    elif b == 0xCF or b == 0xD3:
        width = 8
    else:
        return 0, pos, False
    if pos + 1 + width > size:
        return 0, pos, False
    v = np.uint64(0)
    for k in range(width):
        v = (v << np.uint64(8)) | np.uint64(buf[pos + 1 + k])
    if b >= 0xD0:  # signed: sign-extend from width bytes
        bits = np.uint64(8 * width)
        if width < 8 and (v >> (bits - np.uint64(1))) & np.uint64(1):
            v = v | ~((np.uint64(1) << bits) - np.uint64(1))
        return np.int64(v), pos + 1 + width, True
    if v > np.uint64(0x7FFFFFFFFFFFFFFF):
        return 0, pos, False
    return np.int64(v), pos + 1 + width, True


@jit
def parse_canonical(buf, payload_size, max_entries, max_entry_bytes, known_flags, out):
    """Parse a canonical header in ``buf`` (uint8) into ``out`` (int64, rows x COLS).

    Returns ``(n, epoch, plain_first)``: ``n`` entries were parsed (-1: not canonical or not
    valid, use the general path); ``plain_first`` is the first entry's seq when the batch is
    contiguous in seq and holds no heartbeat (the tracker's steady state), else -1.
    """
    size = buf.shape[0]
    # fixmap(3) "v" 1 "e"
    if size < 10 or buf[0] != 0x83 or buf[1] != 0xA1 or buf[2] != 0x76 or buf[3] != 0x01 \
            or buf[4] != 0xA1 or buf[5] != 0x65:
        return -1, 0, -1
    epoch, pos, ok = _read_int(buf, 6, size)
    if not ok or epoch < 0 or epoch > MAX62:
        return -1, 0, -1
    if pos + 3 > size or buf[pos] != 0xA1 or buf[pos + 1] != 0x68:  # "h"
        return -1, 0, -1
    pos += 2
    b = buf[pos]
    if 0x90 <= b <= 0x9F:
        n = np.int64(b) - 0x90
        pos += 1
    elif b == 0xDC:
        if pos + 3 > size:
            return -1, 0, -1
        n = (np.int64(buf[pos + 1]) << 8) | np.int64(buf[pos + 2])
        pos += 3
    elif b == 0xDD:
        if pos + 5 > size:
            return -1, 0, -1
        n = (np.int64(buf[pos + 1]) << 24) | (np.int64(buf[pos + 2]) << 16) \
            | (np.int64(buf[pos + 3]) << 8) | np.int64(buf[pos + 4])
        pos += 5
    else:
        return -1, 0, -1
    if n < 1 or n > max_entries or n > out.shape[0]:
        return -1, 0, -1
    end = np.int64(0)
    plain = True
    for i in range(n):
        if pos >= size or buf[pos] != 0x98:  # an 8-element row (a ninth, extra, is not canonical)
            return -1, 0, -1
        pos += 1
        for j in range(COLS):
            v, pos, ok = _read_int(buf, pos, size)
            if not ok:
                return -1, 0, -1
            out[i, j] = v
        seq, kind, track, pts, dts, flags, seg, length = (out[i, 0], out[i, 1], out[i, 2], out[i, 3],
                                                          out[i, 4], out[i, 5], out[i, 6], out[i, 7])
        if seq < 0 or seq > MAX62 or kind < 0 or kind > 3 or track < 0 or track > 15 \
                or pts < -MAX62 or pts > MAX62 or dts < -MAX62 or dts > MAX62 \
                or flags < 0 or flags > known_flags or seg < 0 or seg > MAX62 \
                or length < 0 or length > max_entry_bytes:
            return -1, 0, -1
        end += length
        if end > payload_size:
            return -1, 0, -1
        out[i, COL_END] = end
        if kind == HEARTBEAT or seq != out[0, 0] + i:
            plain = False
    if pos != size or end != payload_size:
        return -1, 0, -1
    return n, epoch, out[0, 0] if plain else np.int64(-1)

