"""The bus with real ZeroMQ sockets on 127.0.0.1 (OS-assigned ports)."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
from typing import Any

import msgpack
import pytest
import zmq
import zmq.asyncio

from mesh.broker import wire
from mesh.broker.publisher import BusPublisher, snapshot_reply
from mesh.broker.subscriber import BusSubscriber
from mesh.broker.tracker import Gap
from mesh.broker.wire import CONFIG, EOS, FLAG_KEY, FLAG_SEG_START, MEDIA
from mesh.metrics import bad_input_count

from .busclient import Collector

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEG = 10  # packets per segment in these tests


def publish_segment(channel: Any, seg: int, size: int = 100, flush_each: bool = False) -> list[int]:
    """Publish one segment of SEG packets; returns their seq numbers."""
    seqs = []
    for i in range(SEG):
        flags = FLAG_KEY | FLAG_SEG_START if i == 0 else 0
        n = seg * SEG + i
        seqs.append(channel.media(0, n * 3000, n * 3000, flags, seg, bytes([n % 251]) * size).seq)
        if flush_each:
            channel.flush()
    return seqs


def run(coro):
    return asyncio.run(coro)


def test_late_subscriber_gets_snapshot_then_live_without_gap_or_duplicate() -> None:
    async def go() -> None:
        ctx = zmq.asyncio.Context()
        pub = BusPublisher(ctx, window_segments=3)
        await pub.start()
        ch = pub.open_channel("cam1", "src", epoch=4)
        ch.config({"video": {"width": 640}})
        published = []
        for seg in range(6):
            published += publish_segment(ch, seg)
        published.append(ch.media(0, 0, 0, FLAG_KEY | FLAG_SEG_START, 6, b"open").seq)  # open segment
        pub.flush()

        sub = BusSubscriber(ctx)
        got = Collector()
        s = sub.subscribe(pub.endpoint, pub.snapshot_endpoint, "cam1", "src", got)
        await asyncio.wait_for(s.snapshot_ready.wait(), 10)
        for seg in range(7, 10):
            published += publish_segment(ch, seg)
            await asyncio.sleep(0)
        ch.eos()
        await got.until(lambda c: any(d.kind == EOS for d in c.items if not isinstance(d, Gap)))

        assert got.items[0].kind == CONFIG and got.items[0].extra == {"video": {"width": 640}}
        media = got.media()
        seqs = [e.seq for e in media]
        assert seqs == sorted(set(seqs)), "no duplicates, in order"
        assert seqs == published[published.index(seqs[0]):], "everything from the snapshot on, no gap"
        # 3 complete segments (3, 4, 5) + the open one from the snapshot, then live 7..9
        assert [e.seg for e in media if e.seg_start] == [3, 4, 5, 6, 7, 8, 9]
        assert all(e.epoch == 4 for e in media)
        assert not any(isinstance(d, Gap) for d in got.items) and s.tracker.lost == 0
        await sub.stop()
        await pub.stop()
        ctx.term()

    run(go())


def test_topics_cam1_and_cam10_never_mix() -> None:
    async def go() -> None:
        ctx = zmq.asyncio.Context()
        pub = BusPublisher(ctx)
        await pub.start()
        ch1 = pub.open_channel("cam1", "src", 1)
        ch10 = pub.open_channel("cam10", "src", 1)
        sub = BusSubscriber(ctx)
        got1, got10 = Collector(), Collector()
        s1 = sub.subscribe(pub.endpoint, pub.snapshot_endpoint, "cam1", "src", got1)
        s10 = sub.subscribe(pub.endpoint, pub.snapshot_endpoint, "cam10", "src", got10)
        ch1.heartbeat()
        ch10.heartbeat()
        pub.flush()
        await asyncio.wait_for(asyncio.gather(s1.snapshot_ready.wait(), s10.snapshot_ready.wait()), 10)
        for seg in range(3):
            for i in range(SEG):
                ch1.media(0, i, i, FLAG_SEG_START if i == 0 else 0, seg, b"one")
                ch10.media(0, i, i, FLAG_SEG_START if i == 0 else 0, seg, b"ten!")
            await asyncio.sleep(0)
        ch1.eos()
        ch10.eos()
        done = lambda c: any(not isinstance(d, Gap) and d.kind == EOS for d in c.items)  # noqa: E731
        await got1.until(done)
        await got10.until(done)
        assert {bytes(e.payload) for e in got1.media()} == {b"one"}
        assert {bytes(e.payload) for e in got10.media()} == {b"ten!"}
        assert len(got1.media()) == len(got10.media()) == 3 * SEG
        await sub.stop()
        await pub.stop()
        ctx.term()

    run(go())


class Probe:
    """tests/tools/bus_probe.py in its own process; its stdout is read continuously."""

    def __init__(self, endpoint: str, snapshot: str, stream: str, hwm: int):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.tools.bus_probe", endpoint, snapshot, stream, str(hwm)],
            cwd=ROOT, stdout=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.cond:
                self.lines.append(line.strip())
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def wait_for(self, predicate, timeout: float = 20.0) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: predicate(self.lines) or self.proc.poll() is not None,
                                      timeout), f"probe timed out; last lines {self.lines[-5:]}"

    def records(self) -> list[dict[str, Any]]:
        with self.cond:
            return [json.loads(x) for x in self.lines if x.startswith("{")]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        self.proc.wait(10)


@pytest.mark.integration
def test_stalled_subscriber_does_not_slow_others_and_resyncs_after_a_gap() -> None:
    async def go() -> None:
        ctx = zmq.asyncio.Context()
        pub = BusPublisher(ctx, hwm=50)
        await pub.start()
        ch = pub.open_channel("cam1", "src", 1)
        ch.config({"v": 1})
        pub.flush()

        fast_sub = BusSubscriber(ctx)
        fast = Collector()
        s = fast_sub.subscribe(pub.endpoint, pub.snapshot_endpoint, "cam1", "src", fast)
        probe = Probe(pub.endpoint, pub.snapshot_endpoint, "cam1", hwm=20)
        try:
            await asyncio.to_thread(probe.wait_for, lambda lines: "ready" in lines)
            await asyncio.wait_for(s.snapshot_ready.wait(), 10)
            probe.proc.send_signal(signal.SIGSTOP)  # the slow subscriber stops reading entirely

            # ~40 MB, one 16 KiB message per send: far beyond the stalled peer's HWMs and socket
            # buffers. Pace on the fast subscriber only, so it is never the one dropping.
            segments = 250
            published = []
            for seg in range(segments):
                published += publish_segment(ch, seg, size=16384, flush_each=True)
                want = (seg + 1) * SEG
                await fast.until(lambda c: len(c.media()) >= want, timeout=20)
            sent_while_stalled = pub.messages_sent

            assert [e.seq for e in fast.media()] == published
            assert s.tracker.lost == 0 and s.tracker.gaps == 0

            probe.proc.send_signal(signal.SIGCONT)
            for seg in range(segments, segments + 3):
                publish_segment(ch, seg, size=16384, flush_each=True)
                await asyncio.sleep(0.01)
            ch.eos()
            pub.flush()
            await asyncio.to_thread(probe.wait_for,
                                    lambda lines: any('"kind": 2' in x for x in lines))
        finally:
            probe.stop()
        assert sent_while_stalled >= segments * SEG

        records = probe.records()
        gaps = [i for i, r in enumerate(records) if "gap" in r]
        assert gaps, "the stalled subscriber must report the loss"
        assert sum(records[i]["gap"] for i in gaps) > 0
        # After each gap, delivery resumes exactly at a segment start and stays contiguous.
        for i in gaps:
            nxt = next(r for r in records[i + 1:] if r.get("kind") == MEDIA)
            assert nxt["start"], f"resumed mid-segment: {nxt}"
        after = [r for r in records[gaps[-1] + 1:] if r.get("kind") == MEDIA]
        assert after, "delivery resumed after the gap"
        seg_counts: dict[int, int] = {}
        for r in after:
            seg_counts[r["seg"]] = seg_counts.get(r["seg"], 0) + 1
        assert all(n == SEG for n in seg_counts.values()), "only whole segments after a resync"
        await fast_sub.stop()
        await pub.stop()
        ctx.term()

    run(go())


@pytest.mark.integration
def test_brief_stall_is_repaired_from_the_origin_window() -> None:
    """Loss the origin's window still covers comes back through a snapshot: no gap at all."""
    async def go() -> None:
        ctx = zmq.asyncio.Context()
        pub = BusPublisher(ctx, hwm=5, window_segments=100, window_bytes=256 << 20)
        await pub.start()
        ch = pub.open_channel("cam7", "src", 1)
        ch.config({"v": 1})
        published = publish_segment(ch, 0)
        pub.flush()
        probe = Probe(pub.endpoint, pub.snapshot_endpoint, "cam7", hwm=5)
        try:
            await asyncio.to_thread(probe.wait_for, lambda lines: "ready" in lines)
            probe.proc.send_signal(signal.SIGSTOP)
            for seg in range(1, 41):  # ~26 MB in 64 KiB messages: more than the socket buffers hold
                published += publish_segment(ch, seg, size=65536, flush_each=True)
                await asyncio.sleep(0)
            probe.proc.send_signal(signal.SIGCONT)
            for seg in range(41, 43):
                published += publish_segment(ch, seg, size=1000, flush_each=True)
                await asyncio.sleep(0.01)
            ch.eos()
            pub.flush()
            await asyncio.to_thread(probe.wait_for, lambda lines: any("stats" in x for x in lines))
        finally:
            probe.stop()
        records = probe.records()
        stats = next(r["stats"] for r in records if "stats" in r)
        assert stats["recovered"] > 0, "the stall must really have lost messages"
        assert stats["lost"] == 0 and not any("gap" in r for r in records)
        media = [r["seq"] for r in records if r.get("kind") == MEDIA]
        assert media == published[published.index(media[0]):], "every packet, in order, once"
        await pub.stop()
        ctx.term()

    run(go())


def test_garbage_frames_are_counted_and_dropped() -> None:
    async def go() -> None:
        ctx = zmq.asyncio.Context()
        raw_pub = ctx.socket(zmq.PUB)
        raw_pub.setsockopt(zmq.LINGER, 0)
        port = raw_pub.bind_to_random_port("tcp://127.0.0.1")
        router = ctx.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        snap_port = router.bind_to_random_port("tcp://127.0.0.1")
        sub = BusSubscriber(ctx)
        got = Collector()
        s = sub.subscribe(f"tcp://127.0.0.1:{port}", f"tcp://127.0.0.1:{snap_port}", "cam1", "src", got)

        before = bad_input_count("bus")
        garbage = [
            [b"s/cam1/src/"],
            [b"s/cam1/src/", b"\xc1\xc1", b""],
            [b"s/cam1/src/", msgpack.packb({"v": 1, "e": 1, "h": [[0, 0, 0, 0, 0, 0, 0, 99]]}), b"x"],
            [b"s/cam1/src/", msgpack.packb({"v": 9}), b""],
        ]
        good = wire.encode(b"s/cam1/src/", 1, [wire.Entry(0, MEDIA, flags=3, payload=b"ok", epoch=1)])
        # Keep sending until the subscription is live and the good message has been taken.
        request = None
        while request is None:
            for frames in garbage:
                await raw_pub.send_multipart(frames)
            await raw_pub.send_multipart(good)
            try:
                request = await asyncio.wait_for(router.recv_multipart(), 0.2)
            except asyncio.TimeoutError:
                pass
        await router.send_multipart([request[0], b"", snapshot_reply(True, b"s/cam1/src/", 1, 0, 1)])
        await asyncio.wait_for(s.snapshot_ready.wait(), 10)
        for frames in garbage:
            await raw_pub.send_multipart(frames)
        await raw_pub.send_multipart(wire.encode(
            b"s/cam1/src/", 1, [wire.Entry(1, MEDIA, flags=3, payload=b"after", epoch=1)]))
        await got.until(lambda c: any(bytes(e.payload) == b"after" for e in c.media()))
        assert bad_input_count("bus") >= before + 2 * len(garbage)
        assert [bytes(e.payload) for e in got.media()] == [b"after"]
        await sub.stop()
        raw_pub.close()
        router.close()
        ctx.term()

    run(go())


def test_a_batch_begun_by_the_caller_is_sent_by_its_flush_in_one_message() -> None:
    """begin_batch(): the caller (the RTMP read pass) flushes before returning to the loop, so
    no flush is scheduled for a later loop pass; the pass's entries go out as one message."""
    async def go() -> None:
        ctx = zmq.asyncio.Context()
        pub = BusPublisher(ctx)
        await pub.start()
        ch = pub.open_channel("cam1", "src", 1)
        sub = ctx.socket(zmq.SUB)
        sub.connect(pub.endpoint)
        sub.setsockopt(zmq.SUBSCRIBE, ch.topic)
        try:
            await asyncio.wait_for(sub.recv_multipart(), 5)  # the greeting: followed from now on
            assert (pub.messages_sent, pub.entries_sent) == (1, 1)
            pub.begin_batch()
            for i in range(3):
                ch.media(0, i, i, FLAG_SEG_START if i == 0 else 0, 0, b"au")
            for _ in range(3):
                await asyncio.sleep(0)  # a flush scheduled with call_soon would run here
            assert (pub.messages_sent, pub.entries_sent) == (1, 1)
            pub.flush()
            assert (pub.messages_sent, pub.entries_sent) == (2, 4)
            ch.media(0, 3, 3, 0, 0, b"au")  # outside a batch: the loop flushes it by itself
            for _ in range(3):
                await asyncio.sleep(0)
            assert (pub.messages_sent, pub.entries_sent) == (3, 5)
        finally:
            sub.close(linger=0)
            await pub.stop()
            ctx.term()
    asyncio.run(asyncio.wait_for(go(), 10))


def test_entries_nobody_follows_are_kept_for_the_snapshot_but_not_sent() -> None:
    """A topic no subscriber's prefix matches costs no encoding and no send; its entries still
    go into the window, so the snapshot a later subscriber asks for (after its greeting) has
    them. Once the last subscriber of the topic leaves, sending stops again."""
    async def go() -> None:
        ctx = zmq.asyncio.Context()
        pub = BusPublisher(ctx)
        await pub.start()
        ch = pub.open_channel("cam1", "src", 1)
        other = pub.open_channel("cam2", "src", 1)
        sub = ctx.socket(zmq.SUB)
        try:
            for i in range(3):
                ch.media(0, i, i, FLAG_SEG_START if i == 0 else 0, 0, b"early")
            pub.flush()
            assert (pub.messages_sent, ch.followed) == (0, False)
            sub.connect(pub.endpoint)
            sub.setsockopt(zmq.SUBSCRIBE, ch.topic)
            greeting = await asyncio.wait_for(sub.recv_multipart(), 5)
            assert greeting[0] == ch.topic and (ch.followed, other.followed) == (True, False)
            assert pub.followed_streams == {"cam1"}
            first, last, entries = ch.snapshot()
            assert [bytes(e.payload) for e in entries] == [b"early"] * 3 and (first, last) == (0, 2)
            ch.media(0, 3, 3, 0, 0, b"live")
            other.media(0, 0, 0, FLAG_SEG_START, 0, b"unfollowed")
            pub.flush()
            frames = await asyncio.wait_for(sub.recv_multipart(), 5)
            assert frames[0] == ch.topic and bytes(frames[2]) == b"live"
            assert pub.messages_sent == 2  # the greeting and cam1's entry; not cam2's
            sub.setsockopt(zmq.UNSUBSCRIBE, ch.topic)
            async with asyncio.timeout(5):
                while ch.followed:  # the publisher reads the unsubscribe from its XPUB
                    await asyncio.sleep(0.01)
            assert pub.followed_streams == set()
            ch.media(0, 4, 4, 0, 0, b"after")
            pub.flush()
            assert pub.messages_sent == 2
            rung = pub.open_channel("cam2", "360p", 1)  # following one rendition follows the stream
            sub.setsockopt(zmq.SUBSCRIBE, rung.topic)
            await asyncio.wait_for(sub.recv_multipart(), 5)
            assert pub.followed_streams == {"cam2"} and not other.followed
            pub.close_channel(rung)
            assert pub.followed_streams == set()
        finally:
            sub.close(linger=0)
            await pub.stop()
            ctx.term()
    asyncio.run(asyncio.wait_for(go(), 10))


def test_garbage_from_subscribers_is_counted_and_not_remembered() -> None:
    """What reaches XPUB from a peer is not always an (un)subscribe: an XSUB may send anything
    upstream, and a SUB may subscribe to a prefix longer than any topic. Each is counted and
    dropped (nothing kept for it); a real subscription after them is still greeted."""
    async def go() -> None:
        ctx = zmq.asyncio.Context()
        pub = BusPublisher(ctx)
        await pub.start()
        ch = pub.open_channel("cam1", "src", 1)
        xsub = ctx.socket(zmq.XSUB)  # one pipe: its messages reach the publisher in order
        malformed = bad_input_count("bus", "subscription_malformed")
        too_long = bad_input_count("bus", "subscription_too_long")
        try:
            xsub.connect(pub.endpoint)
            await xsub.send(b"\x07not a subscription")
            await xsub.send(b"\x01" + b"s/" + b"x" * 10_000)
            await xsub.send(b"\x01" + ch.topic)
            greeting = await asyncio.wait_for(xsub.recv_multipart(), 5)
            assert greeting[0] == ch.topic
            assert bad_input_count("bus", "subscription_malformed") == malformed + 1
            assert bad_input_count("bus", "subscription_too_long") == too_long + 1
            assert pub._prefixes == {ch.topic} and pub.followed_streams == {"cam1"}
        finally:
            xsub.close(linger=0)
            await pub.stop()
            ctx.term()
    asyncio.run(asyncio.wait_for(go(), 10))
