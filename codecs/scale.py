"""Downscaling YUV 4:2:0 planar frames (I420) for the transcoding ladder, in Numba kernels.

A plan is computed once per (source size, output size, filter): per plane and axis, where each
output pixel's taps start and their fixed-point weights (:func:`axis_weights`). Per frame only
the kernels of :mod:`mesh_codecs.scale_kernels` run, one call per plane, with the GIL released.

Filters (both separable, both with non-negative weights that sum to one per output pixel):

* ``"area"`` (default): each output pixel is the mean of the source area it covers, source
  pixels cut by its edges counting by the fraction covered. Any ratio, e.g. 1920 -> 1280 (each
  output pixel covers 1.5 source pixels: 2-3 taps) or 1280 -> 854. Identity is an exact copy.
* ``"bilinear"``: a tent whose half-width is the scale ratio (at least one source pixel), as
  FFmpeg's swscale does for ``SWS_BILINEAR`` when it downscales; smoother, about twice the taps.

Geometry: planes are mapped edge to edge (output pixel ``j`` covers source
``[j * src / dst, (j + 1) * src / dst)``), each plane on its own grid; chroma planes are
``ceil(w / 2) x ceil(h / 2)`` for both sizes, as FFmpeg's ``yuv420p``. For MPEG-2 (left-sited)
chroma this is off by ``(ratio - 1) / 4`` of a chroma pixel horizontally (1/8 at 1.5x), far below
what the eye or PSNR notices.

Planes are 2-D ``uint8`` arrays whose rows may be padded (row stride > width, as FFmpeg's
``linesize``); only the column stride must be 1. :mod:`mesh_codecs.scale_av` wraps PyAV
``VideoFrame`` planes this way without copying and holds the per-size swscale choice.

Rung sizes: :func:`rung_size` gives the output size of a ladder rung from its height, keeping the
source's aspect ratio, both dimensions even.
"""
from __future__ import annotations

import functools
import itertools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from . import scale_kernels as k

FILTERS = ("area", "bilinear")
MAX_DIMENSION = 16384  # FFmpeg's own limit is about this; a bigger plane is a caller's bug


def rung_size(src_w: int, src_h: int, height: int) -> tuple[int, int]:
    """Output size of a ladder rung ``height`` for a ``src_w x src_h`` source: the height rounded
    up to even, the width ``height * src_w / src_h`` rounded to the nearest even number (>= 2).

    >>> rung_size(1920, 1080, 720), rung_size(1280, 720, 480), rung_size(1280, 720, 360)
    ((1280, 720), (854, 480), (640, 360))
    """
    if src_w <= 0 or src_h <= 0 or height <= 0:
        raise ValueError(f"sizes must be positive: source {src_w}x{src_h}, rung height {height}")
    h = height + (height & 1)
    w = 2 * max(1, round(h * src_w / src_h / 2))
    return w, h


def chroma_size(w: int, h: int) -> tuple[int, int]:
    """The size of a ``yuv420p`` chroma plane for a ``w x h`` frame."""
    return (w + 1) // 2, (h + 1) // 2


def _area_weights(src: int, dst: int) -> list[dict[int, float]]:
    # Exact in integers: output j covers [j*src, (j+1)*src) and source i covers [i*dst, (i+1)*dst)
    # in units of 1/dst source pixels; the weight is the overlap over the output pixel's width.
    taps = []
    for j in range(dst):
        a, b = j * src, (j + 1) * src
        row = {}
        for i in range(a // dst, min(src, -(-b // dst))):
            overlap = min(b, (i + 1) * dst) - max(a, i * dst)
            if overlap > 0:
                row[i] = overlap / src
        taps.append(row)
    return taps


def _tent_weights(src: int, dst: int) -> list[dict[int, float]]:
    ratio = src / dst
    radius = max(1.0, ratio)
    taps = []
    for j in range(dst):
        centre = (j + 0.5) * ratio - 0.5
        row: dict[int, float] = {}
        for i in range(math.floor(centre - radius), math.ceil(centre + radius) + 1):
            w = 1.0 - abs(i - centre) / radius
            if w > 0:
                edge = min(src - 1, max(0, i))  # clamp to the edge pixel, as swscale does
                row[edge] = row.get(edge, 0.0) + w
        total = sum(row.values())
        taps.append({i: w / total for i, w in row.items()})
    return taps


def _axis_rows(src: int, dst: int, filt: str) -> list[dict[int, float]]:
    if not (0 < src <= MAX_DIMENSION and 0 < dst <= MAX_DIMENSION):
        raise ValueError(f"axis sizes must be 1..{MAX_DIMENSION}: source {src}, output {dst}")
    if filt not in FILTERS:
        raise ValueError(f"unknown filter {filt!r}; use one of {', '.join(FILTERS)}")
    return _area_weights(src, dst) if filt == "area" else _tent_weights(src, dst)


def axis_weights(src: int, dst: int, filt: str = "area") -> tuple[np.ndarray, np.ndarray, int]:
    """One axis of a plan: ``(starts int32[dst], weights float32[dst * taps], taps)``.

    Output pixel ``j`` is ``sum(weights[j*taps + t] * line[starts[j] + t])``. Weights are
    non-negative and sum to one per output pixel; ``starts[j] + taps <= src`` always.
    """
    rows = _axis_rows(src, dst, filt)
    taps = max(max(r) - min(r) + 1 for r in rows)
    starts = np.empty(dst, np.int32)
    weights = np.zeros(dst * taps, np.float64)
    for j, row in enumerate(rows):
        start = min(min(row), src - taps)
        starts[j] = start
        total = sum(row.values())
        for i, w in row.items():
            weights[j * taps + i - start] = w / total
    return starts, weights.astype(np.float32), taps


_FAMILIES = ((k.FAMILY_2_1, 2, 1), (k.FAMILY_3_2, 3, 2))
_MIN_RUN = 16  # a family form pays only if its segments are this many outputs long on average


def _family(src: int, dst: int, rows: list[dict[int, float]]) -> tuple | None:
    """The horizontal family form for an axis (see :mod:`mesh_codecs.scale_kernels`) or None.

    Tries P:Q in 2:1 and 3:2; cuts the outputs into segments over which one shift ``s`` puts
    every output's true support inside its T-tap window ``[P*p + off[q] + s, ... + T)``,
    with the fewest taps T (2, 3 or 4) that keeps the segments long.
    Returns ``(family, segs int64[3 * nseg], W float32[Q * T * n], row_len, T)``; with
    ``FAMILY_EXACT`` or-ed in (exact ratio, repeating weights) W is ``float32[Q * T]``.
    """
    for (family, P, Q), T in itertools.product(_FAMILIES, k.FAMILY_TAPS):
        if abs(src / dst - P / Q) > 0.1 * P / Q:
            continue
        offs = [(q * P) // Q for q in range(Q)]
        n = -(-dst // Q)
        segs: list[list[int]] = []  # [p0, p1, s_low, s_high]
        for p in range(n):
            low, high = -P * p, 1 << 30  # low: no window may start left of the plane
            for q in range(Q):
                j = p * Q + q
                if j < dst:
                    base = P * p + offs[q]
                    high = min(high, min(rows[j]) - base)
                    low = max(low, max(rows[j]) + 1 - T - base)
            if low > high:
                break
            if segs and max(segs[-1][2], low) <= min(segs[-1][3], high):
                seg = segs[-1]
                seg[1], seg[2], seg[3] = p + 1, max(seg[2], low), min(seg[3], high)
            else:
                segs.append([p, p + 1, low, high])
        else:
            if n / len(segs) < _MIN_RUN:
                continue
            W = np.zeros((Q, T, n), np.float64)
            firsts = []
            for p0, p1, _, s in segs:
                for p in range(p0, p1):
                    for q in range(Q):
                        j = p * Q + q
                        if j < dst:
                            first = P * p + offs[q] + s
                            firsts.append(first)
                            total = sum(rows[j].values())
                            for i, w in rows[j].items():
                                W[q, i - first, p] = w / total
            row_len = max(max(firsts) + T, src)
            flat = np.array([(p0, p1, s) for p0, p1, _, s in segs], np.int64).ravel()
            if len(segs) == 1 and (W == W[:, :, :1]).all():  # exact ratio: weights repeat every Q
                family |= k.FAMILY_EXACT
                W = W[:, :, :1]
            return family, flat, W.astype(np.float32).ravel(), row_len, T
    return None


@dataclass(frozen=True)
class PlanePlan:
    src_w: int
    src_h: int
    dst_w: int
    dst_h: int
    xs: np.ndarray
    xw: np.ndarray
    tx: int
    ys: np.ndarray
    yw: np.ndarray
    ty: int
    family: int  # the horizontal form, scale_kernels.FAMILY_*; a family's weights are in xw
    segs: np.ndarray
    row_len: int  # the kernel's row buffer: the source width plus the zeros a window may reach


@dataclass(frozen=True)
class ScalePlan:
    """Everything per (source size, output size, filter) that does not depend on a frame."""

    src_w: int
    src_h: int
    dst_w: int
    dst_h: int
    filter: str
    planes: tuple[PlanePlan, PlanePlan, PlanePlan]


def _plane_plan(sw: int, sh: int, dw: int, dh: int, filt: str, families: bool) -> PlanePlan:
    xs, xw, tx = axis_weights(sw, dw, filt)
    ys, yw, ty = axis_weights(sh, dh, filt)
    fam = _family(sw, dw, _axis_rows(sw, dw, filt)) if families else None
    if fam is None:
        none = np.zeros(0, np.int64)
        return PlanePlan(sw, sh, dw, dh, xs, xw, tx, ys, yw, ty, k.FAMILY_GENERAL, none, sw)
    family, segs, W, row_len, taps = fam
    return PlanePlan(sw, sh, dw, dh, xs, W, taps, ys, yw, ty, family, segs, row_len)


@functools.lru_cache(maxsize=64)
def make_plan(src_w: int, src_h: int, dst_w: int, dst_h: int, filter: str = "area",
              families: bool = True) -> ScalePlan:
    """The plan for scaling ``src_w x src_h`` I420 frames to ``dst_w x dst_h`` (cached).
    ``families=False`` keeps every plane on the general horizontal form (for tests)."""
    luma = _plane_plan(src_w, src_h, dst_w, dst_h, filter, families)
    chroma = _plane_plan(*chroma_size(src_w, src_h), *chroma_size(dst_w, dst_h), filter, families)
    return ScalePlan(src_w, src_h, dst_w, dst_h, filter, (luma, chroma, chroma))


def _flat(plane: np.ndarray, w: int, h: int, what: str, writable: bool = False) -> tuple[np.ndarray, int]:
    """A 2-D plane view as (flat 1-D uint8 view over its rows, row stride), without copying."""
    if plane.dtype != np.uint8 or plane.ndim != 2:
        raise ValueError(f"{what} must be a 2-D uint8 array, got {plane.dtype} with {plane.ndim} dims")
    if plane.shape != (h, w):
        raise ValueError(f"{what} is {plane.shape[1]}x{plane.shape[0]}, the plan wants {w}x{h}")
    if plane.strides[1] != 1 or plane.strides[0] < w:
        raise ValueError(f"{what} must have contiguous rows (strides {plane.strides})")
    if writable and not plane.flags.writeable:
        raise ValueError(f"{what} is read-only")
    stride = plane.strides[0]
    flat = np.lib.stride_tricks.as_strided(plane, shape=((h - 1) * stride + w,), strides=(1,),
                                           writeable=writable)
    return flat, stride


def new_planes(w: int, h: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Three unpadded, uninitialised planes for a ``w x h`` I420 frame."""
    cw, ch = chroma_size(w, h)
    return np.empty((h, w), np.uint8), np.empty((ch, cw), np.uint8), np.empty((ch, cw), np.uint8)


def default_chunks() -> int:
    """Row chunks for the parallel kernel: a few per Numba thread, so a busy core evens out."""
    import numba

    return 4 * numba.get_num_threads()


def scale_planes(plan: ScalePlan, src: Sequence[np.ndarray], dst: Sequence[np.ndarray] | None = None,
                 *, parallel: bool = False) -> Sequence[np.ndarray]:
    """Scale the Y, U, V planes ``src`` into ``dst`` (new unpadded planes if None) with ``plan``.

    ``parallel=True`` runs the rows over Numba's threads (``numba.set_num_threads`` sets how
    many, per calling thread); the default runs in the calling thread, GIL released.
    """
    if len(src) != 3:
        raise ValueError(f"an I420 frame has 3 planes, got {len(src)}")
    if dst is None:
        dst = new_planes(plan.dst_w, plan.dst_h)
    chunks = default_chunks() if parallel else 1
    for name, p, s, d in zip("YUV", plan.planes, src, dst):
        sflat, sls = _flat(s, p.src_w, p.src_h, f"source plane {name}")
        dflat, dls = _flat(d, p.dst_w, p.dst_h, f"output plane {name}", writable=True)
        if parallel:
            k.scale_plane_parallel(sflat, sls, p.src_w, dflat, dls, p.dst_w, p.dst_h, p.ys, p.yw, p.ty,
                                   p.xs, p.xw, p.tx, p.family, p.segs, p.row_len, chunks)
        else:
            k.scale_plane(sflat, sls, p.src_w, dflat, dls, p.dst_w, p.dst_h, p.ys, p.yw, p.ty,
                          p.xs, p.xw, p.tx, p.family, p.segs, p.row_len)
    return dst


def warm_up() -> None:
    """Load (or on a cold cache compile) both kernels; call once at start."""
    plan = make_plan(6, 4, 4, 2)
    planes = (np.zeros((4, 6), np.uint8), np.zeros((2, 3), np.uint8), np.zeros((2, 3), np.uint8))
    scale_planes(plan, planes)
    if os.environ.get("NUMBA_DISABLE_JIT") != "1":
        scale_planes(plan, planes, parallel=True)


__all__ = ["FILTERS", "PlanePlan", "ScalePlan", "axis_weights", "chroma_size", "make_plan",
           "new_planes", "rung_size", "scale_planes", "warm_up"]
