"""The streams an edge serves: opened on a viewer's first request, closed when nobody watches.

:class:`EdgeStreams` owns the map of :class:`~mesh.hls.stream.EdgeStream` objects. The first
request for a stream looks it up in the directory, subscribes and takes the snapshot; concurrent
first requests share that one join (single flight), and a stream the directory does not have is
remembered for a second so a burst of bad requests costs the database one query. A janitor
closes streams nobody asked for in a while and rechecks, in one query, streams whose origin fell
silent or that were not checked for ``recheck_s`` (so a stream that moved to a higher epoch is
followed even while its deposed origin keeps sending).

The database may be away. Stream documents seen are remembered (bounded), so a new viewer of a
stream known to be live is still served; otherwise the registry's quick
:class:`~mesh.registry.RegistryUnavailable` reaches the viewer as a 503 with ``Retry-After``.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Callable

from .. import metrics
from ..errors import MeshError, NotFound
from ..registry import BROADCASTING, RegistryUnavailable
from ..names import is_name
from .packetiser import TsPacketisers, WorkerPool
from .stream import Bus, Directory, EdgeStream, check_servable
from .window import RenditionWindow

log = logging.getLogger("mesh.edge")

NEGATIVE_CACHE_S = 1.0  # how long "no such stream" is remembered before asking again
NEGATIVE_CACHE_MAX = 10_000
TIDY_INTERVAL_S = 0.5
KNOWN_DOCS_MAX = 10_000


@dataclass(frozen=True)
class HlsSettings:
    app: str
    playlist_window: int = 5
    retired_segments_kept: int = 10
    segment_target_s: float = 2.0
    idle_unsubscribe_s: float = 60.0
    origin_silence_s: float = 5.0
    snapshot_wait_s: float = 6.0
    packetise_workers: int = 2
    recheck_s: float = 2.0  # ask the registry about every served stream at least this often


class EdgeStreams:
    def __init__(self, settings: HlsSettings, directory: Directory, bus: Bus):
        self.settings = settings
        self._directory = directory
        self._bus = bus
        self.streams: dict[str, EdgeStream] = {}
        self._opening: dict[str, asyncio.Task[EdgeStream]] = {}
        self._missing: dict[str, tuple[float, MeshError]] = {}
        self._packetise = TsPacketisers()
        self._workers = WorkerPool(settings.packetise_workers)
        self._janitor: asyncio.Task[None] | None = None
        self._gauge = metrics.STREAMS.labels("edge")
        self._on_close: list[Callable[[str], None]] = []
        self._known: dict[str, dict] = {}  # last stream documents seen, for a database outage

    async def start(self) -> None:
        self._janitor = asyncio.create_task(self._tidy(), name="edge-janitor")

    async def stop(self) -> None:
        if self._janitor is not None:
            self._janitor.cancel()
            await asyncio.gather(self._janitor, return_exceptions=True)
        for task in list(self._opening.values()):
            task.cancel()
        await asyncio.gather(*self._opening.values(), return_exceptions=True)
        streams, self.streams = list(self.streams.values()), {}
        for stream in streams:
            await stream.leave()
        self._gauge.set(0)
        await asyncio.to_thread(self._workers.close)

    def on_close(self, callback: Callable[[str], None]) -> None:
        """Called with a stream's id when the edge stops serving it (to free reply caches)."""
        self._on_close.append(callback)

    def get(self, stream_id: str) -> EdgeStream | None:
        """A stream already open here (the fast path's question), or None."""
        return self.streams.get(stream_id)

    async def open(self, stream_id: str) -> EdgeStream:
        """The stream, joined if need be; :class:`NotFound`/:class:`Unavailable` say why not."""
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.touch()
            return stream
        if not is_name(stream_id):
            raise NotFound("not a stream id", "path")
        missing = self._missing.get(stream_id)
        if missing is not None:
            if missing[0] > time.monotonic():
                raise missing[1]  # asked again within a second: spare the database
            del self._missing[stream_id]
        task = self._opening.get(stream_id)
        if task is None:
            task = self._opening[stream_id] = asyncio.create_task(self._open(stream_id))
            task.add_done_callback(lambda _t: self._opening.pop(stream_id, None))
        return await asyncio.shield(task)

    async def _open(self, stream_id: str) -> EdgeStream:
        try:
            return await self._join(stream_id)
        except MeshError as exc:
            if len(self._missing) >= NEGATIVE_CACHE_MAX:
                self._missing.clear()
            self._missing[stream_id] = (time.monotonic() + NEGATIVE_CACHE_S, exc)
            raise

    async def _join(self, stream_id: str) -> EdgeStream:
        s = self.settings
        try:
            doc = await self._directory.get_stream(stream_id)
            self._remember(stream_id, doc)
        except RegistryUnavailable:
            doc = self._known.get(stream_id)
            if doc is None or doc.get("status") != BROADCASTING:
                raise
            log.info("registry unavailable; joining %s from what this edge knew of it", stream_id)
        doc = check_servable(stream_id, s.app, doc)
        window = RenditionWindow(stream_id, self._packetise, window=s.playlist_window,
                                 retired=s.retired_segments_kept, target_s=s.segment_target_s,
                                 offload=self._workers.offload())
        stream = EdgeStream(stream_id, window, self._bus, self._directory,
                            origin_silence_s=s.origin_silence_s)
        await stream.join(doc, snapshot_wait_s=s.snapshot_wait_s,
                          first_segment_wait_s=s.segment_target_s * 2 + 1)
        # Published only now: concurrent first requests wait on this one task (single flight)
        # instead of finding a half-joined stream and answering with an empty playlist.
        self.streams[stream_id] = stream
        self._gauge.set(len(self.streams))
        log.info("serving %s from %s (%d segments at once)", stream_id, stream.origin,
                 len(window.listed))
        return stream

    def _remember(self, stream_id: str, doc: dict | None) -> None:
        if doc is None:
            self._known.pop(stream_id, None)
            return
        if len(self._known) >= KNOWN_DOCS_MAX and stream_id not in self._known:
            self._known.pop(next(iter(self._known)))
        self._known[stream_id] = doc

    async def _tidy(self) -> None:
        limit = self.settings.idle_unsubscribe_s
        failing = False
        while True:
            await asyncio.sleep(TIDY_INTERVAL_S)
            now = time.monotonic()
            due: list[EdgeStream] = []
            for stream_id, stream in list(self.streams.items()):
                if stream.idle_s(now) > limit:
                    log.info("no viewer asked for %s in %.0f s; unsubscribing", stream_id, limit)
                    del self.streams[stream_id]
                    self._gauge.set(len(self.streams))
                    for callback in self._on_close:
                        callback(stream_id)
                    await stream.leave()
                elif stream.due(now, self.settings.recheck_s):
                    due.append(stream)
            if not due:
                continue
            try:
                docs = await self._lookup([s.stream_id for s in due])
            except Exception as exc:  # the registry is away: keep serving what we follow
                if not failing:
                    log.warning("cannot recheck %d streams in the registry (%s); serving on", len(due), exc)
                failing = True
                for stream in due:
                    stream.apply(None)
                continue
            failing = False
            for stream in due:
                doc = docs.get(stream.stream_id)
                if doc is not None:
                    self._remember(stream.stream_id, doc)
                stream.apply(doc)

    async def _lookup(self, stream_ids: list[str]) -> dict[str, dict]:
        many = getattr(self._directory, "get_streams", None)
        if many is not None:
            return await many(stream_ids)
        found = {}
        for stream_id in stream_ids:
            doc = await self._directory.get_stream(stream_id)
            if doc is not None:
                found[stream_id] = doc
        return found
