"""The HTTP fast path (mesh.http.fastpath): its pure request-head parser, and a real server on 127.0.0.1
checked with raw sockets against aiohttp answering the same URLs: identical responses, pipelining,
hand-over to aiohttp, Connection: close, slow readers, shutdown.
"""
from __future__ import annotations

import asyncio
import os
import re
import socket
from typing import Awaitable, Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.http.app import HttpError, HttpServer, Reply, SimpleGet, make_app, parse_simple_get

# -- the parser ------------------------------------------------------------------------------

ACCEPTED = [
    (b"GET / HTTP/1.1\r\nHost: a", SimpleGet("/", False)),
    (b"GET /LiveApp/streams/cam1.m3u8 HTTP/1.1\r\nHost: a:1", SimpleGet("/LiveApp/streams/cam1.m3u8", False)),
    (b"GET /a/b_c-d.ts HTTP/1.1\r\nHost: x\r\nUser-Agent: hls.js (1.5)\r\nAccept: */*",
     SimpleGet("/a/b_c-d.ts", False)),
    (b"GET /x HTTP/1.1\r\nConnection: close\r\nhost: h", SimpleGet("/x", True)),
    (b"GET /x HTTP/1.1\r\nHOST:h\r\nconnection:Keep-Alive, CLOSE", SimpleGet("/x", True)),
    (b"GET /x HTTP/1.1\r\nHost: h\r\nConnection: keep-alive", SimpleGet("/x", False)),
    (b"GET /x HTTP/1.1\r\nHost: h\r\nX-Empty:\r\nX-Tab:\tv\t", SimpleGet("/x", False)),
    (b"GET /x HTTP/1.1\r\nHost: h\r\nX-Obs: caf\xc3\xa9", SimpleGet("/x", False)),  # obs-text is allowed
    # only the real field counts
    (b"GET /x HTTP/1.1\r\nHost: h\r\nX-Content-Length: 5", SimpleGet("/x", False)),
    (b"GET /x HTTP/1.1\r\nHost: h\r\nAccept: a\r\nAccept: b", SimpleGet("/x", False)),  # may repeat
    # plain queries (LL-HLS blocking requests): letters, digits and "_" only
    (b"GET /a/cam1_ll.m3u8?_HLS_msn=12&_HLS_part=3 HTTP/1.1\r\nHost: h",
     SimpleGet("/a/cam1_ll.m3u8", False, "_HLS_msn=12&_HLS_part=3")),
    (b"GET /x?y=1 HTTP/1.1\r\nHost: h\r\nConnection: close", SimpleGet("/x", True, "y=1")),
]

REJECTED = [
    b"", b"GET", b"HEAD /x HTTP/1.1", b"POST /x HTTP/1.1", b"get /x HTTP/1.1", b"GET /x HTTP/1.0",
    b"GET /x HTTP/2", b"GET x HTTP/1.1", b"GET  /x HTTP/1.1", b"GET /x  HTTP/1.1",
    b"GET /x?y=1 HTTP/1.1", b"GET /x%2e HTTP/1.1", b"GET /x?y=%31 HTTP/1.1\r\nHost: h",
    b"GET /x?y=1+2 HTTP/1.1\r\nHost: h", b"GET /x?y= HTTP/1.1\r\nHost: h", b"GET /x?y HTTP/1.1\r\nHost: h",
    b"GET /x?y=1&&z=2 HTTP/1.1\r\nHost: h", b"GET /x?y=1; HTTP/1.1\r\nHost: h", b"GET /x? HTTP/1.1\r\nHost: h",
    b"GET /x?y=1&z=2& HTTP/1.1\r\nHost: h", b"GET /x?y.z=1 HTTP/1.1\r\nHost: h", b"GET /x#f HTTP/1.1", b"GET /x~ HTTP/1.1",
    b"GET http://h/x HTTP/1.1", b"GET /x HTTP/1.1\r\n", b"GET /x HTTP/1.1\r\nNoColon",
    b"GET /x HTTP/1.1\r\nBad Name: v", b"GET /x HTTP/1.1\r\nName : v", b"GET /x HTTP/1.1\r\n: v",
    b"GET /x HTTP/1.1\r\nA: b\r\n folded", b"GET /x HTTP/1.1\r\nA: b\nC: d", b"GET /x HTTP/1.1\r\nA: b\rC",
    b"GET /x HTTP/1.1\r\nA: nul\x00", b"GET /x HTTP/1.1\r\nA: del\x7f", b"GET /x\r\nA: b",
    b"GET /x HTTP/1.1\r\nContent-Length: 0", b"GET /x HTTP/1.1\r\ntransfer-encoding: chunked",
    b"GET /x HTTP/1.1\r\nExpect: 100-continue", b"GET /x HTTP/1.1\r\nUpgrade: websocket",
    b"GET /x HTTP/1.1\r\nConnection: Upgrade", b"GET /x HTTP/1.1\r\nConnection: close\r\nconnection: upgrade",
    b"GET /x HTTP/1.1" + b"\r\nA: b" * 129,
    # aiohttp answers these 400: no Host, or a field that may appear once appears twice
    b"GET /x HTTP/1.1", b"GET /x HTTP/1.1\r\nA: b", b"GET /x HTTP/1.1\r\nHost: a\r\nhost: b",
    b"GET /x HTTP/1.1\r\nHost: a\r\nUser-Agent: u\r\nUser-Agent: v",
    b"GET /x HTTP/1.1\r\nHost: a\r\nContent-Type: a\r\ncontent-type: a",
]


@pytest.mark.parametrize("head,expected", ACCEPTED)
def test_plain_gets_are_recognised(head: bytes, expected: SimpleGet) -> None:
    assert parse_simple_get(head) == expected


@pytest.mark.parametrize("head", REJECTED)
def test_anything_else_is_left_to_aiohttp(head: bytes) -> None:
    assert parse_simple_get(head) is None


def test_128_fields_are_still_plain() -> None:
    assert parse_simple_get(b"GET /x HTTP/1.1\r\nHost: h" + b"\r\nA: b" * 127) == SimpleGet("/x", False)


TOKEN = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_!#$%&'*+.^`|~",
                min_size=1, max_size=20)
VALUE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40).map(str.strip)
PATH = st.text("abcdefghijklmnopqrstuvwxyz0123456789_.-/", max_size=40).map(lambda p: "/" + p)


@settings(max_examples=300, deadline=None)
@given(PATH, st.lists(st.tuples(TOKEN, VALUE), max_size=12))
def test_round_trip_of_generated_heads(path: str, fields: list[tuple[str, str]]) -> None:
    fields = [("Host", "h"), *fields]
    head = "\r\n".join([f"GET {path} HTTP/1.1", *(f"{n}: {v}" for n, v in fields)]).encode()
    names = [n.lower() for n, _ in fields]
    tokens = {t.strip().lower() for n, v in fields if n.lower() == "connection" for t in v.split(",")}
    expected: SimpleGet | None = SimpleGet(path, "close" in tokens)
    if set(names) & {"content-length", "transfer-encoding", "expect", "upgrade"} or "upgrade" in tokens:
        expected = None
    if any(names.count(n) > 1 for n in ("host", "user-agent", "content-type", "server", "etag",
                                         "content-location", "content-range", "max-forwards")):
        expected = None
    assert parse_simple_get(head) == expected


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.binary(max_size=300),
                 st.sampled_from([h for h, _ in ACCEPTED]).flatmap(
                     lambda h: st.tuples(st.integers(0, len(h)), st.binary(min_size=1, max_size=4)).map(
                         lambda cut: h[:cut[0]] + cut[1] + h[cut[0]:]))))
def test_fuzzed_heads_never_raise_and_only_plain_paths_pass(head: bytes) -> None:
    parsed = parse_simple_get(head)
    if parsed is not None:
        assert head.startswith(b"GET /") and re.fullmatch(r"/[A-Za-z0-9_./-]*", parsed.target)
        assert parsed.query == "" or re.fullmatch(r"\w+=[A-Za-z0-9]+(&\w+=[A-Za-z0-9]+)*", parsed.query, re.A)
        assert b"\n" not in head.replace(b"\r\n", b"")


# -- a real server -----------------------------------------------------------------------------

SEGMENT = os.urandom(700_000)  # bigger than the socket buffers, so sendfile runs out of room
PLAYLIST = b"#EXTM3U\n#EXT-X-VERSION:3\n"


class Site:
    """An aiohttp app with the node's middleware, a handler and the same URLs on the fast path."""

    def __init__(self) -> None:
        self.segment = Reply(SEGMENT, "video/mp2t", "public, max-age=86400, immutable", file=True)
        self.playlist = Reply(PLAYLIST, "application/vnd.apple.mpegurl; charset=utf-8", "max-age=1")
        self.fast_hits: list[str] = []
        self.fail_fast = False
        self.app = make_app()
        self.app.router.add_get("/app/streams/{name}", self.handle)
        self.server = HttpServer(self.app, "127.0.0.1", 0)
        self.server.add_fast_get("/app/streams/", self.fast)

    def reply(self, name: str) -> Reply | None:
        return {"seg000000001.ts": self.segment, "cam.m3u8": self.playlist}.get(name)

    def fast(self, name: str, remote: str) -> Reply | None:
        assert remote == "127.0.0.1"
        if self.fail_fast:
            raise RuntimeError("a bug in a fast route")
        reply = self.reply(name)
        if reply is not None:
            self.fast_hits.append(name)
        return reply

    async def handle(self, request):  # type: ignore[no-untyped-def]
        reply = self.reply(request.match_info["name"])
        if reply is None:
            raise HttpError(404, "no such thing", "notfound")
        return reply.response()


def served(test: Callable[[Site, int], Awaitable[None]]) -> None:
    async def main() -> None:
        site = Site()
        await site.server.start()
        try:
            await asyncio.wait_for(test(site, site.server.port), 30)
        finally:
            await site.server.stop()
            site.segment.close()
    asyncio.run(main())


async def read_response(reader: asyncio.StreamReader,
                        method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip()] = value.strip()
    length = int(headers.get("Content-Length", "0"))
    body = await reader.readexactly(length) if method != "HEAD" else b""
    return status, headers, body


def get(path: str, *extra: str) -> bytes:
    return "\r\n".join([f"GET {path} HTTP/1.1", "Host: test", *extra, "", ""]).encode()


def test_fast_answers_equal_aiohttps_answers_for_the_same_url() -> None:
    async def check(site: Site, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for name in ("seg000000001.ts", "cam.m3u8"):
            writer.write(get(f"/app/streams/{name}"))
            fast = await read_response(reader)
            writer.write(get(f"/app/streams/{name}?via=aiohttp"))  # a query: aiohttp answers
            slow = await read_response(reader)
            assert fast[0] == slow[0] == 200
            assert fast[2] == slow[2] == (SEGMENT if name.endswith(".ts") else PLAYLIST)
            assert "Date" in fast[1] and "Date" in slow[1]
            assert {k: v for k, v in fast[1].items() if k != "Date"} == \
                {k: v for k, v in slow[1].items() if k != "Date"}
        # the first playlist came by the fast path, then the connection was aiohttp's
        assert site.fast_hits == ["seg000000001.ts"]
        writer.close()
    served(check)


def test_pipelined_requests_are_answered_in_order_across_the_hand_over() -> None:
    async def check(site: Site, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(get("/app/streams/seg000000001.ts") + get("/app/streams/cam.m3u8")
                     + get("/app/streams/nope.m3u8") + get("/app/streams/cam.m3u8"))
        answers = [await read_response(reader) for _ in range(4)]
        assert [a[0] for a in answers] == [200, 200, 404, 200]
        assert answers[0][2] == SEGMENT and answers[1][2] == answers[3][2] == PLAYLIST
        assert answers[2][2] == b'{"error": "no such thing"}'
        assert answers[2][1]["Access-Control-Allow-Origin"] == "*"
        assert site.fast_hits == ["seg000000001.ts", "cam.m3u8"]  # the 4th was aiohttp's
        writer.close()
    served(check)


def test_a_request_split_across_reads_is_still_served_fast() -> None:
    async def check(site: Site, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        request = get("/app/streams/cam.m3u8")
        for i in range(0, len(request), 7):
            writer.write(request[i:i + 7])
            await writer.drain()
            await asyncio.sleep(0.01)
        assert (await read_response(reader))[2] == PLAYLIST
        assert site.fast_hits == ["cam.m3u8"]
        writer.close()
    served(check)


def test_connection_close_is_honoured() -> None:
    async def check(site: Site, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(get("/app/streams/seg000000001.ts", "Connection: close"))
        status, headers, body = await read_response(reader)
        assert (status, headers["Connection"], body) == (200, "close", SEGMENT)
        assert await reader.read() == b""  # the server closed
        assert site.fast_hits == ["seg000000001.ts"]
    served(check)


def test_other_methods_and_malformed_requests_get_aiohttps_answers() -> None:
    async def check(site: Site, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"HEAD /app/streams/cam.m3u8 HTTP/1.1\r\nHost: t\r\n\r\n")
        status, headers, _ = await read_response(reader, "HEAD")
        assert status == 200 and headers["Content-Length"] == str(len(PLAYLIST))
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /app/streams/cam.m3u8 HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
        status, headers, body = await read_response(reader)
        assert status == 405 and b"not allowed" in body
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /app/streams/cam.m3u8 HTTP/1.1\r\nBad Header\r\n\r\n")
        status, _, _ = await read_response(reader)
        assert status == 400
        writer.close()
        assert site.fast_hits == []
    served(check)


def test_a_failing_fast_route_leaves_the_request_to_aiohttp() -> None:
    async def check(site: Site, port: int) -> None:
        site.fail_fast = True
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(get("/app/streams/cam.m3u8"))
        assert (await read_response(reader))[:3:2] == (200, PLAYLIST)
        writer.close()
    served(check)


def test_a_slow_reader_gets_every_byte_in_order() -> None:
    """Many pipelined segments to a client that does not read at first: sendfile runs out of
    socket buffer, the rest queues in the transport, writing pauses reading; nothing is lost."""
    async def check(site: Site, port: int) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        sock.setblocking(False)
        reader, writer = await asyncio.open_connection(sock=sock)
        writer.write((get("/app/streams/seg000000001.ts") + get("/app/streams/cam.m3u8")) * 6)
        await asyncio.sleep(0.5)
        for _ in range(6):
            assert (await read_response(reader))[2] == SEGMENT
            assert (await read_response(reader))[2] == PLAYLIST
        assert len(site.fast_hits) == 12
        writer.close()
    served(check)


def test_stop_closes_connections_the_fast_path_holds() -> None:
    async def main() -> None:
        site = Site()
        await site.server.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", site.server.port)
        writer.write(get("/app/streams/cam.m3u8"))
        assert (await read_response(reader))[2] == PLAYLIST
        await asyncio.wait_for(site.server.stop(), 5)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        site.segment.close()
        assert site.segment.fd == -1
    asyncio.run(main())


class QueuedTransport(asyncio.Transport):
    """A transport that still has bytes queued: whatever the fast path sends must queue behind."""

    def __init__(self, sock: socket.socket):
        super().__init__()
        self.sock, self.written = sock, bytearray()

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"socket": self.sock, "peername": ("127.0.0.1", 1)}.get(name, default)

    def get_write_buffer_size(self) -> int:
        return 1

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return False


def test_nothing_overtakes_bytes_the_transport_still_queues() -> None:
    from mesh.http.fastpath import FastConnection

    async def main() -> None:
        site = Site()
        ours, peer = socket.socketpair()
        peer.setblocking(False)
        conn = FastConnection(site.server, "127.0.0.1")
        transport = QueuedTransport(ours)
        conn.connection_made(transport)
        conn.data_received(get("/app/streams/seg000000001.ts"))
        with pytest.raises(BlockingIOError):
            peer.recv(1)  # nothing went straight to the socket...
        assert transport.written.startswith(b"HTTP/1.1 200 OK\r\n")  # ...it queued, in order
        assert transport.written.endswith(b"\r\n\r\n" + SEGMENT)
        conn.connection_lost(None)
        ours.close(), peer.close(), site.segment.close()
    asyncio.run(main())


def test_remembered_heads_read_as_parsed_and_stay_bounded() -> None:
    from mesh.http import fastpath

    for head in [h for h, _ in ACCEPTED] + REJECTED + [b"GET /x HTTP/1.1\r\nHost: h\r\nA: " + b"b" * 600]:
        assert fastpath.parse_head(head) == parse_simple_get(head) == fastpath.parse_head(head)
    for n in range(fastpath.HEADS_KEPT + 10):
        assert fastpath.parse_head(b"GET /x%d HTTP/1.1\r\nHost: h" % n) == SimpleGet(f"/x{n}", False)
        assert len(fastpath._heads) <= fastpath.HEADS_KEPT
