"""PyAV side of the frame scaler: ``av.VideoFrame`` planes in and out, and swscale where it wins.

:class:`FrameScaler` is what a transcoder holds per rung: built once for (source size, rung
size), called per decoded frame, it returns a new ``yuv420p`` ``av.VideoFrame`` with the source's
``pts``, ``time_base`` and colour tags. It reads the decoded frame's planes in place (line
padding and all, :func:`plane_views`) and writes straight into the new frame's planes.

Backends, chosen per size (``backend="auto"``, the default), because `mesh bench scale`
measured each kernel against FFmpeg's swscale (``SWS_BILINEAR`` through a kept
``VideoReformatter``) on the same frames:

* ``"numba"``: :mod:`mesh_codecs.scale` (area filter). Chosen where it beat swscale in that
  benchmark: sizes where every plane is an exact 3:2 (1920x1080 -> 1280x720: 1.10x swscale's
  frames/s single-threaded, on 2026-12-01).
* ``"swscale"``: ``VideoReformatter.reformat(..., interpolation="BILINEAR")``. Chosen for every
  other size: swscale's hand-written SIMD was faster at 1280x720 -> 854x480 (Numba 0.87x) and
  at 1280x720 -> 640x360 (0.92x); bench/RESULTS.md has the figures. Also used for any frame that
  is not 8-bit 4:2:0 (the Numba kernels only take ``yuv420p``).

``threads`` is the thread count for either backend (Numba's ``prange`` threads or swscale's
slices); 1 (the default) keeps all work in the calling thread, which is what a transcoder that
runs one worker thread per rung wants on a small machine. On the loaded 2-core machine of the
2026-12-01 run, Numba's OpenMP threads made the kernel 10x *slower* (threads spin for cores
other processes hold); keep ``threads=1`` unless a benchmark on the target machine says otherwise.
"""
from __future__ import annotations

import av
import numba
import numpy as np
from av.video.reformatter import VideoReformatter

from . import scale as s
from . import scale_kernels as k

BACKENDS = ("auto", "numba", "swscale")
_I420 = ("yuv420p", "yuvj420p")


def plane_views(frame: av.VideoFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The Y, U, V planes of a ``yuv420p`` frame as 2-D uint8 views (rows padded as FFmpeg laid
    them out; no copy). Writable when the frame's buffers are."""
    if frame.format.name not in _I420:
        raise ValueError(f"frame is {frame.format.name}; plane_views needs yuv420p")
    views = []
    for plane in frame.planes:
        flat = np.frombuffer(plane, np.uint8)
        rows = flat[: plane.height * plane.line_size].reshape(plane.height, plane.line_size)
        views.append(rows[:, : plane.width])
    return views[0], views[1], views[2]


def frame_from_planes(y: np.ndarray, u: np.ndarray, v: np.ndarray) -> av.VideoFrame:
    """A new ``yuv420p`` frame holding copies of the three planes (sizes must agree)."""
    h, w = y.shape
    if u.shape != s.chroma_size(w, h)[::-1] or v.shape != u.shape:
        raise ValueError(f"chroma planes {u.shape} and {v.shape} do not fit a {w}x{h} luma plane")
    frame = av.VideoFrame(w, h, "yuv420p")
    for dst, src in zip(plane_views(frame), (y, u, v)):
        dst[...] = src
    return frame


def _auto_backend(plan: s.ScalePlan) -> str:
    """The documented per-size choice (module docstring): Numba where every plane is an exact
    3:2 (1080p -> 720p), swscale elsewhere."""
    exact_3_2 = k.FAMILY_3_2 | k.FAMILY_EXACT
    return "numba" if all(p.family == exact_3_2 for p in plan.planes) else "swscale"


class FrameScaler:
    """Scale ``src_w x src_h`` frames to ``dst_w x dst_h`` ``yuv420p`` frames; one per rung."""

    def __init__(self, src_w: int, src_h: int, dst_w: int, dst_h: int, *, backend: str = "auto",
                 threads: int = 1) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown scaler backend {backend!r}; use one of {', '.join(BACKENDS)}")
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.src_size = (src_w, src_h)
        self.dst_size = (dst_w, dst_h)
        self.plan = s.make_plan(src_w, src_h, dst_w, dst_h)
        self.backend = _auto_backend(self.plan) if backend == "auto" else backend
        self.threads = threads
        self._sws = VideoReformatter()

    def __call__(self, frame: av.VideoFrame) -> av.VideoFrame:
        if (frame.width, frame.height) != self.src_size:
            raise ValueError(f"frame is {frame.width}x{frame.height}, this scaler was built for "
                             f"{self.src_size[0]}x{self.src_size[1]}; make a FrameScaler per source size")
        if self.backend == "swscale" or frame.format.name not in _I420:
            return self._swscale(frame)
        out = av.VideoFrame(*self.dst_size, "yuv420p")
        if self.threads > 1:  # per calling thread in Numba
            numba.set_num_threads(min(self.threads, numba.config.NUMBA_NUM_THREADS))
        s.scale_planes(self.plan, plane_views(frame), plane_views(out), parallel=self.threads > 1)
        out.pts = frame.pts
        if frame.time_base is not None:
            out.time_base = frame.time_base
        out.colorspace, out.color_range = frame.colorspace, frame.color_range
        return out

    def _swscale(self, frame: av.VideoFrame) -> av.VideoFrame:
        return self._sws.reformat(frame, *self.dst_size, format="yuv420p", interpolation="BILINEAR",
                                  threads=self.threads)


__all__ = ["BACKENDS", "FrameScaler", "frame_from_planes", "plane_views"]
