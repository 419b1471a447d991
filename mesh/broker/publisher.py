"""The origin side of the bus: an XPUB socket for media and a ROUTER socket for snapshots.

- Media goes out on XPUB with an explicit send high-water mark: a subscriber that does not read
  loses messages (it sees a ``seq`` gap) and never slows the origin or the other subscribers.
- XPUB (verbose) tells us when a subscription arrives; we greet it at once with a heartbeat on
  the topic, which is how an edge knows its subscription is active and may ask for a snapshot.
- The ROUTER socket answers snapshot requests from each channel's :class:`SnapshotWindow`, within
  the bounds of :class:`~.snapshots.SnapshotQueue` (one reply in flight per peer, a cap on all
  replies in flight). Replies to peers whose queue is full are dropped and counted
  (``ROUTER_MANDATORY`` with non-blocking sends); a TCP user timeout cuts peers that stop
  reading, and large replies live in anonymous memory maps, so their memory goes back to the
  system when ZeroMQ lets go of them.
- With ``curve`` (a :class:`~.keys.KeyPair`) both sockets are CURVE servers and a ZAP handler
  (:mod:`.zap`) admits only the keys ``allowed_keys`` returns (the registry's alive nodes) and
  our own.

Entries pushed in one event-loop tick are sent as one batch per topic at the end of the tick, so
bursts cost one ZeroMQ send instead of many and nothing waits longer than the current tick. A
caller that pushes a whole pass synchronously (the RTMP ingest's read pass) brackets it with
:meth:`BusPublisher.begin_batch` and :meth:`BusPublisher.flush` and saves the loop that extra pass.
One task owns each socket's receive side; sends happen in the loop thread only.
"""
from __future__ import annotations

import asyncio
import logging
import weakref
import mmap
from typing import Any

import msgpack
import zmq
import zmq.asyncio

from .. import metrics
from ..timers import sleep_to_grid
from . import wire
from .keys import KeyPair
from .snapshots import QUEUED, SnapshotQueue
from .wire import CONFIG, EOS, FLAG_SEG_START, HEARTBEAT, MEDIA, Entry
from .window import SnapshotWindow
from .zap import KeyGate, KeyProvider, ZapHandler

log = logging.getLogger("mesh.bus")

MAX_BATCH_ENTRIES = 256
MAX_BATCH_BYTES = 1 << 20
ZERO_COPY_MIN_BYTES = 64 << 10  # payload frames at least this large are sent without a copy
_SNDMORE = int(zmq.SNDMORE)
_zsend = zmq.backend.Socket.send  # the Cython send, without the sugar layer's per-call work
SNAPSHOT_REQUEST_MAX_BYTES = 4096
SNAPSHOT_SNDHWM = 4  # replies queued per peer in ZeroMQ before sends to it fail (and are dropped)
SNAPSHOT_STALL_S = 0.5  # a reply not handed to the kernel in this time: the peer does not read
SNAPSHOT_CUT_S = 5.0  # TCP user timeout: a peer leaving our data unread this long is disconnected
SNAPSHOT_REAP_S = 0.02  # how often replies in flight are checked while there are any
MMAP_MIN_BYTES = 128 << 10  # replies at least this large are built in an anonymous memory map


def snapshot_reply(ok: bool, topic: bytes, first_seq: int = 0, last_seq: int = -1, epoch: int = 0,
                   error: str = "") -> bytes:
    """The first frame of a snapshot reply. Entries below ``first`` are the base config; the rest
    run contiguously from ``first`` (a segment start) to ``last``."""
    return msgpack.packb({"v": wire.VERSION, "ok": ok, "t": topic, "first": first_seq,
                          "last": last_seq, "e": epoch, "err": error}, use_bin_type=True)


class Channel:
    """One topic's sender: numbers entries, keeps the snapshot window, batches within a tick."""

    def __init__(self, publisher: "BusPublisher", stream_id: str, rendition: str, epoch: int,
                 first_seq: int, window: SnapshotWindow):
        self.publisher = publisher
        self.stream_id = stream_id
        self.rendition = rendition
        self.topic = wire.topic_for(stream_id, rendition)
        self.epoch = epoch
        self.next_seq = first_seq
        self.window = window
        self.closed = False
        # This tick's batch. The window takes it at flush time (``snapshot`` flushes first), and
        # ``_marks`` lists the indices it must look at one by one: segment starts and anything
        # that is not media. The plain media in between go into the window a run at a time.
        self._pending: list[Entry] = []
        self._pending_bytes = 0
        self._marks: list[int] = []
        # Whether some subscriber's prefix matches this topic (XPUB tells us): nobody following
        # means the window still takes every entry, but nothing is encoded or sent.
        self.followed = publisher.follows(self.topic)

    def _push(self, entry: Entry) -> Entry:
        if self.closed:
            raise RuntimeError(f"channel {self.topic!r} is closed")
        if entry.kind != HEARTBEAT:  # a heartbeat carries the next seq without taking it
            self.next_seq += 1
        self._marks.append(len(self._pending))
        return self._queue(entry, len(entry.payload))

    def _queue(self, entry: Entry, size: int) -> Entry:
        pending = self._pending
        pending.append(entry)
        self._pending_bytes += size
        if len(pending) >= MAX_BATCH_ENTRIES or self._pending_bytes >= MAX_BATCH_BYTES:
            self.flush()
        elif len(pending) == 1:  # the first of this tick's batch: have the publisher flush it
            self.publisher._mark_dirty(self)
        return entry

    def media(self, track: int, pts: int, dts: int, flags: int, seg: int,
              payload: bytes | memoryview, extra: dict[str, Any] | None = None) -> Entry:
        # The per-packet path of a live origin: _push and _queue written out for MEDIA.
        if self.closed:
            raise RuntimeError(f"channel {self.topic!r} is closed")
        seq = self.next_seq
        self.next_seq = seq + 1
        entry = Entry(seq, MEDIA, track, pts, dts, flags, seg, payload, extra, self.epoch)
        pending = self._pending
        if flags & FLAG_SEG_START:
            self._marks.append(len(pending))
        pending.append(entry)
        self._pending_bytes += len(payload)
        if len(pending) >= MAX_BATCH_ENTRIES or self._pending_bytes >= MAX_BATCH_BYTES:
            self.flush()
        elif len(pending) == 1:  # the first of this tick's batch: have the publisher flush it
            self.publisher._mark_dirty(self)
        return entry

    def config(self, params: dict[str, Any]) -> Entry:
        return self._push(Entry(self.next_seq, CONFIG, 0, 0, 0, 0, 0, b"", params, self.epoch))

    def eos(self, reason: str = "finished") -> Entry:
        return self._push(Entry(self.next_seq, EOS, 0, 0, 0, 0, 0, b"", {"reason": reason},
                                self.epoch))

    def heartbeat(self) -> Entry:
        return self._push(Entry(self.next_seq, HEARTBEAT, 0, 0, 0, 0, 0, b"", None, self.epoch))

    def flush(self) -> None:
        if not self._pending:
            return
        pending, marks = self._pending, self._marks
        self._pending, self._marks, self._pending_bytes = [], [], 0
        self.window.extend(pending, marks)
        if self.followed:
            self.publisher._send(wire.encode(self.topic, self.epoch, pending), pending)

    def snapshot(self) -> tuple[int, int, list[Entry]]:
        """(first seq of the window, last seq sent, entries)."""
        self.flush()
        return self.window.first_seq, self.next_seq - 1, self.window.snapshot()


class BusPublisher:
    def __init__(self, ctx: zmq.asyncio.Context, *, bind: str = "127.0.0.1", port: int = 0,
                 snapshot_port: int = 0, advertise_host: str = "127.0.0.1", hwm: int = 20_000,
                 window_segments: int = 6, window_bytes: int = 64 << 20,
                 heartbeat_interval_s: float = 1.0, curve: KeyPair | None = None,
                 allowed_keys: KeyProvider | None = None, snapshot_max_inflight: int = 8,
                 snapshot_max_inflight_bytes: int = 64 << 20, snapshot_max_peers: int = 256,
                 snapshot_stall_s: float = SNAPSHOT_STALL_S):
        self.ctx = ctx
        self.curve = curve
        self.allowed_keys = allowed_keys
        self.gate: KeyGate | None = None
        self._zap: ZapHandler | None = None
        self._zap_domain = f"mesh-bus-{id(self):x}".encode()
        self.snapshot_stall_s = snapshot_stall_s
        self._snapq = SnapshotQueue(max_peers=snapshot_max_peers, max_inflight=snapshot_max_inflight,
                                    max_inflight_bytes=snapshot_max_inflight_bytes,
                                    stall_s=snapshot_stall_s)
        self._inflight: dict[bytes, Any] = {}  # peer -> zmq.MessageTracker of its reply
        self._reaping = False
        self._reaper: asyncio.Task[None] | None = None
        self.bind, self.port, self.snapshot_port = bind, port, snapshot_port
        self.advertise_host = advertise_host
        self.hwm = hwm
        self.window_segments, self.window_bytes = window_segments, window_bytes
        self.heartbeat_interval_s = heartbeat_interval_s
        self.channels: dict[bytes, Channel] = {}
        self._seq: dict[bytes, int] = {}  # per topic, kept across epochs so seq stays contiguous
        self._dirty: set[Channel] = set()
        self._prefixes: set[bytes] = set()  # subscribed topic prefixes, from XPUB
        self.followed_streams: set[str] = set()  # streams with at least one followed channel
        self._flush_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.messages_sent = 0
        self.entries_sent = 0
        self.bytes_sent = 0
        self.snapshots_served = 0
        _publishers.add(self)
        self.snapshots_dropped = 0  # requests or replies dropped by the bounds (also counted)

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self.curve is not None:
            # The ZAP handler is bound before any CURVE server: libzmq admits everyone otherwise.
            self.gate = KeyGate([self.curve.public])
            self._zap = ZapHandler.acquire(self.ctx, self._zap_domain, self.gate, self.allowed_keys)
            await self._zap.refresh(self._zap_domain)
        self._xpub = self.ctx.socket(zmq.XPUB)
        self._secure(self._xpub)
        self._xpub.setsockopt(zmq.SNDHWM, self.hwm)
        self._xpub.setsockopt(zmq.LINGER, 0)
        self._xpub.setsockopt(zmq.XPUB_VERBOSE, 1)
        self.port = self._bind(self._xpub, self.port)
        self._router = self.ctx.socket(zmq.ROUTER)
        self._secure(self._router)
        self._router.setsockopt(zmq.SNDHWM, SNAPSHOT_SNDHWM)
        self._router.setsockopt(zmq.RCVHWM, 256)
        self._router.setsockopt(zmq.LINGER, 0)
        self._router.setsockopt(zmq.MAXMSGSIZE, SNAPSHOT_REQUEST_MAX_BYTES)
        self._router.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a full or gone peer: an error, not a silent drop
        # TCP_USER_TIMEOUT on Linux: a peer that leaves our data unread (zero window) this long is cut.
        self._router.setsockopt(zmq.TCP_MAXRT, int(SNAPSHOT_CUT_S * 1000))
        self._router.setsockopt(zmq.HEARTBEAT_IVL, 2000)
        self._router.setsockopt(zmq.HEARTBEAT_TIMEOUT, 6000)
        self.snapshot_port = self._bind(self._router, self.snapshot_port)
        # Blocking twins of both sockets for sends from the loop thread without per-send futures.
        self._sender = zmq.Socket.shadow(self._xpub.underlying)
        self._router_sender = zmq.Socket.shadow(self._router.underlying)
        self._tasks = [asyncio.create_task(self._serve_subscriptions(), name="bus-xpub"),
                       asyncio.create_task(self._serve_snapshots(), name="bus-snapshots"),
                       asyncio.create_task(self._heartbeats(), name="bus-heartbeats")]
        log.info("bus publishing on %s, snapshots on %s (%s)", self.endpoint, self.snapshot_endpoint,
                 "CURVE, registered nodes only" if self.curve else "PLAINTEXT, open to anyone")

    def _secure(self, sock: zmq.Socket) -> None:
        if self.curve is None:
            return
        sock.setsockopt(zmq.ZAP_DOMAIN, self._zap_domain)
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.curve.secret)

    def _bind(self, sock: zmq.Socket, port: int) -> int:
        if port:
            sock.bind(f"tcp://{self.bind}:{port}")
            return port
        return sock.bind_to_random_port(f"tcp://{self.bind}")

    @property
    def endpoint(self) -> str:
        return f"tcp://{self.advertise_host}:{self.port}"

    @property
    def snapshot_endpoint(self) -> str:
        return f"tcp://{self.advertise_host}:{self.snapshot_port}"

    async def stop(self) -> None:
        self.flush()
        tasks = self._tasks + ([self._reaper] if self._reaper is not None else [])
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks, self._reaper = [], None
        self._xpub.close(linger=0)
        self._router.close(linger=0)
        self._inflight.clear()
        if self._zap is not None:
            await self._zap.release(self._zap_domain)
            self._zap = None

    # -- channels --------------------------------------------------------------------------
    def open_channel(self, stream_id: str, rendition: str, epoch: int) -> Channel:
        """A fresh channel (new window) for a stream; replaces one of an older epoch."""
        topic = wire.topic_for(stream_id, rendition)
        old = self.channels.get(topic)
        if old is not None:
            old.flush()
            old.closed = True
        first_seq = old.next_seq if old is not None else self._seq.get(topic, 0)
        channel = Channel(self, stream_id, rendition, epoch, first_seq,
                          SnapshotWindow(self.window_segments, self.window_bytes))
        self.channels[topic] = channel
        self._count_followed()
        return channel

    def close_channel(self, channel: Channel) -> None:
        channel.flush()
        channel.closed = True
        self._seq[channel.topic] = channel.next_seq
        if self.channels.get(channel.topic) is channel:
            del self.channels[channel.topic]
            self._count_followed()

    # -- sending ---------------------------------------------------------------------------
    def _mark_dirty(self, channel: Channel) -> None:
        self._dirty.add(channel)
        if not self._flush_scheduled and self._loop is not None:
            self._flush_scheduled = True
            self._loop.call_soon(self.flush)

    def begin_batch(self) -> None:
        """The caller will :meth:`flush` before it returns to the event loop (the RTMP ingest's
        read pass): entries pushed until then need no flush scheduled for a later loop pass."""
        self._flush_scheduled = True

    def flush(self) -> None:
        self._flush_scheduled = False
        dirty, self._dirty = self._dirty, set()
        for channel in dirty:
            channel.flush()

    def _send(self, frames: list[Any], entries: list[Entry]) -> None:
        topic, header, payload = frames
        send, sock = _zsend, self._sender
        try:
            # Three plain Cython sends: Socket.send_multipart costs several microseconds more
            # per message (enum flag arithmetic, a Frame per part). Small payloads are copied
            # into the message; from ZERO_COPY_MIN_BYTES on (a batch, a keyframe) ZeroMQ sends
            # the Python buffer itself, which measured cheaper end to end than copying it.
            send(sock, topic, _SNDMORE, True)
            send(sock, header, _SNDMORE, True)
            send(sock, payload, 0, len(payload) < ZERO_COPY_MIN_BYTES)
        except zmq.ZMQError as exc:  # the socket is closing; nothing to deliver to
            log.debug("bus send failed: %s", exc)
            return
        self.messages_sent += 1
        self.entries_sent += len(entries)
        self.bytes_sent += len(topic) + len(header) + len(payload)

    # -- tasks -----------------------------------------------------------------------------
    def follows(self, topic: bytes) -> bool:
        """Whether some subscriber's prefix matches ``topic``."""
        return any(topic.startswith(prefix) for prefix in self._prefixes)

    async def _serve_subscriptions(self) -> None:
        """Track which prefixes are subscribed and greet each subscription. XPUB passes every
        subscribe (verbose) and an unsubscribe only when the last subscriber of that prefix is
        gone (by unsubscribing or disconnecting). Until a channel's topic is followed its entries
        are not sent at all: ZeroMQ would drop them, after we paid for encoding and the send;
        an edge subscribing later asks for the snapshot after our greeting, which has them."""
        while True:
            msg = await self._xpub.recv()
            if not msg or msg[0] not in (0, 1):  # an XSUB peer may send anything upstream
                metrics.reject("bus", "subscription_malformed", "XPUB message %r is no (un)subscribe",
                               bytes(msg[:16]))
                continue
            prefix = bytes(msg[1:])
            if len(prefix) > wire.MAX_TOPIC_BYTES:  # can match no topic: not worth remembering
                if msg[0] == 1:
                    metrics.reject("bus", "subscription_too_long", "subscription of %d bytes", len(prefix))
                continue
            if msg[0] == 0:
                self._prefixes.discard(prefix)
                for topic, channel in self.channels.items():
                    if topic.startswith(prefix):
                        channel.followed = self.follows(topic)
                self._count_followed()
                continue
            self._prefixes.add(prefix)
            for topic, channel in list(self.channels.items()):
                if topic.startswith(prefix):
                    channel.followed = True
                    if prefix:
                        channel.heartbeat()
                        channel.flush()
            self._count_followed()

    def _count_followed(self) -> None:
        self.followed_streams = {ch.stream_id for ch in self.channels.values() if ch.followed}

    async def _serve_snapshots(self) -> None:
        while True:
            frames = await self._router.recv_multipart()
            self._take_request(frames)
            self._pump()

    def _take_request(self, frames: list[bytes]) -> None:
        ident = frames[0]
        try:
            topic = self._parse_request(frames)
        except wire.WireError as exc:
            metrics.reject("bus", exc.reason, "snapshot request: %s", exc)
            self._send_small([ident, b"", snapshot_reply(False, b"", error=str(exc))])
            return
        if topic not in self.channels:
            self._send_small([ident, b"", snapshot_reply(False, topic, error="no such stream on this origin")])
            return
        verdict = self._snapq.request(ident, topic)
        if verdict != QUEUED:
            self.snapshots_dropped += 1
            metrics.reject("bus", "snapshot_" + verdict, "snapshot request for %r dropped (%s)",
                           topic, verdict)

    @staticmethod
    def _parse_request(frames: list[bytes]) -> bytes:
        if len(frames) != 3 or frames[1] != b"":
            raise wire.WireError("snapshot", "snapshot request is not [identity, '', request]")
        body = frames[2]
        try:
            request = msgpack.unpackb(body, raw=False, max_bin_len=512, max_str_len=512,
                                      max_array_len=8, max_map_len=8)
        except Exception:
            raise wire.WireError("snapshot", "snapshot request is not msgpack") from None
        if type(request) is not dict or request.get("v") != wire.VERSION \
                or type(request.get("t")) is not bytes:
            raise wire.WireError("snapshot", "snapshot request lacks v/t")
        topic = request["t"]
        wire.parse_topic(topic)
        return topic

    def _send_small(self, frames: list[Any]) -> bool:
        """A short reply without waiting; dropped (and counted) if the peer is full or gone."""
        try:
            self._router_sender.send_multipart(frames, flags=zmq.NOBLOCK)
            return True
        except zmq.ZMQError as exc:  # EAGAIN: its queue is full; EHOSTUNREACH: it went away
            self.snapshots_dropped += 1
            metrics.reject("bus", "snapshot_unread", "reply dropped: %s", exc)
            return False

    def _pump(self) -> None:
        """Answer waiting requests while the bounds allow."""
        q = self._snapq
        while (pick := q.next()) is not None:
            ident, topic = pick
            channel = self.channels.get(topic)
            if channel is None:
                self._send_small([ident, b"", snapshot_reply(False, topic, error="no such stream on this origin")])
                continue
            first, last, entries = channel.snapshot()
            head = snapshot_reply(True, topic, first, last, channel.epoch)
            if not entries:
                self._send_small([ident, b"", head])
                continue
            payload, size = _joined(entries)
            frames = [ident, b"", head, topic, wire.encode_header(channel.epoch, entries), payload]
            try:
                tracker = self._router_sender.send_multipart(frames, flags=zmq.NOBLOCK, copy=False,
                                                             track=True)
            except zmq.ZMQError as exc:
                self.snapshots_dropped += 1
                metrics.reject("bus", "snapshot_unread", "snapshot of %r not sent: %s", topic, exc)
                if exc.errno == zmq.EHOSTUNREACH:
                    q.forget(ident)
                continue
            self.snapshots_served += 1
            q.started(ident, size, self._loop.time() if self._loop else 0.0)
            self._inflight[ident] = tracker
        if self._inflight and not self._reaping:
            self._reaping = True
            self._reaper = asyncio.get_running_loop().create_task(self._reap(), name="bus-snapshot-reaper")

    async def _reap(self) -> None:
        """While replies are in flight: free the slots of those ZeroMQ let go of, note stalls."""
        try:
            while self._inflight:
                await asyncio.sleep(SNAPSHOT_REAP_S)
                for ident, tracker in list(self._inflight.items()):
                    if tracker.done:
                        del self._inflight[ident]
                        self._snapq.finished(ident)
                for ident in self._snapq.check_stalls(asyncio.get_running_loop().time()):
                    metrics.reject("bus", "snapshot_stalled", "a snapshot peer stopped reading")
                self._pump()
        finally:
            self._reaping = False

    @property
    def snapshot_inflight_bytes(self) -> int:
        return self._snapq.inflight_bytes

    async def _heartbeats(self) -> None:
        while True:
            await sleep_to_grid(self.heartbeat_interval_s)  # with the node's other timers
            for channel in list(self.channels.values()):
                channel.heartbeat()
            self.flush()


_publishers: "weakref.WeakSet[BusPublisher]" = weakref.WeakSet()
metrics.BUS_SENT.add_source(lambda: sum(p.messages_sent for p in list(_publishers)))
metrics.BUS_SENT_ENTRIES.add_source(lambda: sum(p.entries_sent for p in list(_publishers)))
def _joined(entries: list[Entry]) -> tuple[Any, int]:
    """The entries' payloads in one buffer: bytes when small, else an anonymous memory map (its
    memory returns to the system when the last reference goes, heap fragmentation or not)."""
    size = sum(len(e.payload) for e in entries)
    if size < MMAP_MIN_BYTES:
        return b"".join([e.payload for e in entries]), size
    buf = mmap.mmap(-1, size)
    view = memoryview(buf)
    pos = 0
    for e in entries:
        n = len(e.payload)
        view[pos:pos + n] = e.payload
        pos += n
    return view, size
metrics.BUS_SENT_BYTES.add_source(lambda: sum(p.bytes_sent for p in list(_publishers)))
