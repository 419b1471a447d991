"""The asyncio driver around :class:`mesh.protocols.rtmp.ServerSession` (RTMP ingest).

One :class:`asyncio.Protocol` per TCP connection feeds bytes into its session and hands
the events to the application through two small interfaces, :class:`RtmpHandler` (decides
whether a publish may start) and :class:`PublishSink` (receives that publish's media).
Nothing here awaits on behalf of one connection inside shared code: media callbacks are
synchronous, and the only awaits (``on_publish``/``on_unpublish``) run in per-connection
tasks while that connection's reading is paused. A stalled client therefore stalls only
itself, and timeouts (handshake, idle) and a bounded close make sure it goes away.

Bad input is counted with :func:`mesh.metrics.reject` under the session error's fixed
``reason`` word, logged once with the peer's address, and closes only that connection.

What a stranger can cost (the README's "Resource budget"): connections are capped per node
(``max_connections``) and per source address (``max_connections_per_ip``); a connection must
finish the handshake, ``connect`` and ``publish`` within ``handshake_timeout_s`` and is closed
after ``idle_timeout_s`` without a byte; until its publish is accepted it may hold at most
``max_setup_bytes`` of input (the session enforces that, and ``max_message_size`` after).
Each refusal is one counter increment and one debug line (no traceback, no warning flood).

Reading media in passes. Until a publish is accepted, the asyncio transport reads each
connection as data arrives (handshake and commands answer at once). From then on, the
connection's socket joins the server's :class:`_MediaReader`, which reads a publisher when the
frame that closes its open LL-HLS part should have arrived, and at least every
``media_read_max_interval_s`` (250 ms). The sink says which frame that is (``part_due_ms``, the
segmenter's prediction on the publisher's clock); the publisher's clock maps to ours through the
smallest recent lag between a message's timestamp and our clock when we read it (an upper bound
of its arrival, so the smallest is the closest), plus a margin for the publisher's own jitter,
learnt from whether the frame was there (from ``READ_MARGIN_S``, 20 ms). Timed passes are at
least ``PASS_GAP_S`` (100 ms) apart and read every publisher due by then into one preallocated
buffer. Each publisher socket's ``SO_RCVLOWAT`` says how much must be queued before the kernel
wakes us sooner (through one epoll set whose fd the event loop watches):

* while a keyframe could close the open segment before or with the frame this publisher's
  next read comes for (by the sink's ``cut_due_ms``; without a prediction, from
  ``EAGER_MARGIN_S`` before that read), a keyframe's worth: three quarters of the smallest
  recent keyframe (``media_read_wake_bytes``, 8 KiB, until one is seen). When the part-closing
  frame may be that keyframe (a GOP of whole parts, the usual case), the publisher is read
  ``_EARLY_S`` before the frame may come, and only from then on wakes us for it: nothing else
  is queued by then, so its own bytes wake us and the segment closes as its keyframe arrives
  (when no pass may come that soon -- the read before was a late part's retry -- it wakes us
  for it from that read on);
* when a read ends inside a message at least that long (a keyframe whose start we read), the
  bytes that message still needs, so its tail is read the moment it arrives;
* otherwise (most of a segment) only a burst: four pass gaps' worth of this publisher's recent
  byte rate (at least the keyframe size, at most 256 KiB). A keyframe that cannot close a
  segment, and the small frames, wait for the part's read.

Why: a publisher sends a message every ~13 ms (30 fps video, 47 fps AAC), often as two writes
(header, payload), so reading each as it arrives costs a wake-up, an event-loop pass, an
epoll_wait, a recv and a bus send for every few hundred bytes; with few publishers each pass
found about one message per stream, and that fixed cost, not parsing, was most of the origin's
CPU (bench/results/ingest.md). On this kind of VM a wake-up of the process costs 150 us of CPU
before any of our code runs, and everything it then touches is cold: with one publisher a pass
cost 400-600 us whatever it read. So passes are few, and each is worth its cost: a part (200 ms)
that can be listed, a segment that can close. A fixed 100 ms tick read one publisher ten times a
second and still listed a part up to 100 ms after its last frame came; read by its parts it is
read five times a second and a part is listed about a margin after it.

The price, bounded and documented: a message that closes neither a part nor a segment (audio,
the frames inside a part, commands, a keyframe mid-segment) waits until its part's read, at most
the max interval (250 ms). A part-closing frame that comes later than predicted is looked for
again a pass gap later (at most 100 ms, as with the tick before), and with many publishers whose
parts fall due within one gap, the later ones wait up to that gap. The keyframe that closes a
segment is read when its last byte arrives, whenever it is at least the keyframe wake size. A
sink without ``part_due_ms``, or whose parts nobody waits for (the origin's sink says so while
no edge follows the stream on the bus), is read at the max interval's grid points, shared by all
such publishers: one pass per interval however many there are. A max interval of 0
reads every connection per event through the asyncio transport, as before.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import math
import os
import select
import socket
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from mesh import metrics
from mesh.timers import next_tick
from mesh.protocols.rtmp import (NEED_DATA, PAUSED, AudioMessage, Connected, Metadata, PeerClosed,
                                 PublishRequested, RemoteProtocolError, ServerSession, State, Unpublished,
                                 VideoMessage)

log = logging.getLogger("mesh.ingest.rtmp")

_WRITE_BUFFER_LIMIT = 1 << 20  # we only write replies and acks; this much unread means a dead peer
_CLOSE_GRACE_S = 2.0  # how long a closing socket may take to flush its last reply
_STOP_TIMEOUT_S = 5.0  # how long stop() waits for on_unpublish callbacks
MEDIA_READ_MAX_INTERVAL_S = 0.25  # every publisher is read at least this often ...
MEDIA_READ_WAKE_BYTES = 8 << 10  # ... and at once when this much is queued, until keyframes are seen
PASS_GAP_S = 0.1  # timed read passes are at least this far apart (at most, the interval)
READ_MARGIN_S = 0.02  # a publisher is read this long after its part-closing frame should arrive, at first;
_MARGIN_MISS_S, _MARGIN_HIT_S = 0.01, 0.001  # then 10 ms more when it was not there, 1 ms less when it was
_AIM_SLACK_MS = 5  # a frame this close to the predicted one is it (RTMP's whole milliseconds)
_EARLY_S = 0.005  # a segment-closing keyframe's socket is drained this long before it may come
EAGER_MARGIN_S = 0.1  # wake for a keyframe from this long before our next read may close a segment
_LAG_WINDOW = 32  # reads per window of a publisher's smallest arrival lag (two windows are kept)
_TIMER_SLACK_S = 0.002  # a pass reads the publishers due this soon too (timers fire early by < 1 ms)
_CALM_TICKS = 4  # until then, wake only when this many pass gaps' worth of bytes is queued ...
_CALM_MAX = 256 << 10  # ... or this much (a burst: read it now rather than at its pass)
_WAKE_MIN, _WAKE_MAX = 2 << 10, 64 << 10  # bounds of the per-publisher wake size (_keyframe)
_READ_BUFFER = 256 << 10  # one read per publisher per pass, usually much less
_MAX_READ_PER_PASS = 4 << 20  # a fast sender waits in its socket buffer for the next pass
_conn_ids = itertools.count(1)


def server_limits(cfg: Any) -> dict[str, Any]:
    """:class:`RtmpServer` keyword arguments from a node config's ``rtmp_*`` fields."""
    return {"max_connections": cfg.rtmp_max_connections,
            "max_connections_per_ip": cfg.rtmp_max_connections_per_ip,
            "handshake_timeout_s": cfg.rtmp_handshake_timeout_s, "idle_timeout_s": cfg.rtmp_idle_timeout_s,
            "max_message_size": cfg.rtmp_max_message_bytes, "max_setup_bytes": cfg.rtmp_max_setup_bytes,
            "media_read_max_interval_s": cfg.rtmp_read_max_interval_s}


class PublishRejected(Exception):
    """Raised by :meth:`RtmpHandler.on_publish` to refuse a publish.

    ``code`` is the NetStream status code the client sees (for example
    ``NetStream.Publish.BadName``, ``NetStream.Publish.Denied``) and ``description``
    the human-readable reason (ffmpeg prints it).
    """

    def __init__(self, code: str = "NetStream.Publish.Denied", description: str = "publish refused") -> None:
        super().__init__(f"{code}: {description}")
        self.code = code
        self.description = description


class PublishAborted(Exception):
    """Raised by a :class:`PublishSink` media callback to end its publish (unsupported codec,
    malformed tag, stream taken over by another origin).

    ``reason`` is a short fixed word (it becomes a metrics label: never peer text);
    ``description`` is sent to the client in an error onStatus and logged. The connection
    closes and ``on_unpublish("error")`` follows.
    """

    def __init__(self, reason: str, description: str) -> None:
        super().__init__(f"{reason}: {description}")
        self.reason = reason
        self.description = description


@dataclass(frozen=True, slots=True)
class RtmpConnectionInfo:
    """Who is publishing: for logs, auth decisions and the registry."""

    conn_id: int
    peer: str  # "host:port"
    app: str
    tc_url: str
    params: dict[str, Any] = field(default_factory=dict)  # the connect command object (flashVer, ...)


class PublishSink(Protocol):
    """Receives one accepted publish. Media callbacks are synchronous and come in order.

    A media callback may raise :class:`PublishAborted` to end the publish cleanly; any other
    exception is logged with its traceback and, likewise, closes only this connection.
    """

    def on_video(self, timestamp_ms: int, payload: bytes) -> None: ...  # an FLV video tag body

    def on_audio(self, timestamp_ms: int, payload: bytes) -> None: ...  # an FLV audio tag body

    def on_metadata(self, values: dict[str, Any]) -> None: ...

    # Optional: ``on_media(batch)``, where batch is a list of ``(type_id, timestamp_ms, payload)``
    # (9 video, 8 audio; what on_video/on_audio would get, in order). A sink that has it gets
    # each read's media in one call instead of one call per message. It may raise
    # PublishAborted like the others; the rest of that batch is then dropped with the publish.
    # Optional: ``cut_due_ms() -> int | None``, the RTMP timestamp from which a video keyframe
    # would close the open segment (-1: the next one; None: keyframes do not cut). A sink that
    # has it is read eagerly only around then (module docstring); one without, always.
    # Optional: ``part_due_ms() -> int | None``, the RTMP timestamp of the frame expected to
    # close the open LL part (None: no part open). A sink that has it is read when that frame
    # should have arrived; one without, at the max interval's grid points.

    async def on_unpublish(self, reason: str) -> None:
        """'unpublish' | 'disconnect' | 'error' | 'server-stop'; awaited exactly once."""
        ...


class MediaBatch(Protocol):
    """Where the sinks' media ends up (the bus publisher), told where a read pass begins and
    ends: everything one pass delivered then leaves in one send per stream at the end of the
    pass, in the same event-loop step, instead of a flush scheduled for another pass of the loop."""

    def begin_batch(self) -> None: ...

    def flush(self) -> None: ...


class RtmpHandler(Protocol):
    async def on_publish(self, conn: RtmpConnectionInfo, app: str, stream_name: str,
                         query: dict[str, str]) -> PublishSink:
        """Return a sink to accept; raise PublishRejected(code, description) to refuse (the client
        gets onStatus error, then the connection closes)."""
        ...


class _RtmpConnection(asyncio.Protocol):
    """One client connection: owns its session, transport, timers and (at most one) sink."""

    def __init__(self, server: RtmpServer) -> None:
        self._server = server
        self._loop = asyncio.get_running_loop()
        self._session = ServerSession(max_message_size=server.max_message_size,
                                      max_setup_bytes=server.max_setup_bytes)
        self._transport: asyncio.Transport | None = None
        self._info: RtmpConnectionInfo | None = None
        self._sink: PublishSink | None = None
        self._stream = ""
        self._close_reason = "disconnect"
        self._closed = False
        self._reading = True
        self._decision: asyncio.Task[None] | None = None
        self._unpublish_task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._started = self._last_rx = self._loop.time()
        self._accepted = False  # a publish was accepted: the setup deadline no longer applies
        self._counts = [0, 0]  # video, audio messages of the current publish
        self._media: list[tuple[int, int, bytes]] = []  # read_media's batch, reused
        self._on_media: Callable[[list[tuple[int, int, bytes]]], None] | None = None
        self._fd = -1  # >= 0 while the server's _MediaReader reads this connection
        self._sock: Any = None  # its socket then (for SO_RCVLOWAT)
        self._lowat = 1  # the socket's SO_RCVLOWAT as we last set it
        self._wake = server.media_read_wake_bytes  # SO_RCVLOWAT between messages (see _keyframe)
        self._keyframes: list[int] = []  # sizes of the last few keyframes
        self._cut_due: Callable[[], int | None] | None = None  # the sink's cut_due_ms, if it has one
        self._part_due: Callable[[], int | None] | None = None  # the sink's part_due_ms, if it has one
        self._media_ms = 0  # RTMP timestamp of the last media message read
        self._cut_ms = -1  # ... and of the last one of the track that cuts parts (video, if any)
        self._video_seen = False
        # smallest (clock - _cut_ms) over this window of reads and the previous one: when this
        # publisher's messages arrive, on our clock, relative to their timestamps
        self._lag_min = self._lag_prev = math.inf
        self._lag_n = 0
        self._read_at = 0.0  # when the media reader should read this publisher next (loop time)
        self._aim_ms: int | None = None  # ... for the frame with this timestamp (None: no frame)
        self._eager: bool | None = None  # a keyframe may close the segment before then (None: guess)
        self._margin = READ_MARGIN_S  # that long after it should have arrived (learnt)
        self._rate = 0.0  # bytes per second read from this publisher (moving average)
        self.conn_id = next(_conn_ids)
        self.peer = "?"
        self.ip = "?"

    # ------------------------------------------------------------------ asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport (uvloop's are not asyncio.Transport subclasses, only alike)
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.ip = str(peer[0]) if peer else "?"
        refused = self._server._register(self)
        if refused is not None:
            self._closed = True
            metrics.reject("rtmp", refused[0], "%s: refused, %s", self.peer, refused[1])
            transport.abort()
            return
        self._arm_timer()

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        self._last_rx = self._loop.time()
        self._session.receive_data(data)
        self._pump()

    def eof_received(self) -> bool | None:
        if not self._closed:
            self._session.receive_data(b"")
            self._pump()
        return None  # let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._leave_media_reader()
        self._server._closed_bytes += self._session.bytes_received
        if self._timer is not None:
            self._timer.cancel()
        self._server._unregister(self)
        self._end_publish(self._close_reason)

    # ------------------------------------------------------------------ media reads (in passes)

    def _read_media(self, view: memoryview, now: float, timed: bool = False) -> None:
        """Called by the server's :class:`_MediaReader` when this publisher is due (``timed``) or
        its socket woke it."""
        if self._closed or self._fd < 0:
            self._leave_media_reader()
            return
        fd = self._fd
        size = len(view)
        total = 0
        session = self._session
        while True:
            try:
                n = os.readv(fd, (view,))
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # reset by the peer: as when the transport reads it
                self._leave_media_reader()
                log.debug("rtmp %s: read failed: %s", self.peer, exc)
                if self._transport is not None:
                    self._transport.abort()
                return
            if n == 0:  # end of stream
                if total:
                    self._pump()
                self._leave_media_reader()
                if not self._closed:
                    self.eof_received()
                    self._shutdown(self._close_reason)
                return
            session.receive_data(view[:n])
            total += n
            if n < size or total >= _MAX_READ_PER_PASS:
                break
        if total:
            elapsed = now - self._last_rx  # since this publisher's previous read
            self._last_rx = now
            if 0 < elapsed < 1:
                self._rate += (total / elapsed - self._rate) * 0.25
            self._pump()
            if self._cut_ms >= 0:
                # the newest message arrived by now: an upper bound of when such messages arrive
                lag = time.monotonic() - self._cut_ms / 1000
                if lag < self._lag_min:
                    self._lag_min = lag
                self._lag_n += 1
                if self._lag_n >= _LAG_WINDOW:
                    self._lag_prev, self._lag_min, self._lag_n = self._lag_min, math.inf, 0
        aim = self._aim_ms
        if timed and aim is not None:
            # Was the frame we came for here? Publishers send late by a jitter of their own
            # (ffmpeg holds a frame until the other track catches up: up to an audio frame): the
            # margin settles where about one read in eleven comes too early.
            if self._cut_ms >= aim - _AIM_SLACK_MS:
                self._margin = max(self._margin - _MARGIN_HIT_S, 0.0)
            else:
                self._margin = min(self._margin + _MARGIN_MISS_S, self._server.read_gap_s)
        if self._fd >= 0:
            self._read_at = self._next_read(now)
            lowat = self._next_lowat(session, now)
            if lowat != self._lowat:
                self._set_lowat(lowat)

    def _next_read(self, now: float) -> float:
        """When the media reader should read this publisher next: when the frame that closes
        its open LL part should have arrived (the sink's ``part_due_ms`` on this publisher's
        clock, mapped to ours by the smallest recent arrival lag, plus a learnt margin), and
        no later than the max interval; a frame that is late is looked for again a pass gap
        later. A sink that cannot say -- or says None: no frame yet, or nobody waits for its
        parts (no edge follows the stream) -- is read at the interval's grid points (mesh.timers),
        which all such publishers share."""
        srv = self._server
        self._aim_ms = self._eager = None
        due_ms = self._part_due() if self._part_due is not None else None
        if due_ms is None:  # nothing to aim at (or nobody waiting for parts): the grid, shared
            return next_tick(now, srv.media_read_max_interval_s)
        latest = now + srv.media_read_max_interval_s
        lag = min(self._lag_min, self._lag_prev)
        if lag == math.inf:
            return latest
        arrives = due_ms / 1000 + lag  # the soonest the part-closing frame comes
        if arrives + self._margin <= now:  # due and not here yet (late, or its clock jumped)
            return min(now + srv.read_gap_s, latest)
        cut_ms = self._cut_due() if self._cut_due is not None else None
        if cut_ms is not None and cut_ms <= due_ms + _AIM_SLACK_MS:
            # a keyframe may close the segment before or with this part's last frame
            reader = srv._reader
            soonest = now if reader is None else max(now, reader.soonest_pass)
            if cut_ms >= due_ms - _AIM_SLACK_MS and soonest + 2 * _TIMER_SLACK_S < arrives - _EARLY_S:
                # with it, most likely (a GOP of whole parts): drain the socket just before it
                # may come, so that its own bytes wake us and its segment closes as it arrives.
                # (A pass cannot come sooner than a gap after the last one: when that is too
                # late -- this read was a retry, say -- we wake for the keyframe from now on.)
                self._eager = False
                return min(arrives - _EARLY_S, latest)
            self._eager = True
        else:
            self._eager = False
        at = arrives + self._margin
        if at >= latest:
            return latest
        self._aim_ms = due_ms
        return at

    def _next_lowat(self, session: ServerSession, now: float) -> int:
        """How much must be queued before this socket wakes us before its next read: inside a
        message of at least a keyframe's size (one whose start we read), its last byte; while a
        keyframe could close the open segment before that read, a keyframe's worth; until then
        (``cut_due_ms`` of the sink says when), only a burst of several pass gaps' worth, so the
        small frames between keyframes cost no wake-up of their own."""
        wake = self._wake
        length, due = session.incomplete()
        if length >= wake and due < wake:
            return due
        cut_due = self._cut_due
        if cut_due is not None:
            calm = not self._eager
            if self._eager is None:  # no prediction: a keyframe may cut before the next read
                due_ms = cut_due()
                calm = due_ms is None or self._media_ms + (self._read_at - now + EAGER_MARGIN_S) * 1000 < due_ms
            if calm:
                burst = int(self._rate * self._server.read_gap_s * _CALM_TICKS)
                # in powers of two, so a wavering rate does not cost a setsockopt every read
                return min(max(wake, 1 << burst.bit_length()), _CALM_MAX)
        return wake

    def _set_lowat(self, lowat: int) -> None:
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, lowat)
        except (OSError, AttributeError):  # closed meanwhile; nothing left to wake for
            return
        self._lowat = lowat

    def _leave_media_reader(self) -> None:
        if self._fd >= 0:
            self._server._leave_media_reader(self._fd)
            self._fd = -1
            if self._lowat != 1 and not self._closed:  # the transport reads it again: every byte
                self._set_lowat(1)

    # ------------------------------------------------------------------ event pump

    def _pump(self) -> None:
        """Drain session events; runs in data_received, so it never awaits."""
        session = self._session
        media = self._media
        try:
            while True:
                ev = session.read_media(media)
                if media:
                    self._deliver(media)
                if ev is NEED_DATA or ev is PAUSED:
                    break
                cls = type(ev)
                if cls is VideoMessage:  # from an aggregate message
                    self._counts[0] += 1
                    self._sink.on_video(ev.timestamp_ms, ev.payload)  # type: ignore[union-attr]
                elif cls is AudioMessage:
                    self._counts[1] += 1
                    self._sink.on_audio(ev.timestamp_ms, ev.payload)  # type: ignore[union-attr]
                elif cls is Metadata:
                    self._sink.on_metadata(ev.values)  # type: ignore[union-attr]
                elif cls is PublishRequested:
                    self._start_decision(ev)  # type: ignore[arg-type]
                elif cls is Connected:
                    assert isinstance(ev, Connected)
                    self._info = RtmpConnectionInfo(self.conn_id, self.peer, ev.app, ev.tc_url, ev.params)
                elif cls is Unpublished:
                    self._end_publish("unpublish")
                elif cls is PeerClosed:
                    break
        except RemoteProtocolError as exc:
            if media:  # what came before the bad bytes is still delivered, as it arrived first
                try:
                    self._deliver(media)
                except Exception:
                    media.clear()
            self._flush()  # a last reply (e.g. onStatus BadName) goes out before we close
            self._bad_input(exc.reason, str(exc))
            return
        except PublishAborted as exc:
            if session.state is State.PUBLISHING:
                session.abort_publish("NetStream.Publish.Failed", exc.description)
                self._flush()
            self._bad_input(exc.reason, exc.description)
            return
        except Exception:
            log.exception("rtmp %s: the publish sink for %s raised; closing this connection", self.peer,
                          self._stream)
            self._shutdown("error")
            return
        self._flush()
        if session.must_close:
            self._shutdown(self._close_reason)

    def _deliver(self, media: list[tuple[int, int, bytes]]) -> None:
        """Hand a batch of (type, timestamp, payload) media messages to the sink, in order."""
        sink = self._sink
        if sink is None:  # the publish already ended on our side
            media.clear()
            return
        if self._fd >= 0 and media:
            video_ms = -1
            for type_id, timestamp_ms, payload in media:
                if type_id == 9:
                    video_ms = timestamp_ms
                    # an AVC keyframe picture (0x17 0x01), tested without slicing a copy
                    if len(payload) > 1 and payload[0] == 0x17 and payload[1] == 1:
                        self._keyframe(len(payload))
            self._media_ms = media[-1][1]
            if video_ms >= 0:
                self._cut_ms = video_ms
                self._video_seen = True
            elif not self._video_seen:
                self._cut_ms = self._media_ms
        try:
            on_media = self._on_media
            if on_media is not None:
                on_media(media)
                return
            on_video, on_audio = sink.on_video, sink.on_audio
            for type_id, timestamp_ms, payload in media:
                if type_id == 9:
                    on_video(timestamp_ms, payload)
                else:
                    on_audio(timestamp_ms, payload)
        finally:
            media.clear()

    def _keyframe(self, size: int) -> None:
        """Wake for three quarters of the smallest of the last 8 keyframes (within 2-64 KiB):
        a keyframe is then read as soon as it has arrived, the frames between are not."""
        sizes = self._keyframes
        sizes.append(size)
        if len(sizes) > 8:
            del sizes[0]
        wake = min(max(min(sizes) * 3 // 4, _WAKE_MIN), _WAKE_MAX)
        if wake != self._wake:
            self._wake = wake
            if self._fd >= 0 and self._lowat > wake:
                self._set_lowat(wake)

    def _flush(self) -> None:
        data = self._session.data_to_send()
        if not data:
            return
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(data)
            if transport.get_write_buffer_size() > _WRITE_BUFFER_LIMIT:
                self._bad_input("slow", f"{transport.get_write_buffer_size()} bytes unread by the client")

    # ------------------------------------------------------------------ publish lifecycle

    def _start_decision(self, ev: PublishRequested) -> None:
        self._set_reading(False)
        self._stream = f"{ev.app}/{ev.stream_name}"
        self._decision = self._server._spawn(self._decide(ev))

    async def _decide(self, ev: PublishRequested) -> None:
        if self._unpublish_task is not None:  # a previous publish on this connection ends first
            await asyncio.shield(self._unpublish_task)
        if self._closed:
            return
        assert self._info is not None
        try:
            sink = await self._server.handler.on_publish(self._info, ev.app, ev.stream_name, ev.query)
        except PublishRejected as rej:
            log.info("rtmp publish refused: %s from %s: %s", self._stream, self.peer, rej)
            self._refuse(rej.code, rej.description)
            return
        except Exception:
            log.exception("rtmp %s: on_publish for %s failed", self.peer, self._stream)
            self._refuse("NetStream.Publish.Failed", "internal server error")
            return
        self._sink = sink
        self._on_media = getattr(sink, "on_media", None)
        self._cut_due = getattr(sink, "cut_due_ms", None)
        self._part_due = getattr(sink, "part_due_ms", None)
        self._cut_ms, self._video_seen = -1, False
        self._lag_min = self._lag_prev = math.inf
        self._lag_n = 0
        self._aim_ms = self._eager = None
        self._counts = [-self._session.video_messages, -self._session.audio_messages]
        if self._closed:  # the peer left (or we stopped) while the handler decided
            self._end_publish(self._close_reason)
            return
        self._session.accept_publish()
        self._accepted = True
        log.info("rtmp publish start: %s from %s", self._stream, self.peer)
        self._flush()
        self._set_reading(True)
        self._pump()  # media the client sent meanwhile is already buffered

    def _refuse(self, code: str, description: str) -> None:
        if self._closed:
            return
        self._session.reject_publish(code, description)
        self._flush()
        self._shutdown("error")

    def _end_publish(self, reason: str) -> None:
        sink, self._sink = self._sink, None
        if sink is None:
            return
        session = self._session
        log.info("rtmp publish stop: %s from %s (%s; %d video, %d audio messages)", self._stream, self.peer,
                 reason, self._counts[0] + session.video_messages, self._counts[1] + session.audio_messages)
        self._unpublish_task = self._server._spawn(self._call_unpublish(sink, reason))

    async def _call_unpublish(self, sink: PublishSink, reason: str) -> None:
        try:
            await sink.on_unpublish(reason)
        except Exception:
            log.exception("rtmp %s: on_unpublish for %s failed", self.peer, self._stream)

    # ------------------------------------------------------------------ closing, timers

    def _bad_input(self, reason: str, message: str) -> None:
        """Count, log and close. A stranger's bad bytes are one debug line (the counter's); a
        connection that asked to publish a stream also gets one info line naming it."""
        metrics.reject("rtmp", reason, "%s: %s; closing the connection", self.peer, message)
        if self._stream:
            log.info("rtmp %s (%s): %s; closing the connection", self.peer, self._stream, message)
        self._shutdown("error" if reason != "timeout" else "disconnect")

    def _shutdown(self, reason: str) -> None:
        """Close this connection: flush what is queued (bounded by a grace period)."""
        if self._closed:
            return
        self._closed = True
        self._close_reason = reason
        self._leave_media_reader()
        self._end_publish(reason)
        if self._decision is not None and not self._decision.done() and reason == "server-stop":
            self._decision.cancel()
        transport = self._transport
        if transport is None:
            return
        if reason == "server-stop":
            transport.abort()
        else:
            transport.close()  # flushes the last reply; a peer that never reads gets aborted
            self._loop.call_later(_CLOSE_GRACE_S, transport.abort)

    def _set_reading(self, on: bool) -> None:
        if on == self._reading or self._transport is None or self._transport.is_closing():
            return
        self._reading = on
        if on:
            self._last_rx = self._loop.time()
            if self._sink is not None and self._server.media_read_max_interval_s > 0:
                # a publisher: its reads move to the server's media reader (the transport stays
                # paused; it still writes, and closes the socket)
                self._sock = self._transport.get_extra_info("socket")
                self._fd = self._sock.fileno()
                self._set_lowat(self._wake)
                self._server._join_media_reader(self._fd, self)
            else:
                self._transport.resume_reading()
        elif self._fd >= 0:
            self._leave_media_reader()
        else:
            self._transport.pause_reading()

    def _arm_timer(self) -> None:
        # On the shared grid (mesh.timers): every connection's check and the node's heartbeats
        # fall due together and cost one wake-up, not one each.
        srv = self._server
        interval = max(0.05, min(1.0, srv.handshake_timeout_s / 4, srv.idle_timeout_s / 4))
        self._timer = self._loop.call_at(next_tick(self._loop.time(), interval), self._check_timeouts)

    def _check_timeouts(self) -> None:
        if self._closed:
            return
        now = self._loop.time()
        state = self._session.state
        srv = self._server
        if (not self._accepted and state in _SETUP_STATES and now - self._started > srv.handshake_timeout_s):
            step = "handshake" if state in (State.AWAIT_C0C1, State.AWAIT_C2) else "connect and publish"
            self._bad_input("timeout", f"{step} not completed within {srv.handshake_timeout_s:g} s")
            return
        if self._reading and now - self._last_rx > srv.idle_timeout_s:
            self._bad_input("timeout", f"no data for {srv.idle_timeout_s:g} s")
            return
        self._arm_timer()


#: States in which a connection is still on its way to a publish (the decision itself, which is
#: our side's work, is not counted against the deadline).
_SETUP_STATES = frozenset({State.AWAIT_C0C1, State.AWAIT_C2, State.AWAIT_CONNECT, State.CONNECTED})


class RtmpServer:
    """Listens for RTMP publishers; see the module docstring. ``start()`` binds, ``stop()`` ends all."""

    def __init__(self, handler: RtmpHandler, *, host: str, port: int, max_connections: int = 1000,
                 max_connections_per_ip: int = 128, handshake_timeout_s: float = 10.0,
                 idle_timeout_s: float = 30.0, max_message_size: int = 8 << 20,
                 max_setup_bytes: int = 64 << 10,
                 media_read_max_interval_s: float = MEDIA_READ_MAX_INTERVAL_S,
                 media_read_wake_bytes: int = MEDIA_READ_WAKE_BYTES,
                 media_batch: MediaBatch | None = None) -> None:
        self.handler = handler
        self.host = host
        self.port = port
        self.max_connections = max_connections
        self.max_connections_per_ip = max_connections_per_ip
        self.max_setup_bytes = max_setup_bytes
        self.handshake_timeout_s = handshake_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.max_message_size = max_message_size
        self.media_read_max_interval_s = media_read_max_interval_s
        self.read_gap_s = min(PASS_GAP_S, media_read_max_interval_s)
        self.media_read_wake_bytes = media_read_wake_bytes
        self.media_batch = media_batch
        self._server: asyncio.base_events.Server | None = None
        self._conns: set[_RtmpConnection] = set()
        self._per_ip: dict[str, int] = {}  # open connections per source address
        self._tasks: set[asyncio.Task[None]] = set()
        self._reader: _MediaReader | None = None
        self._closed_bytes = 0  # received on connections that have ended
        _servers.add(self)

    @property
    def bytes_received(self) -> int:
        """Every byte received from RTMP clients (handshakes included), for /metrics."""
        return self._closed_bytes + sum(c._session.bytes_received for c in self._conns)

    @property
    def connection_count(self) -> int:
        return len(self._conns)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _RtmpConnection(self), self.host, self.port,
                                                reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("rtmp ingest listening on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        """Close the listener and every connection; waits (bounded) for on_unpublish callbacks."""
        if self._server is not None:
            self._server.close()
        for conn in list(self._conns):
            conn._shutdown("server-stop")
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=_STOP_TIMEOUT_S)
            for task in pending:
                log.warning("rtmp stop: a publish callback did not finish within %s s; cancelling",
                            _STOP_TIMEOUT_S)
                task.cancel()
        if self._server is not None:
            try:
                await asyncio.wait_for(self._server.wait_closed(), _STOP_TIMEOUT_S)
            except asyncio.TimeoutError:
                pass
            self._server = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    # ------------------------------------------------------------------ for connections

    def _register(self, conn: _RtmpConnection) -> tuple[str, str] | None:
        """Admit ``conn``, or say why not: ``(reason, detail)``."""
        if len(self._conns) >= self.max_connections:
            return "limit", f"{len(self._conns)} connections open (max_connections {self.max_connections})"
        count = self._per_ip.get(conn.ip, 0)
        if count >= self.max_connections_per_ip:
            return "ip_limit", (f"{count} connections open from {conn.ip} "
                                f"(max_connections_per_ip {self.max_connections_per_ip})")
        self._per_ip[conn.ip] = count + 1
        self._conns.add(conn)
        return None

    def _unregister(self, conn: _RtmpConnection) -> None:
        if conn not in self._conns:
            return
        self._conns.remove(conn)
        left = self._per_ip[conn.ip] - 1
        if left:
            self._per_ip[conn.ip] = left
        else:
            del self._per_ip[conn.ip]

    def connections_from(self, ip: str) -> int:
        """Open connections from source address ``ip``."""
        return self._per_ip.get(ip, 0)

    def _join_media_reader(self, fd: int, conn: _RtmpConnection) -> None:
        if self._reader is None:
            self._reader = _MediaReader(asyncio.get_running_loop(), self.read_gap_s, self.media_batch)
        self._reader.add(fd, conn)

    def _leave_media_reader(self, fd: int) -> None:
        if self._reader is not None:
            self._reader.remove(fd)

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


class _MediaReader:
    """Reads publishing connections in passes: a timer runs a pass when the first publisher is
    due (its ``_read_at``, see :meth:`_RtmpConnection._next_read`), at least ``gap_s`` after the
    previous pass, and the pass reads every publisher due by then into one shared buffer.
    Between passes, one epoll set (level-triggered, its fd in the event loop) reports the sockets
    whose ``SO_RCVLOWAT`` was reached -- a keyframe, the rest of a message a read ended inside of,
    a burst -- and only those are read at once. The timer runs only while there are publishers.
    A pass ends by flushing ``batch`` (the bus). See the module docstring for why."""

    def __init__(self, loop: asyncio.AbstractEventLoop, gap_s: float,
                 batch: MediaBatch | None = None) -> None:
        self._loop = loop
        self.gap_s = gap_s
        self._batch = batch
        self._epoll = select.epoll()
        self._efd = self._epoll.fileno()
        self._conns: dict[int, _RtmpConnection] = {}
        self._view = memoryview(bytearray(_READ_BUFFER))
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._last_pass = -math.inf
        self.passes = 0  # timed passes
        self.wakes = 0  # reads woken by a socket's SO_RCVLOWAT

    def add(self, fd: int, conn: _RtmpConnection) -> None:
        self._epoll.register(fd, select.EPOLLIN)
        if not self._conns:
            self._loop.add_reader(self._efd, self._ready)
        self._conns[fd] = conn
        conn._read_at = 0.0  # at the next pass: its first media may be queued already
        self._schedule()

    def remove(self, fd: int) -> None:
        if self._conns.pop(fd, None) is None:
            return
        try:
            self._epoll.unregister(fd)
        except (OSError, ValueError):
            pass
        if not self._conns:
            self._stop()

    def _stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._loop.remove_reader(self._efd)

    def _schedule(self) -> None:
        """(Re)arm the timer for the first publisher due, not sooner than a gap after the last pass."""
        if not self._conns:
            return
        at = max(min(conn._read_at for conn in self._conns.values()), self.soonest_pass)
        if self._timer is not None:
            if abs(at - self._timer_at) < 0.001:
                return
            self._timer.cancel()
        self._timer_at = at
        self._timer = self._loop.call_at(at, self._pass)

    @property
    def soonest_pass(self) -> float:
        """The soonest the next timed pass may run (a gap after the last)."""
        return self._last_pass + self.gap_s

    def _ready(self) -> None:
        """Some publisher has a keyframe's worth queued, or the rest of a message: read those."""
        self.wakes += 1
        now = self._loop.time()
        conns, view, batch = self._conns, self._view, self._batch
        if batch is not None:
            batch.begin_batch()
        try:
            for fd, _mask in self._epoll.poll(0):
                conn = conns.get(fd)
                if conn is not None:
                    conn._read_media(view, now)
        finally:
            if batch is not None:
                batch.flush()
        self._schedule()  # a read moves that publisher's next one

    def _pass(self) -> None:
        self._timer = None
        now = self._last_pass = self._loop.time()
        self.passes += 1
        due = now + _TIMER_SLACK_S
        view, batch = self._view, self._batch
        if batch is not None:
            batch.begin_batch()
        try:
            for conn in list(self._conns.values()):
                if conn._read_at <= due:
                    conn._read_media(view, now, timed=True)
        finally:
            if batch is not None:
                batch.flush()
        self._schedule()

    def close(self) -> None:
        if self._conns:
            self._stop()
        self._conns.clear()
        self._epoll.close()


_servers: weakref.WeakSet[RtmpServer] = weakref.WeakSet()
metrics.RTMP_RECEIVED_BYTES.add_source(lambda: sum(s.bytes_received for s in list(_servers)))
