"""What a stranger's RTMP bytes may cost (issue 11): the amplification attack as a regression
test, the setup/publishing memory caps, the per-IP and per-node connection caps and the
handshake/idle timeouts.

Three tiers: the sans-IO session fed bytes; an in-process RtmpServer on an OS port with raw
asyncio clients (source addresses 127.0.x.y, all loopback on Linux, stand in for many hosts);
and a real standalone node process whose RSS (/proc) is measured around 200 attack
connections while two ffmpeg publishers keep publishing and their HLS plays.
"""
from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from mesh.config import ConfigError, load_config
from mesh.ingest.rtmp_server import RtmpServer, server_limits
from mesh.metrics import bad_input_count
from mesh.protocols.rtmp import NEED_DATA, PAUSED, RemoteProtocolError, ServerSession, State
from mesh.protocols.rtmp.chunk import basic_header
from mesh.protocols.rtmp.handshake import client_c0c1, client_c2
from mesh_codecs import flv
from tests.media import ffmpeg_publish, ffprobe_streams
from tests.procs import start_node, wait_until
from tests.test_rtmp_server import RecordingHandler, python_publish, run, started_server
from tests.test_rtmp_session import Publisher, drain, handshaken, publishing_session

needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="Debian ffmpeg not installed")
MB = 1 << 20


def fmt0(csid: int, length: int, type_id: int = 9, sid: int = 1) -> bytes:
    return (basic_header(0, csid) + bytes(3) + length.to_bytes(3, "big") + bytes([type_id])
            + sid.to_bytes(4, "little"))


def amplification() -> bytes:
    """The issue-11 attack after the handshake: two fmt-0 headers announcing 8 MB messages,
    128 payload bytes each (~280 bytes that used to cost the origin 16 MB)."""
    return fmt0(6, 8 * MB) + b"A" * 128 + fmt0(4, 8 * MB) + b"B" * 128


def partial(csid: int, declared: int, sent: int) -> bytes:
    """The first ``sent`` payload bytes of a ``declared``-byte message at chunk size 128 (whole
    chunks: ``sent`` is a multiple of 128)."""
    assert sent % 128 == 0
    out = bytearray(fmt0(csid, declared) + b"p" * min(128, sent))
    for off in range(128, sent, 128):
        out += basic_header(3, csid) + b"p" * min(128, sent - off)
    return bytes(out)


# ------------------------------------------------------------------ config


@pytest.mark.parametrize("overrides, field", [
    ({"rtmp_max_connections": 0}, "rtmp_max_connections"),
    ({"rtmp_max_connections_per_ip": 0}, "rtmp_max_connections_per_ip"),
    ({"rtmp_max_connections": 10, "rtmp_max_connections_per_ip": 11}, "rtmp_max_connections_per_ip"),
    ({"rtmp_handshake_timeout_s": 0}, "rtmp_handshake_timeout_s"),
    ({"rtmp_idle_timeout_s": -1}, "rtmp_idle_timeout_s"),
    ({"rtmp_max_setup_bytes": 100}, "rtmp_max_setup_bytes"),
    ({"rtmp_max_setup_bytes": 9 << 20}, "rtmp_max_setup_bytes"),  # more than rtmp_max_message_bytes
])
def test_limit_fields_are_validated_by_name(overrides: dict, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, env={}, **overrides)
    assert f"'{field}'" in str(err.value)


def test_the_origin_passes_the_limit_fields_to_its_rtmp_server() -> None:
    cfg = load_config(None, env={"MESH_RTMP_MAX_CONNECTIONS_PER_IP": "5", "MESH_RTMP_IDLE_TIMEOUT_S": "7.5"},
                      rtmp_max_setup_bytes=8192)
    server = RtmpServer(RecordingHandler(), host="127.0.0.1", port=0, **server_limits(cfg))
    assert (server.max_connections, server.max_connections_per_ip, server.handshake_timeout_s,
            server.idle_timeout_s, server.max_setup_bytes, server.max_message_size) == (1000, 5, 10.0, 7.5, 8192,
                                                                                      8 << 20)


# ------------------------------------------------------------------ the sans-IO session


def test_attack_before_connect_is_refused_at_the_first_header() -> None:
    s = ServerSession()
    handshaken(s, Publisher())
    s.receive_data(amplification())
    with pytest.raises(RemoteProtocolError,
                       match="8388608 bytes .* 65536-byte limit for a connection that is not publishing") as info:
        s.next_event()
    assert info.value.reason == "oversize" and s.must_close


def test_a_declared_8_mb_message_holds_only_what_arrived() -> None:
    s, _ = publishing_session(Publisher(128), max_message_size=8 * MB)  # chunk size 128, as the attack
    s.receive_data(fmt0(6, 8 * MB) + b"A" * 128)
    assert s.next_event() is NEED_DATA
    assert s.held_bytes == 128
    s.receive_data(b"".join(basic_header(3, 6) + b"A" * 128 for _ in range(99)))
    assert s.next_event() is NEED_DATA and s.held_bytes == 100 * 128


def test_setup_cap_counts_partial_messages_across_chunk_streams() -> None:
    s = ServerSession(max_setup_bytes=64 << 10)
    handshaken(s, Publisher())
    s.receive_data(partial(6, 40_000, 29_952) + partial(4, 40_000, 29_952))  # 59,904 held: allowed
    assert s.next_event() is NEED_DATA and s.held_bytes == 59_904
    s.receive_data(partial(8, 40_000, 6_016))
    with pytest.raises(RemoteProtocolError, match="65920 bytes buffered .* 65536-byte limit") as info:
        s.next_event()
    assert info.value.reason == "oversize"


def test_input_pipelined_behind_publish_is_capped_while_the_decision_is_pending() -> None:
    pub = Publisher(4096)
    s = ServerSession(max_setup_bytes=16 << 10)
    handshaken(s, pub)
    s.receive_data(pub.connect() + pub.setup() + pub.video(0, bytes(8000)))
    drain(s, accept=False)
    assert s.next_event() is PAUSED  # 8 KB of early media may wait for the answer ...
    s.receive_data(pub.video(33, bytes(10_000)))
    with pytest.raises(RemoteProtocolError, match="over the 16384-byte limit") as info:
        s.next_event()  # ... 18 KB may not
    assert info.value.reason == "oversize"


def test_publishing_raises_the_cap_to_one_message_and_unpublish_lowers_it() -> None:
    s, pub = publishing_session(max_message_size=1 * MB, max_setup_bytes=16 << 10)
    frame = flv.video_tag(True, flv.AVC_NALU, 0, bytes(900_000))
    s.receive_data(pub.video(0, frame))
    assert [type(e).__name__ for e in drain(s)] == ["VideoMessage"]
    s.receive_data(pub.teardown())
    assert [type(e).__name__ for e in drain(s)] == ["Unpublished"] and s.state is State.CONNECTED
    s.receive_data(pub.video(33, frame))
    with pytest.raises(RemoteProtocolError, match="limit for a connection that is not publishing"):
        drain(s)


# ------------------------------------------------------------------ an RtmpServer on 127.0.0.1


async def closed(reader: asyncio.StreamReader, timeout_s: float = 10) -> bytes:
    """Everything the server sent until it closed (EOF or reset); fails if it never closes."""
    got = bytearray()
    async def read_all() -> None:
        try:
            while chunk := await reader.read(65536):
                got.extend(chunk)
        except ConnectionResetError:
            pass
    await asyncio.wait_for(read_all(), timeout_s)
    return bytes(got)


async def connect_from(port: int, ip: str = "127.0.0.1") -> tuple[Any, Any]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(ip, 0))


async def handshake_from(port: int, ip: str = "127.0.0.1") -> tuple[Any, Any]:
    reader, writer = await connect_from(port, ip)
    writer.write(client_c0c1())
    writer.write(client_c2(await reader.readexactly(1 + 2 * 1536)))
    return reader, writer


async def connected_from(port: int, ip: str = "127.0.0.1", before: bytes = b"") -> tuple[Any, Any]:
    """Handshake, ``before``, then connect; returns once the connect's _result arrived (which the
    server sends only after parsing ``before``)."""
    reader, writer = await handshake_from(port, ip)
    writer.write(before + Publisher().connect())
    buf = b""
    while b"NetConnection.Connect.Success" not in buf:
        chunk = await asyncio.wait_for(reader.read(4096), 10)
        assert chunk, "the server closed instead of answering connect"
        buf += chunk
    return reader, writer


def test_amplification_attack_connections_are_refused_and_closed() -> None:
    async def main() -> None:
        server = await started_server(RecordingHandler())
        oversize = bad_input_count("rtmp", "oversize")
        try:
            async def attack(i: int) -> bytes:
                reader, writer = await handshake_from(server.port, f"127.0.2.{i + 1}")
                writer.write(amplification())
                try:
                    return await closed(reader)
                finally:
                    writer.close()
            await asyncio.gather(*(attack(i) for i in range(100)))
            assert bad_input_count("rtmp", "oversize") == oversize + 100
            await wait_for(lambda: server.connection_count == 0)
        finally:
            await server.stop()
    run(main)


async def wait_for(predicate: Any, timeout_s: float = 10) -> None:
    """Poll server-side state that has no event of its own (yields to the loop between checks)."""
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.01)
    await asyncio.wait_for(poll(), timeout_s)


def test_per_ip_and_total_connection_caps() -> None:
    async def main() -> None:
        handler = RecordingHandler()
        server = await started_server(handler, max_connections=3, max_connections_per_ip=2)
        ip_limit, limit = bad_input_count("rtmp", "ip_limit"), bad_input_count("rtmp", "limit")
        try:
            a1 = await handshake_from(server.port, "127.0.0.1")
            a2 = await handshake_from(server.port, "127.0.0.1")
            r3, w3 = await connect_from(server.port, "127.0.0.1")  # a third from the same address
            assert await closed(r3) == b""
            assert bad_input_count("rtmp", "ip_limit") == ip_limit + 1
            assert server.connections_from("127.0.0.1") == 2
            b1 = await handshake_from(server.port, "127.0.0.2")  # another address is welcome ...
            r5, w5 = await connect_from(server.port, "127.0.0.3")  # ... until the node is full
            assert await closed(r5) == b""
            assert bad_input_count("rtmp", "limit") == limit + 1
            assert server.connection_count == 3
            a1[1].close()  # a slot frees up, and the same address may publish again
            await wait_for(lambda: server.connections_from("127.0.0.1") == 1)
            reader, writer = await python_publish(server.port, "cam1", 5)
            await asyncio.wait_for(handler.event("cam1").wait(), 10)
            await asyncio.wait_for(handler.sinks["cam1"].unpublished.wait(), 10)
            assert handler.sinks["cam1"].reasons == ["unpublish"] and len(handler.sinks["cam1"].video) == 6
            for w in (a2[1], w3, b1[1], w5, writer):
                w.close()
            await wait_for(lambda: server.connection_count == 0)
            assert server.connections_from("127.0.0.1") == 0
        finally:
            await server.stop()
    run(main)


def test_silent_connection_is_closed_by_the_handshake_timeout() -> None:
    async def main() -> None:
        server = await started_server(RecordingHandler(), handshake_timeout_s=0.3)
        timeouts = bad_input_count("rtmp", "timeout")
        try:
            reader, writer = await connect_from(server.port)  # says nothing at all
            assert await closed(reader) == b""
            assert bad_input_count("rtmp", "timeout") == timeouts + 1
            writer.close()
        finally:
            await server.stop()
    run(main)


def test_a_connection_that_talks_but_never_publishes_is_closed_by_the_setup_deadline() -> None:
    async def main() -> None:
        server = await started_server(RecordingHandler(), handshake_timeout_s=0.5, idle_timeout_s=30)
        timeouts = bad_input_count("rtmp", "timeout")
        try:
            reader, writer = await connected_from(server.port)
            done = asyncio.create_task(closed(reader))
            pub = Publisher()
            while not done.done():  # keep chatting (pings), so idleness is not what closes it
                writer.write(pub.w.write(2, 4, 0, 0, b"\x00\x06\x00\x00\x00\x01"))
                await asyncio.wait([done], timeout=0.05)
            await done
            assert bad_input_count("rtmp", "timeout") == timeouts + 1
            writer.close()
        finally:
            await server.stop()
    run(main)


def test_idle_timeout_applies_before_the_publish_too() -> None:
    async def main() -> None:
        server = await started_server(RecordingHandler(), handshake_timeout_s=30, idle_timeout_s=0.3)
        timeouts = bad_input_count("rtmp", "timeout")
        try:
            reader, writer = await connected_from(server.port)  # then silence
            await closed(reader)
            assert bad_input_count("rtmp", "timeout") == timeouts + 1
            writer.close()
        finally:
            await server.stop()
    run(main)


def test_an_accepted_publisher_outlives_the_setup_deadline() -> None:
    async def main() -> None:
        handler = RecordingHandler()
        server = await started_server(handler, handshake_timeout_s=0.3, idle_timeout_s=30)
        try:
            reader, writer = await python_publish(server.port, "cam1", 1, close=False)
            await asyncio.wait_for(handler.event("cam1").wait(), 10)
            sink = handler.sinks["cam1"]
            pub = Publisher(4096)  # a fresh writer: its first header is a full fmt 0
            frames = 0
            loop = asyncio.get_running_loop()
            start = loop.time()
            while loop.time() - start < 1.2:  # four times the setup deadline, a frame every 50 ms
                frames += 1
                writer.write(pub.video(frames * 33, flv.video_tag(False, 1, 0, b"\x00\x00\x00\x01\x41")))
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(sink.unpublished.wait(), 0.05)
                assert not sink.unpublished.is_set(), sink.reasons
            writer.write(pub.teardown())
            await asyncio.wait_for(sink.unpublished.wait(), 10)
            assert sink.reasons == ["unpublish"] and len(sink.video) == 2 + frames
            writer.close()
        finally:
            await server.stop()
    run(main)


# ------------------------------------------------------------------ a real node under attack


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def metric(http: str, boundary: str, reason: str) -> float:
    with urllib.request.urlopen(f"{http}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    total = 0.0
    for labels, value in re.findall(r"^mesh_bad_input_total\{([^}]*)\} (\S+)$", text, re.M):
        if f'boundary="{boundary}"' in labels and f'reason="{reason}"' in labels:
            total += float(value)
    return total


def segments(http: str, stream: str) -> list[str]:
    try:
        with urllib.request.urlopen(f"{http}/LiveApp/streams/{stream}.m3u8", timeout=10) as resp:
            return re.findall(rf"{stream}\d{{9}}\.ts", resp.read().decode())
    except OSError:
        return []


#: The written budget (README "Resource budget"): 200 attack connections may grow the node by less.
RSS_BUDGET = 40 * MB


@needs_ffmpeg
@pytest.mark.integration
def test_amplification_attack_against_a_node_stays_within_the_memory_budget(tmp_path: Path, nodes) -> None:
    node = start_node("standalone", tmp_path)  # the default limits
    nodes.append(node)
    port = int(node.rtmp.split(":")[2].split("/")[0])
    early = ffmpeg_publish(node.rtmp_url("early"), 90)  # publishing before, during and after
    late = None
    try:
        wait_until(lambda: len(segments(node.http, "early")) >= 2, timeout_s=60, interval_s=0.3,
                   message="the first stream's playlist")
        early_before = segments(node.http, "early")[-1]
        before = rss_bytes(node.pid)
        oversize0, timeout0 = metric(node.http, "rtmp", "oversize"), metric(node.http, "rtmp", "timeout")

        async def amplify(i: int) -> None:  # the attack: refused at its first header
            reader, writer = await handshake_from(port, f"127.0.3.{i + 1}")
            writer.write(amplification())
            await closed(reader)
            writer.close()

        async def linger(i: int) -> tuple[Any, Any]:  # the most a connection may hold: ~60 KB each
            return await connected_from(port, f"127.0.4.{i + 1}",
                                        partial(6, 40_000, 29_952) + partial(4, 40_000, 29_952))

        async def attack() -> tuple[int, Any]:
            publisher = ffmpeg_publish(node.rtmp_url("late"), 90)  # a legit publisher arrives with the attack
            await asyncio.gather(*(amplify(i) for i in range(100)))
            held = await asyncio.gather(*(linger(i) for i in range(100)))
            await asyncio.to_thread(node.wait_for_line, r"rtmp publish start: LiveApp/late from ", 30)
            assert not any(r.at_eof() for r, _ in held)  # accepted while 100 strangers hold their bytes
            peak = rss_bytes(node.pid)
            await asyncio.gather(*(closed(r, 30) for r, _ in held))  # the 10 s setup deadline ends them
            for _, w in held:
                w.close()
            return peak, publisher

        peak, late = asyncio.run(asyncio.wait_for(attack(), 120))
        after = rss_bytes(node.pid)
        print(f"node RSS: {before / MB:.1f} MB before, {peak / MB:.1f} MB with 100 connections holding "
              f"59,904 bytes each, {after / MB:.1f} MB after (budget: +{RSS_BUDGET / MB:.0f} MB)")
        assert peak - before < RSS_BUDGET, f"RSS grew {(peak - before) / MB:.1f} MB during the attack"
        assert after - before < RSS_BUDGET, f"RSS grew {(after - before) / MB:.1f} MB after the attack"
        assert metric(node.http, "rtmp", "oversize") >= oversize0 + 100
        assert metric(node.http, "rtmp", "timeout") >= timeout0 + 100
        wait_until(lambda: len(segments(node.http, "late")) >= 2, timeout_s=60, interval_s=0.3,
                   message="the stream published during the attack")
        for stream in ("late", "early"):
            streams = ffprobe_streams(f"{node.http}/LiveApp/streams/{stream}.m3u8")
            assert {s["codec_name"] for s in streams} == {"h264", "aac"}, stream
        assert segments(node.http, "early")[-1] > early_before  # the first stream kept flowing
        assert late.poll() is None and early.poll() is None, "a legit publisher was cut off"
        out = node.output()
        assert "Traceback" not in out, out
        loud = re.compile(r" (WARNING|ERROR) +mesh\.(ingest\.rtmp|bad_input)")
        noisy = [line for line in out.splitlines() if loud.search(line)]
        assert noisy == [], noisy  # 200 refusals: counters and debug lines, nothing louder
    finally:
        for proc in (early, late):
            if proc is not None:
                proc.kill()
                proc.wait()
