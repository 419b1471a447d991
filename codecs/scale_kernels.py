"""Numba kernels behind :mod:`mesh_codecs.scale`: one separable resampling pass per 8-bit plane.

A plane is a flat ``uint8`` buffer with a row stride (``linesize``), as FFmpeg lays frames out:
row ``y`` starts at ``y * linesize`` and only its first ``width`` bytes are pixels, so a PyAV
plane with line padding is read in place, never copied.

Each output row is made in two steps. **Vertical first**: the ``ty`` source rows it draws from
are summed with their weights into a ``float32`` row of source width (contiguous loads, which
LLVM vectorises). **Then horizontal**: each output pixel sums its taps of that row, rounds and
stores a byte. Vertical first gives the harder, horizontal half the smaller number of rows.

The horizontal step is where the time goes, because each output pixel reads the row at its own
offset, and LLVM will not vectorise such gathers (nor are gathers fast on this machine). So
there are two horizontal forms (``FAMILY_*``):

* **general**: per output pixel, a start and ``tx`` weights from the plan; scalar, about 1.5 ns
  a pixel (fixed tap counts 2-4 are unrolled, which is 3x faster than a loop over the taps).
* **family P:Q** (2:1 or 3:2): for ratios at or near P/Q (1280 -> 640, 1920 -> 1280, also
  1280 -> 854 = 1.4988), output pixel ``p*Q + q`` is given ``T`` (2-4) taps starting at
  ``P*p + q + s``, where ``s`` is constant over long runs of ``p`` (the plan's *segments*; it
  steps by one where the true ratio drifts away from P/Q) and the window always covers the
  pixel's true support (other taps weigh zero). Within a segment the loads have the constant
  stride P and the weights are stored per (phase, tap) as contiguous arrays, so the loop
  vectorises with shuffles instead of gathers (LLVM's ``vpgather`` was 2x slower than scalar
  code here). With an exact ratio and repeating weights (``FAMILY_EXACT``) the weights are
  scalars hoisted out of the loop. The result is exact (the general form's weights), not an
  approximation of the ratio.

Weights are ``float32``, never negative, and sum to one per output pixel, so a result is a
weighted mean of bytes: it is rounded (``+ 0.5`` then truncation) and never needs clamping.

``scale_plane`` is the serial kernel; ``scale_plane_parallel`` splits the output rows into
chunks over Numba's threads (``prange``), each chunk with its own row buffer. Both are compiled
``nogil=True, cache=True`` (the decorators of :mod:`mesh_codecs.jit`, plus ``parallel=True``).
"""
from __future__ import annotations

import numba
import numpy as np

from .jit import inline, jit

FAMILY_GENERAL = 0
FAMILY_2_1 = 1
FAMILY_3_2 = 2
FAMILY_EXACT = 4  # or-ed into a family: the ratio is exact and the weights repeat every Q outputs
FAMILY_TAPS = (2, 3, 4)  # taps per output pixel a family form can have (support plus slack)

# The parallel variant; importing .jit has already settled the cache directory.
pjit = numba.njit(nogil=True, cache=True, parallel=True)

_U = np.uint64  # unsigned indexes: no negative-index wraparound code, so loops vectorise
_HALF = np.float32(0.5)


@inline
def _vsum(src, x, ls, w0, w1, w2, w3, T):
    """``sum_t w_t * src[x + t*ls]`` for a fixed ``T`` (1-4 source rows)."""
    v = w0 * np.float32(src[x])
    if T >= 2:
        v += w1 * np.float32(src[x + ls])
    if T >= 3:
        v += w2 * np.float32(src[x + _U(2) * ls])
    if T >= 4:
        v += w3 * np.float32(src[x + _U(3) * ls])
    return v


@inline
def _vertical_t(src, src_ls, src_w, y0, yw, wb, row, T):
    w0 = yw[wb]
    w1 = yw[wb + 1] if T >= 2 else np.float32(0)
    w2 = yw[wb + 2] if T >= 3 else np.float32(0)
    w3 = yw[wb + 3] if T >= 4 else np.float32(0)
    base = _U(y0 * src_ls)
    ls = _U(src_ls)
    for x in range(src_w):
        row[_U(x)] = _vsum(src, base + _U(x), ls, w0, w1, w2, w3, T)


@inline
def _vertical(src, src_ls, src_w, y0, yw, wbase, ty, row):
    """``row[x] = sum_k yw[wbase + k] * src[y0 + k][x]``: one pass for 1-4 taps, else a pass per tap."""
    if ty == 1:
        _vertical_t(src, src_ls, src_w, y0, yw, wbase, row, 1)
    elif ty == 2:
        _vertical_t(src, src_ls, src_w, y0, yw, wbase, row, 2)
    elif ty == 3:
        _vertical_t(src, src_ls, src_w, y0, yw, wbase, row, 3)
    elif ty == 4:
        _vertical_t(src, src_ls, src_w, y0, yw, wbase, row, 4)
    else:
        for k in range(ty):
            w = yw[wbase + k]
            base = _U((y0 + k) * src_ls)
            if k == 0:
                for x in range(src_w):
                    row[_U(x)] = w * np.float32(src[base + _U(x)])
            else:
                for x in range(src_w):
                    row[_U(x)] += w * np.float32(src[base + _U(x)])


@inline
def _horizontal(row, dst, out, dst_w, xs, xw, tx):
    """The general form: output ``j`` = ``sum_t xw[j*tx + t] * row[xs[j] + t]``."""
    if tx == 1:
        for j in range(dst_w):
            dst[out + _U(j)] = np.uint8(np.int32(_HALF + xw[j] * row[_U(xs[j])]))
    elif tx == 2:
        for j in range(dst_w):
            i, w = _U(xs[j]), _U(2 * j)
            dst[out + _U(j)] = np.uint8(np.int32(_HALF + xw[w] * row[i] + xw[w + _U(1)] * row[i + _U(1)]))
    elif tx == 3:
        for j in range(dst_w):
            i, w = _U(xs[j]), _U(3 * j)
            dst[out + _U(j)] = np.uint8(np.int32(_HALF + xw[w] * row[i] + xw[w + _U(1)] * row[i + _U(1)]
                                                 + xw[w + _U(2)] * row[i + _U(2)]))
    elif tx == 4:
        for j in range(dst_w):
            i, w = _U(xs[j]), _U(4 * j)
            dst[out + _U(j)] = np.uint8(np.int32(_HALF + xw[w] * row[i] + xw[w + _U(1)] * row[i + _U(1)]
                                                 + xw[w + _U(2)] * row[i + _U(2)]
                                                 + xw[w + _U(3)] * row[i + _U(3)]))
    else:
        for j in range(dst_w):
            i, w = _U(xs[j]), _U(j * tx)
            acc = _HALF
            for t in range(tx):
                acc += xw[w + _U(t)] * row[i + _U(t)]
            dst[out + _U(j)] = np.uint8(np.int32(acc))


@inline
def _family_out(row, W, n, p, i, T, wb, C):
    """One output pixel of a family form: ``T`` taps at ``row[i:]``, weights ``W[wb + t*n + p]``
    (``W[wb + t*n]`` for every ``p`` when ``C``: the weights repeat, loads leave the loop)."""
    q = _U(0) if C else _U(p)
    acc = _HALF + W[wb + q] * row[i] + W[wb + _U(n) + q] * row[i + _U(1)]
    if T >= 3:
        acc += W[wb + _U(2 * n) + q] * row[i + _U(2)]
    if T >= 4:
        acc += W[wb + _U(3 * n) + q] * row[i + _U(3)]
    return np.uint8(np.int32(acc))


@inline
def _family_segment(row, dst, out, P, Q, T, n, p0, p1, o, W, C):
    if Q == 1:
        for p in range(p0, p1):
            dst[out + _U(p)] = _family_out(row, W, n, p, _U(P * p + o), T, _U(0), C)
    else:
        # Phase 1 starts one pixel after phase 0 (3:2). Written as i + 1, not as a second offset,
        # so that LLVM sees one stride-3 group of loads and shuffles it (else: slow gathers).
        for p in range(p0, p1):
            d = out + _U(2 * p)
            i = _U(P * p + o)
            dst[d] = _family_out(row, W, n, p, i, T, _U(0), C)
            dst[d + _U(1)] = _family_out(row, W, n, p, i + _U(1), T, _U(T * n), C)


@inline
def _family_taps(row, dst, out, P, Q, T, n, p0, p1, o, W, C):
    if C:
        _family_segment(row, dst, out, P, Q, T, n, p0, p1, o, W, True)
    else:
        _family_segment(row, dst, out, P, Q, T, n, p0, p1, o, W, False)


@inline
def _horizontal_family(row, dst, out, dst_w, P, Q, T, segs, W, C):
    """A family form (``P:Q``, ``T`` taps), segment by segment; see the module doc.
    Output ``p*Q + q`` has its taps at ``P*p + q + s``; ``W[((q * T) + t) * n + p]`` weighs tap ``t``
    of output ``p*Q + q``, ``n = ceil(dst_w / Q)``;
    with ``C`` (an exact ratio: one segment, the same weights for every ``p``) ``n`` is 1.
    ``T`` is 2, 3 or 4; each has its own loop, so the taps unroll."""
    n = 1 if C else (dst_w + Q - 1) // Q
    full = dst_w // Q
    for sg in range(len(segs) // 3):
        p0, p1, s = segs[3 * sg], min(segs[3 * sg + 1], full), segs[3 * sg + 2]
        if T == 2:
            _family_taps(row, dst, out, P, Q, 2, n, p0, p1, s, W, C)
        elif T == 3:
            _family_taps(row, dst, out, P, Q, 3, n, p0, p1, s, W, C)
        else:
            _family_taps(row, dst, out, P, Q, 4, n, p0, p1, s, W, C)
        if segs[3 * sg + 1] > full and full < (dst_w + Q - 1) // Q:  # Q = 2, odd width: phase 0 only
            dst[out + _U(dst_w - 1)] = _family_out(row, W, n, full, _U(P * full + s), T, _U(0), C)


@inline
def _rows(src, src_ls, src_w, dst, dst_ls, dst_w, y_from, y_to, ys, yw, ty, xs, xw, tx, family, segs, row):
    for y in range(y_from, y_to):
        _vertical(src, src_ls, src_w, ys[y], yw, y * ty, ty, row)
        out = _U(y * dst_ls)
        if family == FAMILY_2_1:
            _horizontal_family(row, dst, out, dst_w, 2, 1, tx, segs, xw, False)
        elif family == FAMILY_3_2:
            _horizontal_family(row, dst, out, dst_w, 3, 2, tx, segs, xw, False)
        elif family == FAMILY_2_1 | FAMILY_EXACT:
            _horizontal_family(row, dst, out, dst_w, 2, 1, tx, segs, xw, True)
        elif family == FAMILY_3_2 | FAMILY_EXACT:
            _horizontal_family(row, dst, out, dst_w, 3, 2, tx, segs, xw, True)
        else:
            _horizontal(row, dst, out, dst_w, xs, xw, tx)


@jit
def scale_plane(src, src_ls, src_w, dst, dst_ls, dst_w, dst_h, ys, yw, ty, xs, xw, tx,
                family, segs, row_len):
    """Scale one plane in the calling thread. ``src``/``dst`` are flat uint8 buffers with row
    strides ``src_ls``/``dst_ls``; the rest is the plan's (:class:`mesh_codecs.scale.PlanePlan`)."""
    row = np.zeros(row_len, np.float32)
    _rows(src, src_ls, src_w, dst, dst_ls, dst_w, 0, dst_h, ys, yw, ty, xs, xw, tx, family, segs, row)


@pjit
def scale_plane_parallel(src, src_ls, src_w, dst, dst_ls, dst_w, dst_h, ys, yw, ty, xs, xw, tx,
                         family, segs, row_len, chunks):
    """:func:`scale_plane` with the output rows in ``chunks`` runs spread over Numba's threads."""
    per = (dst_h + chunks - 1) // chunks
    for c in numba.prange(chunks):
        row = np.zeros(row_len, np.float32)
        _rows(src, src_ls, src_w, dst, dst_ls, dst_w, c * per, min(dst_h, (c + 1) * per),
              ys, yw, ty, xs, xw, tx, family, segs, row)
