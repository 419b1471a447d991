"""Bus security between real node processes: a CURVE origin, a registered edge playing a real
ffmpeg publish, and outsiders on the origin's bus ports who receive nothing meanwhile."""
from __future__ import annotations

import asyncio
import os
import re
import stat
import urllib.request
from pathlib import Path

import msgpack
import pytest
import zmq

from mesh.broker import keys as bus_keys
from mesh.broker import wire
from mesh.registry import Registry

from .media import ffmpeg_publish
from .procs import wait_until

pytestmark = pytest.mark.integration
SEGMENT = re.compile(r"^cam1(\d{9})\.ts$", re.M)


def _segments(edge) -> list[int]:
    try:
        with urllib.request.urlopen(f"{edge.http}/LiveApp/streams/cam1.m3u8", timeout=10) as r:
            return [int(n) for n in SEGMENT.findall(r.read().decode())]
    except OSError:
        return []


def test_outsiders_get_nothing_while_a_registered_edge_plays(node_factory, mongo, db_name,
                                                             tmp_path: Path) -> None:
    origin = node_factory("origin")
    edge = node_factory("edge")
    key_file = bus_keys.key_path(tmp_path / f"data-{origin.node_id}", origin.node_id)
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    origin_key = bus_keys.load_or_create(key_file).public

    async def registered() -> tuple[dict, set[str]]:
        reg = Registry(mongo, db_name)
        try:
            node = await reg.nodes.find_one({"_id": origin.node_id})
            return node, await reg.alive_bus_keys()
        finally:
            await reg.close()

    node_doc, alive_keys = asyncio.run(registered())
    assert node_doc["bus_public_key"] == origin_key.decode() and len(alive_keys) == 2
    bus, snapshots = node_doc["bus_endpoint"], node_doc["snapshot_endpoint"]
    assert bus == origin.urls["bus"]

    publisher = ffmpeg_publish(origin.rtmp_url("cam1"), 60)
    ctx = zmq.Context()
    try:
        stranger = bus_keys.generate()
        outsiders = []
        for key in (None, stranger):  # no key at all; a well-formed key nobody registered
            s = ctx.socket(zmq.SUB)
            d = ctx.socket(zmq.DEALER)
            for sock in (s, d):
                sock.setsockopt(zmq.LINGER, 0)
                if key is not None:
                    sock.curve_secretkey, sock.curve_publickey = key.secret, key.public
                    sock.curve_serverkey = origin_key
            s.setsockopt(zmq.SUBSCRIBE, b"")
            s.connect(bus)
            d.connect(snapshots)
            d.send_multipart([b"", msgpack.packb({"v": wire.VERSION, "t": wire.topic_for("cam1")})],
                             zmq.NOBLOCK)
            outsiders += [s, d]
        first = wait_until(lambda: _segments(edge), timeout_s=40, interval_s=0.3,
                           message="the edge serving cam1")
        wait_until(lambda: max(_segments(edge) or [0]) >= max(first) + 2, timeout_s=30,
                   interval_s=0.3, message="two more segments on the edge")
        received = 0
        for sock in outsiders:
            while sock.poll(0):
                sock.recv_multipart()
                received += 1
        assert received == 0, "an outsider received bus traffic"
        assert publisher.poll() is None
    finally:
        publisher.kill()
        publisher.wait(10)
        for sock in outsiders:
            sock.close(linger=0)
        ctx.term()
    origin.stop()
    log = Path(origin.log_path).read_text()
    assert "CURVE, registered nodes only" in log and "BUS SECURITY IS OFF" not in log


def test_none_mode_is_logged_loudly_at_start(node_factory) -> None:
    origin = node_factory("origin", env={"MESH_BUS_SECURITY": "none"})
    origin.wait_for_line(r"WARNING.*BUS SECURITY IS OFF", timeout_s=10)
