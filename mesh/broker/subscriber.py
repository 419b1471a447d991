"""The edge side of the bus: one SUB + DEALER pair per origin, one tracker per subscribed topic.

A :class:`Link` connects to one origin (its PUB endpoint and its snapshot endpoint); each topic
subscribed on it gets a :class:`Subscription` holding a :class:`TopicTracker`. Frames are drained
without an ``await`` per message; malformed frames are dropped and counted. Deliveries go to the
subscription's sink synchronously, in order.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable, Protocol

import msgpack
import zmq
import zmq.asyncio

from .. import metrics
from . import wire
from .tracker import Delivery, Gap, TopicTracker

log = logging.getLogger("mesh.bus")

DRAIN_BATCH = 512
RECOVERY_INTERVAL_S = 5.0  # at most one gap-repair snapshot per topic in this time


class Sink(Protocol):
    def __call__(self, deliveries: list[Delivery]) -> None: ...


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

    def __init__(self, subscriber: "BusSubscriber", bus_endpoint: str, snapshot_endpoint: str):
        self.subscriber = subscriber
        self.bus_endpoint = bus_endpoint
        self.snapshot_endpoint = snapshot_endpoint
        ctx = subscriber.ctx
        self.sub = ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.RCVHWM, subscriber.rcvhwm)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.MAXMSGSIZE, wire.MAX_PAYLOAD_BYTES + wire.MAX_HEADER_BYTES)
        self.sub.connect(bus_endpoint)
        self._sub_sync = zmq.Socket.shadow(self.sub.underlying)
        self.dealer = ctx.socket(zmq.DEALER)
        self.dealer.setsockopt(zmq.LINGER, 0)
        self.dealer.connect(snapshot_endpoint)
        self.subs: dict[bytes, Subscription] = {}
        self._replies: dict[bytes, asyncio.Future[list[bytes]]] = {}
        self._tasks = [asyncio.create_task(self._recv_media(), name=f"bus-sub-{bus_endpoint}"),
                       asyncio.create_task(self._recv_snapshots(), name=f"bus-snap-{bus_endpoint}")]

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
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.sub.close(linger=0)
        self.dealer.close(linger=0)

    # -- media -----------------------------------------------------------------------------
    def _handle(self, frames: list[zmq.Frame]) -> None:
        try:
            _, _, entries = wire.decode([f.buffer for f in frames])
        except wire.WireError as exc:
            metrics.reject("bus", exc.reason, "frame from %s: %s", self.bus_endpoint, exc)
            return
        sub = self.subs.get(frames[0].bytes)
        if sub is not None:
            sub.on_live(entries)

    async def _recv_media(self) -> None:
        sock = self._sub_sync
        while True:
            frames = await self.sub.recv_multipart(copy=False)
            self._handle(frames)
            # Drain what is already queued without an await per message.
            for _ in range(DRAIN_BATCH):
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                self._handle(frames)

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
                 snapshot_timeout_s: float = 2.0, snapshot_retries: int = 3):
        self.ctx = ctx
        self.rcvhwm = rcvhwm
        self.snapshot_timeout_s = snapshot_timeout_s
        self.snapshot_retries = snapshot_retries
        self.links: dict[str, Link] = {}

    def subscribe(self, bus_endpoint: str, snapshot_endpoint: str, stream_id: str, rendition: str,
                  sink: Callable[[list[Delivery]], None]) -> Subscription:
        link = self.links.get(bus_endpoint)
        if link is None:
            link = self.links[bus_endpoint] = Link(self, bus_endpoint, snapshot_endpoint)
        return link.add(wire.topic_for(stream_id, rendition), sink)

    async def unsubscribe(self, sub: Subscription) -> None:
        link = sub.link
        link.remove(sub)
        if not link.subs and self.links.get(link.bus_endpoint) is link:
            del self.links[link.bus_endpoint]
            await link.close()

    async def stop(self) -> None:
        links, self.links = list(self.links.values()), {}
        for link in links:
            await link.close()
