"""Registry against the embedded server over the real MongoDB wire protocol (pymongo)."""
from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from urllib.parse import urlsplit

import pytest

from mesh import metrics
from mesh.embedded_db import free_port
from mesh.registry import (BROADCASTING, FINISHED, TERMINATED, Fenced, NodeInfo, Registry,
                           RegistryError, StreamBusy)

from .faults_kit import TcpProxy
from .procs import node_env


def run(coro):
    return asyncio.run(coro)


async def open_registry(mongo: str, db_name: str, dead_after: float = 4.0) -> Registry:
    reg = Registry(mongo, db_name, node_dead_after_s=dead_after)
    await reg.connect()
    return reg


def node(node_id: str) -> NodeInfo:
    return NodeInfo(node_id, "origin", "127.0.0.1", bus_endpoint=f"tcp://127.0.0.1:1/{node_id}",
                    snapshot_endpoint=f"tcp://127.0.0.1:2/{node_id}")


def test_claim_race_exactly_one_wins(mongo: str, db_name: str) -> None:
    async def go() -> None:
        # Two independent clients (two connection pools), as two origins would be. Neither
        # heartbeats here: a long dead-node bound keeps both alive on a slow machine.
        a, b = (await open_registry(mongo, db_name, dead_after=120.0),
                await open_registry(mongo, db_name, dead_after=120.0))
        await a.register_node(node("origin-a"))
        await b.register_node(node("origin-b"))
        for i in range(25):
            results = await asyncio.gather(
                a.claim_stream(f"race{i}", "LiveApp", node("origin-a")),
                b.claim_stream(f"race{i}", "LiveApp", node("origin-b")),
                return_exceptions=True)
            wins = [r for r in results if not isinstance(r, BaseException)]
            busy = [r for r in results if isinstance(r, StreamBusy)]
            assert len(wins) == 1 and len(busy) == 1, results
            doc = await a.get_stream(f"race{i}")
            winner = "origin-a" if results[0] is wins[0] else "origin-b"
            assert doc["origin_node"] == winner and doc["epoch"] == 1
            assert busy[0].origin == winner and f"race{i}" in str(busy[0])
        await a.close()
        await b.close()

    run(go())


def test_reclaim_by_owner_and_epoch_increments(mongo: str, db_name: str) -> None:
    async def go() -> None:
        reg = await open_registry(mongo, db_name)
        await reg.register_node(node("o1"))
        first = await reg.claim_stream("cam1", "LiveApp", node("o1"))
        assert (first.epoch, first.media_sequence, first.discontinuity_sequence) == (1, 0, 0)
        await reg.advance_media_sequence("cam1", "o1", 1, 7)
        await reg.set_stream_status("cam1", "o1", 1, FINISHED, next_sequence=8)
        assert (await reg.get_stream("cam1"))["status"] == FINISHED
        again = await reg.claim_stream("cam1", "LiveApp", node("o1"))
        # A new session continues numbering and starts with a discontinuity, never a reset.
        assert (again.epoch, again.media_sequence, again.discontinuity_sequence) == (2, 8, 1)
        with pytest.raises(Fenced):
            await reg.advance_media_sequence("cam1", "o1", 1, 9)  # the old epoch is fenced off
        await reg.close()

    run(go())


def test_takeover_only_after_owner_is_dead(mongo: str, db_name: str) -> None:
    async def go() -> None:
        reg = await open_registry(mongo, db_name, dead_after=2.0)
        await reg.register_node(node("o1"))
        await reg.register_node(node("o2"))
        await reg.claim_stream("cam2", "LiveApp", node("o1"))
        await reg.advance_media_sequence("cam2", "o1", 1, 12)
        with pytest.raises(StreamBusy) as busy:
            await reg.claim_stream("cam2", "LiveApp", node("o2"))
        assert busy.value.origin == "o1" and busy.value.epoch == 1
        # o1 stops heartbeating; o2 keeps going. Wait on the registry's own judgement.
        deadline = time.monotonic() + 10
        while "o1" in await reg.alive_node_ids():
            await reg.heartbeat("o2", {})
            assert time.monotonic() < deadline, "o1 never judged dead"
            await asyncio.sleep(0.2)
        assert (await reg.get_stream("cam2"))["status"] == TERMINATED  # as readers see it
        claim = await reg.claim_stream("cam2", "LiveApp", node("o2"))
        assert claim.takeover and claim.epoch == 2
        # It starts above o1's reservation: o1 may have cut segments it never recorded.
        assert claim.media_sequence == 12 + reg.reserve_segments and claim.discontinuity_sequence == 1
        doc = await reg.get_stream("cam2")
        assert doc["origin_node"] == "o2" and doc["status"] == BROADCASTING
        assert doc["previous_origin"] == "o1"
        with pytest.raises(Fenced):
            await reg.set_stream_status("cam2", "o1", 1, FINISHED)  # the deposed owner cannot write
        await reg.close()

    run(go())


def test_deregistered_node_is_dead_at_once(mongo: str, db_name: str) -> None:
    async def go() -> None:
        reg = await open_registry(mongo, db_name)
        await reg.register_node(node("o9"))
        assert "o9" in await reg.alive_node_ids()
        await reg.deregister("o9")
        views = {v.node_id: v for v in await reg.list_nodes()}
        assert not views["o9"].alive
        await reg.close()

    run(go())


def test_malformed_node_document_is_skipped_and_counted(mongo: str, db_name: str) -> None:
    from mesh.metrics import bad_input_count

    async def go() -> None:
        reg = await open_registry(mongo, db_name)
        await reg.register_node(node("good"))
        await reg.nodes.insert_one({"_id": "bad", "role": 7})
        await reg.streams.insert_one({"_id": "junk", "status": "dancing"})
        before = bad_input_count("db")
        assert [v.node_id for v in await reg.list_nodes()] == ["good"]
        assert await reg.list_streams() == []
        assert await reg.get_stream("junk") is None
        assert bad_input_count("db") == before + 3
        await reg.close()

    run(go())


@pytest.mark.integration
def test_sigkilled_node_is_dead_within_5s(node_factory, mongo: str, db_name: str) -> None:
    proc = node_factory("origin")

    async def judged_dead_after() -> float:
        reg = await open_registry(mongo, db_name)  # one client, opened before the kill
        try:
            assert proc.node_id in await reg.alive_node_ids()
            proc.kill()
            killed_at = time.monotonic()
            while proc.node_id in await reg.alive_node_ids():
                assert time.monotonic() - killed_at < 8, "the killed node is still judged alive"
                await asyncio.sleep(0.1)
            return time.monotonic() - killed_at
        finally:
            await reg.close()

    assert run(judged_dead_after()) <= 5.0


def test_auth_with_user_and_password(auth_mongo) -> None:
    user, password, host, port = auth_mongo

    async def go() -> None:
        reg = await open_registry(f"mongodb://{user}:{password}@{host}:{port}/", "authtest")
        await reg.register_node(node("secure"))
        assert "secure" in await reg.alive_node_ids()
        await reg.close()

    run(go())


def test_wrong_password_is_one_clear_error(auth_mongo) -> None:
    user, _, host, port = auth_mongo
    with pytest.raises(RegistryError) as err:
        run(open_registry(f"mongodb://{user}:wrong@{host}:{port}/", "authtest"))
    message = str(err.value)
    assert "authentication failed" in message and user in message and "wrong" not in message
    # The CLI prints that one line, not a traceback.
    out = subprocess.run([sys.executable, "-m", "mesh", "cluster", "nodes", "--mongo",
                          f"mongodb://{user}:wrong@{host}:{port}/"],
                         capture_output=True, text=True, env=node_env(), timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip().startswith("error: MongoDB at") and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_unreachable_database_is_one_clear_error() -> None:
    port = free_port()
    out = subprocess.run([sys.executable, "-m", "mesh", "streams", "--mongo",
                          f"mongodb://127.0.0.1:{port}/"],
                         capture_output=True, text=True, env=node_env(), timeout=60)
    assert out.returncode == 2
    assert f"cannot reach MongoDB at 127.0.0.1:{port}" in out.stderr
    assert "Traceback" not in out.stderr


def test_bulk_sequence_writes_report_fenced_streams(mongo: str, db_name: str) -> None:
    async def go() -> None:
        reg = await open_registry(mongo, db_name)
        await reg.register_node(node("o1"))
        for sid in ("b1", "b2", "b3"):
            await reg.claim_stream(sid, "LiveApp", node("o1"))
        await reg.set_stream_status("b2", "o1", 1, "finished")
        await reg.claim_stream("b2", "LiveApp", node("o1"))  # epoch 2 now; our epoch-1 write is stale
        fenced = await reg.advance_media_sequences("o1", [
            ("b1", 1, 5, {"renditions": [{"name": "src"}]}), ("b2", 1, 7, {}), ("b3", 1, 9, {})])
        assert fenced == {"b2"}
        assert (await reg.get_stream("b1"))["media_sequence"] == 5
        assert (await reg.get_stream("b1"))["renditions"] == [{"name": "src"}]
        assert (await reg.get_stream("b3"))["media_sequence"] == 9
        # epoch 1 finished without saying how far it got: epoch 2 starts above its reservation
        assert (await reg.get_stream("b2"))["media_sequence"] == reg.reserve_segments
        assert await reg.advance_media_sequences("o1", []) == set()
        await reg.close()

    run(go())


def test_nodes_connecting_at_once_agree_on_the_database_incarnation(mongo: str, db_name: str) -> None:
    """Several nodes starting together upsert the `meta` document at once; each learns the same
    incarnation and none fails to start (the embedded server may answer a losing upsert with
    nothing)."""
    async def go() -> None:
        for round_ in range(5):
            regs = await asyncio.gather(*(open_registry(mongo, f"{db_name}_{round_}") for _ in range(3)))
            try:
                incarnations = {r._incarnation for r in regs}
                assert len(incarnations) == 1 and None not in incarnations, incarnations
            finally:
                for r in regs:
                    await r.close()
    run(go())


def test_a_lost_database_link_is_logged_counted_and_its_return_said(mongo: str, db_name: str, caplog) -> None:
    """Cut the link under a connected registry: one warning and one count when the driver loses
    the server, one line when it answers again; closing the client afterwards is not a loss."""
    db = urlsplit(mongo)
    proxy = TcpProxy(db.port, db.hostname or "127.0.0.1")
    uri = f"mongodb://127.0.0.1:{proxy.port}/?directConnection=true"

    async def until(what: str, predicate, timeout_s: float = 15.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            assert time.monotonic() < deadline, f"no {what} within {timeout_s} s: {caplog.text[-2000:]}"
            await asyncio.sleep(0.05)

    async def go() -> None:
        reg = await open_registry(uri, db_name)
        lost = metrics.REGISTRY_LINK_LOST._value.get()
        proxy.cut()  # the monitor's connection drops: the driver marks the server unknown
        await until("loss", lambda: "lost the database server" in caplog.text)
        assert metrics.REGISTRY_LINK_LOST._value.get() == lost + 1
        proxy.heal()
        assert await reg.get_stream("nothing-here") is None  # a question wakes the driver's check
        await until("return", lambda: "answers again" in caplog.text)
        await reg.close()
        assert caplog.text.count("lost the database server") == 1
        assert metrics.REGISTRY_LINK_LOST._value.get() == lost + 1

    caplog.set_level("INFO", logger="mesh.registry")
    try:
        run(go())
    finally:
        proxy.close()
