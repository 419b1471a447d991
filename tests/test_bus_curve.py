"""Bus security: node key files, and CURVE + ZAP on real sockets (127.0.0.1, OS-assigned ports).

The origin's XPUB and snapshot ROUTER admit only keys the provider lists (in a node: the
registry's alive nodes); an outsider's SUB or DEALER, with no key or a key not listed, gets nothing
while an admitted subscriber is served.
"""
from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import msgpack
import pytest
import zmq
import zmq.asyncio

from mesh.broker import keys as bus_keys
from mesh.broker import wire
from mesh.broker.publisher import BusPublisher
from mesh.broker.subscriber import BusSecurityError, BusSubscriber
from mesh.broker.wire import EOS
from mesh.broker.zap import KeyGate
from mesh.metrics import bad_input_count

from .busclient import Collector
from .test_bus import publish_segment


# -- key files ---------------------------------------------------------------------------------
def test_key_pair_is_made_once_with_mode_0600_and_reloaded(tmp_path: Path) -> None:
    path = bus_keys.key_path(tmp_path / "state", "origin-1")
    first = bus_keys.load_or_create(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert bus_keys.is_z85_key(first.public) and bus_keys.is_z85_key(first.secret)
    assert zmq.curve_public(first.secret) == first.public
    again = bus_keys.load_or_create(path)
    assert again == first
    assert first.secret.decode() not in repr(first)


def test_loose_key_file_is_tightened_and_damaged_one_refused(tmp_path: Path) -> None:
    path = tmp_path / "bus-n.key"
    pair = bus_keys.load_or_create(path)
    os.chmod(path, 0o644)
    assert bus_keys.load_or_create(path) == pair
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    other = bus_keys.generate()
    path.write_text(f"public = {other.public.decode()}\nsecret = {pair.secret.decode()}\n")
    with pytest.raises(bus_keys.KeyFileError, match="does not belong"):
        bus_keys.load_or_create(path)
    path.write_text("public = short\n")
    with pytest.raises(bus_keys.KeyFileError, match="damaged.*delete it"):
        bus_keys.load_or_create(path)


def test_none_mode_has_no_keys_and_says_so_loudly(tmp_path: Path, caplog) -> None:
    with caplog.at_level("WARNING", logger="mesh.bus"):
        assert bus_keys.node_keys("none", tmp_path, "n1") is None
    assert any(r.levelname == "WARNING" and "BUS SECURITY IS OFF" in r.getMessage() for r in caplog.records)
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="bus_security"):
        bus_keys.node_keys("tls", tmp_path, "n1")


def test_key_gate_refreshes_on_a_miss_at_most_so_often() -> None:
    own = bus_keys.generate().public
    gate = KeyGate([own], refresh_interval_s=1.0, miss_refresh_s=0.25)
    assert gate.allows(own) and gate.due(0.0)
    edge = bus_keys.generate().public
    gate.update([edge.decode(), "not-a-key", b"x" * 40 + b"\x00"], now=10.0)
    assert gate.allows(edge) and gate.allows(own) and len(gate.keys) == 2
    assert not gate.due_on_miss(10.1) and gate.due_on_miss(10.25)
    assert not gate.due(10.9) and gate.due(11.0)
    gate.update([], now=11.0)
    assert not gate.allows(edge) and gate.allows(own)


# -- sockets -----------------------------------------------------------------------------------
class Allowed:
    """A key provider the test controls (a node gives the registry's alive_bus_keys)."""

    def __init__(self, *keys: bytes):
        self.keys = set(keys)
        self.calls = 0

    async def __call__(self) -> set[bytes]:
        self.calls += 1
        return set(self.keys)


async def _outsider_sub(ctx: zmq.asyncio.Context, endpoint: str, key: bus_keys.KeyPair | None,
                        server: bytes) -> zmq.Socket:
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    if key is not None:
        sock.curve_secretkey, sock.curve_publickey, sock.curve_serverkey = key.secret, key.public, server
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(endpoint)
    return sock


async def _outsider_dealer(ctx: zmq.asyncio.Context, endpoint: str, key: bus_keys.KeyPair | None,
                           server: bytes, topic: bytes) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if key is not None:
        sock.curve_secretkey, sock.curve_publickey, sock.curve_serverkey = key.secret, key.public, server
    sock.connect(endpoint)
    for _ in range(3):
        await sock.send_multipart([b"", msgpack.packb({"v": wire.VERSION, "t": topic})])
    return sock


def _drain(sock: zmq.Socket) -> int:
    got = 0
    sock = zmq.Socket.shadow(sock.underlying)  # the blocking API: recv raises Again when empty
    while True:
        try:
            sock.recv_multipart(zmq.NOBLOCK)
            got += 1
        except zmq.Again:
            return got


def test_admitted_edge_plays_while_outsiders_get_nothing() -> None:
    async def go() -> None:
        ctx = zmq.asyncio.Context()
        origin, edge, stranger = bus_keys.generate(), bus_keys.generate(), bus_keys.generate()
        pub = BusPublisher(ctx, window_segments=3, curve=origin, allowed_keys=Allowed(edge.public))
        await pub.start()
        ch = pub.open_channel("cam1", "src", epoch=1)
        ch.config({"video": {"width": 640}})
        for seg in range(4):
            publish_segment(ch, seg)
        pub.flush()
        refused_before = bad_input_count("bus", "auth")
        topic = wire.topic_for("cam1")
        outsiders = [
            await _outsider_sub(ctx, pub.endpoint, None, origin.public),  # plaintext
            await _outsider_sub(ctx, pub.endpoint, stranger, origin.public),  # a key nobody listed
            await _outsider_dealer(ctx, pub.snapshot_endpoint, None, origin.public, topic),
            await _outsider_dealer(ctx, pub.snapshot_endpoint, stranger, origin.public, topic),
        ]
        sub = BusSubscriber(ctx, curve=edge)
        got = Collector()
        s = sub.subscribe(pub.endpoint, pub.snapshot_endpoint, "cam1", "src", got, origin.public)
        await asyncio.wait_for(s.snapshot_ready.wait(), 10)
        for seg in range(4, 8):
            publish_segment(ch, seg)
            await asyncio.sleep(0.01)
        ch.eos()
        await got.until(lambda c: any(getattr(d, "kind", None) == EOS for d in c.items))
        assert [e.seg for e in got.media() if e.seg_start] == [0, 1, 2, 3, 4, 5, 6, 7]
        # The stranger's CURVE handshakes reached the ZAP handler and were refused; the
        # plaintext ones never got that far. Nobody outside received a single frame.
        assert bad_input_count("bus", "auth") - refused_before >= 2
        assert pub.gate is not None and pub.gate.refused >= 2 and pub.gate.admitted >= 2
        assert [_drain(o) for o in outsiders] == [0, 0, 0, 0]
        for o in outsiders:
            o.close(linger=0)
        await sub.stop()
        await pub.stop()
        ctx.term()

    asyncio.run(go())


def test_a_node_registered_after_the_origin_looked_gets_in() -> None:
    """The edge's key is not admitted at its first handshake; once the provider lists it, the
    edge is let in (the gate asks again on a miss; the subscriber connects again if refused)."""
    async def go() -> None:
        ctx = zmq.asyncio.Context()
        origin, edge = bus_keys.generate(), bus_keys.generate()
        allowed = Allowed()
        pub = BusPublisher(ctx, curve=origin, allowed_keys=allowed)
        await pub.start()
        ch = pub.open_channel("cam2", "src", epoch=1)
        publish_segment(ch, 0)
        pub.flush()
        sub = BusSubscriber(ctx, curve=edge)
        got = Collector()
        s = sub.subscribe(pub.endpoint, pub.snapshot_endpoint, "cam2", "src", got, origin.public.decode())
        link = s.link
        await _until(lambda: link.auth_refusals >= 1)
        allowed.keys.add(edge.public)  # the registry now lists the edge as alive
        await asyncio.wait_for(s.snapshot_ready.wait(), 15)
        publish_segment(ch, 1)
        await got.until(lambda c: any(e.seg == 1 for e in c.media()))
        assert [e.seg for e in got.media() if e.seg_start] == [0, 1]
        await sub.stop()
        await pub.stop()
        ctx.term()

    asyncio.run(go())


def test_curve_edge_refuses_an_origin_without_a_key() -> None:
    async def go() -> None:
        ctx = zmq.asyncio.Context()
        sub = BusSubscriber(ctx, curve=bus_keys.generate())
        with pytest.raises(BusSecurityError, match="bus_security"):
            sub.subscribe("tcp://127.0.0.1:1", "tcp://127.0.0.1:2", "cam1", "src", Collector(), None)
        with pytest.raises(BusSecurityError, match="Z85"):
            sub.subscribe("tcp://127.0.0.1:1", "tcp://127.0.0.1:2", "cam1", "src", Collector(), "abc")
        assert not sub.links
        await sub.stop()
        ctx.term()

    asyncio.run(go())


async def _until(predicate, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.02)
