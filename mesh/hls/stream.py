"""One stream served by an edge: its window, its bus subscription, the origin it follows.

An :class:`EdgeStream` is the only writer of its state. It joins its origin (subscribe, then the
snapshot: a cold edge has a full window at once), follows the stream to a new origin when the
registry says it moved (to a higher epoch only: a deposed origin still sending is never followed
back, see :mod:`mesh.hls.window`), ends its window when the registry says it finished, and leaves
the bus when nobody asked for it in a while. It depends on two small protocols, a :class:`Directory` of
streams (the registry) and a :class:`Bus` to subscribe on, never on the node.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable, Protocol

from ..broker.tracker import Delivery
from ..errors import NotFound, Unavailable
from ..registry import BROADCASTING, CREATED, FINISHED
from .window import RenditionWindow

log = logging.getLogger("mesh.edge")

QUICK_SILENCE_S = 1.5  # no bus traffic (not even a heartbeat) for this long: the origin may be gone
QUICK_RECHECK_S = 0.5


class Directory(Protocol):
    """Where streams are looked up: the registry's ``get_stream``."""

    async def get_stream(self, stream_id: str) -> dict[str, Any] | None: ...


class Subscription(Protocol):
    snapshot_ready: asyncio.Event

    @property
    def silent_s(self) -> float: ...


class Bus(Protocol):
    def subscribe(self, bus_endpoint: str, snapshot_endpoint: str, stream_id: str, rendition: str,
                  sink: Callable[[list[Delivery]], None]) -> Any: ...

    async def unsubscribe(self, sub: Any) -> None: ...


def check_servable(stream_id: str, app: str, doc: dict[str, Any] | None) -> dict[str, Any]:
    """The stream document if the stream can be served now; a domain error saying why not."""
    if doc is None or doc.get("app") != app:
        raise NotFound(f"no stream {stream_id} in {app}")
    status = doc.get("status")
    if status != BROADCASTING:
        why = {CREATED: "has not started yet", FINISHED: "has finished"}.get(
            status, "lost its origin (terminated unexpectedly)")
        raise Unavailable(f"stream {stream_id} {why}")
    return doc


class EdgeStream:
    def __init__(self, stream_id: str, window: RenditionWindow, bus: Bus, directory: Directory, *,
                 origin_silence_s: float):
        self.stream_id = stream_id
        self.window = window
        self._bus = bus
        self._directory = directory
        self._silence_s = origin_silence_s
        self._sub: Any = None
        self.origin = ""
        self.bus_endpoint = ""
        self.epoch = 0
        self.last_request = time.monotonic()
        self._checked = time.monotonic()  # when the registry was last asked about a silence
        self._listed = asyncio.Event()  # a segment is listed or the stream ended
        window.on_change(self._listed.set)

    # -- viewers ---------------------------------------------------------------------------
    def touch(self) -> None:
        self.last_request = time.monotonic()

    def idle_s(self, now: float) -> float:
        return now - self.last_request

    # -- joining and following -------------------------------------------------------------
    async def join(self, doc: dict[str, Any], *, snapshot_wait_s: float, first_segment_wait_s: float) -> None:
        """Subscribe to the origin ``doc`` names and wait (bounded) for the snapshot and, for a
        brand-new stream, its first segment: the first viewer gets a full window at once."""
        self.follow(doc)
        try:
            await asyncio.wait_for(self._sub.snapshot_ready.wait(), snapshot_wait_s)
            w = self.window
            if not w.listed and not w.ended:
                await asyncio.wait_for(self._listed.wait(), first_segment_wait_s)
        except asyncio.TimeoutError:
            pass  # answer what we have; the player polls again
        except BaseException:  # cancelled (node stopping): do not leak the subscription
            await self.leave()
            raise

    def follow(self, doc: dict[str, Any]) -> None:
        """Subscribe to the origin ``doc`` names, dropping an older subscription."""
        old, self._sub = self._sub, None
        if old is not None:
            asyncio.get_running_loop().create_task(self._bus.unsubscribe(old))
        self.origin = str(doc.get("origin_node", ""))
        self.bus_endpoint = str(doc.get("bus_endpoint", ""))
        self.epoch = int(doc.get("epoch", 0))
        self._sub = self._bus.subscribe(self.bus_endpoint, str(doc.get("snapshot_endpoint", "")),
                                        self.stream_id, "src", self.window.feed)

    async def leave(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            await self._bus.unsubscribe(sub)

    def origin_silent(self, now: float) -> bool:
        """True when the origin has said nothing for the silence bound since we last checked."""
        sub = self._sub
        return (sub is not None and sub.silent_s > self._silence_s
                and now - self._checked > self._silence_s)

    def due(self, now: float, every_s: float) -> bool:
        """Time to ask the registry again: ``every_s`` has passed (a zombie origin keeps sending,
        so silence alone would never reveal its successor), or the origin missed its bus
        heartbeats (about one a second): then ask every half second, so a takeover is followed
        as soon as it is claimed."""
        since = now - self._checked
        if since >= every_s or self.origin_silent(now):
            return True
        sub = self._sub
        return sub is not None and sub.silent_s > QUICK_SILENCE_S and since >= QUICK_RECHECK_S

    async def recheck(self) -> None:
        """The origin went quiet: ask the registry whether the stream moved or ended."""
        self._checked = time.monotonic()
        try:
            doc = await self._directory.get_stream(self.stream_id)
        except Exception as exc:
            log.warning("cannot look %s up in the registry: %s", self.stream_id, exc)
            return
        self.apply(doc)

    def apply(self, doc: dict[str, Any] | None) -> None:
        """What the registry says now: follow a higher epoch, end a finished stream."""
        self._checked = time.monotonic()
        if doc is None:
            return  # gone from the registry (restored empty?): keep what we follow
        epoch = int(doc.get("epoch", 0))
        if doc.get("status") == BROADCASTING and epoch > self.epoch:
            if doc.get("bus_endpoint") == self.bus_endpoint:
                # Republished on the origin we follow: its new epoch comes on this subscription
                # (re-subscribing the same topic on the same link would drop it).
                self.epoch, self.origin = epoch, str(doc.get("origin_node", ""))
                return
            log.info("stream %s moved to %s (epoch %s); following it", self.stream_id,
                     doc.get("origin_node"), epoch)
            self.follow(doc)
        elif doc.get("status") == FINISHED and epoch >= self.epoch and not self.window.ended:
            self.window.end()  # its end of stream never reached us: end the playlist
