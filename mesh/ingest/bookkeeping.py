"""Registry bookkeeping for all of an origin's live streams: one bulk write per interval.

As segments close, each stream's ``media_sequence`` (and its renditions' figures) must reach the
registry, so that an origin taking a stream over continues the numbering. One write per segment per
stream costs about a millisecond of the node's CPU and several of the database's; at a hundred
streams that rivals the media work itself. So streams only *note* that they changed, and this book
writes every noted stream in one ``bulk_write`` at most every ``interval_s``. A fenced stream (its
epoch superseded by another origin's claim) is told at once and stops. Each write extends the
stream's reservation of segment numbers; a stream whose document vanished (a database restored
empty) re-creates it with its own epoch and numbering. ``failing_since`` tells the origin how long
the registry has been unreachable (see :class:`mesh.nodes.origin.OriginPart`'s watchdog).
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, Protocol

from ..registry import Fenced
from ..timers import sleep_to_grid
from .segmenter import Segmenter

if TYPE_CHECKING:
    from ..registry import Registry


class LiveStream(Protocol):
    """What the book needs of a live stream (:class:`mesh.ingest.live.LiveStream`)."""

    stream_id: str
    epoch: int
    fenced: bool
    finished: bool
    segmenter: Segmenter

    def doc_fields(self) -> dict[str, Any]: ...

    def fence(self, reason: str = "") -> None: ...

    def reserve(self, until: int) -> None: ...

    async def restore(self) -> None: ...

log = logging.getLogger("mesh.ingest")


class SequenceBook:
    def __init__(self, registry: "Registry", node_id: str, interval_s: float = 0.5):
        self.registry = registry
        self.node_id = node_id
        self.interval_s = interval_s
        self._dirty: dict[str, "LiveStream"] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self.failing_since: float | None = None  # monotonic time of the first failed write

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="sequence-book")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def note(self, live: "LiveStream") -> None:
        """``live`` closed a segment: record it with the next write."""
        self._dirty[live.stream_id] = live
        self._wake.set()

    def forget(self, live: "LiveStream") -> None:
        """``live`` ended; its final figures are written by its own status update."""
        if self._dirty.get(live.stream_id) is live:
            del self._dirty[live.stream_id]

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await sleep_to_grid(self.interval_s)  # let other closes join this write (at most interval_s)
            await self.flush()

    async def flush(self) -> None:
        batch, self._dirty = self._dirty, {}
        live = [s for s in batch.values() if not (s.fenced or s.finished)]
        if not live:
            return
        updates = [(s.stream_id, s.epoch, s.segmenter.next_seq - 1, s.doc_fields()) for s in live]
        reserve = self.registry.reserve_segments
        try:
            fenced, missing = await self.registry.record_sequences(self.node_id, updates)
            for s in live:
                if s.stream_id in missing:
                    try:
                        await s.restore()
                    except Fenced:
                        fenced.add(s.stream_id)
        except Exception as exc:  # the DB being away must not stop media; keep them for next time
            if not self._failing:
                log.warning("could not record media_sequence of %d streams: %s; retrying", len(live), exc)
                self.failing_since = time.monotonic()
            self._failing = True
            for s in live:
                self._dirty.setdefault(s.stream_id, s)
            self._wake.set()
            return
        if self._failing:
            log.info("recording media_sequence again")
        self._failing = False
        self.failing_since = None
        for (_, _, seq, _), s in zip(updates, live):
            if s.stream_id in fenced:
                s.fence()
            elif s.stream_id not in missing:
                s.reserve(seq + reserve)
