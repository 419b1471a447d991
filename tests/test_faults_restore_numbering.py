"""Segment numbering when the database is restored empty: the reservations that kept numbers
collision-free are gone with it, so a stream claimed anew in a restored database starts at the
wall-clock floor (mesh.registry.sequence_floor), above anything any owner could have listed.
Against the embedded server over the real MongoDB wire; a fresh database still numbers from 0."""
from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import pytest

from mesh.embedded_db import EmbeddedDb
from mesh.hls.playlist import SEQ_DIGITS, segment_name
from .faults_kit import Viewer, monotonic
from .media import ffmpeg_publish
from .procs import start_node, wait_until

from mesh.registry import FLOOR_CAP, NodeInfo, Registry, epoch_floor, sequence_floor


def node(node_id: str) -> NodeInfo:
    return NodeInfo(node_id, "origin", "127.0.0.1", bus_endpoint=f"tcp://127.0.0.1:1/{node_id}",
                    snapshot_endpoint=f"tcp://127.0.0.1:2/{node_id}")


def test_the_floor_fits_the_segment_names_and_never_overflows() -> None:
    assert sequence_floor(0) == 0 and sequence_floor(1_767_225_600) == 0
    now = sequence_floor(time.time())
    assert 0 < now < FLOOR_CAP and sequence_floor(time.time() + 60) >= now + 119  # 2 a second
    assert sequence_floor(4e9) == FLOOR_CAP  # year 2096: capped
    assert FLOOR_CAP + 10**8 - 1 < 10**SEQ_DIGITS
    assert len(segment_name("", FLOOR_CAP + 10**8 - 1)) == SEQ_DIGITS + 3


def test_a_claim_in_a_restored_empty_database_starts_above_the_lost_numbers(mongo: str, db_name: str) -> None:
    async def go() -> None:
        a = Registry(mongo, db_name, node_dead_after_s=120.0)
        b = Registry(mongo, db_name, node_dead_after_s=120.0)
        await a.connect()
        await b.connect()
        try:
            for r, name in ((a, "origin-a"), (b, "origin-b")):
                await r.register_node(node(name))
            fresh = await a.claim_stream("cam1", "LiveApp", node("origin-a"))
            assert fresh.media_sequence == 0, "a database never restored numbers new streams from 0"
            await a.advance_media_sequence("cam1", "origin-a", fresh.epoch, 40)  # listed up to 39
            # the database is restored empty (every collection gone), and origin-b claims at once
            await a._client.drop_database(db_name)
            claim = await b.claim_stream("cam1", "LiveApp", node("origin-b"))
            assert claim.media_sequence >= sequence_floor(time.time()) - 2 > 40 + a.reserve_segments
            doc = await b.get_stream("cam1")
            assert doc["media_sequence"] == claim.media_sequence
            # edges follow only higher epochs: the re-created stream's epoch and discontinuity
            # sequence start above anything the lost document held
            assert claim.epoch > fresh.epoch and claim.epoch >= epoch_floor(time.time()) - 2
            assert doc["discontinuity_sequence"] == claim.discontinuity_sequence > claim.epoch - 2
            # a brand-new stream in the restored database takes the floor as well
            other = await a.claim_stream("cam2", "LiveApp", node("origin-a"))
            assert other.media_sequence >= claim.media_sequence
        finally:
            await a.close()
            await b.close()

    asyncio.run(go())


@pytest.mark.integration
def test_origin_and_database_lost_together_the_edge_follows_the_new_numbering(tmp_path: Path, nodes) -> None:
    """The stream's origin dies and the database comes back empty at the same moment; the
    publisher goes to the other origin at once. Its claim (no document, restored database)
    starts above the old numbering and epoch, and the edge that followed the old origin follows
    the new one: media and discontinuity sequences never go back, no name comes with new bytes."""
    db = EmbeddedDb(tmp_path / "db", port=0)
    uri = db.start()
    try:
        first, second, edge = (start_node(role, tmp_path, mongo=uri) for role in ("origin", "origin", "edge"))
        nodes.extend([first, second, edge])
        pub = ffmpeg_publish(first.rtmp_url("rst"), 300)
        viewer = Viewer(f"{edge.http}/LiveApp/streams/", "rst")
        try:
            viewer.wait_for_new(viewer.wait_for_new(0))
            first.kill()
            pub.kill()
            pub.wait()
            db.stop()
            db = EmbeddedDb(tmp_path / "empty", port=db.port)
            db.start()
            listed = viewer.last()

            def published() -> bool:  # the publisher retries until the origin reaches the database
                nonlocal pub
                if pub.poll() is not None:
                    pub = ffmpeg_publish(second.rtmp_url("rst"), 300)
                return bool(re.search(r"stream LiveApp/rst live on", second.output()))

            pub = ffmpeg_publish(second.rtmp_url("rst"), 300)
            wait_until(published, timeout_s=60, interval_s=0.3, message="the second origin claims the stream")
            m = second.wait_for_line(r"stream LiveApp/rst live on \S+ \(epoch (\d+), from segment (\d+)")
            epoch, start = int(m.group(1)), int(m.group(2))
            assert start > listed + 16 and epoch > 1, (start, listed, epoch)
            assert start >= sequence_floor(time.time()) - 120
            second.wait_for_line("the registry database was restored")
            got = viewer.wait_for_new(listed, timeout_s=40)
            viewer.wait_for_new(got, timeout_s=20)
            assert got >= start
        finally:
            pub.kill()
            viewer.stop()
        assert monotonic(viewer.media_sequences) and monotonic(viewer.disc_sequences)
        assert len(set(viewer.disc_sequences)) == 2, "one discontinuity"
        assert not [n for n in viewer.numbers() if listed < n < start], "nothing between the numberings"
        assert not viewer.errors
        text = edge.log_path.read_text()
        assert "Traceback" not in text
    finally:
        db.stop()
