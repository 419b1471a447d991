"""MP4 recording of a live stream's renditions on its origin, crash-safe by layout.

The origin records ``src``; with ``record_rungs`` (or a stream's ``?rungs=true``) also each rung
of its ladder, one file per rendition, fed by :class:`~.abr.Renditions` from what it publishes.

The file is fragmented MP4 (:class:`mesh_codecs.fmp4.Fmp4Packetiser`): the init segment
(``ftyp`` + ``moov``) is written when the stream's first media arrives, then each of the origin's
own segments becomes one ``moof`` + ``mdat`` fragment, appended and ``fsync``'d when the next
segment starts (and the last one when the stream ends). Nothing is ever rewritten in place, so an
origin killed mid-stream leaves a file that plays up to the last complete fragment; a fragment
half-written at the kill is ignored by players (its box runs past the end of the file).

Building and writing a fragment runs on one shared writer thread (the Numba kernel releases the
GIL; ``fsync`` blocks), in order. A recorder keeps at most :data:`MAX_PENDING` fragments waiting
for that thread; beyond that (a disk too slow) fragments are dropped and counted. Any write error
(disk full, I/O error) is logged once, counted in ``mesh_record_errors_total`` and ends that
recording; the live stream never notices.

Files are named ``{stream_id}-{epoch}-{UTC start YYYYmmddHHMMSS}.mp4`` below the recording
directory (a rung's ``{stream_id}_{rendition}-{epoch}-{start}.mp4``, e.g.
``cam1_360p600kbps-3-20261201184833.mp4``): a name never names other bytes, also after a
takeover (the epoch changes). A rung's recording starts at its first keyframe; a rung the
ladder drops closes its file like an ended stream.
"""
from __future__ import annotations

import concurrent.futures
import errno
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from mesh_codecs import fmp4
from mesh_codecs.fmp4 import Fmp4Error, Fmp4Packetiser
from mesh_codecs.media import VIDEO, AccessUnit, AudioConfig, VideoConfig

from .. import metrics
from ..broker.wire import FLAG_KEY, FLAG_SEG_START

log = logging.getLogger("mesh.record")

MAX_PENDING = 32  # fragments (segments) per recording waiting for the writer thread
_writer: concurrent.futures.ThreadPoolExecutor | None = None
_writer_lock = threading.Lock()


def _pool() -> concurrent.futures.ThreadPoolExecutor:
    global _writer
    with _writer_lock:
        if _writer is None:
            _writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="mesh-record")
        return _writer


def warm_up() -> None:
    """Load (or compile) the fMP4 kernels on the writer thread, before the first recording needs
    them, so a cold cache does not hold up the first fragments."""
    _pool().submit(fmp4.warm_up)


def vod_name(stream_id: str, epoch: int, started: float, rendition: str = "src") -> str:
    base = stream_id if rendition == "src" else f"{stream_id}_{rendition}"
    return f"{base}-{epoch}-{time.strftime('%Y%m%d%H%M%S', time.gmtime(started))}"


@dataclass
class RecordingInfo:
    """What the registry learns about a recording (``vods``)."""

    vod_id: str
    stream_id: str
    path: Path
    started: float  # unix time
    size: int = 0
    duration_ms: int = 0
    fragments: int = 0
    failed: str = ""
    rendition: str = "src"


class Mp4Recorder:
    """Records one rendition of a live stream (``src`` or a rung): fed every stamped access unit.
    ``configs`` is asked for the codec configs when the file is opened (on the writer thread)."""

    def __init__(self, directory: Path, stream_id: str, epoch: int, *,
                 configs: Callable[[], tuple[VideoConfig | None, AudioConfig | None]],
                 now: float | None = None, rendition: str = "src"):
        started = time.time() if now is None else now
        vod_id = vod_name(stream_id, epoch, started, rendition)
        self.info = RecordingInfo(vod_id, stream_id, directory / f"{vod_id}.mp4", started,
                                  rendition=rendition)
        self._configs = configs
        self._keyed = rendition == "src"  # src starts with its stream; a rung at a keyframe
        self._packetiser: Fmp4Packetiser | None = None
        self._fd = -1
        self._aus: list[AccessUnit] = []
        self._seg: int | None = None
        self._first_dts: int | None = None
        self._last_dts = 0
        self._pending = 0
        self._lock = threading.Lock()
        self.closed = False
        self._future: concurrent.futures.Future[None] | None = None

    # -- from the live stream (event loop) ---------------------------------------------------
    def push(self, track: int, pts: int, dts: int, flags: int, seg: int, data: bytes | memoryview) -> None:
        if self.closed:
            return
        if not self._keyed:
            if track != VIDEO or not flags & FLAG_KEY:
                return
            self._keyed = True
        if flags & FLAG_SEG_START and self._aus:
            self._flush(next_dts=dts)
        if self._seg is None or flags & FLAG_SEG_START:
            self._seg = seg
        if self._first_dts is None:
            self._first_dts = dts
        self._last_dts = max(self._last_dts, dts)
        key = bool(flags & FLAG_KEY) or track != VIDEO
        self._aus.append(AccessUnit(track, pts, dts, key, bytes(data)))

    def close(self) -> None:
        """The stream ended: write what is buffered; the file is complete once the writer is done."""
        if self.closed:
            return
        if self._aus:
            self._flush(next_dts=None)
        self.closed = True
        self._submit(self._close_file)

    def wait(self, timeout_s: float = 60.0) -> None:
        """Block until the writer has done this recording's queued work (tests, shutdown)."""
        future = self._future
        if future is not None:
            concurrent.futures.wait([future], timeout=timeout_s)

    # -- internals ---------------------------------------------------------------------------
    def _flush(self, next_dts: int | None) -> None:
        aus, self._aus = self._aus, []
        seq = self._seg or 0
        with self._lock:
            backlog = self._pending >= MAX_PENDING
        if backlog:
            metrics.RECORD_ERRORS.labels("backlog").inc()
            log.warning("recording %s: the disk is not keeping up; dropped segment %d",
                        self.info.vod_id, seq)
            return
        duration_ms = ((next_dts if next_dts is not None else self._last_dts) - (self._first_dts or 0)) // 90
        with self._lock:
            self._pending += 1
        self._submit(lambda: self._write(aus, seq, next_dts, duration_ms))

    def _submit(self, job: Callable[[], None]) -> None:
        self._future = _pool().submit(job)

    def _write(self, aus: list[AccessUnit], seq: int, next_dts: int | None, duration_ms: int) -> None:
        try:
            if self.info.failed:
                return
            if self._fd < 0:
                self._open()
            assert self._packetiser is not None
            data = self._packetiser.fragment(aus, seq % (1 << 32), next_dts)
            self._write_all(data)
            os.fsync(self._fd)
            self.info.size += len(data)
            self.info.fragments += 1
            self.info.duration_ms = max(self.info.duration_ms, duration_ms)
            metrics.RECORD_BYTES.inc(len(data))
        except (OSError, Fmp4Error) as exc:
            self._fail(exc)
        finally:
            with self._lock:
                self._pending -= 1

    def _open(self) -> None:
        video, audio = self._configs()
        self._packetiser = Fmp4Packetiser(video, audio)
        path = self.info.path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        self._write_all(self._packetiser.init)
        os.fsync(self._fd)
        self.info.size = len(self._packetiser.init)
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)  # the file's name survives a crash too
        finally:
            os.close(dir_fd)
        log.info("recording %s to %s", self.info.stream_id, path)

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]

    def _fail(self, exc: Exception) -> None:
        code = getattr(exc, "errno", None)
        reason = {errno.ENOSPC: "disk_full", errno.EDQUOT: "disk_full", errno.EIO: "io",
                  errno.EACCES: "permission", errno.EROFS: "read_only"}.get(code or 0, "write")
        if isinstance(exc, Fmp4Error):
            reason = "media"
        metrics.RECORD_ERRORS.labels(reason).inc()
        self.info.failed = f"{reason}: {exc}"
        log.error("recording %s stopped (%s); the live stream goes on", self.info.vod_id, exc)
        self._close_file()

    def _close_file(self) -> None:
        if self._fd >= 0:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = -1

