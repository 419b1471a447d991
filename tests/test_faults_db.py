"""Database outages with real processes: the embedded database paused (SIGSTOP) for 15 s, down
for 15 s and restarted on its data directory, then restarted on an EMPTY data directory. Live streams keep playing, requests that need the database
get a quick 503 with Retry-After, nothing is marked finished or dead wrongly, and the nodes
repopulate an empty database by themselves (the origin keeps its epoch and numbering)."""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pymongo
import pytest

from mesh.embedded_db import EmbeddedDb

from .faults_kit import Viewer, fetch, monotonic
from .media import ffmpeg_publish
from .procs import start_node, wait_until

pytestmark = pytest.mark.integration

OUTAGE_S = 15.0


def raw_stream(uri: str, stream_id: str) -> dict | None:
    with pymongo.MongoClient(uri, serverSelectionTimeoutMS=5000) as client:
        return client["mesh"]["streams"].find_one({"_id": stream_id})


def alive_nodes(node) -> list[str]:
    status, body, _ = fetch(f"{node.http}/rest/v2/cluster/nodes/0/50")
    if status != 200:
        return []
    return sorted(r["id"] for r in json.loads(body) if r["status"] == "alive")


def test_paused_then_empty_database_keeps_streams_playing(tmp_path: Path, nodes) -> None:
    db = EmbeddedDb(tmp_path / "db", port=0)
    uri = db.start()
    try:
        origin, edge, fresh_edge = (start_node(role, tmp_path, mongo=uri) for role in ("origin", "edge", "edge"))
        nodes.extend([origin, edge, fresh_edge])
        everyone = sorted(n.node_id for n in (origin, edge, fresh_edge))
        pub = ffmpeg_publish(origin.rtmp_url("dbx"), 300)
        viewer = Viewer(f"{edge.http}/LiveApp/streams/", "dbx")
        try:
            viewer.wait_for_new(viewer.wait_for_new(-1))
            os.kill(db.pid, signal.SIGSTOP)
            paused_at = time.monotonic()
            try:
                # REST that needs the database: a quick, clean 503 (urlopen gives up after 8 s)
                for url in (f"{origin.http}/rest/v2/cluster/nodes/0/50",
                            f"{fresh_edge.http}/LiveApp/rest/v2/broadcasts/dbx"):
                    status, body, headers = fetch(url, timeout_s=8)
                    assert status == 503 and headers.get("Retry-After") == "2", (url, status, body)
                    assert b"unavailable" in body and body.startswith((b'{"error"', b'{"success": false'))
                # a new viewer on an edge that never saw the stream: 503 with Retry-After
                status, body, headers = fetch(f"{fresh_edge.http}/LiveApp/streams/dbx.m3u8", timeout_s=8)
                assert status == 503 and headers.get("Retry-After") == "2", (status, body)
                # a new stream cannot be claimed: its publisher is told why
                newcomer = ffmpeg_publish(origin.rtmp_url("fresh"), 10)
                assert newcomer.wait(30) != 0
                assert "registry is unavailable" in newcomer.stderr.read()
                # the live stream keeps playing on the edge that follows it
                viewer.wait_for_new(viewer.last(), timeout_s=10)
                time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - paused_at)))  # the outage's length
                during = viewer.wait_for_new(viewer.last(), timeout_s=10)
            finally:
                os.kill(db.pid, signal.SIGCONT)
            # back: nothing finished or terminated wrongly, every node alive again
            wait_until(lambda: alive_nodes(origin) == everyone, timeout_s=20, interval_s=0.3,
                       message="all nodes alive after the pause")
            for _ in range(12):  # across more than the dead-node bound after the outage
                assert raw_stream(uri, "dbx")["status"] == "broadcasting"
                time.sleep(0.5)
            doc = raw_stream(uri, "dbx")
            assert doc["epoch"] == 1 and doc["media_sequence"] >= during
            # the database restarts (same data directory) after being down for the outage's length
            db.stop()
            stopped_at, last = time.monotonic(), viewer.last()
            viewer.wait_for_new(last, timeout_s=10)  # playing on while it is down
            time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - stopped_at)))
            db.start()
            wait_until(lambda: alive_nodes(origin) == everyone, timeout_s=30, interval_s=0.3,
                       message="all nodes alive after the restart")
            doc = raw_stream(uri, "dbx")
            assert doc["epoch"] == 1 and doc["status"] == "broadcasting"
            # the database comes back EMPTY on the same address
            db.stop()
            port = db.port
            db = EmbeddedDb(tmp_path / "empty", port=port)
            db.start()
            restored_at = viewer.last()
            origin.wait_for_line(r"stream dbx was missing from the registry; re-created it \(epoch 1,",
                                 timeout_s=30)
            wait_until(lambda: alive_nodes(origin) == everyone, timeout_s=30, interval_s=0.3,
                       message="nodes re-registered in the empty database")
            doc = wait_until(lambda: raw_stream(uri, "dbx"), timeout_s=30, interval_s=0.3,
                             message="the origin re-creating its stream document")
            assert doc["epoch"] == 1 and doc["status"] == "broadcasting" and doc["media_sequence"] >= restored_at
            # the edge keeps playing: new segments, same epoch, no discontinuity
            after = viewer.wait_for_new(viewer.last(), timeout_s=20)
            viewer.wait_for_new(after, timeout_s=20)
            assert pub.poll() is None
            status, body, _ = fetch(f"{fresh_edge.http}/LiveApp/streams/dbx.m3u8")
            assert status == 200 and b"dbx" in body, (status, body)
        finally:
            pub.kill()
            viewer.stop()
        numbers = viewer.numbers()
        assert numbers == list(range(numbers[0], numbers[-1] + 1)), "no segment lost or renumbered"
        assert monotonic(viewer.media_sequences) and len(set(viewer.disc_sequences)) == 1
        for node in (origin, edge, fresh_edge):
            node.stop()
            text = node.log_path.read_text()
            assert "Traceback" not in text, text[text.index("Traceback") - 500:][:3000]
            assert "taken over" not in text
    finally:
        db.stop()
