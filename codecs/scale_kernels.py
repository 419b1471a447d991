"""Numba kernels behind :mod:`mesh_codecs.scale`: one separable resampling pass per 8-bit plane.

A plane is a flat ``uint8`` buffer with a row stride (``linesize``), as FFmpeg lays frames out:
row ``y`` starts at ``y * linesize`` and only its first ``width`` bytes are pixels, so a
PyAV plane with line padding is read in place, never copied.

Each output row is made in two steps. **Vertical first**: the ``ty`` source rows the output row
draws from are summed with their weights into one ``float32`` row of source width (contiguous
loads and stores, which LLVM vectorises). **Then horizontal**: each output pixel sums ``tx``
neighbouring values of that row with its own weights, rounds and stores a byte. Vertical first
does the horizontal half, the one that gathers, on the smaller (already downscaled) number of
rows.

The horizontal step has two forms. The general one reads each output pixel's start and weights
from the plan; LLVM does not vectorise its gathers. When the ratio is exactly 2:1 or 3:2
(1280 -> 640, 1920 -> 1280 and their chroma planes) and the weights repeat with that period (the
area filter's do), the plan passes just the repeating weights (``[a, b]`` or ``[a, b, c, d]``)
and a loop written for that period, with constant-stride loads, vectorises: 5-8x faster than
the general form, measured. ``HMODE_*`` names the forms.

Weights are ``float32``, never negative, and sum to one per output pixel, so a result is a
weighted mean of bytes: it needs rounding (``+ 0.5`` then truncation) but never clamping.
Taps are padded to a fixed count per axis (zero weights) with their start kept inside the
plane, so no kernel branches on edges.

``scale_plane`` is the serial kernel; ``scale_plane_parallel`` splits the output rows into
chunks over Numba's threads (``prange``), each chunk with its own row buffer. Both are compiled
``nogil=True, cache=True`` (the decorators of :mod:`mesh_codecs.jit`, plus ``parallel=True``).
"""
from __future__ import annotations

import numba
import numpy as np

from .jit import inline, jit

HMODE_GENERAL = 0
HMODE_2_1 = 1  # dst = src / 2: out[j] = a*in[2j] + b*in[2j+1]
HMODE_3_2 = 2  # dst = src * 2/3: out[2i] = a*in[3i] + b*in[3i+1]; out[2i+1] = c*in[3i+1] + d*in[3i+2]

# The parallel variant; importing .jit has already settled the cache directory.
pjit = numba.njit(nogil=True, cache=True, parallel=True)

_U = np.uint64  # unsigned indexes: no negative-index wraparound code, so loops vectorise


@inline
def _vertical(src, src_ls, src_w, y0, yw, wbase, ty, row):
    """``row[x] = sum_k yw[wbase + k] * src[y0 + k][x]`` over the plane's width."""
    w = yw[wbase]
    base = _U(y0 * src_ls)
    for x in range(src_w):
        row[_U(x)] = w * np.float32(src[base + _U(x)])
    for k in range(1, ty):
        w = yw[wbase + k]
        base = _U((y0 + k) * src_ls)
        for x in range(src_w):
            row[_U(x)] += w * np.float32(src[base + _U(x)])


@inline
def _horizontal(row, dst, out, dst_w, xs, xw, tx, hmode):
    half = np.float32(0.5)
    if hmode == HMODE_2_1:
        a, b = xw[0], xw[1]
        for j in range(dst_w):
            i = _U(2 * j)
            dst[out + _U(j)] = np.uint8(half + a * row[i] + b * row[i + _U(1)])
    elif hmode == HMODE_3_2:
        a, b, c, d = xw[0], xw[1], xw[2], xw[3]
        for p in range(dst_w // 2):
            i = _U(3 * p)
            o = out + _U(2 * p)
            dst[o] = np.uint8(half + a * row[i] + b * row[i + _U(1)])
            dst[o + _U(1)] = np.uint8(half + c * row[i + _U(1)] + d * row[i + _U(2)])
    elif tx == 2:  # fixed tap counts unroll: 3x faster than the loop over k (measured)
        for j in range(dst_w):
            i, w = _U(xs[j]), _U(2 * j)
            dst[out + _U(j)] = np.uint8(half + xw[w] * row[i] + xw[w + _U(1)] * row[i + _U(1)])
    elif tx == 3:
        for j in range(dst_w):
            i, w = _U(xs[j]), _U(3 * j)
            dst[out + _U(j)] = np.uint8(half + xw[w] * row[i] + xw[w + _U(1)] * row[i + _U(1)]
                                        + xw[w + _U(2)] * row[i + _U(2)])
    elif tx == 4:
        for j in range(dst_w):
            i, w = _U(xs[j]), _U(4 * j)
            dst[out + _U(j)] = np.uint8(half + xw[w] * row[i] + xw[w + _U(1)] * row[i + _U(1)]
                                        + xw[w + _U(2)] * row[i + _U(2)] + xw[w + _U(3)] * row[i + _U(3)])
    else:
        for j in range(dst_w):
            i, w = _U(xs[j]), _U(j * tx)
            acc = half
            for t in range(tx):
                acc += xw[w + _U(t)] * row[i + _U(t)]
            dst[out + _U(j)] = np.uint8(acc)


@inline
def _rows(src, src_ls, src_w, dst, dst_ls, dst_w, y_from, y_to, ys, yw, ty, xs, xw, tx, hmode, row):
    for y in range(y_from, y_to):
        _vertical(src, src_ls, src_w, ys[y], yw, y * ty, ty, row)
        _horizontal(row, dst, _U(y * dst_ls), dst_w, xs, xw, tx, hmode)


@jit
def scale_plane(src, src_ls, src_w, dst, dst_ls, dst_w, dst_h, ys, yw, ty, xs, xw, tx, hmode):
    """Scale one plane in the calling thread. ``src``/``dst`` are flat uint8 buffers with row
    strides ``src_ls``/``dst_ls``; ``ys, yw, ty`` and ``xs, xw, tx`` are the plan's axes."""
    row = np.empty(src_w, np.float32)
    _rows(src, src_ls, src_w, dst, dst_ls, dst_w, 0, dst_h, ys, yw, ty, xs, xw, tx, hmode, row)


@pjit
def scale_plane_parallel(src, src_ls, src_w, dst, dst_ls, dst_w, dst_h, ys, yw, ty, xs, xw, tx, hmode,
                         chunks):
    """:func:`scale_plane` with the output rows in ``chunks`` runs spread over Numba's threads."""
    per = (dst_h + chunks - 1) // chunks
    for c in numba.prange(chunks):
        row = np.empty(src_w, np.float32)
        _rows(src, src_ls, src_w, dst, dst_ls, dst_w, c * per, min(dst_h, (c + 1) * per),
              ys, yw, ty, xs, xw, tx, hmode, row)
