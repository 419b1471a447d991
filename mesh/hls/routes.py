"""HLS over HTTP on an edge: URL patterns, replies, headers, and domain errors as HTTP answers.

- ``GET /{app}/streams/{id}.m3u8``            the media playlist (source rendition)
- ``GET /{app}/streams/{id}_adaptive.m3u8``   the master playlist
- ``GET /{app}/streams/{id}{seq:09d}.ts``     a segment

Serving is the hot path. Once a stream is open, its playlist and segments are answered by the HTTP
layer's fast path (:meth:`HlsRoutes.fast_get`) with replies built once: the playlist is rendered
when the window changes, not per request, and a segment's bytes go out of a memory file with
``sendfile``. Everything else (first requests, 404s, master playlists, unusual requests) goes
through :meth:`HlsRoutes.handle`, which has the same effects and headers.
"""
from __future__ import annotations

import re
import time
from collections import OrderedDict
from typing import Any

from aiohttp import web

from .. import metrics
from ..errors import MeshError, NotFound
from ..http.app import HttpError, HttpServer, Reply, json_response
from ..names import NAME_PATTERN
from ..registry import RETRY_AFTER_S, RegistryUnavailable
from .playlist import Variant, render_master_playlist
from .stream import EdgeStream
from .streams import EdgeStreams

SEGMENT_RE = re.compile(rf"({NAME_PATTERN}?)(\d{{9}})\.ts")
PLAYLIST_RE = re.compile(rf"({NAME_PATTERN})\.m3u8")
ADAPTIVE = "_adaptive"
PLAYLIST_TYPE = "application/vnd.apple.mpegurl"
PLAYLIST_CONTENT_TYPE = PLAYLIST_TYPE + "; charset=utf-8"
SEGMENT_TYPE = "video/mp2t"
SEGMENT_CACHE_CONTROL = "public, max-age=86400, immutable"
PLAYLIST_CACHE_CONTROL = "max-age=1"
SEGMENT_FILES_MAX = 256  # memory files for sendfile: bounded in descriptors...
SEGMENT_FILES_MAX_BYTES = 128 << 20  # ... and in bytes (they copy segments the window holds)
VIEWER_HORIZON_S = 10.0  # a viewer counts while it asked for a playlist this recently


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
        reply = Reply(data, SEGMENT_TYPE, SEGMENT_CACHE_CONTROL, file=True)
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


def as_http(exc: MeshError) -> HttpError:
    """A viewer asked for something this edge cannot serve: 404 with the reason in words
    (a stream that has not started, has finished or lost its origin is not here to play)."""
    return HttpError(404, exc.message, exc.reason)


class HlsRoutes:
    def __init__(self, streams: EdgeStreams, app_name: str):
        self.streams = streams
        self.prefix = f"/{app_name}/streams/"
        self.files = SegmentFiles()
        self._playlists: dict[str, tuple[int, Reply]] = {}
        self._viewers: dict[tuple[str, str], float] = {}
        self.egress_bytes = 0
        self._egress_mark = (time.monotonic(), 0)
        self._playlist_ok = metrics.VIEWER_REQUESTS.labels("playlist", "200")
        self._segment_ok = metrics.VIEWER_REQUESTS.labels("segment", "200")
        streams.on_close(self._forget)

    def install(self, app: web.Application, http: HttpServer) -> None:
        app.router.add_get(self.prefix + "{name}", self.handle)
        http.add_fast_get(self.prefix, self.fast_get)

    def close(self) -> None:
        self.files.close()
        self._playlists.clear()

    def load(self) -> dict[str, Any]:
        now = time.monotonic()
        horizon = now - VIEWER_HORIZON_S
        self._viewers = {k: t for k, t in self._viewers.items() if t >= horizon}
        then, sent_then = self._egress_mark
        self._egress_mark = (now, self.egress_bytes)
        sent = self.egress_bytes - sent_then
        metrics.HLS_EGRESS_BYTES.inc(sent)
        return {"viewers": len(self._viewers), "edge_streams": len(self.streams.streams),
                "egress_kbps": round(sent * 8 / 1000 / max(now - then, 1e-3), 1)}

    # -- replies ---------------------------------------------------------------------------
    def _playlist(self, stream: EdgeStream) -> Reply:
        """The media playlist, rendered again only when the window changed."""
        version = stream.window.version
        cached = self._playlists.get(stream.stream_id)
        if cached is None or cached[0] != version:
            text = stream.window.playlist()
            cached = self._playlists[stream.stream_id] = (
                version, Reply(text.encode(), PLAYLIST_CONTENT_TYPE, PLAYLIST_CACHE_CONTROL))
        return cached[1]

    def _forget(self, stream_id: str) -> None:
        self.files.forget(stream_id)
        self._playlists.pop(stream_id, None)

    def _sent(self, reply: Reply) -> Reply:
        self.egress_bytes += len(reply.body)
        return reply

    # -- HTTP ------------------------------------------------------------------------------
    def fast_get(self, name: str, remote: str) -> Reply | None:
        """The fast path's route (see :meth:`mesh.http.app.HttpServer.add_fast_get`): a playlist
        or segment of a stream already open here, with :meth:`handle`'s effects; None when
        :meth:`handle` has more to do (open a stream, answer 404, a master playlist)."""
        if name.endswith(".ts"):
            m = SEGMENT_RE.fullmatch(name)
            if m is None or (stream := self.streams.get(m.group(1))) is None:
                return None
            seq = int(m.group(2))
            data = stream.window.segment(seq)
            if data is None:
                return None
            stream.touch()
            self._segment_ok.inc()
            return self._sent(self.files.get(stream.stream_id, seq, data))
        m = PLAYLIST_RE.fullmatch(name)
        if m is None or m.group(1).endswith(ADAPTIVE) or (stream := self.streams.get(m.group(1))) is None:
            return None
        stream.touch()
        self._viewers[(remote, stream.stream_id)] = time.monotonic()
        self._playlist_ok.inc()
        return self._sent(self._playlist(stream))

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._handle(request, request.match_info["name"])
        except RegistryUnavailable as exc:  # the database is away: a quick 503, try again soon
            return json_response({"error": exc.message}, status=503,
                                 headers={"Retry-After": str(RETRY_AFTER_S)})
        except MeshError as exc:
            kind = "segment" if request.match_info["name"].endswith(".ts") else "playlist"
            metrics.VIEWER_REQUESTS.labels(kind, "404").inc()
            raise as_http(exc) from None

    async def _handle(self, request: web.Request, name: str) -> web.StreamResponse:
        if m := PLAYLIST_RE.fullmatch(name):
            base = m.group(1)
            if base.endswith(ADAPTIVE):
                return await self._master(base[: -len(ADAPTIVE)])
            stream = await self.streams.open(base)
            self._viewers[(request.remote or "?", base)] = time.monotonic()
            self._playlist_ok.inc()
            return self._sent(self._playlist(stream)).response()
        if m := SEGMENT_RE.fullmatch(name):
            base, seq = m.group(1), int(m.group(2))
            stream = await self.streams.open(base)
            data = stream.window.segment(seq)
            if data is None:
                raise NotFound(f"segment {seq} of {base} is not (or no longer) here", "segment")
            self._segment_ok.inc()
            self.egress_bytes += len(data)
            return web.Response(body=data, headers={"Cache-Control": SEGMENT_CACHE_CONTROL,
                                                    "Content-Type": SEGMENT_TYPE})
        raise NotFound(f"{name[:100]!r} is not a playlist ({{id}}.m3u8) or segment "
                       f"({{id}}NNNNNNNNN.ts) name", "path")

    async def _master(self, stream_id: str) -> web.Response:
        stream = await self.streams.open(stream_id)
        w = stream.window
        peak, average = w.peak_and_average_bps()
        codecs = ",".join(c.codec_string for c in (w.video, w.audio) if c is not None)
        variant = Variant(f"{stream_id}.m3u8", peak, average or None,
                          w.video.width if w.video else None, w.video.height if w.video else None,
                          codecs or None)
        text = render_master_playlist([variant])
        self.egress_bytes += len(text)
        return web.Response(text=text, content_type=PLAYLIST_TYPE,
                            headers={"Cache-Control": PLAYLIST_CACHE_CONTROL})

