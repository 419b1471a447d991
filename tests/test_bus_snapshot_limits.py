"""Snapshot requests cost the origin a bounded amount of memory.

The attack from issue 11: DEALERs that send many snapshot requests and never read pushed an
origin from 70 MB to 1.35 GB, not released after they left. Here 40 such DEALERs (100 requests
each) hit a publisher in its own process while a real subscriber asks for, and must get, a
snapshot; the publisher's RSS is sampled throughout and after they leave.
"""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time

import msgpack
import zmq
import zmq.asyncio

from mesh.broker import wire
from mesh.broker.snapshots import DUPLICATE, PEER_FULL, QUEUED, TOO_MANY_PEERS, SnapshotQueue
from mesh.broker.subscriber import BusSubscriber

from .busclient import Collector

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEGMENT_BYTES = 1 << 20  # a 7-segment snapshot is about 7 MB: more than the kernel buffers
ATTACKERS, REQUESTS = 40, 100
BUDGET_BYTES = 96 << 20  # growth allowed: the 64 MB in-flight cap plus allocator slack


# -- the bookkeeping alone (pure) ---------------------------------------------------------------
def test_one_reply_in_flight_per_peer_and_caps_in_total() -> None:
    q = SnapshotQueue(max_peers=3, max_waiting_per_peer=2, max_inflight=2, max_inflight_bytes=100,
                      stall_s=1.0)
    assert q.request(b"a", b"t1") == QUEUED and q.request(b"a", b"t1") == DUPLICATE
    assert q.request(b"a", b"t2") == QUEUED and q.request(b"a", b"t3") == PEER_FULL
    assert q.request(b"b", b"t1") == QUEUED and q.request(b"c", b"t1") == QUEUED
    assert q.request(b"d", b"t1") == TOO_MANY_PEERS
    assert q.next() == (b"a", b"t1")
    q.started(b"a", 60, now=0.0)
    assert q.next() == (b"b", b"t1")  # a has one in flight: the next peer goes
    q.started(b"b", 60, now=0.0)
    assert q.next() is None  # two in flight (and over the byte cap)
    assert q.check_stalls(0.5) == [] and q.check_stalls(1.0) == [b"a", b"b"]
    assert q.inflight == 0 and q.inflight_bytes == 120 and q.next() is None  # bytes still count
    q.finished(b"a")
    assert q.inflight_bytes == 60 and q.next() == (b"c", b"t1")  # round-robin: c before a again
    q.started(b"c", 10, now=2.0)
    assert q.next() == (b"a", b"t2")
    q.started(b"a", 10, now=2.0)
    for peer in (b"a", b"b", b"c"):
        q.finished(peer)
    assert len(q) == 0 and q.inflight == q.inflight_bytes == q.stalled == 0
    q.request(b"e", b"t1")
    q.forget(b"e")
    assert len(q) == 0 and q.next() is None


# -- the attack against a real publisher process ------------------------------------------------
def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_non_reading_dealers_cost_bounded_memory_while_a_subscriber_gets_snapshots() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "tests.tools.bus_origin", str(SEGMENT_BYTES)],
                            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        ready = proc.stdout.readline().split()
        assert ready and ready[0] == "ready", ready
        endpoint, snapshot_endpoint = ready[1], ready[2]
        base = _rss(proc.pid)
        peak = [base]
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.wait(0.02):
                peak[0] = max(peak[0], _rss(proc.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        ctx = zmq.Context()
        request = msgpack.packb({"v": wire.VERSION, "t": wire.topic_for("cam1")})
        attackers = []
        for _ in range(ATTACKERS):
            d = ctx.socket(zmq.DEALER)
            d.setsockopt(zmq.LINGER, 0)
            d.setsockopt(zmq.RCVHWM, 1)
            d.setsockopt(zmq.RCVBUF, 4096)  # and the kernel holds little for it: it stalls at once
            d.connect(snapshot_endpoint)
            for _ in range(REQUESTS):
                d.send_multipart([b"", request])
            attackers.append(d)

        async def subscriber_gets_snapshot() -> int:
            actx = zmq.asyncio.Context()
            sub = BusSubscriber(actx, snapshot_timeout_s=3.0, snapshot_retries=5)
            t0 = time.monotonic()
            got = Collector()
            s = sub.subscribe(endpoint, snapshot_endpoint, "cam1", "src", got)
            await asyncio.wait_for(s.snapshot_ready.wait(), 20)
            n = len(got.media())
            print(f"snapshot after {time.monotonic() - t0:.2f} s")
            await sub.stop()
            actx.term()
            return n

        started = time.monotonic()
        snapshot_entries = asyncio.run(subscriber_gets_snapshot())
        took = time.monotonic() - started
        assert snapshot_entries >= 6 * 30, "the real subscriber got the window while under attack"
        during = peak[0]
        proc.stdin.write("stats\n")
        proc.stdin.flush()
        stats = json.loads(proc.stdout.readline())
        for d in attackers:
            d.close(linger=0)
        ctx.term()

        def settled() -> int:  # the stalled replies are let go of once their peers are gone
            proc.stdin.write("stats\n")
            proc.stdin.flush()
            return json.loads(proc.stdout.readline())["inflight_bytes"]

        deadline = time.monotonic() + 20
        while settled() and time.monotonic() < deadline:
            time.sleep(0.1)
        sampling.set()
        sampler.join(5)
        after = _rss(proc.pid)
        print(f"publisher RSS base {base >> 20} MB, peak {during >> 20} MB, after {after >> 20} MB; "
              f"subscriber served in {took:.1f} s; {stats}")
        assert during - base < BUDGET_BYTES, f"peak grew {(during - base) >> 20} MB"
        assert stats["dropped"] >= ATTACKERS * (REQUESTS - 2), "duplicate requests were dropped"
        assert stats["served"] <= 3 * ATTACKERS + 10, "at most a few replies per attacker"
        assert after - base < 32 << 20, f"memory not given back: {(after - base) >> 20} MB"
    finally:
        if proc.stdin:
            proc.stdin.close()
        proc.wait(15)
