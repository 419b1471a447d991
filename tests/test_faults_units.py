"""Fault rules on pure parts and on the registry over the real wire: reserved segment numbers,
a deposed epoch's packets dropped by the edge window, a probed-dead owner's stream claimed, a lost
stream document re-created, a node re-registered by its heartbeat, a database away answered fast."""
from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import pytest

from mesh.embedded_db import EmbeddedDb, free_port
from mesh.ingest.segmenter import Segmenter
from mesh.lb import haproxy_maxconn
from mesh.nodes.origin import owner_is_dead
from mesh.registry import BROADCASTING, Fenced, NodeInfo, Registry, RegistryUnavailable, StreamBusy
from mesh_codecs.media import CLOCK_HZ, VIDEO

from .test_hls_window import Feed, segment_name, window


def run(coro):
    return asyncio.run(coro)


def node(node_id: str, port: int = 1) -> NodeInfo:
    return NodeInfo(node_id, "origin", "127.0.0.1", http_url=f"http://127.0.0.1:{port}",
                    bus_endpoint=f"tcp://127.0.0.1:{port}", snapshot_endpoint=f"tcp://127.0.0.1:{port}")


# -- pure parts -------------------------------------------------------------------------------
def test_segmenter_never_starts_a_number_beyond_its_reservation() -> None:
    seg = Segmenter(2.0, first_seq=10, limit=12)
    seg.video_present()
    step = 2 * CLOCK_HZ
    cuts = []
    for i in range(5):
        _, _, n, flags, _ = seg.stamp(VIDEO, i * step, i * step, True)
        cuts.append(n)
    assert cuts == [10, 11, 11, 11, 11] and seg.starved and seg.next_seq == 12
    seg.limit = 20  # the registry recorded a longer reservation
    seg.starved = False
    assert seg.stamp(VIDEO, 5 * step, 5 * step, True)[2] == 12 and not seg.starved


def test_window_drops_a_deposed_epochs_packets() -> None:
    w, old, new = window(window=5), Feed(epoch=1, disc=0), Feed(epoch=2, disc=1)
    w.feed([old.config()] + old.segment(0) + old.segment(1) + old.segment(2))
    # the new owner starts above the old one's reservation: a jump, shown as a new window
    w.feed([new.config()] + new.segment(20) + new.segment(21))
    # the zombie keeps sending its epoch: nothing of it is listed, nothing changes
    before = w.playlist()
    w.feed(old.segment(3) + old.segment(4) + [old.config()])
    assert w.playlist() == before and w.stale > 0
    w.feed(new.segment(22))
    text = w.playlist()
    assert re.findall(r"cam1\d{9}\.ts", text) == [segment_name("cam1", n) for n in (20, 21)]
    assert "#EXT-X-MEDIA-SEQUENCE:20" in text and "#EXT-X-DISCONTINUITY-SEQUENCE:1" in text
    assert w.data[1] != w.data[20]


def test_haproxy_maxconn_fits_the_fd_limit() -> None:
    assert haproxy_maxconn(20_000) * 2 + 200 <= 20_000
    assert haproxy_maxconn(1 << 20) == 20_000 and haproxy_maxconn(100) == 64


def test_a_port_nobody_listens_on_is_a_dead_owner() -> None:
    port = free_port()
    assert run(owner_is_dead({"http_url": f"http://127.0.0.1:{port}", "bus_endpoint": f"tcp://127.0.0.1:{port}"}))
    assert not run(owner_is_dead({}))  # nothing to probe: never judged dead

    async def listening() -> bool:
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            return await owner_is_dead({"http_url": f"http://127.0.0.1:{port}",
                                        "bus_endpoint": f"tcp://127.0.0.1:{port}"})
        finally:
            server.close()
    assert not run(listening())


# -- the registry over the real wire ----------------------------------------------------------
async def open_registry(mongo: str, db_name: str, **kw) -> Registry:
    reg = Registry(mongo, db_name, **kw)
    await reg.connect()
    return reg


def test_takeover_numbers_start_above_the_reservation_and_extend_with_writes(mongo: str, db_name: str) -> None:
    async def go() -> None:
        reg = await open_registry(mongo, db_name, reserve_segments=8)
        await reg.register_node(node("o1"))
        first = await reg.claim_stream("cam1", "LiveApp", node("o1"))
        assert (first.media_sequence, first.reserved) == (0, 8)
        fenced, missing = await reg.record_sequences("o1", [("cam1", 1, 5, {})])
        assert not fenced and not missing
        assert (await reg.get_stream("cam1"))["sequence_reserved"] == 13
        # o1 dies having cut up to 12 (it may have, without recording it): o2 starts at 13
        await reg.deregister("o1")
        await reg.register_node(node("o2"))
        claim = await reg.claim_stream("cam1", "LiveApp", node("o2"))
        assert claim.takeover and claim.epoch == 2 and claim.media_sequence == 13
        assert claim.reserved == 21 and claim.discontinuity_sequence == 1
        # a clean finish hands back what it did not use: the next publish continues contiguously
        await reg.set_stream_status("cam1", "o2", 2, "finished", next_sequence=15)
        again = await reg.claim_stream("cam1", "LiveApp", node("o2"))
        assert again.media_sequence == 15
        await reg.close()

    run(go())


def test_a_probed_dead_owner_is_claimed_only_at_its_epoch(mongo: str, db_name: str) -> None:
    async def go() -> None:
        reg = await open_registry(mongo, db_name)
        for n in ("o1", "o2"):
            await reg.register_node(node(n))
        await reg.claim_stream("cam2", "LiveApp", node("o1"))
        with pytest.raises(StreamBusy):
            await reg.claim_stream("cam2", "LiveApp", node("o2"))
        with pytest.raises(StreamBusy):  # a stale confirmation (wrong epoch) robs nobody
            await reg.claim_stream("cam2", "LiveApp", node("o2"), dead_owner=("o1", 7))
        claim = await reg.claim_stream("cam2", "LiveApp", node("o2"), dead_owner=("o1", 1))
        assert claim.epoch == 2 and claim.takeover
        with pytest.raises(Fenced):
            await reg.advance_media_sequence("cam2", "o1", 1, 3)
        await reg.close()

    run(go())


def test_a_lost_stream_document_and_node_come_back_as_they_were(mongo: str, db_name: str) -> None:
    async def go() -> None:
        reg = await open_registry(mongo, db_name)
        me = node("o1")
        await reg.register_node(me)
        await reg.claim_stream("cam3", "LiveApp", me)
        await reg.claim_stream("cam3", "LiveApp", me)  # epoch 2
        await reg.streams.delete_many({})  # the database came back empty
        await reg.nodes.delete_many({})
        fenced, missing = await reg.record_sequences("o1", [("cam3", 2, 40, {})])
        assert missing == {"cam3"} and not fenced
        await reg.restore_stream("cam3", "LiveApp", me, 2, 41, 1, [{"name": "src"}])
        doc = await reg.get_stream("cam3")
        await reg.heartbeat("o1", {"streams": 1}, me)
        assert "o1" in await reg.alive_node_ids()
        doc = await reg.get_stream("cam3")
        assert (doc["epoch"], doc["media_sequence"], doc["status"]) == (2, 41, BROADCASTING)
        assert doc["sequence_reserved"] == 41 + reg.reserve_segments
        assert await reg.record_sequences("o1", [("cam3", 2, 42, {})]) == (set(), set())
        with pytest.raises(Fenced):  # a restore never overwrites another owner's document
            await reg.restore_stream("cam3", "LiveApp", node("o9"), 1, 0, 0, [])
        await reg.close()

    run(go())


def test_a_paused_database_fails_fast_with_registry_unavailable(tmp_path: Path) -> None:
    import os
    import signal

    db = EmbeddedDb(tmp_path / "db", port=0)
    db.start()

    async def go() -> float:
        reg = await open_registry(db.uri, "pause")
        await reg.register_node(node("o1"))
        os.kill(db.pid, signal.SIGSTOP)
        try:
            # kill() only queues the stop: the server may still answer one request first
            await wait_stopped(db.pid)
            started = time.monotonic()
            with pytest.raises(RegistryUnavailable) as err:
                await reg.get_stream("cam1")
            assert "unavailable" in err.value.message
            return time.monotonic() - started
        finally:
            os.kill(db.pid, signal.SIGCONT)
            await reg.close()
    try:
        took = run(go())
        assert took < 10, "fails within the operation timeout, not after a long hang"
    finally:
        db.stop()


async def wait_stopped(pid: int, timeout_s: float = 10.0) -> None:
    """Until every thread of ``pid`` is in the stopped state ('T')."""
    deadline = time.monotonic() + timeout_s
    while True:
        states = set()
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                states.add((task / "stat").read_text().rsplit(")", 1)[1].split()[0])
            except OSError:
                continue
        if states == {"T"}:
            return
        assert time.monotonic() < deadline, f"process {pid} not stopped: thread states {states}"
        await asyncio.sleep(0.01)


class BookedStream:
    """The parts of a live stream the sequence book uses, over a real segmenter."""

    def __init__(self, reg: Registry, claim, me: NodeInfo):
        self.stream_id, self.epoch, self.reg, self.me = claim.stream_id, claim.epoch, reg, me
        self.fenced = self.finished = False
        self.segmenter = Segmenter(2.0, claim.media_sequence, limit=claim.reserved)
        self.segmenter.video_present()
        self.dts = 0

    def cut(self) -> int | None:
        """One 2 s segment's keyframe; the number it started, or None if not reserved."""
        seg = self.segmenter.stamp(VIDEO, self.dts, self.dts, True)[2]
        self.dts += 2 * CLOCK_HZ
        return None if self.segmenter.starved else seg

    def renditions(self) -> list:
        return []

    def doc_fields(self) -> dict:
        return {"renditions": self.renditions()}

    def fence(self, reason: str = "") -> None:
        self.fenced = True

    def reserve(self, until: int) -> None:
        self.segmenter.limit = max(self.segmenter.limit, until)

    async def restore(self) -> None:
        self.reserve(await self.reg.restore_stream(self.stream_id, "LiveApp", self.me, self.epoch,
                                                   self.segmenter.next_seq, 0, []))


def test_the_book_extends_reservations_so_long_streams_go_on(mongo: str, db_name: str) -> None:
    from mesh.ingest.bookkeeping import SequenceBook

    async def go() -> None:
        reg = await open_registry(mongo, db_name, reserve_segments=4)
        me = node("o1")
        await reg.register_node(me)
        live = BookedStream(reg, await reg.claim_stream("bk", "LiveApp", me), me)
        book = SequenceBook(reg, "o1", interval_s=0)
        cut = []
        for _ in range(40):  # 80 s of segments, ten reservations' worth
            cut.append(live.cut())
            book.note(live)
            await book.flush()
        assert cut == list(range(40)) and not live.fenced
        assert (await reg.get_stream("bk"))["sequence_reserved"] == 39 + 4
        # without the registry's answer the stream runs out of numbers instead of overrunning them
        starved = BookedStream(reg, await reg.claim_stream("bk2", "LiveApp", me), me)
        assert [starved.cut() for _ in range(6)] == [0, 1, 2, 3, None, None]
        # a document lost with the database is re-created by the book, as it was
        await reg.streams.delete_one({"_id": "bk"})
        live.cut()
        book.note(live)
        await book.flush()
        doc = await reg.get_stream("bk")
        assert (doc["epoch"], doc["media_sequence"], doc["status"]) == (1, 41, BROADCASTING)
        assert not live.fenced and live.segmenter.limit == 45
        await reg.close()

    run(go())
