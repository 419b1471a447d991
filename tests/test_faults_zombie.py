"""A zombie origin: cut off from the database (a TCP proxy between it and the DB, cut by the test)
but still reachable by edges and its publisher. Once another origin owns the stream the edges
follow the higher epoch only, and the zombie notices and stops its publisher with a clear message.
"""
from __future__ import annotations

import hashlib
import json
import re

import pytest

from .faults_kit import TcpProxy, Viewer, fetch, monotonic
from .media import ffmpeg_publish
from .procs import wait_until

pytestmark = pytest.mark.integration


def test_an_origin_cut_off_from_the_database_is_fenced_and_stops(mongo: str, node_factory) -> None:
    proxy = TcpProxy(int(mongo.rstrip("/").rsplit(":", 1)[1]))
    edge = node_factory("edge")
    cold = node_factory("edge")  # asked nothing until the new owner is live
    other = node_factory("origin")
    # directConnection: the driver must not find the database behind the proxy by itself
    zombie = node_factory("origin", mongo=f"mongodb://127.0.0.1:{proxy.port}/?directConnection=true")
    base = f"{edge.http}/LiveApp/streams/"
    first = ffmpeg_publish(zombie.rtmp_url("zed"), 300)
    second = None
    viewer = Viewer(base, "zed")
    try:
        zombie.wait_for_line(r"stream LiveApp/zed live on \S+ \(epoch 1,")
        viewer.wait_for_new(viewer.wait_for_new(-1))
        proxy.cut()

        def zombie_dead() -> bool:
            rows = json.loads(fetch(f"{other.http}/rest/v2/cluster/nodes/0/50")[1])
            return any(r["id"] == zombie.node_id and r["status"] == "dead" for r in rows)
        wait_until(zombie_dead, timeout_s=30, interval_s=0.3, message="the registry judging the zombie dead")
        assert first.poll() is None, "the zombie still serves its publisher until someone else owns the stream"
        second = ffmpeg_publish(other.rtmp_url("zed"), 300, tone=880)
        begun = other.wait_for_line(r"stream LiveApp/zed live on \S+ \(epoch 2, from segment (\d+)")
        before = int(begun.group(1)) - 1  # the new owner starts above the zombie's reservation
        # the zombie learns it from its peers and drops its publisher, saying why
        zombie.wait_for_line(r"taken over by \S+ \(epoch 2\) while this origin was cut off", timeout_s=30)
        assert first.wait(30) != 0
        # the reason goes to the publisher in an error onStatus before the connection closes
        zombie.wait_for_line(r"\(LiveApp/zed\): stream zed was taken over .* cut off from the cluster "
                             r"registry; stopping it here; closing the connection")
        # the edge follows epoch 2 only
        edge.wait_for_line(r"moved to \S+ \(epoch 2\)", timeout_s=30)
        new = viewer.wait_for_new(before, timeout_s=30)
        viewer.wait_for_new(new)
        # what the edge lists now is the new owner's: a cold edge (from its snapshot) agrees byte for byte
        status, body, _ = fetch(f"{cold.http}/LiveApp/streams/zed.m3u8")
        assert status == 200, body
        names = re.findall(r"zed\d{9}\.ts", body.decode())
        viewer.poll()
        shared = [n for n in names if n in viewer.hashes]
        assert shared, (names, viewer.numbers())
        for name in shared:
            data = fetch(f"{cold.http}/LiveApp/streams/{name}")[1]
            assert hashlib.sha256(data).hexdigest() == viewer.hashes[name], name
    finally:
        first.kill()
        if second is not None:
            second.kill()
        viewer.stop()
        proxy.close()
    assert monotonic(viewer.media_sequences)
    assert viewer.disc_sequences[-1] - viewer.disc_sequences[0] == 1
    assert all(n < before + 1 or n >= int(begun.group(1)) for n in viewer.numbers())
