"""LL-HLS blocking playlist requests and delta updates on the HTTP fast path.

Pure parts first (the query reader, the parked-request list, delta rendering), then a real
HttpServer with the edge's real HlsRoutes on 127.0.0.1, its LL window fed the real segmenter's
stamps from the test (no origin: the test decides when a part exists), checked with raw sockets:
every answer the fast path gives equals, byte for byte but the Date line, what aiohttp answers to
the same request (forced onto aiohttp by an extra query key it ignores).
"""
from __future__ import annotations

import asyncio
import re
from typing import Awaitable, Callable

import pytest

from mesh.hls.cmaf import LlWindow
from mesh.hls.ll_playlist import render_ll_playlist, simple_query, skippable
from mesh.hls.ll_wait import BlockedRequests
from mesh.hls.routes import HlsRoutes
from mesh.hls.stream import EdgeStream, Rendition
from mesh.hls.streams import EdgeStreams, HlsSettings
from mesh.hls.window import RenditionWindow
from mesh.http.app import HttpServer, make_app

from .test_llhls import check_ll_playlist, feed_all, stamped_entries

# -- pure ------------------------------------------------------------------------------------

SIMPLE = [
    ("_HLS_msn=5", ((5, None), None)),
    ("_HLS_msn=5&_HLS_part=2", ((5, 2), None)),
    ("_HLS_part=2&_HLS_msn=05", ((5, 2), None)),
    ("_HLS_msn=5&_HLS_part=2&_HLS_skip=YES", ((5, 2), "YES")),
    ("_HLS_skip=v2", (None, "v2")),
    ("_HLS_msn=" + "9" * 18, ((10 ** 18 - 1, None), None)),
]
NOT_SIMPLE = ["", "_HLS_part=1", "_HLS_msn=x", "_HLS_msn=1&_HLS_msn=2", "_HLS_msn=1&token=abc",
              "_HLS_skip=NO", "_HLS_skip=yes", "_HLS_msn=" + "9" * 19, "_HLS_msn", "_HLS_msn=١", "a=b",
              "_HLS_msn=1&", "_HLS_msn=-1", "_HLS_msn=+1"]


@pytest.mark.parametrize("query,expected", SIMPLE)
def test_simple_queries_are_read(query: str, expected: object) -> None:
    assert simple_query(query) == expected


@pytest.mark.parametrize("query", NOT_SIMPLE)
def test_anything_else_is_left_to_the_full_handler(query: str) -> None:
    assert simple_query(query) is None


def test_parked_requests_leave_when_reached_expired_or_gone() -> None:
    b = BlockedRequests()
    answers = [object() for _ in range(4)]
    e0 = b.add((5, 2), answers[0], None, 10.0)
    e1 = b.add((5, 2), answers[1], "YES", 10.5)
    e2 = b.add((5, 4), answers[2], None, 11.0)
    e3 = b.add((6, None), answers[3], None, 11.5)
    assert len(b) == 4 and b.next_deadline() == 10.0
    b.discard(e0)  # its client left
    assert len(b) == 3 and b.next_deadline() == 10.5
    assert b.reached((5, 3), 4) == [e1] and len(b) == 2
    assert b.expired(10.9) == [] and b.expired(11.0) == [e2]
    b.discard(e2)  # already gone: nothing changes
    assert len(b) == 1 and b.next_deadline() == 11.5
    assert b.reached((6, 0), 5) == [] and b.reached((7, 0), 6) == [e3]
    assert len(b) == 0 and b.next_deadline() is None


def full_and_delta(seconds: float = 21, window: int = 8) -> tuple[LlWindow, str, str]:
    w = LlWindow("cam1", window=window)
    feed_all(w, stamped_entries(seconds))
    kwargs = dict(target_s=2.0, part_target_s=0.2, ended=False, preload=w.next_part(), can_skip=True)
    return (w, render_ll_playlist("cam1", w.shown(), **kwargs),
            render_ll_playlist("cam1", w.shown(), skip="YES", **kwargs))


def segments_of(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.endswith(".m4s") and not line.startswith("#")]


def test_a_delta_update_skips_old_segments_and_keeps_the_rest_byte_identical() -> None:
    w, full, delta = full_and_delta()
    assert "CAN-SKIP-UNTIL=12.0," in full, "skip boundary: six 2 s target durations"
    check_ll_playlist(full, "cam1")
    skipped = int(re.search(r"^#EXT-X-SKIP:SKIPPED-SEGMENTS=(\d+)$", delta, re.M).group(1))
    assert skipped >= 1 and "RECENTLY-REMOVED-DATERANGES" not in delta
    assert skipped + len(segments_of(delta)) == len(segments_of(full)) == 8
    msn = re.compile(r"^#EXT-X-MEDIA-SEQUENCE:(\d+)$", re.M)
    assert msn.search(delta).group(1) == msn.search(full).group(1)
    head, _, tail = delta.partition(re.search(r"#EXT-X-SKIP:[^\n]*\n", delta).group(0))
    assert full.startswith(head) and full.endswith(tail), "the header and the tail are the full playlist's"
    assert segments_of(full)[skipped:] == segments_of(delta)
    # nothing within the skip boundary (12 s) of the end is skipped
    durations = [float(d) for d in re.findall(r"#EXTINF:([\d.]+),", full)]
    open_s = sum(float(d) for d, u in re.findall(r'#EXT-X-PART:DURATION=([\d.]+),URI="([^"]+)"', full)
                 if f"{w.open.seq:09d}" in u) if w.open is not None else 0.0
    assert sum(durations[skipped - 1:]) + open_s >= 12.0 > sum(durations[skipped:]) + open_s - 2.0
    assert skippable(w.shown(), 12.0) == skipped
    v2 = render_ll_playlist("cam1", w.shown(), target_s=2.0, part_target_s=0.2, ended=False,
                            preload=w.next_part(), can_skip=True, skip="v2")
    assert f'#EXT-X-SKIP:SKIPPED-SEGMENTS={skipped},RECENTLY-REMOVED-DATERANGES=""\n' in v2


def test_no_delta_when_the_playlist_is_too_short_or_skips_are_not_offered() -> None:
    w = LlWindow("cam1", window=5)
    feed_all(w, stamped_entries(15))
    short = dict(target_s=2.0, part_target_s=0.2, ended=False, preload=w.next_part())
    plain = render_ll_playlist("cam1", w.shown(), **short)
    assert "CAN-SKIP-UNTIL" not in plain
    assert render_ll_playlist("cam1", w.shown(), skip="YES", **short) == plain, "not offered: the full playlist"
    # offered, but 5 segments of 2 s (10 s) hold nothing 12 s before the end: the full playlist
    offered = render_ll_playlist("cam1", w.shown(), can_skip=True, **short)
    assert render_ll_playlist("cam1", w.shown(), can_skip=True, skip="YES", **short) == offered


# -- a real HTTP server with the edge's routes -------------------------------------------------

class Edge:
    """HlsRoutes on a real HttpServer, serving one stream whose LL window the test feeds."""

    def __init__(self, block_s: float = 0.0, window: int = 8):
        self.settings = HlsSettings(app="LiveApp", playlist_window=window, ll_block_s=block_s)
        self.streams = EdgeStreams(self.settings, None, None)  # type: ignore[arg-type]
        self.entries = stamped_entries(40)
        self.fed = 0
        self.ll = LlWindow("cam1", window=window)
        self.routes = HlsRoutes(self.streams, "LiveApp")
        self.app = make_app()
        self.server = HttpServer(self.app, "127.0.0.1", 0)
        self.routes.install(self.app, self.server)

    async def start(self) -> None:
        stream = EdgeStream("cam1", None, None, lambda n: RenditionWindow("cam1", lambda *a: b""),  # type: ignore[arg-type]
                            origin_silence_s=5.0)
        stream.renditions["src"] = Rendition("src", RenditionWindow("cam1", lambda *a: b""), self.ll)
        self.streams.streams["cam1"] = stream
        await self.server.start()

    def feed_until(self, done: Callable[[LlWindow], bool]) -> None:
        while not done(self.ll):
            self.ll.feed(self.entries[self.fed:self.fed + 1])
            self.fed += 1

    def url(self, query: str) -> bytes:
        return f"GET /LiveApp/streams/cam1_ll.m3u8{query} HTTP/1.1\r\nHost: t\r\n\r\n".encode()


def run(test: Callable[[Edge], Awaitable[None]], **kwargs: float) -> None:
    async def main() -> None:
        edge = Edge(**kwargs)  # type: ignore[arg-type]
        await edge.start()
        try:
            await asyncio.wait_for(test(edge), 30)
        finally:
            await edge.server.stop()
            edge.routes.close()
    asyncio.run(main())


async def read_answer(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(re.search(rb"\r\nContent-Length: (\d+)\r\n", head).group(1))
    return head + await reader.readexactly(length)


def sans_date(answer: bytes) -> bytes:
    return re.sub(rb"\r\nDate: [^\r]*", b"", answer)


async def until(predicate: Callable[[], bool]) -> None:
    while not predicate():
        await asyncio.sleep(0.005)


async def both(edge: Edge, query: str) -> tuple[asyncio.StreamReader, asyncio.StreamReader, list]:
    """The same request twice: on the fast path, and on aiohttp (an extra key it ignores)."""
    conns = [await asyncio.open_connection("127.0.0.1", edge.server.port) for _ in range(2)]
    conns[0][1].write(edge.url(query))
    conns[1][1].write(edge.url(query + "&via=aiohttp"))
    return conns[0][0], conns[1][0], [w for _, w in conns]


def test_a_parked_request_gets_the_same_bytes_as_aiohttp_once_the_part_exists() -> None:
    async def check(edge: Edge) -> None:
        edge.feed_until(lambda w: w.segments_cut >= 3)
        seq, part = edge.ll.next_part()
        for skip in ("", "&_HLS_skip=YES"):
            fast, slow, writers = await both(edge, f"?_HLS_msn={seq}&_HLS_part={part}{skip}")
            await until(lambda: edge.routes.ll_parked == 1 and edge.routes.ll_waiting == 1)
            assert not fast.at_eof() and len(fast._buffer) == 0, "not answered before the part exists"  # type: ignore[attr-defined]
            edge.feed_until(lambda w: w.last_part() >= (seq, part))
            a, b = await read_answer(fast), await read_answer(slow)
            assert a.startswith(b"HTTP/1.1 200 OK\r\n") and sans_date(a) == sans_date(b)
            body = a.split(b"\r\n\r\n", 1)[1].decode()
            assert f'cam1_ll{seq:09d}.{part}.m4s"' in body.split("PRELOAD-HINT")[0]
            assert edge.routes.ll_parked == 0
            for w in writers:
                w.close()
            seq, part = edge.ll.next_part()
    run(check)


def test_delta_updates_on_both_paths_are_valid_against_the_full_playlist() -> None:
    async def check(edge: Edge) -> None:
        edge.feed_until(lambda w: w.segments_cut >= 10)
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.server.port)
        answers = []
        for query in ("", "?_HLS_skip=YES", "?_HLS_skip=YES&via=aiohttp", "?_HLS_skip=v2", "?_HLS_skip=v2&x=1"):
            writer.write(edge.url(query))
            answers.append((await read_answer(reader)).split(b"\r\n\r\n", 1)[1].decode())
        full, delta = answers[0], answers[1]
        assert answers[2] == delta and answers[4] == answers[3] != delta
        assert "CAN-SKIP-UNTIL=12.0" in full
        skipped = int(re.search(r"#EXT-X-SKIP:SKIPPED-SEGMENTS=(\d+)", delta).group(1))
        assert skipped >= 1 and skipped + len(segments_of(delta)) == len(segments_of(full))
        assert full.endswith(delta.split("\n#EXT-X-SKIP:", 1)[1].split("\n", 1)[1])
        writer.close()
    run(check)


def test_a_request_that_waits_too_long_gets_aiohttps_503() -> None:
    async def check(edge: Edge) -> None:
        edge.feed_until(lambda w: w.segments_cut >= 3)
        seq, part = edge.ll.next_part()
        fast, slow, writers = await both(edge, f"?_HLS_msn={seq}&_HLS_part={part}")
        a, b = await read_answer(fast), await read_answer(slow)  # nothing fed: both time out
        assert a.startswith(b"HTTP/1.1 503 Service Unavailable\r\n") and b"\r\nRetry-After: 1\r\n" in a
        assert sans_date(a) == sans_date(b)
        assert b"did not come within 0.3 s" in a and edge.routes.ll_parked == 0
        # the connection serves on after its timeout
        writers[0].write(edge.url(""))
        assert (await read_answer(fast)).startswith(b"HTTP/1.1 200 OK\r\n")
        for w in writers:
            w.close()
    run(check, block_s=0.3)


def test_errors_are_aiohttps_and_an_ended_stream_answers_parked_requests_at_once() -> None:
    async def check(edge: Edge) -> None:
        edge.feed_until(lambda w: w.segments_cut >= 3)
        seq, part = edge.ll.next_part()
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.server.port)
        writer.write(edge.url(f"?_HLS_msn={seq + 10}&_HLS_part=0"))
        answer = await read_answer(reader)
        assert answer.startswith(b"HTTP/1.1 400 ") and b"too far" in answer
        writer.close()
        fast, slow, writers = await both(edge, f"?_HLS_msn={seq}&_HLS_part={part + 1}")
        await until(lambda: edge.routes.ll_parked == 1 and edge.routes.ll_waiting == 1)
        edge.ll.end()
        a, b = await read_answer(fast), await read_answer(slow)
        assert a.startswith(b"HTTP/1.1 503 ") and sans_date(a) == sans_date(b)
        for w in writers:
            w.close()
    run(check)


def test_clients_that_leave_while_parked_are_dropped() -> None:
    async def check(edge: Edge) -> None:
        edge.feed_until(lambda w: w.segments_cut >= 3)
        seq, part = edge.ll.next_part()
        conns = [await asyncio.open_connection("127.0.0.1", edge.server.port) for _ in range(50)]
        for _, w in conns:
            w.write(edge.url(f"?_HLS_msn={seq}&_HLS_part={part}"))
        await until(lambda: edge.routes.ll_parked == 50)
        for _, w in conns[:40]:
            w.close()
        await until(lambda: edge.routes.ll_parked == 10 and edge.server.connections == 10)
        edge.feed_until(lambda w: w.last_part() >= (seq, part))
        for r, _ in conns[40:]:
            assert (await read_answer(r)).startswith(b"HTTP/1.1 200 OK\r\n")
        assert edge.routes.ll_parked == 0
        for _, w in conns[40:]:
            w.close()
        await until(lambda: edge.server.connections == 0)
    run(check)


def test_pipelined_requests_behind_a_parked_one_are_answered_after_it_in_order() -> None:
    async def check(edge: Edge) -> None:
        edge.feed_until(lambda w: w.segments_cut >= 3)
        seq, part = edge.ll.next_part()
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.server.port)
        writer.write(edge.url(f"?_HLS_msn={seq}&_HLS_part={part}") + edge.url(f"?_HLS_msn={seq}&_HLS_part={part + 1}")
                     + edge.url(""))
        await until(lambda: edge.routes.ll_parked == 1)
        edge.feed_until(lambda w: w.last_part() >= (seq, part + 1))
        answers = [await read_answer(reader) for _ in range(3)]
        assert all(a.startswith(b"HTTP/1.1 200 OK\r\n") for a in answers)
        assert f'cam1_ll{seq:09d}.{part + 1}.m4s"'.encode() in answers[1].split(b"PRELOAD-HINT")[0]
        writer.close()
    run(check)


def get(name: str) -> bytes:
    return f"GET /LiveApp/streams/{name} HTTP/1.1\r\nHost: t\r\n\r\n".encode()


async def both_media(edge: Edge, name: str) -> tuple[asyncio.StreamReader, asyncio.StreamReader, list]:
    conns = [await asyncio.open_connection("127.0.0.1", edge.server.port) for _ in range(2)]
    conns[0][1].write(get(name))
    conns[1][1].write(get(name + "?via=aiohttp"))  # handle() ignores the query of a part
    return conns[0][0], conns[1][0], [w for _, w in conns]


def test_a_preload_hint_part_is_parked_and_answered_as_aiohttp_does() -> None:
    async def check(edge: Edge) -> None:
        edge.feed_until(lambda w: w.segments_cut >= 3)
        seq, part = edge.ll.next_part()
        name = f"cam1_ll{seq:09d}.{part}.m4s"
        fast, slow, writers = await both_media(edge, name)
        await until(lambda: edge.routes.ll_parked == 1 and edge.routes.ll_waiting == 1)
        edge.feed_until(lambda w: w.last_part() >= (seq, part))
        a, b = await read_answer(fast), await read_answer(slow)
        assert a.startswith(b"HTTP/1.1 200 OK\r\n") and sans_date(a) == sans_date(b)
        assert a.split(b"\r\n\r\n", 1)[1] == edge.ll.part(seq, part) and edge.routes.ll_parked == 0
        # the connection stays on the fast path: the next blocking playlist request parks again
        seq, part = edge.ll.next_part()
        writers[0].write(edge.url(f"?_HLS_msn={seq}&_HLS_part={part}"))
        await until(lambda: edge.routes.ll_parked == 1)
        edge.feed_until(lambda w: w.last_part() >= (seq, part))
        assert (await read_answer(fast)).startswith(b"HTTP/1.1 200 OK\r\n")
        for w in writers:
            w.close()
    run(check)


def test_a_part_that_does_not_come_gets_aiohttps_404() -> None:
    async def check(edge: Edge) -> None:
        edge.feed_until(lambda w: w.segments_cut >= 3)
        seq, part = edge.ll.next_part()
        fast, slow, writers = await both_media(edge, f"cam1_ll{seq:09d}.{part + 1}.m4s")
        await until(lambda: edge.routes.ll_parked == 1 and edge.routes.ll_waiting == 1)
        a, b = await read_answer(fast), await read_answer(slow)  # nothing fed: both give up
        assert a.startswith(b"HTTP/1.1 404 Not Found\r\n") and sans_date(a) == sans_date(b)
        for w in writers:
            w.close()
    run(check, block_s=0.3)
