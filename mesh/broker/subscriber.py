"""The edge side of the bus: one SUB + DEALER pair per origin, one tracker per subscribed topic.

A :class:`Link` connects to one origin (its PUB endpoint and its snapshot endpoint); each topic
subscribed on it gets a :class:`Subscription` holding a :class:`TopicTracker`. Frames are drained
without an ``await`` per message; malformed frames are dropped and counted. Deliveries go to the
subscription's sink synchronously, in order.

With a key pair (``curve``), both sockets of a link are CURVE clients of the origin's public key
(from the stream's registry document). libzmq gives up on an endpoint whose server refused the
handshake (our key not admitted yet: we registered a moment ago); a monitor on each socket sees
that and connects again after a short, growing pause.
"""
from __future__ import annotations

import asyncio
import logging
import time
import weakref
from typing import Any, Callable

import msgpack
import zmq
import zmq.asyncio

from zmq.utils.monitor import parse_monitor_message

from .. import metrics
from . import wire
from .keys import KeyPair, is_z85_key
from .tracker import Delivery, Gap, TopicTracker

log = logging.getLogger("mesh.bus")

DRAIN_BATCH = 512
_zrecv = zmq.backend.Socket.recv  # the Cython calls, without the sugar layer's per-call work
_NOBLOCK = int(zmq.NOBLOCK)
RECOVERY_INTERVAL_S = 5.0  # at most one gap-repair snapshot per topic in this time
AUTH_RETRY_FIRST_S = 0.2  # first pause before connecting again after a refused handshake...
AUTH_RETRY_MAX_S = 5.0  # ... doubling up to this
_HANDSHAKE_EVENTS = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                     | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)


class BusSecurityError(RuntimeError):
    """The bus cannot be secured as configured; the message says what to do."""


class Subscription:
    def __init__(self, link: "Link", topic: bytes, sink: Callable[[list[Delivery]], None]):
        self.link = link
        self.topic = topic
        self.stream_id, self.rendition = wire.parse_topic(topic)
        self.sink = sink
        self.tracker = TopicTracker()
        self.last_rx = time.monotonic()
        self.snapshot_ready = asyncio.Event()  # set once the snapshot (or its failure) is applied
        self.closed = False
        self._snapshot_task: asyncio.Task[None] | None = None
        self._last_snapshot = float("-inf")

    def _deliver(self, deliveries: list[Delivery]) -> None:
        if not deliveries or self.closed:
            return
        if Gap in map(type, deliveries):  # a C-level scan: this runs for every message
            for d in deliveries:
                if isinstance(d, Gap):
                    metrics.BUS_GAPS.inc()
                    metrics.BUS_LOST.inc(d.lost)
        try:
            self.sink(deliveries)
        except Exception:  # a consumer bug must not kill the link for every other topic
            log.exception("bus consumer for %s failed", self.topic)

    def on_live(self, entries: list[wire.Entry]) -> None:
        self.last_rx = now = time.monotonic()
        # Repairing a gap from a snapshot is cheap once; a chronically slow edge resyncs instead.
        self.tracker.recover = now - self._last_snapshot >= RECOVERY_INTERVAL_S
        self._deliver(self.tracker.on_live(entries))
        self._maybe_fetch_snapshot()

    def _maybe_fetch_snapshot(self) -> None:
        if self.tracker.wants_snapshot and self._snapshot_task is None and not self.closed:
            self._snapshot_task = asyncio.get_running_loop().create_task(
                self.link._fetch_snapshot(self), name=f"snapshot-{self.stream_id}")

    def _snapshot_done(self, recovery: bool) -> None:
        self._snapshot_task = None
        if recovery:
            self._last_snapshot = time.monotonic()
        self.snapshot_ready.set()
        self._maybe_fetch_snapshot()

    @property
    def silent_s(self) -> float:
        return time.monotonic() - self.last_rx


class Link:
    """A connection to one origin."""

    def __init__(self, subscriber: "BusSubscriber", bus_endpoint: str, snapshot_endpoint: str,
                 server_key: bytes | None = None):
        self.subscriber = subscriber
        self.bus_endpoint = bus_endpoint
        self.snapshot_endpoint = snapshot_endpoint
        self.server_key = server_key
        self.auth_refusals = 0
        ctx = subscriber.ctx
        # A plain (blocking-API) socket of the process's context, read only in this loop and
        # never blocking: the loop watches its FD and calls _drain, with no future or task per
        # wake-up (zmq.asyncio's machinery costs far more than the message on a busy edge).
        self.sub = zmq.Socket(ctx, zmq.SUB)
        self._secure(self.sub)
        self.sub.setsockopt(zmq.RCVHWM, subscriber.rcvhwm)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.MAXMSGSIZE, wire.MAX_PAYLOAD_BYTES + wire.MAX_HEADER_BYTES)
        self.sub.connect(bus_endpoint)
        self._closed = False
        self._drain_again = False
        self._loop = asyncio.get_running_loop()
        self._fd = self.sub.getsockopt(zmq.FD)
        self._loop.add_reader(self._fd, self._drain)
        self.dealer = ctx.socket(zmq.DEALER)
        self._secure(self.dealer)
        self.dealer.setsockopt(zmq.LINGER, 0)
        self.dealer.connect(snapshot_endpoint)
        self.subs: dict[bytes, Subscription] = {}
        self._replies: dict[bytes, asyncio.Future[list[bytes]]] = {}
        self._tasks = [asyncio.create_task(self._recv_snapshots(), name=f"bus-snap-{bus_endpoint}")]
        if server_key is not None:
            self._tasks += [asyncio.create_task(self._watch(self.sub, bus_endpoint), name="bus-watch-sub"),
                            asyncio.create_task(self._watch(self.dealer, snapshot_endpoint),
                                                name="bus-watch-snap")]

    def _secure(self, sock: zmq.Socket) -> None:
        curve = self.subscriber.curve
        if curve is None or self.server_key is None:
            return
        sock.setsockopt(zmq.CURVE_SERVERKEY, self.server_key)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, curve.public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, curve.secret)
        # Must be set before connect, so the monitor sees the first handshake too.
        sock.get_monitor_socket(_HANDSHAKE_EVENTS)

    async def _watch(self, sock: zmq.Socket, endpoint: str) -> None:
        """Connect again after the origin refused our handshake (libzmq would not)."""
        mon = sock.get_monitor_socket(_HANDSHAKE_EVENTS)  # the one _secure made
        pause = AUTH_RETRY_FIRST_S
        try:
            while True:
                event = parse_monitor_message(await mon.recv_multipart())["event"]
                if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                    if pause > AUTH_RETRY_FIRST_S:
                        log.info("origin %s admitted this node on the bus", endpoint)
                    pause = AUTH_RETRY_FIRST_S
                    continue
                self.auth_refusals += 1
                metrics.reject("bus", "auth_refused", "origin %s refused our handshake", endpoint)
                (log.warning if pause == AUTH_RETRY_FIRST_S else log.debug)(
                    "origin %s refused this node's bus handshake (%s); our key is admitted once the "
                    "registry lists this node alive: connecting again in %.1f s", endpoint,
                    "key not admitted" if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH else "protocol",
                    pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, AUTH_RETRY_MAX_S)
                if self._closed:
                    return
                try:
                    sock.disconnect(endpoint)
                except zmq.ZMQError:
                    pass  # already gone from libzmq's list
                sock.connect(endpoint)
        finally:
            try:
                sock.disable_monitor()
            except zmq.ZMQError:
                pass
            mon.close(linger=0)

    def add(self, topic: bytes, sink: Callable[[list[Delivery]], None]) -> Subscription:
        if topic in self.subs:
            raise RuntimeError(f"already subscribed to {topic!r} on {self.bus_endpoint}")
        sub = Subscription(self, topic, sink)
        self.subs[topic] = sub
        self.sub.setsockopt(zmq.SUBSCRIBE, topic)
        return sub

    def remove(self, sub: Subscription) -> None:
        sub.closed = True
        if self.subs.get(sub.topic) is sub:
            del self.subs[sub.topic]
            self.sub.setsockopt(zmq.UNSUBSCRIBE, sub.topic)
        if sub._snapshot_task is not None:
            sub._snapshot_task.cancel()

    async def close(self) -> None:
        for sub in list(self.subs.values()):
            self.remove(sub)
        self._closed = True
        self._loop.remove_reader(self._fd)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.sub.close(linger=0)
        self.dealer.close(linger=0)

    # -- media -----------------------------------------------------------------------------
    def _handle(self, frames: list[Any]) -> None:
        try:
            _, _, entries = wire.decode(frames)
        except wire.WireError as exc:
            metrics.reject("bus", exc.reason, "frame from %s: %s", self.bus_endpoint, exc)
            return
        self.subscriber.messages_received += 1
        self.subscriber.entries_received += len(entries)
        self.subscriber.bytes_received += sum(len(f) for f in frames)
        sub = self.subs.get(frames[0])
        if sub is not None:
            sub.on_live(entries)

    def _recv_now(self) -> list[Any]:
        """One whole message without waiting; raises ``zmq.Again`` when none is queued.

        The Cython calls skip pyzmq's sugar layer, which costs several microseconds a message
        (enum flag arithmetic; and ``getsockopt`` builds an enum on every call, so the frames'
        own ``more`` flag is used instead of RCVMORE). Frames stay zero-copy: the entries'
        payloads are memoryviews of the last one; only the small topic is copied.
        """
        sock = self.sub
        topic = _zrecv(sock, _NOBLOCK, False)
        if not topic.more:
            return [topic.bytes]
        header = _zrecv(sock, _NOBLOCK, False)
        if not header.more:
            return [topic.bytes, header]
        payload = _zrecv(sock, _NOBLOCK, False)
        frames = [topic.bytes, header, payload]
        while payload.more:  # garbage: keep reading so the next message is whole
            payload = _zrecv(sock, _NOBLOCK, False)
            frames.append(payload)
        return frames

    def _drain(self) -> None:
        """Handle the queued messages: called by the loop when the socket's FD signals, and by
        itself (via call_soon) after DRAIN_BATCH messages, so a busy link never starves the loop.

        ZeroMQ's FD only signals changes. A non-blocking receive that finds nothing has also
        processed the socket's pending commands, which resets the FD: the next message makes
        it readable again, so stopping at ``zmq.Again`` is safe.
        """
        self._drain_again = False
        if self._closed:
            return
        recv_now, handle = self._recv_now, self._handle
        try:
            for _ in range(DRAIN_BATCH):
                handle(recv_now())
        except zmq.Again:
            return
        except zmq.ZMQError as exc:  # the socket is closing
            log.debug("bus receive on %s stopped: %s", self.bus_endpoint, exc)
            return
        self._drain_again = True
        self._loop.call_soon(self._drain_if_due)

    def _drain_if_due(self) -> None:
        if self._drain_again:
            self._drain()

    # -- snapshots -------------------------------------------------------------------------
    async def _recv_snapshots(self) -> None:
        while True:
            frames = await self.dealer.recv_multipart()
            if len(frames) < 2 or frames[0] != b"":
                metrics.reject("bus", "snapshot", "malformed snapshot reply from %s",
                               self.snapshot_endpoint)
                continue
            try:
                head = msgpack.unpackb(frames[1], raw=False, max_map_len=16)
                topic = head["t"]
            except Exception:
                metrics.reject("bus", "snapshot", "unreadable snapshot reply from %s",
                               self.snapshot_endpoint)
                continue
            future = self._replies.pop(topic, None) if isinstance(topic, bytes) else None
            if future is not None and not future.done():
                future.set_result(frames[1:])

    async def _fetch_snapshot(self, sub: Subscription) -> None:
        s = self.subscriber
        request = msgpack.packb({"v": wire.VERSION, "t": sub.topic}, use_bin_type=True)
        recovery = sub.tracker.next_seq is not None
        for attempt in range(s.snapshot_retries):
            future: asyncio.Future[list[bytes]] = asyncio.get_running_loop().create_future()
            self._replies[sub.topic] = future
            await self.dealer.send_multipart([b"", request])
            try:
                reply = await asyncio.wait_for(future, s.snapshot_timeout_s)
            except asyncio.TimeoutError:
                log.info("snapshot of %s from %s timed out (attempt %d)", sub.topic.decode(),
                         self.snapshot_endpoint, attempt + 1)
                continue
            finally:
                self._replies.pop(sub.topic, None)
            if self._apply_snapshot(sub, reply):
                sub._snapshot_done(recovery)
                return
        log.warning("no snapshot of %s from %s; going on from the next segment start",
                    sub.topic.decode(), self.snapshot_endpoint)
        sub._deliver(sub.tracker.on_snapshot_failed())
        sub._snapshot_done(recovery)

    def _apply_snapshot(self, sub: Subscription, reply: list[bytes]) -> bool:
        head = msgpack.unpackb(reply[0], raw=False)
        if not head.get("ok"):
            log.info("origin %s has no snapshot of %s: %s", self.snapshot_endpoint,
                     sub.topic.decode(), head.get("err"))
            return False
        first, last, epoch = head.get("first"), head.get("last"), head.get("e", 0)
        if type(first) is not int or type(last) is not int or type(epoch) is not int:
            metrics.reject("bus", "snapshot", "snapshot reply without last seq")
            return False
        entries: list[wire.Entry] = []
        if len(reply) == 4:
            try:
                _, _, entries = wire.decode(reply[1:])
            except wire.WireError as exc:
                metrics.reject("bus", exc.reason, "snapshot body: %s", exc)
                return False
        elif len(reply) != 1:
            metrics.reject("bus", "snapshot", "snapshot reply has %d frames", len(reply))
            return False
        sub._deliver(sub.tracker.on_snapshot(first, last, entries, epoch))
        return True


class BusSubscriber:
    """All of an edge's links, keyed by origin endpoint."""

    def __init__(self, ctx: zmq.asyncio.Context, *, rcvhwm: int = 100_000,
                 snapshot_timeout_s: float = 2.0, snapshot_retries: int = 3,
                 curve: KeyPair | None = None):
        self.ctx = ctx
        self.curve = curve
        wire.load_kernels()  # load the header kernel now, not on the first message
        self.rcvhwm = rcvhwm
        self.snapshot_timeout_s = snapshot_timeout_s
        self.snapshot_retries = snapshot_retries
        self.links: dict[str, Link] = {}
        self.messages_received = 0
        self.entries_received = 0
        self.bytes_received = 0
        _subscribers.add(self)

    def subscribe(self, bus_endpoint: str, snapshot_endpoint: str, stream_id: str, rendition: str,
                  sink: Callable[[list[Delivery]], None],
                  server_key: bytes | str | None = None) -> Subscription:
        """Subscribe to one topic of the origin at ``bus_endpoint``. With a key pair of our own,
        ``server_key`` (the origin's public key, Z85) is required: raises
        :class:`BusSecurityError` without one rather than reading the stream in plaintext."""
        key = self._server_key(bus_endpoint, server_key)
        link = self.links.get(bus_endpoint)
        if link is not None and link.server_key != key:  # another node at that address now
            link = None
        if link is None:
            link = self.links[bus_endpoint] = Link(self, bus_endpoint, snapshot_endpoint, key)
        return link.add(wire.topic_for(stream_id, rendition), sink)

    def _server_key(self, endpoint: str, server_key: bytes | str | None) -> bytes | None:
        if self.curve is None:
            return None
        if not server_key:
            raise BusSecurityError(
                f"the origin at {endpoint} advertises no bus public key (it runs with "
                f"bus_security = \"none\"?); this node uses CURVE and will not read plaintext: "
                f"set the same bus_security on every node of the cluster")
        key = server_key.encode("ascii", "replace") if isinstance(server_key, str) else server_key
        if not is_z85_key(key):
            raise BusSecurityError(f"the bus public key registered for {endpoint} is not a "
                                   f"40-character Z85 CURVE key")
        return key

    async def unsubscribe(self, sub: Subscription) -> None:
        link = sub.link
        link.remove(sub)
        if not link.subs:
            if self.links.get(link.bus_endpoint) is link:
                del self.links[link.bus_endpoint]
            await link.close()

    async def stop(self) -> None:
        links, self.links = list(self.links.values()), {}
        for link in links:
            await link.close()


_subscribers: "weakref.WeakSet[BusSubscriber]" = weakref.WeakSet()
metrics.BUS_RECEIVED.add_source(lambda: sum(s.messages_received for s in list(_subscribers)))
metrics.BUS_RECEIVED_ENTRIES.add_source(lambda: sum(s.entries_received for s in list(_subscribers)))
metrics.BUS_RECEIVED_BYTES.add_source(lambda: sum(s.bytes_received for s in list(_subscribers)))
