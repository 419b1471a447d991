"""The streams an edge serves: opened on a viewer's first request, closed when nobody watches.

:class:`EdgeStreams` owns the map of :class:`~mesh.hls.stream.EdgeStream` objects. The first
request for a stream (or one of its renditions) looks it up in the directory, subscribes and takes
the snapshot; concurrent first requests share that one join (single flight), and a stream the
directory does not have is remembered for a second so a burst of bad requests costs the database
one query. A janitor leaves renditions nobody asked for in a while, closes streams with none
left, and rechecks streams whose origin fell silent.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

from .. import metrics
from ..errors import MeshError, NotFound
from ..registry import BROADCASTING, RegistryUnavailable
from ..names import is_name
from .packetiser import TsPacketisers, WorkerPool
from .stream import SRC, Bus, Directory, EdgeStream, Rendition, check_servable
from .cmaf import LlWindow
from .window import RenditionWindow

log = logging.getLogger("mesh.edge")

NEGATIVE_CACHE_S = 1.0  # how long "no such stream" is remembered before asking again
NEGATIVE_CACHE_MAX = 10_000
TIDY_INTERVAL_S = 0.5
KNOWN_DOCS_MAX = 10_000  # stream documents remembered for a database outage
DOC_FRESH_S = 2.0  # a stream document this young is good enough for a master playlist


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
    ll_part_target_s: float = 0.2  # until the origin's config says
    ll_block_s: float = 0.0  # longest blocking playlist wait (0: three target durations)
    recheck_s: float = 2.0  # ask the registry about every served stream at least this often


def playlist_base(stream_id: str, rendition: str) -> str:
    """A rendition's playlist and segment base name: ``cam1`` or ``cam1_360p600kbps``."""
    return stream_id if rendition == SRC else f"{stream_id}_{rendition}"


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
        """Called with a playlist base name when the edge stops serving it (to free caches)."""
        self._on_close.append(callback)

    def get(self, stream_id: str, rendition: str = SRC) -> Rendition | None:
        """A rendition already being served here (the fast path's question), or None."""
        stream = self.streams.get(stream_id)
        return stream.renditions.get(rendition) if stream is not None else None

    async def open(self, stream_id: str, rendition: str = SRC) -> tuple[EdgeStream, Rendition]:
        """The stream and the rendition, joined if need be; domain errors say why not."""
        stream = self.streams.get(stream_id)
        if stream is None:
            stream = await self._open_stream(stream_id, rendition)
        s = self.settings
        return stream, await stream.open(rendition, snapshot_wait_s=s.snapshot_wait_s,
                                         first_segment_wait_s=s.segment_target_s * 2 + 1)

    async def fresh_doc(self, stream: EdgeStream) -> dict[str, Any]:
        """The stream's document, asked again when older than a couple of seconds (what the edge
        knows if the directory does not answer)."""
        if time.monotonic() - stream.doc_at > DOC_FRESH_S:
            try:
                doc = await self._directory.get_stream(stream.stream_id)
            except Exception as exc:
                log.debug("stream document of %s not refreshed: %s", stream.stream_id, exc)
            else:
                if doc is not None:
                    stream.set_doc(doc)
        return stream.doc

    async def _open_stream(self, stream_id: str, rendition: str) -> EdgeStream:
        if not is_name(stream_id):
            raise NotFound("not a stream id", "path")
        missing = self._missing.get(stream_id)
        if missing is not None:
            if missing[0] > time.monotonic():
                raise missing[1]  # asked again within a second: spare the database
            del self._missing[stream_id]
        task = self._opening.get(stream_id)
        if task is None:
            task = self._opening[stream_id] = asyncio.create_task(self._join(stream_id, rendition))
            task.add_done_callback(lambda _t: self._opening.pop(stream_id, None))
        return await asyncio.shield(task)

    async def _join(self, stream_id: str, rendition: str) -> EdgeStream:
        s = self.settings
        try:
            try:
                doc = await self._directory.get_stream(stream_id)
                self._remember(stream_id, doc)
            except RegistryUnavailable:
                doc = self._known.get(stream_id)
                if doc is None or doc.get("status") != BROADCASTING:
                    raise
                log.info("registry unavailable; joining %s from what this edge knew of it", stream_id)
            doc = check_servable(stream_id, s.app, doc)
        except RegistryUnavailable:
            raise  # not remembered: the next viewer asks again
        except MeshError as exc:
            if len(self._missing) >= NEGATIVE_CACHE_MAX:
                self._missing.clear()
            self._missing[stream_id] = (time.monotonic() + NEGATIVE_CACHE_S, exc)
            raise

        def make_window(name: str) -> RenditionWindow:
            return RenditionWindow(playlist_base(stream_id, name), self._packetise, window=s.playlist_window,
                                   retired=s.retired_segments_kept, target_s=s.segment_target_s,
                                   offload=self._workers.offload())

        def make_ll(name: str) -> LlWindow:
            return LlWindow(playlist_base(stream_id, name), window=s.playlist_window,
                            retired=s.retired_segments_kept, target_s=s.segment_target_s,
                            part_target_s=s.ll_part_target_s)

        stream = EdgeStream(stream_id, self._bus, self._directory, make_window,
                            origin_silence_s=s.origin_silence_s, make_ll=make_ll)
        stream.follow(doc)
        r = await stream.open(rendition, snapshot_wait_s=s.snapshot_wait_s,
                              first_segment_wait_s=s.segment_target_s * 2 + 1)
        self.streams[stream_id] = stream
        self._gauge.set(len(self.streams))
        log.info("serving %s from %s (%d segments at once)", playlist_base(stream_id, rendition),
                 stream.origin, len(r.window.listed))
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
                for name in await stream.tidy(now, limit):
                    log.info("no viewer asked for %s in %.0f s; unsubscribing",
                             playlist_base(stream_id, name), limit)
                    for callback in self._on_close:
                        callback(playlist_base(stream_id, name))
                if not stream.renditions:
                    del self.streams[stream_id]
                    self._gauge.set(len(self.streams))
                elif stream.due(now, self.settings.recheck_s):
                    due.append(stream)
            if not due:
                continue
            asked = time.monotonic()
            try:
                docs = await self._lookup([s.stream_id for s in due])
            except Exception as exc:  # the registry is away: keep serving what we follow
                if not failing:
                    log.warning("cannot recheck %d streams in the registry (%s); serving on", len(due), exc)
                failing = True
                for stream in due:
                    stream.apply(None, asked)
                continue
            failing = False
            for stream in due:
                doc = docs.get(stream.stream_id)
                if doc is not None:
                    self._remember(stream.stream_id, doc)
                stream.apply(doc, asked)

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
