"""Bounded snapshot work on an origin: who gets a snapshot next. Pure: no sockets, time passed in.

A snapshot reply costs the origin a copy of a stream's window (hundreds of KB) until ZeroMQ has
handed it to the kernel. A peer that asks and never reads would pin those copies, so:

- a peer has at most **one reply in flight**; the topics it asks for meanwhile wait, at most
  ``max_waiting_per_peer`` distinct topics (asking for a waiting topic again changes nothing);
- at most ``max_inflight`` replies are in flight that are not stalled, and no new reply starts
  while ``max_inflight_bytes`` are in flight (stalled ones included): requests wait for room;
- at most ``max_peers`` peers have state here; requests from further peers are dropped;
- a reply in flight longer than ``stall_s`` marks its peer as not reading: it stops counting
  against ``max_inflight`` (so readers are served) but its bytes still count until the
  connection is cut (the publisher sets a TCP user timeout) and ZeroMQ lets go of it;
- a peer's state goes when it has nothing waiting or in flight.

Peers are served round-robin. The publisher owns the sockets: it calls :meth:`request` for each
request, :meth:`next` to pick the next reply to build, :meth:`started`/:meth:`finished` around it.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

QUEUED, DUPLICATE, PEER_FULL, TOO_MANY_PEERS = "queued", "duplicate", "peer_full", "too_many_peers"


@dataclass
class _Peer:
    waiting: list[bytes] = field(default_factory=list)
    inflight_bytes: int = -1  # -1: nothing in flight
    since: float = 0.0
    stalled: bool = False


class SnapshotQueue:
    def __init__(self, *, max_peers: int = 256, max_waiting_per_peer: int = 32,
                 max_inflight: int = 8, max_inflight_bytes: int = 64 << 20, stall_s: float = 0.5):
        self.max_peers = max_peers
        self.max_waiting_per_peer = max_waiting_per_peer
        self.max_inflight = max_inflight
        self.max_inflight_bytes = max_inflight_bytes
        self.stall_s = stall_s
        self._peers: OrderedDict[bytes, _Peer] = OrderedDict()  # round-robin order
        self.inflight = 0  # replies in flight, not stalled
        self.inflight_bytes = 0  # every reply in flight
        self.stalled = 0

    def __len__(self) -> int:
        return len(self._peers)

    def request(self, peer: bytes, topic: bytes) -> str:
        """Note that ``peer`` asked for ``topic``; returns QUEUED or why it was dropped."""
        state = self._peers.get(peer)
        if state is None:
            if len(self._peers) >= self.max_peers:
                return TOO_MANY_PEERS
            state = self._peers[peer] = _Peer()
        if topic in state.waiting:
            return DUPLICATE
        if len(state.waiting) >= self.max_waiting_per_peer:
            return PEER_FULL
        state.waiting.append(topic)
        return QUEUED

    def next(self) -> tuple[bytes, bytes] | None:
        """The (peer, topic) to answer now, or None while there is no room or nothing waits.
        No reply starts while ``max_inflight_bytes`` are in flight (so the total overshoots by
        at most one reply, itself bounded by the window's byte limit)."""
        if self.inflight >= self.max_inflight or self.inflight_bytes >= self.max_inflight_bytes:
            return None
        for peer, state in self._peers.items():
            if state.waiting and state.inflight_bytes < 0:
                self._peers.move_to_end(peer)  # round-robin: served peers go to the back
                return peer, state.waiting.pop(0)
        return None

    def has_waiting(self) -> bool:
        return any(s.waiting and s.inflight_bytes < 0 for s in self._peers.values())

    def started(self, peer: bytes, nbytes: int, now: float) -> None:
        state = self._peers[peer]
        state.inflight_bytes, state.since, state.stalled = nbytes, now, False
        self.inflight += 1
        self.inflight_bytes += nbytes

    def finished(self, peer: bytes) -> None:
        """The peer's reply was handed to the kernel, dropped by ZeroMQ, or never sent."""
        state = self._peers.get(peer)
        if state is None or state.inflight_bytes < 0:
            return
        self.inflight_bytes -= state.inflight_bytes
        if state.stalled:
            self.stalled -= 1
        else:
            self.inflight -= 1
        state.inflight_bytes, state.stalled = -1, False
        if not state.waiting:
            del self._peers[peer]

    def forget(self, peer: bytes) -> None:
        """The peer is gone (unroutable): drop what it waits for (its reply in flight, if any,
        still counts until :meth:`finished`)."""
        state = self._peers.get(peer)
        if state is None:
            return
        state.waiting.clear()
        if state.inflight_bytes < 0:
            del self._peers[peer]

    def check_stalls(self, now: float) -> list[bytes]:
        """Mark replies in flight for ``stall_s`` as stalled; returns the peers newly marked."""
        marked = []
        for peer, state in self._peers.items():
            if state.inflight_bytes >= 0 and not state.stalled and now - state.since >= self.stall_s:
                state.stalled = True
                self.inflight -= 1
                self.stalled += 1
                marked.append(peer)
        return marked
