"""Parking blocking LL-HLS requests on the HTTP fast path: the driver around the pure lists.

:class:`LlParking` keeps one :class:`~mesh.hls.ll_wait.BlockedRequests` per rendition (a weak map:
a rendition the edge left takes its list with it), listens to that rendition's LL window, and
holds one timer per rendition for the earliest deadline. When the window lists a part (or ends),
or a deadline passes, it settles the requests due: the HTTP answer for each is chosen by the
routes (``reply(stream, rendition, entry, arrived)``), built once per distinct answer and
written to every request that gets it; then the routes count what was served (``served``).
"""
from __future__ import annotations

import asyncio
import functools
import logging
import weakref
from typing import Any, Callable

from ..http.fastpath import Reply
from .cmaf import LlWindow
from .ll_playlist import reached
from .ll_wait import BlockedRequests, Entry
from .stream import EdgeStream, Rendition

log = logging.getLogger("mesh.hls")

#: ``reply(stream, rendition, entry, arrived)``: the answer to a parked request now.
ReplyFor = Callable[[EdgeStream, Rendition, Entry, bool], Reply]
#: ``served(stream, rendition, answered)``: (entry, reply) pairs just written, for the counters.
Served = Callable[[EdgeStream, Rendition, list[tuple[Entry, Reply]]], None]


class LlParking:
    def __init__(self, reply: ReplyFor, served: Served, block_s: Callable[[LlWindow], float]):
        self._reply, self._served, self._block_s = reply, served, block_s
        self._blocked: weakref.WeakKeyDictionary[Rendition, BlockedRequests] = weakref.WeakKeyDictionary()

    def request(self, stream: EdgeStream, r: Rendition, target: tuple[int, int | None], skip: str | None,
                media: str | None) -> Parked:
        """What the fast route returns for a request to park (:class:`mesh.http.fastpath.Parking`)."""
        return Parked(self, stream, r, target, skip, media)

    def __len__(self) -> int:
        return sum(len(b) for b in self._blocked.values())

    def close(self) -> None:
        for blocked in list(self._blocked.values()):
            if blocked.timer is not None:
                blocked.timer.cancel()  # type: ignore[attr-defined]
                blocked.timer = None

    def _park(self, stream: EdgeStream, r: Rendition, target: tuple[int, int | None], skip: str | None,
              media: str | None, answer: Callable[[Reply], None]) -> Callable[[], None]:
        ll = r.ll
        assert ll is not None
        blocked = self._blocked.get(r)
        if blocked is None:
            blocked = self._blocked[r] = BlockedRequests()
            ll.on_change(functools.partial(self._changed, stream, weakref.ref(r), blocked))
        loop = asyncio.get_running_loop()
        entry = blocked.add(target, answer, skip, loop.time() + self._block_s(ll), media)
        if blocked.timer is None:
            blocked.timer = loop.call_at(entry.deadline, self._expire, stream, weakref.ref(r), blocked)
        return functools.partial(blocked.discard, entry)

    def _changed(self, stream: EdgeStream, ref: weakref.ref[Rendition], blocked: BlockedRequests) -> None:
        """The window listed a part (or ended): settle the requests it satisfies (all, if ended)."""
        r = ref()
        if r is None or r.ll is None or not len(blocked):
            return
        ll = r.ll
        self._settle(stream, r, blocked.all() if ll.ended else blocked.reached(ll.last_part(), ll.last_seq))

    def _expire(self, stream: EdgeStream, ref: weakref.ref[Rendition], blocked: BlockedRequests) -> None:
        blocked.timer = None
        r = ref()
        loop = asyncio.get_running_loop()
        late = blocked.expired(loop.time())
        if r is not None and late:
            self._settle(stream, r, late)
        due = blocked.next_deadline()
        if due is not None:
            blocked.timer = loop.call_at(due, self._expire, stream, ref, blocked)

    def _settle(self, stream: EdgeStream, r: Rendition, entries: list[Entry]) -> None:
        if not entries:
            return
        ll = r.ll
        last_part, last_seq = (ll.last_part(), ll.last_seq) if ll is not None else (None, None)
        replies: dict[Any, Reply] = {}
        answered: list[tuple[Entry, Reply]] = []
        for e in entries:
            arrived = reached(e.target, last_part, last_seq)
            key = (e.media, arrived) if e.media is not None else (e.skip, True) if arrived else e.target
            reply = replies.get(key)
            if reply is None:
                reply = replies[key] = self._reply(stream, r, e, arrived)
            try:
                e.answer(reply)
            except Exception:
                log.exception("answering a parked LL-HLS request failed")
            answered.append((e, reply))
        self._served(stream, r, answered)


class Parked:
    """A blocking LL-HLS request the fast path parks (:class:`mesh.http.fastpath.Parking`): a
    playlist (``skip``: its ``_HLS_skip``) or, with ``media``, the part or segment so named."""

    __slots__ = ("parking", "stream", "r", "target", "skip", "media")

    def __init__(self, parking: LlParking, stream: EdgeStream, r: Rendition, target: tuple[int, int | None],
                 skip: str | None, media: str | None):
        self.parking, self.stream, self.r = parking, stream, r
        self.target, self.skip, self.media = target, skip, media

    def park(self, answer: Callable[[Reply], None]) -> Callable[[], None]:
        return self.parking._park(self.stream, self.r, self.target, self.skip, self.media, answer)
