"""Segment numbering when the database is restored empty: the reservations that kept numbers
collision-free are gone with it, so a stream claimed anew in a restored database starts at the
wall-clock floor (mesh.registry.sequence_floor), above anything any owner could have listed.
Against the embedded server over the real MongoDB wire; a fresh database still numbers from 0."""
from __future__ import annotations

import asyncio
import time

from mesh.hls.playlist import SEQ_DIGITS, segment_name
from mesh.registry import FLOOR_CAP, NodeInfo, Registry, sequence_floor


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
            # a brand-new stream in the restored database takes the floor as well
            other = await a.claim_stream("cam2", "LiveApp", node("origin-a"))
            assert other.media_sequence >= claim.media_sequence
            # and a stream whose document survived continues from its reservation as before
            await a.advance_media_sequence("cam2", "origin-a", other.epoch, other.media_sequence + 3)
            await a.set_stream_status("cam2", "origin-a", other.epoch, "finished", other.media_sequence + 3)
            again = await a.claim_stream("cam2", "LiveApp", node("origin-a"))
            assert again.media_sequence == other.media_sequence + 3
        finally:
            await a.close()
            await b.close()

    asyncio.run(go())
