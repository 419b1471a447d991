"""Per-topic ordering on the subscriber side: late join, merge by ``seq``, gaps. Pure, no sockets.

The late-join recipe is the ZeroMQ Guide's "Clone" pattern:

1. subscribe first and buffer what arrives (``JOINING``);
2. once anything has arrived, the subscription is known to be live at the publisher (the origin
   greets each new subscription with a heartbeat), so ask for a snapshot (``SNAPSHOT``);
3. apply the snapshot (config plus the last complete segments and the open one), then the buffered
   live entries with ``seq`` above the snapshot's last (``LIVE``).

A missing ``seq`` means the publisher dropped messages for us at its high-water mark (PUB never
blocks). The tracker then reports a :class:`Gap`, discards media until the next segment start
(``RESYNC``) and counts what it threw away, so a consumer never sees half a segment.
"""
from __future__ import annotations

from dataclasses import dataclass

from .wire import CONFIG, EOS, HEARTBEAT, MEDIA, Entry

JOINING, SNAPSHOT, LIVE, RESYNC = "joining", "snapshot", "live", "resync"

# What each input may do in each state (STYLE: state machines are data).
TRANSITIONS = {
    (JOINING, "live"): SNAPSHOT,  # first proof that the subscription is active
    (SNAPSHOT, "live"): SNAPSHOT,  # keep buffering until the snapshot arrives
    (SNAPSHOT, "snapshot"): LIVE,
    (SNAPSHOT, "snapshot_failed"): RESYNC,
    (LIVE, "gap"): RESYNC,
    (RESYNC, "segment_start"): LIVE,
}


@dataclass(frozen=True)
class Gap:
    """Entries were lost before this point; what follows starts a fresh segment."""

    lost: int  # sequence numbers that never arrived
    reason: str  # "hwm" (publisher dropped), "buffer" (our join buffer overflowed), "snapshot"


Delivery = Entry | Gap


class TopicTracker:
    """Orders one topic's entries from one publisher. Feed it; it returns what to deliver."""

    def __init__(self, max_buffered: int = 50_000):
        self.state = JOINING
        self.next_seq: int | None = None  # the seq we expect next once LIVE/RESYNC
        self.epoch = 0
        self.max_buffered = max_buffered
        self._buffer: list[Entry] = []
        self._buffer_overflowed = 0
        # counters (cumulative)
        self.delivered = 0
        self.lost = 0  # seq numbers that never arrived
        self.discarded = 0  # arrived but thrown away while resyncing
        self.stale = 0  # older epoch than one already seen
        self.gaps = 0

    def _go(self, event: str) -> None:
        self.state = TRANSITIONS[(self.state, event)]

    @property
    def wants_snapshot(self) -> bool:
        return self.state == SNAPSHOT

    # -- inputs ----------------------------------------------------------------------------
    def on_live(self, entries: list[Entry]) -> list[Delivery]:
        if self.state in (JOINING, SNAPSHOT):
            if self.state == JOINING:
                self._go("live")
            room = self.max_buffered - len(self._buffer)
            if room < len(entries):
                # Keep the newest: the oldest are the ones the snapshot most likely covers.
                overflow = len(entries) - max(room, 0)
                self._buffer_overflowed += overflow
                self._buffer.extend(entries)
                del self._buffer[:overflow]
            else:
                self._buffer.extend(entries)
            return []
        return self._apply(entries)

    def on_snapshot(self, last_seq: int, entries: list[Entry], epoch: int = 0) -> list[Delivery]:
        """The snapshot's entries (ascending seq, not necessarily contiguous) up to ``last_seq``,
        taken from the publisher's channel of ``epoch``."""
        if self.state != SNAPSHOT:
            return []  # a late duplicate reply: the first one won
        self._go("snapshot")
        self.epoch = max(self.epoch, epoch)
        out: list[Delivery] = []
        for entry in entries:
            if entry.epoch < self.epoch:
                self.stale += 1
                continue
            self.epoch = entry.epoch
            if entry.kind != HEARTBEAT:
                out.append(entry)
        self.delivered += len(out)
        self.next_seq = last_seq + 1
        buffered, self._buffer = self._buffer, []
        pending = [e for e in buffered if e.seq > last_seq]
        if self._buffer_overflowed and (not pending or pending[0].seq > last_seq + 1):
            out.extend(self._gap(pending[0].seq if pending else last_seq + 1, "buffer"))
        self._buffer_overflowed = 0
        out.extend(self._apply(pending))
        return out

    def on_snapshot_failed(self) -> list[Delivery]:
        """No snapshot (origin gone or too slow): go live from the buffer, resyncing at a segment start."""
        if self.state != SNAPSHOT:
            return []
        self._go("snapshot_failed")
        buffered, self._buffer = self._buffer, []
        self._buffer_overflowed = 0
        if not buffered:
            return []
        self.next_seq = buffered[0].seq
        return self._apply(buffered)

    # -- internals -------------------------------------------------------------------------
    def _gap(self, seq: int, reason: str) -> list[Delivery]:
        lost = seq - (self.next_seq if self.next_seq is not None else seq)
        self.lost += max(lost, 0)
        self.gaps += 1
        if self.state == LIVE:
            self._go("gap")
        self.next_seq = seq
        return [Gap(max(lost, 0), reason)]

    def _apply(self, entries: list[Entry]) -> list[Delivery]:
        out: list[Delivery] = []
        for entry in entries:
            if entry.epoch < self.epoch:
                self.stale += 1
                continue
            expected = self.next_seq
            if expected is not None and entry.seq < expected:
                continue  # duplicate of something the snapshot already gave
            if expected is not None and entry.seq > expected:
                out.extend(self._gap(entry.seq, "hwm"))
            self.next_seq = entry.seq + 1
            self.epoch = entry.epoch
            kind = entry.kind
            if kind == HEARTBEAT:
                continue
            if self.state == RESYNC and kind == MEDIA:
                if not entry.seg_start:
                    self.discarded += 1
                    continue
                self._go("segment_start")
            elif self.state == RESYNC and kind not in (CONFIG, EOS):
                continue
            out.append(entry)
        self.delivered += sum(1 for d in out if isinstance(d, Entry))
        return out
