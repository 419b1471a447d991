"""HLS over HTTP on an edge: URL patterns, replies, headers, and domain errors as HTTP answers.

- ``GET /{app}/streams/{id}.m3u8``            the media playlist (source rendition)
- ``GET /{app}/streams/{id}_{rung}.m3u8``     a ladder rung's media playlist (``cam1_360p600kbps``)
- ``GET /{app}/streams/{id}_adaptive.m3u8``   the master playlist: every live rendition
- ``GET /{app}/streams/{base}{seq:09d}.ts``   a segment of the playlist ``{base}.m3u8``

LL-HLS (CMAF parts, :mod:`mesh.hls.cmaf`, :mod:`mesh.hls.ll_playlist`) beside them:

- ``GET /{app}/streams/{base}_ll.m3u8``            the LL media playlist (``cam1_ll``, ``cam1_360p600kbps_ll``);
  with ``?_HLS_msn=M[&_HLS_part=P]`` it blocks until that part (or segment) is listed: 400 when
  it is too far ahead, 503 when it does not come within the bounded wait; with
  ``_HLS_skip=YES|v2`` a delta update (:mod:`mesh.hls.ll_playlist`) when the window is long enough
- ``GET /{app}/streams/{id}_ll_adaptive.m3u8``     the master playlist of the LL renditions
- ``GET /{app}/streams/{base}_ll{seq:09d}.{part}.m4s``  a part; ``{base}_ll{seq:09d}.m4s`` a segment;
  ``{base}_ll_init{crc:08x}.mp4`` the init segment. A part or segment about to be cut (a preload
  hint, or a request that reached this edge a moment before the part did, behind a round-robin
  balancer) is answered when it exists, not with 404.

A playlist base ending in ``_{h}p{kbps}kbps`` names a rung of the stream before it (so stream ids
ending like a rung name are not servable as such).

Serving is the hot path. Once a stream is open, its playlist and segments are answered by the HTTP
layer's fast path (:meth:`HlsRoutes.fast_get`) with replies built once: the playlist is rendered
when the window changes, not per request, and a segment's bytes go out of a memory file with
``sendfile``. Everything else (first requests, 404s, master playlists, unusual requests) goes
through :meth:`HlsRoutes.handle`, which has the same effects and headers.

Blocking LL playlist requests with a plain query (``_HLS_msn``, ``_HLS_part``, ``_HLS_skip``
and nothing else, :func:`~mesh.hls.ll_playlist.simple_query`) are answered on the fast path too:
one not yet satisfiable is parked (:mod:`mesh.hls.ll_parking`, one list and one timer per
rendition); when the window lists the part, each distinct answer (full playlist or
delta update) is rendered once and the same bytes go to every parked request it satisfies; at
the bounded wait's end the same 503 as :meth:`HlsRoutes.handle`'s. A request for the part or
segment being cut (the preload hint) is parked the same way and answered with its bytes (404 if
it does not come, as :meth:`HlsRoutes.handle` says). A request that would be an
error (400 too far ahead, a malformed directive) or an immediate 503 (stream ended) is left to
:meth:`HlsRoutes.handle`, so errors are answered in one place.

Protected streams (``require_play_token``): every playlist and segment request needs
``?token=`` with a play token for that stream (:mod:`mesh.tokens`); the playlists carry the same
query on every URI they list, so a player needs nothing but the tokenised playlist URL, and the
same URL gets the same bytes from every edge. Without a valid token: 403. Such requests carry a
query, so they never take the fast path, and a balancer's cache keyed on the whole URI never
serves a protected object to a request without the token.
"""
from __future__ import annotations

import asyncio
import json
import re
import time
from collections import OrderedDict
from typing import Any, Callable
from urllib.parse import quote

from aiohttp import web

from .. import metrics
from ..errors import MeshError, NotFound
from ..http.app import HttpError, HttpServer, Reply, json_response
from ..names import NAME_PATTERN
from ..tokens import TokenError
from .cmaf import LlWindow
from .ll_playlist import (SKIP_BOUNDARY_TARGETS, BadBlockingRequest, Report, block_target, reached,
                          render_ll_playlist, simple_query, skip_directive, too_far)
from .ll_parking import LlParking, Parked
from .ll_wait import Entry
from ..registry import RETRY_AFTER_S, RegistryUnavailable
from .playlist import Variant, render_master_playlist
from ..ladder import RENDITION_RE
from .stream import SRC, EdgeStream, Rendition
from .streams import EdgeStreams, playlist_base

SEGMENT_RE = re.compile(rf"({NAME_PATTERN}?)(\d{{9}})\.ts")
RUNG_BASE_RE = re.compile(rf"(.+)_({RENDITION_RE.pattern})")
PLAYLIST_RE = re.compile(rf"({NAME_PATTERN})\.m3u8")
ADAPTIVE = "_adaptive"
LL_PLAYLIST_RE = re.compile(rf"({NAME_PATTERN}?)_ll\.m3u8")
LL_ADAPTIVE_RE = re.compile(rf"({NAME_PATTERN}?)_ll_adaptive\.m3u8")
LL_MEDIA_RE = re.compile(rf"({NAME_PATTERN}?)_ll(\d{{9}})(?:\.(\d{{1,4}}))?\.m4s")
LL_INIT_RE = re.compile(rf"({NAME_PATTERN}?)_ll_init[0-9a-f]{{8}}\.mp4")
LL_SEGMENT_TYPE = "video/mp4"
LL_PLAYLIST_CACHE_CONTROL = "no-cache"
LL_REPLIES_MAX = 512  # part/segment replies kept built (bodies are the window's own bytes)
PLAYLIST_TYPE = "application/vnd.apple.mpegurl"
PLAYLIST_CONTENT_TYPE = PLAYLIST_TYPE + "; charset=utf-8"
SEGMENT_TYPE = "video/mp2t"
SEGMENT_CACHE_CONTROL = "public, max-age=86400, immutable"
PLAYLIST_CACHE_CONTROL = "max-age=1"
SEGMENT_FILES_MAX = 256  # memory files for sendfile: bounded in descriptors...
SEGMENT_FILES_MAX_BYTES = 128 << 20  # ... and in bytes (they copy segments the window holds)
CATCH_UP_WAIT_S = 2.0  # longest a playlist answer waits to join a stream's new origin
VIEWER_HORIZON_S = 10.0  # a viewer counts while it asked for a playlist this recently

#: ``check(stream_id, token)`` raises :class:`mesh.tokens.TokenError` unless ``token`` may play it.
PlayCheck = Callable[[str, str], None]


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


def split_base(base: str) -> tuple[str, str]:
    """``cam1_360p600kbps`` -> (``cam1``, ``360p600kbps``); ``cam1`` -> (``cam1``, ``src``)."""
    m = RUNG_BASE_RE.fullmatch(base)
    return (m.group(1), m.group(2)) if m else (base, SRC)


def as_http(exc: MeshError) -> HttpError:
    """A viewer asked for something this edge cannot serve: 404 with the reason in words
    (a stream that has not started, has finished or lost its origin is not here to play)."""
    return HttpError(404, exc.message, exc.reason)


class HlsRoutes:
    def __init__(self, streams: EdgeStreams, app_name: str, play_check: PlayCheck | None = None):
        self.streams = streams
        self.play_check = play_check
        self.prefix = f"/{app_name}/streams/"
        self.files = SegmentFiles()
        self._playlists: dict[str, tuple[int, Reply]] = {}
        self._viewers: dict[tuple[str, str], float] = {}
        self._ll_playlists: dict[tuple[str, str | None], tuple[tuple[Any, ...], Reply]] = {}
        self.parking = LlParking(self._parked_reply, self._parked_served, self._block_s)
        self._ll_replies: OrderedDict[str, Reply] = OrderedDict()
        self.ll_waiting = 0  # blocking requests waiting now
        self.egress_bytes = 0
        self._egress_mark = (time.monotonic(), 0)
        self._egress_by_stream: dict[str, int] = {}  # since the last load(); per-stream metrics
        self._labelled: set[str] = set()  # streams with per-stream metric labels
        self._playlist_ok = metrics.VIEWER_REQUESTS.labels("playlist", "200")
        self._segment_ok = metrics.VIEWER_REQUESTS.labels("segment", "200")
        streams.on_close(self._forget)

    def install(self, app: web.Application, http: HttpServer) -> None:
        app.router.add_get(self.prefix + "{name}", self.handle)
        http.add_fast_get(self.prefix, self.fast_get, queries=True)

    def close(self) -> None:
        self.files.close()
        self._playlists.clear()
        self.parking.close()

    @property
    def ll_parked(self) -> int:
        """Blocking requests parked on the fast path now."""
        return len(self.parking)

    def load(self) -> dict[str, Any]:
        now = time.monotonic()
        horizon = now - VIEWER_HORIZON_S
        self._viewers = {k: t for k, t in self._viewers.items() if t >= horizon}
        then, sent_then = self._egress_mark
        self._egress_mark = (now, self.egress_bytes)
        sent = self.egress_bytes - sent_then
        metrics.HLS_EGRESS_BYTES.inc(sent)
        self._stream_metrics()
        per_stream: dict[str, int] = {}
        for _, stream_id in self._viewers:
            per_stream[stream_id] = per_stream.get(stream_id, 0) + 1
        return {"viewers": len(self._viewers), "stream_viewers": per_stream,
                "edge_streams": len(self.streams.streams),
                "egress_kbps": round(sent * 8 / 1000 / max(now - then, 1e-3), 1)}

    def _stream_metrics(self) -> None:
        """Per-stream viewers and egress bytes, for the streams open here: a closed stream's
        labels go, so the label set stays as small as the set of open streams."""
        sent, self._egress_by_stream = self._egress_by_stream, {}
        viewers: dict[str, int] = {}
        for _, stream_id in self._viewers:
            viewers[stream_id] = viewers.get(stream_id, 0) + 1
        open_ids = set(self.streams.streams)
        for stream_id in open_ids:
            metrics.HLS_STREAM_EGRESS_BYTES.labels(stream_id).inc(sent.get(stream_id, 0))
            metrics.HLS_STREAM_VIEWERS.labels(stream_id).set(viewers.get(stream_id, 0))
        for stream_id in self._labelled - open_ids:
            metrics.HLS_STREAM_EGRESS_BYTES.remove(stream_id)
            metrics.HLS_STREAM_VIEWERS.remove(stream_id)
        self._labelled = open_ids

    def _count(self, stream_id: str, size: int) -> None:
        self.egress_bytes += size
        self._egress_by_stream[stream_id] = self._egress_by_stream.get(stream_id, 0) + size

    # -- replies ---------------------------------------------------------------------------
    def _playlist(self, r: Rendition) -> Reply:
        """The media playlist, rendered again only when the window changed."""
        window = r.window
        cached = self._playlists.get(window.base)
        if cached is None or cached[0] != window.version:
            text = window.playlist()
            cached = self._playlists[window.base] = (
                window.version, Reply(text.encode(), PLAYLIST_CONTENT_TYPE, PLAYLIST_CACHE_CONTROL))
        return cached[1]

    def _forget(self, base: str) -> None:
        self.files.forget(base)
        self._playlists.pop(base, None)
        for skip in (None, "YES", "v2"):
            self._ll_playlists.pop((base, skip), None)
        for name in [n for n in self._ll_replies if n.startswith(base + "_ll")]:
            del self._ll_replies[name]

    def _sent(self, reply: Reply, stream_id: str) -> Reply:
        self._count(stream_id, len(reply.body))
        return reply

    # -- HTTP ------------------------------------------------------------------------------
    def fast_get(self, name: str, remote: str, query: str = "") -> Reply | Parked | None:
        """The fast path's route (see :meth:`mesh.http.app.HttpServer.add_fast_get`): a playlist
        or segment of a stream already open here, with :meth:`handle`'s effects, or a parked
        blocking LL playlist request; None when :meth:`handle` has more to do (open a stream,
        answer an error, a master playlist, a token, any other query)."""
        if self.play_check is not None:
            return None  # protected: every request carries ?token=, checked by handle()
        if name.endswith((".m4s", ".mp4", "_ll.m3u8")):
            return self._ll_fast(name, remote, query)
        if query:
            return None
        if name.endswith(".ts"):
            m = SEGMENT_RE.fullmatch(name)
            if m is None or (r := self.streams.get(*(parts := split_base(m.group(1))))) is None:
                return None
            seq = int(m.group(2))
            data = r.window.segment(seq)
            if data is None:
                return None
            r.last_request = time.monotonic()
            self._segment_ok.inc()
            return self._sent(self.files.get(r.window.base, seq, data), parts[0])
        m = PLAYLIST_RE.fullmatch(name)
        if m is None or m.group(1).endswith(ADAPTIVE):
            return None
        stream_id, rendition = split_base(m.group(1))
        r = self.streams.get(stream_id, rendition)
        if r is None or self._quiet(stream_id, r):
            return None  # the origin went quiet: handle() asks the registry first
        r.last_request = time.monotonic()
        self._viewers[(remote, stream_id)] = time.monotonic()
        self._playlist_ok.inc()
        return self._sent(self._playlist(r), stream_id)

    def _quiet(self, stream_id: str, r: Rendition) -> bool:
        """A live stream whose origin has gone quiet, or that is joining a new origin (see
        :meth:`EdgeStream.catch_up`)."""
        stream = self.streams.streams.get(stream_id)
        if stream is None or r.window.ended:
            return False
        now = time.monotonic()
        return stream.quiet(now) or stream.settling(now, CATCH_UP_WAIT_S)

    def _ll_fast(self, name: str, remote: str, query: str) -> Reply | Parked | None:
        directives = simple_query(query) if query else (None, None)
        if directives is None:
            return None  # not only _HLS_ directives, or malformed ones: handle() answers
        if name.endswith("_ll.m3u8"):
            m = LL_PLAYLIST_RE.fullmatch(name)
            if m is None:
                return None
            stream_id, rendition = split_base(m.group(1))
            stream = self.streams.streams.get(stream_id)
            if stream is None or (r := stream.renditions.get(rendition)) is None or (ll := r.ll) is None:
                return None
            target, skip = directives
            now = r.last_request = time.monotonic()
            if target is not None:
                last = ll.last_part()
                if too_far(target, last) or (ll.ended and not reached(target, last, ll.last_seq)):
                    return None  # 400, or 503 at once: handle() says it
                if not reached(target, last, ll.last_seq):
                    self._viewers[(remote, stream.stream_id)] = now
                    return self.parking.request(stream, r, target, skip, None)
            self._viewers[(remote, stream.stream_id)] = now
            self._playlist_ok.inc()
            return self._sent(self._ll_reply(stream, r, skip), stream.stream_id)
        found = self._ll_object(name)
        if found is None:
            return None
        r, data = found
        if data is None:
            return self._ll_upcoming(name, r)
        r.last_request = time.monotonic()
        self._segment_ok.inc()
        return self._sent(self._ll_file(name, data), split_base(r.window.base)[0])

    def _ll_upcoming(self, name: str, r: Rendition) -> Parked | None:
        """A part or segment about to be cut (a preload hint): parked until it exists, as
        handle() would wait for it; None for anything handle() answers at once (404)."""
        m = LL_MEDIA_RE.fullmatch(name)
        ll = r.ll
        if m is None or ll is None or ll.ended:
            return None
        seq, part = int(m.group(2)), (int(m.group(3)) if m.group(3) is not None else None)
        upcoming = ll.next_part()
        if upcoming is None or too_far((seq, part), ll.last_part()) or (seq, part or 0) < upcoming:
            return None
        stream = self.streams.streams.get(split_base(m.group(1))[0])
        if stream is None:
            return None
        r.last_request = time.monotonic()
        return self.parking.request(stream, r, (seq, part), None, name)

    def _ll_object(self, name: str) -> tuple[Rendition, bytes | None] | None:
        """The rendition a part/segment/init name belongs to (if open here) and its bytes, if held."""
        if m := LL_MEDIA_RE.fullmatch(name):
            r = self.streams.get(*split_base(m.group(1)))
            if r is None or r.ll is None:
                return None
            seq = int(m.group(2))
            return r, (r.ll.segment(seq) if m.group(3) is None else r.ll.part(seq, int(m.group(3))))
        if m := LL_INIT_RE.fullmatch(name):
            r = self.streams.get(*split_base(m.group(1)))
            if r is None or r.ll is None:
                return None
            return r, r.ll.init(name)
        return None

    def _ll_file(self, name: str, data: bytes) -> Reply:
        reply = self._ll_replies.get(name)
        if reply is None or reply.body is not data:
            reply = self._ll_replies[name] = Reply(data, LL_SEGMENT_TYPE, SEGMENT_CACHE_CONTROL)
            while len(self._ll_replies) > LL_REPLIES_MAX:
                self._ll_replies.popitem(last=False)
        else:
            self._ll_replies.move_to_end(name)
        return reply

    def _ll_key(self, stream: EdgeStream, r: Rendition) -> tuple[Any, ...]:
        return tuple((name, x.ll.version if x.ll is not None else 0) for name, x in stream.renditions.items()) + (
            r.name,)

    def _ll_text(self, stream: EdgeStream, r: Rendition, query: str, skip: str | None = None) -> str:
        ll = r.ll
        assert ll is not None
        reports = []
        for name, other in stream.renditions.items():
            if other is r or other.ll is None or (last := other.ll.last_part()) is None:
                continue
            reports.append(Report(f"{playlist_base(stream.stream_id, name)}_ll.m3u8", *last))
        return render_ll_playlist(ll.base, ll.shown(), target_s=ll.target_s, part_target_s=ll.part_ticks / 90_000,
                                  ended=ll.ended, preload=ll.next_part(), reports=reports, query=query,
                                  can_skip=ll.window > SKIP_BOUNDARY_TARGETS, skip=skip)

    def _ll_reply(self, stream: EdgeStream, r: Rendition, skip: str | None = None) -> Reply:
        """The LL playlist without a token (``skip``: a delta update), rendered again only when
        a window changed: one rendering per distinct answer, shared by every request for it."""
        key = self._ll_key(stream, r)
        base = r.ll.base if r.ll is not None else r.window.base
        cached = self._ll_playlists.get((base, skip))
        if cached is None or cached[0] != key:
            text = self._ll_text(stream, r, "", skip)
            cached = self._ll_playlists[(base, skip)] = (
                key, Reply(text.encode(), PLAYLIST_CONTENT_TYPE, LL_PLAYLIST_CACHE_CONTROL))
        return cached[1]

    # -- blocking requests parked on the fast path (mesh.hls.ll_parking drives them) ---------
    def _parked_reply(self, stream: EdgeStream, r: Rendition, e: Entry, arrived: bool) -> Reply:
        """handle()'s answer to a parked request now: the playlist or the part, else 503/404."""
        ll = r.ll
        if e.media is not None:
            seq, part = e.target
            data = None if ll is None else ll.segment(seq) if part is None else ll.part(seq, part)
            if data is not None:
                return self._ll_file(e.media, data)
            return _error_reply(404, f"{e.media[:100]} is not (or no longer) here")
        if arrived and ll is not None:
            return self._ll_reply(stream, r, e.skip)
        block_s = self._block_s(ll) if ll is not None else 0.0
        return _error_reply(503, f"{r.window.base}: part {e.target} did not come within {block_s:.1f} s",
                            {"Retry-After": "1"})

    def _parked_served(self, stream: EdgeStream, r: Rendition, answered: list[tuple[Entry, Reply]]) -> None:
        """handle()'s counts for parked requests just answered."""
        r.last_request = time.monotonic()
        sent = playlists = media = 0
        for e, reply in answered:
            if reply.status == 200:
                sent += len(reply.body)
                if e.media is None:
                    playlists += 1
                else:
                    media += 1
            elif e.media is None:
                metrics.VIEWER_REQUESTS.labels("playlist", "503").inc()
            else:
                metrics.VIEWER_REQUESTS.labels("segment", "404").inc()
                metrics.reject("http", "segment", "%d %s", 404, "a parked part or segment did not come")
        if playlists:
            self._playlist_ok.inc(playlists)
        if media:
            self._segment_ok.inc(media)
        self._count(stream.stream_id, sent)

    def _block_s(self, ll: LlWindow) -> float:
        return self.streams.settings.ll_block_s or 3 * ll.target_s

    async def _wait_ll(self, r: Rendition, ready: Callable[[], bool], timeout_s: float) -> bool:
        """Wait (no thread, no polling: one shared future per rendition) until ``ready()`` or
        ``timeout_s``; whether it became ready."""
        if ready():
            return True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        self.ll_waiting += 1
        try:
            while not ready():
                if r.ll is None or r.ll.ended:
                    return ready()
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return False
                try:
                    async with asyncio.timeout(remaining):
                        await asyncio.shield(r.ll_changed())
                except TimeoutError:
                    return ready()
            return True
        finally:
            self.ll_waiting -= 1

    async def _ll_playlist(self, request: web.Request, base: str) -> web.StreamResponse:
        stream_id, rendition = split_base(base)
        query = self._token_query(request, stream_id)
        skip = skip_directive(request.query)
        try:
            target = block_target(request.query)
        except BadBlockingRequest as exc:
            metrics.VIEWER_REQUESTS.labels("playlist", "400").inc()
            raise HttpError(400, str(exc), "hls_directive") from None
        stream, r = await self.streams.open(stream_id, rendition)
        ll = r.ll
        if ll is None:
            raise NotFound(f"no LL-HLS playlist for {base} on this edge", "rendition")
        self._viewers[(request.remote or "?", stream_id)] = time.monotonic()
        if target is not None:
            if too_far(target, ll.last_part()):
                metrics.VIEWER_REQUESTS.labels("playlist", "400").inc()
                raise HttpError(400, f"_HLS_msn/_HLS_part {target} is too far beyond the live edge "
                                f"{ll.last_part()}", "hls_directive")
            if not await self._wait_ll(r, lambda: reached(target, ll.last_part(), ll.last_seq), self._block_s(ll)):
                metrics.VIEWER_REQUESTS.labels("playlist", "503").inc()
                raise HttpError(503, f"{base}: part {target} did not come within {self._block_s(ll):.1f} s",
                                "hls_block_timeout", headers={"Retry-After": "1"})
        r.last_request = time.monotonic()
        self._playlist_ok.inc()
        if query:
            text = self._ll_text(stream, r, query, skip).encode()
            self._count(stream.stream_id, len(text))
            return web.Response(body=text, headers={"Cache-Control": LL_PLAYLIST_CACHE_CONTROL,
                                                    "Content-Type": PLAYLIST_CONTENT_TYPE})
        return self._sent(self._ll_reply(stream, r, skip), stream.stream_id).response()

    async def _ll_media(self, request: web.Request, name: str, base: str) -> web.StreamResponse:
        stream_id, rendition = split_base(base)
        self._token_query(request, stream_id)
        _, r = await self.streams.open(stream_id, rendition)
        ll = r.ll
        if ll is None:
            raise NotFound(f"no LL-HLS media for {base} on this edge", "rendition")
        found = self._ll_object(name)
        data = found[1] if found is not None else None
        m = LL_MEDIA_RE.fullmatch(name)
        if data is None and m is not None:
            seq = int(m.group(2))
            part = int(m.group(3)) if m.group(3) is not None else None
            # About to exist (a preload hint, or a balancer sent us the request a moment before the
            # part reached this edge): wait for it as a blocking playlist request would.
            upcoming = ll.next_part()
            target = (seq, part)
            if upcoming is not None and not too_far(target, ll.last_part()) and (
                    (seq, part if part is not None else 0) >= upcoming):
                def ready() -> bool:
                    if part is None:
                        return ll.segment(seq) is not None or (ll.last_seq or -1) >= seq
                    return ll.part(seq, part) is not None or (ll.last_part() or (-1, -1)) > (seq, part)
                await self._wait_ll(r, ready, self._block_s(ll))
                data = ll.segment(seq) if part is None else ll.part(seq, part)
        if data is None:
            raise NotFound(f"{name[:100]} is not (or no longer) here", "segment")
        r.last_request = time.monotonic()
        self._segment_ok.inc()
        self._count(stream_id, len(data))
        return web.Response(body=data, headers={"Cache-Control": SEGMENT_CACHE_CONTROL,
                                                "Content-Type": LL_SEGMENT_TYPE})

    async def _ll_master(self, stream_id: str, query: str) -> web.Response:
        stream, src = await self.streams.open(stream_id)
        doc = await self.streams.fresh_doc(stream)
        found = [Variant(v.uri[: -len(".m3u8")] + "_ll.m3u8", v.bandwidth, v.average_bandwidth, v.width, v.height,
                         v.codecs, v.frame_rate) for v in variants(stream, doc, src)]
        text = render_master_playlist(found, query)
        self._count(stream_id, len(text))
        return web.Response(text=text, content_type=PLAYLIST_TYPE,
                            headers={"Cache-Control": PLAYLIST_CACHE_CONTROL})

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._handle(request, request.match_info["name"])
        except TokenError as exc:
            kind = "playlist" if request.match_info["name"].endswith(".m3u8") else "segment"
            metrics.VIEWER_REQUESTS.labels(kind, "403").inc()
            raise HttpError(403, f"{exc}", f"token_{exc.reason}") from None
        except RegistryUnavailable as exc:  # the database is away: a quick 503, try again soon
            return json_response({"error": exc.message}, status=503,
                                 headers={"Retry-After": str(RETRY_AFTER_S)})
        except MeshError as exc:
            kind = "playlist" if request.match_info["name"].endswith(".m3u8") else "segment"
            metrics.VIEWER_REQUESTS.labels(kind, "404").inc()
            raise as_http(exc) from None

    def _token_query(self, request: web.Request, stream_id: str) -> str:
        """The query to carry on listed URIs: ``?token=...`` for a protected stream whose token
        is valid (raises TokenError otherwise), "" for an open one."""
        if self.play_check is None:
            return ""
        token = request.query.get("token", "")
        self.play_check(stream_id, token)
        return "?token=" + quote(token, safe="")

    async def _handle(self, request: web.Request, name: str) -> web.StreamResponse:
        if m := LL_ADAPTIVE_RE.fullmatch(name):
            return await self._ll_master(m.group(1), self._token_query(request, m.group(1)))
        if m := LL_PLAYLIST_RE.fullmatch(name):
            return await self._ll_playlist(request, m.group(1))
        if (m := LL_MEDIA_RE.fullmatch(name)) or (m := LL_INIT_RE.fullmatch(name)):
            return await self._ll_media(request, name, m.group(1))
        if m := PLAYLIST_RE.fullmatch(name):
            base = m.group(1)
            if base.endswith(ADAPTIVE):
                stream_id = base[: -len(ADAPTIVE)]
                return await self._master(stream_id, self._token_query(request, stream_id))
            stream_id, rendition = split_base(base)
            query = self._token_query(request, stream_id)
            stream, r = await self.streams.open(stream_id, rendition)
            if self._quiet(stream_id, r):  # a takeover? answer from the new origin, as other edges may
                await stream.catch_up(r, CATCH_UP_WAIT_S)
            self._viewers[(request.remote or "?", stream_id)] = time.monotonic()
            self._playlist_ok.inc()
            if query:
                text = r.window.playlist(query).encode()
                self._count(stream_id, len(text))
                return web.Response(body=text, headers={"Cache-Control": PLAYLIST_CACHE_CONTROL,
                                                        "Content-Type": PLAYLIST_CONTENT_TYPE})
            return self._sent(self._playlist(r), stream_id).response()
        if m := SEGMENT_RE.fullmatch(name):
            base, seq = m.group(1), int(m.group(2))
            stream_id, rendition = split_base(base)
            self._token_query(request, stream_id)
            _, r = await self.streams.open(stream_id, rendition)
            data = r.window.segment(seq)
            if data is None:
                raise NotFound(f"segment {seq} of {base} is not (or no longer) here", "segment")
            self._segment_ok.inc()
            self._count(stream_id, len(data))
            return web.Response(body=data, headers={"Cache-Control": SEGMENT_CACHE_CONTROL,
                                                    "Content-Type": SEGMENT_TYPE})
        raise NotFound(f"{name[:100]!r} is not a playlist ({{id}}.m3u8) or segment "
                       f"({{id}}NNNNNNNNN.ts) name", "path")

    async def _master(self, stream_id: str, query: str) -> web.Response:
        stream, src = await self.streams.open(stream_id)
        doc = await self.streams.fresh_doc(stream)
        text = render_master_playlist(variants(stream, doc, src), query)
        self._count(stream_id, len(text))
        return web.Response(text=text, content_type=PLAYLIST_TYPE,
                            headers={"Cache-Control": PLAYLIST_CACHE_CONTROL})


def variants(stream: EdgeStream, doc: dict[str, Any], src: Rendition) -> list[Variant]:
    """Every live rendition of the stream for its master playlist. BANDWIDTH is the peak segment
    bitrate: measured on the segments this edge holds, and never below the origin's bound for
    the renditions it does not (the stream document's ``peak_bps``)."""
    listed = doc.get("renditions") if isinstance(doc.get("renditions"), list) else []
    by_name = {d["name"]: d for d in listed if isinstance(d, dict) and isinstance(d.get("name"), str)}
    out = []
    for name in [SRC] + [n for n in by_name if n != SRC]:
        d = by_name.get(name, {})
        held = src if name == SRC else stream.rendition(name)
        peak, average = held.window.peak_and_average_bps() if held is not None else (0, 0)
        peak, average = max(peak, _int(d.get("peak_bps"))), max(average, _int(d.get("average_bps")))
        if name != SRC and not peak:
            continue  # a rung without a measured segment yet: listed once it has one
        window = held.window if held is not None else None
        video = window.video if window is not None else None
        audio = window.audio if window is not None else None
        codecs = (",".join(c.codec_string for c in (video, audio) if c is not None) if window is not None
                  else d.get("codecs") if isinstance(d.get("codecs"), str) else None)
        out.append(Variant(f"{playlist_base(stream.stream_id, name)}.m3u8", peak, average or None,
                           video.width if video else _int(d.get("width")) or None,
                           video.height if video else _int(d.get("height")) or None,
                           codecs or None, _float(d.get("frame_rate"))))
    return out


def _int(value: Any) -> int:
    return value if type(value) is int and value >= 0 else 0


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1000 else None


def _error_reply(status: int, message: str, headers: dict[str, str] | None = None) -> Reply:
    """handle()'s JSON error answer (:func:`mesh.http.app.json_error`), built for the fast path."""
    return Reply(json.dumps({"error": message}).encode(), "application/json; charset=utf-8", None,
                 status=status, headers=headers)
