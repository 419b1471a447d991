"""One stream served by an edge: its renditions' windows and subscriptions, the origin it follows.

An :class:`EdgeStream` is the only writer of its state. It joins its origin one rendition at a
time, on demand (a viewer who only plays 360p costs the edge only 360p): subscribe, then the
snapshot, so a cold edge has a full window at once. It follows the stream to a new origin when
the registry says it moved, ends its windows when the registry says it finished, and leaves a
rendition nobody asked for in a while. It depends on two small protocols, a :class:`Directory`
of streams (the registry) and a :class:`Bus` to subscribe on, never on the node.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable, Protocol

from ..broker.subscriber import BusSecurityError
from ..broker.tracker import Delivery
from ..errors import NotFound, Unavailable
from ..registry import BROADCASTING, CREATED, FINISHED
from .cmaf import LlWindow
from .window import RenditionWindow

log = logging.getLogger("mesh.edge")

SRC = "src"
QUICK_SILENCE_S = 1.5  # no bus traffic (not even a heartbeat) for this long: the origin may be gone
QUICK_RECHECK_S = 0.5
# A playlist asked while the origin has been quiet this long is answered only after asking the
# registry whether the stream moved (see EdgeStream.catch_up). Media flows every few tens of ms.
QUIET_S = 0.5
CATCH_UP_EVERY_S = 0.25  # at most one such registry question per stream this often


class Directory(Protocol):
    """Where streams are looked up: the registry's ``get_stream``."""

    async def get_stream(self, stream_id: str) -> dict[str, Any] | None: ...


class Bus(Protocol):
    def subscribe(self, bus_endpoint: str, snapshot_endpoint: str, stream_id: str, rendition: str,
                  sink: Callable[[list[Delivery]], None], server_key: str | None = None) -> Any: ...

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


def rendition_names(doc: dict[str, Any]) -> list[str]:
    """The renditions a stream document lists (the source first)."""
    found = doc.get("renditions") if isinstance(doc.get("renditions"), list) else []
    names = [r.get("name") for r in found if isinstance(r, dict) and isinstance(r.get("name"), str)]
    return [SRC] + [n for n in names if n != SRC]


class Rendition:
    def __init__(self, name: str, window: RenditionWindow, ll: LlWindow | None = None):
        self.name = name
        self.window = window
        self.ll = ll  # the LL-HLS (CMAF) window, fed the same deliveries
        self.sub: Any = None
        self.last_request = time.monotonic()
        self.listed = asyncio.Event()  # a segment is listed or the stream ended
        window.on_change(self.listed.set)
        self._ll_changed: asyncio.Future[None] | None = None
        if ll is not None:
            ll.on_change(self._wake_ll)

    def feed(self, deliveries: list[Delivery]) -> None:
        """The subscription's sink: both windows see every delivery, TS first."""
        self.window.feed(deliveries)
        if self.ll is not None:
            self.ll.feed(deliveries)

    def ll_changed(self) -> "asyncio.Future[None]":
        """A future resolved at the LL window's next change, shared by every waiting request
        (await it through ``asyncio.shield``: one waiter's timeout must not cancel it)."""
        f = self._ll_changed
        if f is None or f.done():
            f = self._ll_changed = asyncio.get_running_loop().create_future()
        return f

    def _wake_ll(self) -> None:
        f, self._ll_changed = self._ll_changed, None
        if f is not None and not f.done():
            f.set_result(None)


class EdgeStream:
    def __init__(self, stream_id: str, bus: Bus, directory: Directory, make_window: Callable[[str], RenditionWindow],
                 *, origin_silence_s: float, make_ll: Callable[[str], LlWindow] | None = None):
        self.stream_id = stream_id
        self._bus = bus
        self._directory = directory
        self._make_window = make_window
        self._make_ll = make_ll
        self._silence_s = origin_silence_s
        self.renditions: dict[str, Rendition] = {}
        self._joining: dict[str, asyncio.Task[Rendition]] = {}
        self.doc: dict[str, Any] = {}
        self.doc_at = 0.0
        self.origin = ""
        self.bus_endpoint = ""
        self.snapshot_endpoint = ""
        self.server_key: str | None = None
        self.epoch = 0
        self._checked = time.monotonic()  # when the registry was last asked about a silence
        # When the registry answer we hold was asked for (its question's start, not its answer:
        # over a slow link an answer can be older than a takeover that happened while it came).
        self._asked = time.monotonic()
        self._catching: asyncio.Task[None] | None = None
        self._catching_since = 0.0  # when the catch-up question in flight was asked
        self._followed = 0.0  # when a new origin was last followed

    # -- renditions ------------------------------------------------------------------------
    @property
    def window(self) -> RenditionWindow:
        """The source rendition's window (joined)."""
        return self.renditions[SRC].window

    def rendition(self, name: str) -> Rendition | None:
        return self.renditions.get(name)

    def has(self, name: str) -> bool:
        return name in rendition_names(self.doc)

    def touch(self, name: str = SRC) -> None:
        r = self.renditions.get(name)
        if r is not None:
            r.last_request = time.monotonic()

    def idle_s(self, now: float) -> float:
        return min((now - r.last_request for r in self.renditions.values()), default=float("inf"))

    def set_doc(self, doc: dict[str, Any]) -> None:
        self.doc, self.doc_at = doc, time.monotonic()

    async def open(self, name: str, *, snapshot_wait_s: float, first_segment_wait_s: float) -> Rendition:
        """The rendition, joined if need be (concurrent first requests share one join)."""
        r = self.renditions.get(name)
        if r is not None:
            r.last_request = time.monotonic()
            return r
        if not self.has(name):
            raise NotFound(f"stream {self.stream_id} has no rendition {name}", "rendition")
        task = self._joining.get(name)
        if task is None:
            task = self._joining[name] = asyncio.create_task(
                self._join(name, snapshot_wait_s, first_segment_wait_s))
            task.add_done_callback(lambda _t: self._joining.pop(name, None))
        return await asyncio.shield(task)

    async def _join(self, name: str, snapshot_wait_s: float, first_segment_wait_s: float) -> Rendition:
        r = Rendition(name, self._make_window(name), self._make_ll(name) if self._make_ll else None)
        self._subscribe(r)
        try:
            await asyncio.wait_for(r.sub.snapshot_ready.wait(), snapshot_wait_s)
            if not r.window.listed and not r.window.ended:  # a brand-new stream: its first segment
                await asyncio.wait_for(r.listed.wait(), first_segment_wait_s)
        except asyncio.TimeoutError:
            pass  # answer what we have; the player polls again
        except BaseException:  # cancelled (node stopping): do not leak the subscription
            await self._bus.unsubscribe(r.sub)
            raise
        # Published only now: concurrent first requests wait on the join instead of finding a
        # half-joined rendition and answering with an empty playlist.
        self.renditions[name] = r
        return r

    def _subscribe(self, r: Rendition) -> None:
        try:
            r.sub = self._bus.subscribe(self.bus_endpoint, self.snapshot_endpoint, self.stream_id, r.name,
                                        r.feed, self.server_key)
        except BusSecurityError as exc:  # an origin without a bus key, to a CURVE edge
            raise Unavailable(f"stream {self.stream_id} cannot be read from its origin: {exc}",
                              "bus_security") from None

    # -- following the origin ----------------------------------------------------------------
    def follow(self, doc: dict[str, Any]) -> None:
        """Take the origin ``doc`` names; held renditions move their subscriptions to it."""
        self.set_doc(doc)
        self.origin = str(doc.get("origin_node", ""))
        self.bus_endpoint = str(doc.get("bus_endpoint", ""))
        self.snapshot_endpoint = str(doc.get("snapshot_endpoint", ""))
        self.epoch = int(doc.get("epoch", 0))
        key = doc.get("bus_public_key")
        self.server_key = key if isinstance(key, str) and key else None
        self._followed = time.monotonic()
        loop = asyncio.get_running_loop()
        for r in self.renditions.values():
            if r.sub is not None:
                loop.create_task(self._bus.unsubscribe(r.sub))
                r.sub = None
            try:
                self._subscribe(r)
            except Unavailable as exc:
                log.warning("%s", exc.message)

    async def leave(self, name: str | None = None) -> None:
        """Unsubscribe one rendition, or all of them."""
        for n in [name] if name is not None else list(self.renditions):
            r = self.renditions.pop(n, None)
            if r is not None and r.sub is not None:
                sub, r.sub = r.sub, None
                await self._bus.unsubscribe(sub)

    async def tidy(self, now: float, idle_limit_s: float) -> list[str]:
        """Leave renditions nobody asked for in ``idle_limit_s``; their names."""
        gone = [n for n, r in self.renditions.items() if now - r.last_request > idle_limit_s]
        for name in gone:
            await self.leave(name)
        return gone

    def origin_silent(self, now: float) -> bool:
        """True when the origin has said nothing for the silence bound since we last checked."""
        subs = [r.sub for r in self.renditions.values() if r.sub is not None]
        return (bool(subs) and min(s.silent_s for s in subs) > self._silence_s
                and now - self._checked > self._silence_s)

    def due(self, now: float, every_s: float) -> bool:
        """Time to ask the registry again: ``every_s`` has passed (a zombie origin keeps sending,
        so silence alone would never reveal its successor), or the origin missed its bus
        heartbeats (about one a second): then ask every half second, so a takeover is followed
        as soon as it is claimed."""
        since = now - self._checked
        if since >= every_s or self.origin_silent(now):
            return True
        subs = [r.sub for r in self.renditions.values() if r.sub is not None]
        return bool(subs) and min(s.silent_s for s in subs) > QUICK_SILENCE_S and since >= QUICK_RECHECK_S

    def quiet(self, now: float) -> bool:
        """No bus traffic at all for :data:`QUIET_S` (a live origin sends media or heartbeats)."""
        subs = [r.sub for r in self.renditions.values() if r.sub is not None]
        return bool(subs) and now - max(s.last_rx for s in subs) > QUIET_S

    def settling(self, now: float, within_s: float = 2.0) -> bool:
        """A new origin was followed in the last ``within_s`` and a rendition has not taken its
        snapshot or listed what it brought yet (the old window would answer meanwhile)."""
        return now - self._followed < within_s and any(
            r.sub is not None and (not r.sub.snapshot_ready.is_set() or r.window.pending)
            for r in self.renditions.values())

    async def catch_up(self, r: Rendition, wait_s: float) -> None:
        """Before answering a playlist while the origin is quiet: ask the registry whether the
        stream moved and, if it did, join the new origin and list its snapshot first.

        Why: edges notice a takeover at different moments. A player alternating between two
        edges (round-robin) would otherwise get the new numbering from one and the old window,
        with a lower media sequence, from the other. The new owner's first segment can only be
        listed anywhere after its claim is in the registry and a whole segment has passed, while
        this edge's old origin has been silent since it died; so an answer to a question *asked*
        in the last :data:`CATCH_UP_EVERY_S` already knows the new owner whenever another edge
        could list its first segment. An older answer does not, however recently it arrived
        (over a slow link a question asked before the claim is answered well after it), so the
        registry is asked again. One question in flight per stream (concurrent requests share
        it), at most one asked every :data:`CATCH_UP_EVERY_S`."""
        deadline = time.monotonic() + wait_s
        fresh = time.monotonic() - CATCH_UP_EVERY_S
        if self._asked < fresh:
            task = self._catching
            if task is None or task.done() or self._catching_since < fresh:
                self._catching_since = time.monotonic()
                task = self._catching = asyncio.create_task(self._catch_up(self._catching_since))
            try:
                await asyncio.wait_for(asyncio.shield(task), wait_s)
            except asyncio.TimeoutError:
                return  # answer what we have
        try:
            await self._settled(r, wait_s, deadline)
        except asyncio.TimeoutError:
            pass  # answer what we have

    async def _catch_up(self, asked: float) -> None:
        self._checked = asked
        try:
            doc = await self._directory.get_stream(self.stream_id)
        except Exception as exc:  # the registry is away: answer what we follow
            log.debug("cannot look %s up in the registry: %s", self.stream_id, exc)
            return
        self.apply(doc, asked)

    async def _settled(self, r: Rendition, wait_s: float, deadline: float) -> None:
        """Within ``wait_s`` of following a new origin: wait (until ``deadline``) for its
        snapshot and for the segments it brought to be listed."""
        left = deadline - time.monotonic()
        if time.monotonic() - self._followed > wait_s or r.sub is None or left <= 0:
            return
        await asyncio.wait_for(r.sub.snapshot_ready.wait(), left)
        while r.window.pending and time.monotonic() < deadline:
            r.listed.clear()
            try:  # listed is set when a segment lists; a short bound covers other outcomes
                await asyncio.wait_for(r.listed.wait(), min(0.05, max(0.0, deadline - time.monotonic())))
            except asyncio.TimeoutError:
                pass

    def apply(self, doc: dict[str, Any] | None, asked: float) -> None:
        """What the registry said to a question asked at ``asked`` (monotonic): follow a higher
        epoch, end a finished stream. An answer to an older question than the one last applied
        changes nothing (answers can arrive out of order). ``None``: no answer, or the stream is
        gone from the registry (restored empty?): keep what we follow."""
        self._checked = time.monotonic()
        if doc is None or asked < self._asked:
            return
        self._asked = asked
        epoch = int(doc.get("epoch", 0))
        if doc.get("status") == BROADCASTING and epoch > self.epoch:
            if doc.get("bus_endpoint") == self.bus_endpoint:
                # Republished on the origin we follow: its new epoch comes on this subscription
                # (re-subscribing the same topic on the same link would drop it).
                self.set_doc(doc)
                self.epoch, self.origin = epoch, str(doc.get("origin_node", ""))
                return
            log.info("stream %s moved to %s (epoch %s); following it", self.stream_id,
                     doc.get("origin_node"), epoch)
            self.follow(doc)
        elif doc.get("status") == FINISHED and epoch >= self.epoch:
            self.set_doc(doc)
            for r in self.renditions.values():
                if not r.window.ended:
                    r.window.end()  # its end of stream never reached us: end the playlist
                if r.ll is not None and not r.ll.ended:
                    r.ll.end()
        elif epoch >= self.epoch:
            self.set_doc(doc)  # fresher figures (renditions) of the stream we follow
