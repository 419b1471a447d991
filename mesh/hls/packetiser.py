"""Packetising closed segments, on the event loop or on worker threads.

:class:`TsPacketisers` keeps one MPEG-TS packetiser per codec configuration (each holds the
PAT/PMT and the SPS/PPS it inserts). A packetiser's ``segment()`` only reads its own state and the
Numba kernel runs ``nogil``, so segments of different streams are cut in parallel on a small
:class:`WorkerPool` while the event loop keeps answering HTTP. ``workers=0`` packetises inline on
the loop (the benchmark's baseline).
"""
from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

from mesh_codecs.media import AccessUnit, AudioConfig, VideoConfig

from .window import Job, Offload

MAX_CONFIGS = 256  # distinct codec configurations kept; more (a churn of publishers) starts over


class TsPacketisers:
    """A thread-safe ``(video, audio, aus) -> bytes`` over cached packetisers."""

    def __init__(self) -> None:
        from mesh_codecs.ts import TsPacketiser, warm_up

        warm_up()  # load the cached Numba kernels now, not on the first viewer's request
        self._cls = TsPacketiser
        self._cache: dict[tuple[Any, Any], Any] = {}
        self._lock = threading.Lock()

    def __call__(self, video: VideoConfig | None, audio: AudioConfig | None,
                 aus: list[AccessUnit]) -> bytes:
        key = (video, audio)
        with self._lock:
            packetiser = self._cache.get(key)
            if packetiser is None:
                if len(self._cache) >= MAX_CONFIGS:
                    self._cache.clear()
                packetiser = self._cache[key] = self._cls(video, audio)
        return packetiser.segment(aus)


class WorkerPool:
    """Runs packetising jobs on ``workers`` threads and wakes the window on the loop's thread."""

    def __init__(self, workers: int):
        self.workers = workers
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="packetise") if workers else None
        self._loop: asyncio.AbstractEventLoop | None = None

    def offload(self) -> Offload | None:
        """The window's ``offload`` (None: packetise inline). Call in the event loop."""
        if self._pool is None:
            return None
        self._loop = asyncio.get_running_loop()
        return self._submit

    def _submit(self, job: Job, done: Callable[[], None]) -> "Future[bytes]":
        assert self._pool is not None and self._loop is not None
        future = self._pool.submit(job)
        loop = self._loop

        def wake(_future: "Future[bytes]") -> None:
            try:
                loop.call_soon_threadsafe(done)
            except RuntimeError:  # the loop has closed: nobody is waiting any more
                pass

        future.add_done_callback(wake)
        return future

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
