"""The edge role: HLS for viewers, pulled on demand from each stream's origin over the bus.

The first request for a stream looks its origin up in the registry, subscribes on the bus and takes
the snapshot, so a cold edge answers with a full playlist window at once. Concurrent first requests
share that one subscription. A janitor frees streams nobody asked for in a while and follows a
stream to its new origin when the old one falls silent.

Serving is the hot path. Once a stream is open, its playlist and segments are answered by the HTTP
layer's fast path (:meth:`EdgePart.fast_get`) with replies built once: the playlist is rendered
when the window changes, not per request, and a segment's bytes go out of a memory file with
``sendfile``. Everything else (first requests, 404s, master playlists, unusual requests) goes
through :meth:`EdgePart.handle`, which has the same effects and headers.
"""
from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from aiohttp import web

from mesh_codecs.media import AudioConfig, VideoConfig

from .. import metrics
from ..broker.keys import node_keys
from ..broker.subscriber import BusSubscriber, Subscription
from ..broker.wire import NAME_RE
from ..hls.window import RenditionWindow
from ..http.app import HttpError, Reply
from ..registry import BROADCASTING, CREATED, FINISHED

if TYPE_CHECKING:
    from .node import Node

log = logging.getLogger("mesh.edge")

SEGMENT_RE = re.compile(r"^([A-Za-z0-9_-]{1,128}?)(\d{9})\.ts$")
PLAYLIST_RE = re.compile(r"^([A-Za-z0-9_-]{1,128})\.m3u8$")
PLAYLIST_TYPE = "application/vnd.apple.mpegurl"
PLAYLIST_CONTENT_TYPE = PLAYLIST_TYPE + "; charset=utf-8"
SEGMENT_CACHE_CONTROL = "public, max-age=86400, immutable"
PLAYLIST_CACHE_CONTROL = "max-age=1"
SNAPSHOT_WAIT_S = 6.0
SEGMENT_FILES_MAX = 256  # memory files for sendfile: bounded in descriptors...
SEGMENT_FILES_MAX_BYTES = 128 << 20  # ... and in bytes (they copy segments the window holds)
NEGATIVE_CACHE_S = 1.0  # how long "no such stream" is remembered before asking the registry again


class TsCache:
    """One packetiser per codec configuration (they hold the PAT/PMT and the SPS/PPS to insert)."""

    def __init__(self) -> None:
        from mesh_codecs.ts import TsPacketiser, warm_up

        warm_up()  # load the cached Numba kernels now, not on the first viewer's request
        self._cls = TsPacketiser
        self._cache: dict[tuple[Any, Any], Any] = {}

    def __call__(self, video: VideoConfig | None, audio: AudioConfig | None, aus: list) -> bytes:
        key = (video, audio)
        packetiser = self._cache.get(key)
        if packetiser is None:
            if len(self._cache) > 256:
                self._cache.clear()
            packetiser = self._cache[key] = self._cls(video, audio)
        return packetiser.segment(aus)


class SegmentFiles:
    """Segment replies whose bodies sit in memory files (for sendfile), least recently used out
    first, bounded in files and bytes. A reply is valid while the window still holds its bytes."""

    def __init__(self, max_files: int = SEGMENT_FILES_MAX, max_bytes: int = SEGMENT_FILES_MAX_BYTES):
        self.max_files, self.max_bytes = max_files, max_bytes
        self._replies: OrderedDict[tuple[str, int], Reply] = OrderedDict()
        self.bytes = 0

    def get(self, stream_id: str, seq: int, data: bytes) -> Reply:
        key = (stream_id, seq)
        reply = self._replies.get(key)
        if reply is not None:
            if reply.body is data:
                self._replies.move_to_end(key)
                return reply
            self._drop(key)  # the same name with other bytes (a restarted stream): rebuild
        reply = Reply(data, "video/mp2t", SEGMENT_CACHE_CONTROL, file=True)
        self._replies[key] = reply
        self.bytes += len(data)
        while self._replies and (len(self._replies) > self.max_files or self.bytes > self.max_bytes):
            self._drop(next(iter(self._replies)))  # a closed reply still works, by plain writes
        return reply

    def forget(self, stream_id: str) -> None:
        for key in [k for k in self._replies if k[0] == stream_id]:
            self._drop(key)

    def close(self) -> None:
        for key in list(self._replies):
            self._drop(key)

    def _drop(self, key: tuple[str, int]) -> None:
        reply = self._replies.pop(key)
        self.bytes -= len(reply.body)
        reply.close()

    def __len__(self) -> int:
        return len(self._replies)


class EdgeStream:
    def __init__(self, stream_id: str, window: RenditionWindow):
        self.stream_id = stream_id
        self.window = window
        self.sub: Subscription | None = None
        self.origin = ""
        self.bus_endpoint = ""
        self.epoch = 0
        self.last_request = time.monotonic()
        self.listed = asyncio.Event()  # a segment is listed or the stream ended
        window.on_change(self.listed.set)
        self._playlist: Reply | None = None
        self._playlist_key: tuple[bool, int, int] | None = None

    def touch(self) -> None:
        self.last_request = time.monotonic()

    def playlist_reply(self) -> Reply:
        """The media playlist, rendered again only when the window changed. Segment numbers only
        grow and the window only appends, drops from the front or restarts empty, so (ended,
        length, last number) identifies what is listed, whoever changed it."""
        w = self.window
        key = (w.ended, len(w.listed), w.listed[-1].seq if w.listed else -1)
        if key != self._playlist_key or self._playlist is None:
            self._playlist = Reply(w.playlist().encode(), PLAYLIST_CONTENT_TYPE, PLAYLIST_CACHE_CONTROL)
            self._playlist_key = key
        return self._playlist


class EdgePart:
    name = "edge"

    def __init__(self, node: "Node"):
        self.node = node
        assert node.zmq is not None
        keys = node_keys(node.cfg.bus_security, node.cfg.data_dir, node.node_id)
        node.info.bus_public_key = keys.public.decode() if keys else ""
        self.bus = BusSubscriber(node.zmq, curve=keys)
        self.streams: dict[str, EdgeStream] = {}
        self._opening: dict[str, asyncio.Task[EdgeStream]] = {}
        self._missing: dict[str, tuple[float, HttpError]] = {}
        self._janitor: asyncio.Task[None] | None = None
        self._viewers: dict[tuple[str, str], float] = {}
        self.packetise = TsCache()
        self.files = SegmentFiles()
        self._playlist_ok = metrics.VIEWER_REQUESTS.labels("playlist", "200")
        self._segment_ok = metrics.VIEWER_REQUESTS.labels("segment", "200")
        cfg = node.cfg
        base = f"/{cfg.app}/streams"
        node.app.router.add_get(base + "/{name}", self.handle)
        node.http.add_fast_get(base + "/", self.fast_get)

    async def start(self) -> None:
        self._janitor = asyncio.create_task(self._tidy(), name="edge-janitor")

    async def stop(self) -> None:
        if self._janitor is not None:
            self._janitor.cancel()
            await asyncio.gather(self._janitor, return_exceptions=True)
        for task in self._opening.values():
            task.cancel()
        await self.bus.stop()
        self.streams.clear()
        self.files.close()

    def load(self) -> dict[str, Any]:
        horizon = time.monotonic() - 10
        self._viewers = {k: t for k, t in self._viewers.items() if t >= horizon}
        return {"viewers": len(self._viewers), "edge_streams": len(self.streams)}

    # -- HTTP ------------------------------------------------------------------------------
    def fast_get(self, name: str, remote: str) -> Reply | None:
        """The fast path's route (see :meth:`mesh.http.app.HttpServer.add_fast_get`): a playlist
        or segment of a stream already open here, with :meth:`handle`'s effects; None when
        :meth:`handle` has more to do (open a stream, answer 404, a master playlist)."""
        if name.endswith(".ts"):
            m = SEGMENT_RE.match(name)
            if m is None or (stream := self.streams.get(m.group(1))) is None:
                return None
            seq = int(m.group(2))
            data = stream.window.segment(seq)
            if data is None:
                return None
            stream.touch()
            self._segment_ok.inc()
            return self.files.get(stream.stream_id, seq, data)
        m = PLAYLIST_RE.match(name)
        if m is None or m.group(1).endswith("_adaptive") or (stream := self.streams.get(m.group(1))) is None:
            return None
        stream.touch()
        self._viewers[(remote, stream.stream_id)] = time.monotonic()
        self._playlist_ok.inc()
        return stream.playlist_reply()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if m := PLAYLIST_RE.match(name):
            base = m.group(1)
            if base.endswith("_adaptive"):
                return await self._master(request, base[: -len("_adaptive")])
            stream = await self.open(base)
            self._seen(request, base)
            self._playlist_ok.inc()
            return stream.playlist_reply().response()
        if m := SEGMENT_RE.match(name):
            base, seq = m.group(1), int(m.group(2))
            stream = await self.open(base)
            data = stream.window.segment(seq)
            if data is None:
                metrics.VIEWER_REQUESTS.labels("segment", "404").inc()
                raise HttpError(404, f"segment {seq} of {base} is not (or no longer) here", "segment")
            self._segment_ok.inc()
            return web.Response(body=data, headers={"Cache-Control": SEGMENT_CACHE_CONTROL,
                                                    "Content-Type": "video/mp2t"})
        raise HttpError(404, f"{name[:100]!r} is not a playlist ({{id}}.m3u8) or segment "
                             f"({{id}}NNNNNNNNN.ts) name", "path")

    async def _master(self, request: web.Request, stream_id: str) -> web.Response:
        stream = await self.open(stream_id)
        w = stream.window
        bandwidth = 0
        if w.listed:
            total = sum(len(w.data.get(s.seq, b"")) for s in w.listed)
            seconds = sum(s.duration_s for s in w.listed) or 1
            bandwidth = int(total * 8 / seconds)
        codecs = ",".join(c.codec_string for c in (w.video, w.audio) if c is not None)
        attrs = [f"BANDWIDTH={max(bandwidth, 1)}"]
        if w.video is not None:
            attrs.append(f"RESOLUTION={w.video.width}x{w.video.height}")
        if codecs:
            attrs.append(f'CODECS="{codecs}"')
        text = f"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-STREAM-INF:{','.join(attrs)}\n{stream_id}.m3u8\n"
        return web.Response(text=text, content_type=PLAYLIST_TYPE, headers={"Cache-Control": "max-age=1"})

    def _seen(self, request: web.Request, stream_id: str) -> None:
        self._viewers[(request.remote or "?", stream_id)] = time.monotonic()

    # -- streams ---------------------------------------------------------------------------
    async def open(self, stream_id: str) -> EdgeStream:
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.touch()
            return stream
        if not NAME_RE.match(stream_id):
            raise HttpError(404, "not a stream id", "path")
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
            return await self._subscribe(stream_id)
        except HttpError as exc:
            if len(self._missing) > 10_000:
                self._missing.clear()
            self._missing[stream_id] = (time.monotonic() + NEGATIVE_CACHE_S, exc)
            raise

    async def _subscribe(self, stream_id: str) -> EdgeStream:
        registry = self.node.registry
        assert registry is not None
        doc = await registry.get_stream(stream_id)
        app = self.node.cfg.app
        if doc is None or doc.get("app") != app:
            raise HttpError(404, f"no stream {stream_id} in {app}", "notfound")
        status = doc["status"]
        if status != BROADCASTING:
            why = {CREATED: "has not started yet", FINISHED: "has finished"}.get(
                status, "lost its origin (terminated unexpectedly)")
            raise HttpError(404, f"stream {stream_id} {why}", "notfound")
        cfg = self.node.cfg
        window = RenditionWindow(stream_id, self.packetise, window=cfg.playlist_window,
                                 retired=cfg.retired_segments_kept, target_s=cfg.segment_target_s)
        stream = EdgeStream(stream_id, window)
        self._follow(stream, doc)
        assert stream.sub is not None
        try:
            await asyncio.wait_for(stream.sub.snapshot_ready.wait(), SNAPSHOT_WAIT_S)
            if not window.listed and not window.ended:  # a brand-new stream: its first segment
                await asyncio.wait_for(stream.listed.wait(), cfg.segment_target_s * 2 + 1)
        except asyncio.TimeoutError:
            pass  # answer what we have; the player polls again
        except BaseException:  # cancelled (node stopping): do not leak the subscription
            await self.bus.unsubscribe(stream.sub)
            raise
        # Published only now: concurrent first requests wait on this one task (single flight)
        # instead of finding a half-joined stream and answering with an empty playlist.
        self.streams[stream_id] = stream
        log.info("serving %s from %s (%d segments at once)", stream_id, stream.origin,
                 len(window.listed))
        return stream

    def _follow(self, stream: EdgeStream, doc: dict[str, Any]) -> None:
        """Subscribe ``stream`` to the origin ``doc`` names (dropping an older subscription)."""
        if stream.sub is not None:
            asyncio.get_running_loop().create_task(self.bus.unsubscribe(stream.sub))
        stream.origin = str(doc.get("origin_node", ""))
        stream.bus_endpoint = str(doc.get("bus_endpoint", ""))
        stream.epoch = int(doc.get("epoch", 0))
        stream.sub = self.bus.subscribe(stream.bus_endpoint, str(doc.get("snapshot_endpoint", "")),
                                        stream.stream_id, "src", stream.window.feed,
                                        doc.get("bus_public_key"))

    async def _tidy(self) -> None:
        cfg = self.node.cfg
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for stream_id, stream in list(self.streams.items()):
                if now - stream.last_request > cfg.edge_idle_unsubscribe_s:
                    log.info("no viewer asked for %s in %.0f s; unsubscribing", stream_id,
                             cfg.edge_idle_unsubscribe_s)
                    del self.streams[stream_id]
                    self.files.forget(stream_id)
                    if stream.sub is not None:
                        await self.bus.unsubscribe(stream.sub)
                elif stream.sub is not None and stream.sub.silent_s > cfg.origin_silence_s:
                    await self._reresolve(stream)

    async def _reresolve(self, stream: EdgeStream) -> None:
        """The origin went quiet: find out from the registry whether the stream moved or ended."""
        assert self.node.registry is not None
        try:
            doc = await self.node.registry.get_stream(stream.stream_id)
        except Exception as exc:
            log.warning("cannot look %s up in the registry: %s", stream.stream_id, exc)
            return
        if doc is None:
            return
        if doc["status"] == BROADCASTING and (doc.get("bus_endpoint") != stream.bus_endpoint
                                              or int(doc.get("epoch", 0)) > stream.epoch):
            log.info("stream %s moved to %s (epoch %s); following it", stream.stream_id,
                     doc.get("origin_node"), doc.get("epoch"))
            self._follow(stream, doc)
        elif doc["status"] == FINISHED and not stream.window.ended:
            stream.window.ended = True  # its end of stream never reached us: end the playlist
        if stream.sub is not None:
            stream.sub.last_rx = time.monotonic()  # look again after another silence period
