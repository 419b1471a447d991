"""Per-topic ordering on the subscriber side: late join, merge by ``seq``, gaps. Pure, no sockets.

The late-join recipe is the ZeroMQ Guide's "Clone" pattern:

1. subscribe first and buffer what arrives (``JOINING``);
2. once anything has arrived, the subscription is known to be live at the publisher (the origin
   greets each new subscription with a heartbeat), so ask for a snapshot (``SNAPSHOT``);
3. apply the snapshot (config plus the last complete segments and the open one), then the buffered
   live entries with ``seq`` above the snapshot's last (``LIVE``).

``seq`` is contiguous over config, media and end-of-stream entries; a heartbeat carries the next
``seq`` the publisher will use, so it reveals loss at the tail without taking a number itself.

A missing ``seq`` means the publisher dropped messages for us at its high-water mark (PUB never
blocks). The tracker first tries to *recover*: it asks for a snapshot again and, if the origin's
window still holds the missing entries, delivers them in order as if nothing happened, so every
edge keeps producing the same segments. Only when the window has moved past them does it report a
:class:`Gap` and resume at the snapshot's first segment start (or, without a snapshot, at the next
segment start: ``RESYNC``), counting what was thrown away. A consumer never sees half a segment.
"""
from __future__ import annotations

from dataclasses import dataclass
from operator import attrgetter

from .wire import HEARTBEAT, MEDIA, Entry, EntryBatch

JOINING, SNAPSHOT, LIVE, RESYNC = "joining", "snapshot", "live", "resync"

_seq_of, _kind_of, _epoch_of = attrgetter("seq"), attrgetter("kind"), attrgetter("epoch")

# What each input may do in each state (STYLE: state machines are data).
TRANSITIONS = {
    (JOINING, "live"): SNAPSHOT,  # first proof that the subscription is active
    (SNAPSHOT, "snapshot"): LIVE,
    (SNAPSHOT, "snapshot_failed"): RESYNC,
    (LIVE, "gap"): SNAPSHOT,  # try to recover the missing entries from the origin's window
    (LIVE, "gap_no_recovery"): RESYNC,
    (RESYNC, "gap"): RESYNC,
    (RESYNC, "segment_start"): LIVE,
}


@dataclass(frozen=True)
class Gap:
    """Entries were lost before this point; what follows starts a fresh segment."""

    lost: int  # sequence numbers that never arrived
    reason: str  # "hwm" (publisher dropped), "buffer" (our join buffer overflowed), "window"


Delivery = Entry | Gap


class TopicTracker:
    """Orders one topic's entries from one publisher. Feed it; it returns what to deliver.

    ``recover`` allows a gap to be repaired from a fresh snapshot; the caller clears it (e.g. for a
    few seconds after a recovery) to keep a chronically slow subscriber from hammering the origin.
    """

    def __init__(self, max_buffered: int = 50_000):
        self.state = JOINING
        self.next_seq: int | None = None  # the seq we expect next
        self.epoch = 0
        self.max_buffered = max_buffered
        self.recover = True
        self._missing = 0  # size of the gap a pending recovery is repairing
        self._buffer: list[Entry] = []
        self._buffer_overflowed = 0
        # counters (cumulative)
        self.delivered = 0
        self.lost = 0  # seq numbers that never arrived and could not be recovered
        self.recovered = 0  # seq numbers that went missing and came back from a snapshot
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
        if self.state == JOINING:
            self._go("live")
        if self.state == SNAPSHOT:
            self._buffer.extend(entries)
            overflow = len(self._buffer) - self.max_buffered
            if overflow > 0:
                # Keep the newest: the oldest are the ones the snapshot most likely covers.
                self._buffer_overflowed += overflow
                del self._buffer[:overflow]
            return []
        return self._apply(entries)

    def on_snapshot(self, first_seq: int, last_seq: int, entries: list[Entry],
                    epoch: int = 0) -> list[Delivery]:
        """A snapshot of the publisher's channel of ``epoch``: entries with ``seq`` below
        ``first_seq`` are the base config; the rest are contiguous from ``first_seq`` (a segment
        start) to ``last_seq``."""
        if self.state != SNAPSHOT:
            return []  # a late duplicate reply: the first one won
        self._go("snapshot")
        self.epoch = max(self.epoch, epoch)
        usable = [e for e in entries if e.kind != HEARTBEAT and e.epoch >= self.epoch]
        self.stale += len(entries) - len(usable)
        base = [e for e in usable if e.seq < first_seq]
        body = [e for e in usable if e.seq >= first_seq]
        out: list[Delivery] = []
        want = self.next_seq
        if want is None:  # first join: everything the window holds
            out.extend(base + body)
        elif first_seq <= want:  # the window still holds what we missed: repair silently
            out.extend(e for e in body if e.seq >= want)
            self.recovered += self._missing
        else:  # too late: report the hole and restart at the window's first segment start
            lost = first_seq - want
            self.lost += lost
            out.append(Gap(lost, "window"))
            out.extend(base + body)
        self._missing = 0
        self.delivered += sum(1 for d in out if isinstance(d, Entry))
        self.next_seq = max(last_seq + 1, want or 0)
        buffered, self._buffer = self._buffer, []
        pending = [e for e in buffered if e.seq >= self.next_seq or e.kind == HEARTBEAT]
        if self._buffer_overflowed and pending and pending[0].seq > self.next_seq:
            out.extend(self._gap(pending[0].seq, "buffer", recoverable=False))
        self._buffer_overflowed = 0
        out.extend(self._apply(pending))
        return out

    def on_snapshot_failed(self) -> list[Delivery]:
        """No snapshot (origin gone or too slow): go on from the buffer, resyncing at a segment start."""
        if self.state != SNAPSHOT:
            return []
        had_position = self.next_seq is not None
        self._go("snapshot_failed")
        buffered, self._buffer = self._buffer, []
        self._buffer_overflowed = 0
        out: list[Delivery] = []
        real = [e for e in buffered if e.kind != HEARTBEAT]
        if had_position and real and real[0].seq > self.next_seq:
            lost = real[0].seq - self.next_seq
            self.lost += lost
            out.append(Gap(lost, "hwm"))
        self._missing = 0
        if real:
            self.next_seq = real[0].seq
        out.extend(self._apply(buffered))
        return out

    # -- internals -------------------------------------------------------------------------
    def _gap(self, seq: int, reason: str, recoverable: bool = True) -> list[Delivery]:
        """``seq`` arrived where ``next_seq`` was expected."""
        self.gaps += 1
        if self.state == LIVE and recoverable and self.recover:
            self._go("gap")  # buffer from here; the caller fetches a snapshot
            self._missing = seq - (self.next_seq or seq)
            return []
        lost = seq - self.next_seq if self.next_seq is not None else 0
        self.lost += max(lost, 0)
        self._go("gap_no_recovery" if self.state == LIVE else "gap")
        self.next_seq = seq
        return [Gap(max(lost, 0), reason)]

    def _apply(self, entries: list[Entry]) -> list[Delivery]:
        # Fast path, the steady state of a healthy subscription: live, and the batch continues
        # exactly at the expected seq with no heartbeat and no epoch change. The checks run in C
        # (map/attrgetter) instead of a Python loop per entry; anything else takes the full path.
        n = len(entries)
        expected = self.next_seq
        if type(entries) is EntryBatch:  # decode already knows: O(1)
            if (self.state == LIVE and n and expected is not None and entries.plain_first == expected
                    and entries.epoch == self.epoch):
                self.next_seq = expected + n
                self.delivered += n
                return entries
        elif (self.state == LIVE and n and expected is not None and entries[0].seq == expected
                and entries[-1].seq == expected + n - 1
                and list(map(_seq_of, entries)) == list(range(expected, expected + n))
                and HEARTBEAT not in map(_kind_of, entries)
                and set(map(_epoch_of, entries)) == {self.epoch}):
            self.next_seq = expected + n
            self.delivered += n
            return list(entries)
        return self._apply_each(entries)

    def _apply_each(self, entries: list[Entry]) -> list[Delivery]:
        out: list[Delivery] = []
        for i, entry in enumerate(entries):
            if self.state == SNAPSHOT:  # a gap switched us to recovery: buffer the rest
                self._buffer.extend(entries[i:])
                break
            if entry.epoch < self.epoch:
                self.stale += 1
                continue
            expected = self.next_seq
            if entry.kind == HEARTBEAT:  # carries the next seq the publisher will use
                if expected is not None and entry.seq > expected:
                    out.extend(self._gap(entry.seq, "hwm"))
                elif expected is None:
                    self.next_seq = entry.seq
                continue
            if expected is not None and entry.seq < expected:
                continue  # duplicate of something the snapshot already gave
            if expected is not None and entry.seq > expected:
                out.extend(self._gap(entry.seq, "hwm"))
                if self.state == SNAPSHOT:
                    self._buffer.extend(entries[i:])
                    break
            self.next_seq = entry.seq + 1
            self.epoch = entry.epoch
            kind = entry.kind
            if self.state == RESYNC and kind == MEDIA:
                if not entry.seg_start:
                    self.discarded += 1
                    continue
                self._go("segment_start")
            out.append(entry)
        self.delivered += sum(1 for d in out if isinstance(d, Entry))
        return out
