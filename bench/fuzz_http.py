"""Fuzz target: HTTP request lines, header fields and queries, as a stranger sends them to a node.

Each generated input (request heads seeded from real requests a node gets: hls.js, Safari and
ffmpeg playlist and segment fetches, REST calls, then mutated: bit flips, inserted control bytes,
truncations, splices, huge declared lengths, long lines, many fields, junk queries and paths) goes
through the parsers the node runs on it, in the node's order:

1. the fast path's sans-IO head parser, :func:`mesh.http.fastpath.parse_simple_get`;
2. aiohttp's request parser built as the node's aiohttp handler builds it (the C parser when
   installed, the node's line/field/field-count limits), fed in one to three pieces;
3. for each request aiohttp accepts: its URL, path and query as a handler sees them, and the
   edge's name patterns (playlist, segment, stream id) on the last path component.

Rejections are ``None`` from the fast parser and aiohttp's ``HttpProcessingError``; an incomplete
head (which the node times out) counts as rejected too. A crash is any other exception, and also
any disagreement that would let the fast path answer what aiohttp would not: a head the fast
parser accepts must parse in aiohttp as a GET of the same path, the same query (the fast path
takes plain ``k=v&...`` queries, for LL-HLS blocking requests) and the same keep-alive.
"""
from __future__ import annotations

import asyncio
import random
import resource
import time
from typing import Any

from aiohttp import http_exceptions
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http import HttpRequestParser
from aiohttp.web_protocol import MAX_MSG_QUEUE_SIZE, RequestPayloadError

from mesh.hls.ll_playlist import BadBlockingRequest, block_target, simple_query, skip_directive
from mesh.http.fastpath import FAST_MAX_HEAD, parse_simple_get

try:  # the edge's name rules (the lead may move them; the fuzz follows)
    from mesh.broker.wire import NAME_RE
    from mesh.nodes.edge import PLAYLIST_RE, SEGMENT_RE
except ImportError:  # pragma: no cover
    import re
    NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
    PLAYLIST_RE = re.compile(r"^([A-Za-z0-9_-]{1,128})\.m3u8$")
    SEGMENT_RE = re.compile(r"^([A-Za-z0-9_-]{1,128}?)(\d{9})\.ts$")

TARGET = "http"
STREAMS_PREFIX = "/LiveApp/streams/"

SEEDS: list[bytes] = [
    b"GET /LiveApp/streams/cam1.m3u8 HTTP/1.1\r\nHost: edge:5080\r\nUser-Agent: Mozilla/5.0 hls.js\r\n"
    b"Accept: */*\r\nOrigin: http://player.example\r\nConnection: keep-alive\r\n\r\n",
    b"GET /LiveApp/streams/cam1000000042.ts HTTP/1.1\r\nHost: edge\r\nAccept-Encoding: identity\r\n"
    b"Range: bytes=0-\r\n\r\n",
    b"GET /LiveApp/streams/cam1_adaptive.m3u8?token=eyJhbGciOiJIUzI1NiJ9.e30.sig HTTP/1.1\r\n"
    b"Host: edge\r\nUser-Agent: AppleCoreMedia/1.0.0 (iPhone)\r\nX-Playback-Session-Id: 1A2B\r\n\r\n",
    b"GET /LiveApp/streams/cam1_720p2500kbps_ll.m3u8?_HLS_msn=12&_HLS_part=3 HTTP/1.1\r\nHost: e\r\n\r\n",
    b"GET /LiveApp/streams/cam1_ll.m3u8?_HLS_msn=7&_HLS_part=0&_HLS_skip=YES HTTP/1.1\r\nHost: e\r\n\r\n",
    b"GET /LiveApp/streams/cam1.m3u8 HTTP/1.1\r\nUser-Agent: Lavf/59.27.100\r\nAccept: */*\r\n"
    b"Range: bytes=0-\r\nConnection: close\r\nHost: 127.0.0.1:5080\r\nIcy-MetaData: 1\r\n\r\n",
    b"POST /LiveApp/rest/v2/broadcasts/create HTTP/1.1\r\nHost: o\r\nContent-Type: application/json\r\n"
    b"Content-Length: 37\r\n\r\n{\"streamId\": \"cam2\", \"type\": \"live\"}",
    b"POST /LiveApp/rest/v2/broadcasts/create HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: chunked\r\n"
    b"Content-Type: application/json\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    b"GET /rest/v2/cluster/nodes/0/10 HTTP/1.1\r\nHost: o\r\nAuthorization: Bearer a.b.c\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: o\r\n\r\nGET /metrics HTTP/1.1\r\nHost: o\r\n\r\n",
    b"OPTIONS /LiveApp/streams/cam1.m3u8 HTTP/1.1\r\nHost: e\r\nAccess-Control-Request-Method: GET\r\n\r\n",
    b"HEAD /LiveApp/streams/cam1.m3u8 HTTP/1.0\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: e\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    b"GET /x HTTP/1.1\r\nX-Empty:\r\nX-Tab:\tv\t\r\nX-Obs: caf\xc3\xa9\r\n\r\n",
]

INTERESTING = [b"\r", b"\n", b"\r\n", b"\x00", b":", b" ", b"\t", b"%", b"?", b"#", b"\x7f", b"\xff",
               b"/", b"..", b"%2e%2e", b"%00", b",", b";", b"=", b"&", b"\xc3\xa9", b"\\", b"\"", b"~"]
HUGE = [b"Content-Length: 99999999999999999999999", b"Content-Length: 18446744073709551616",
        b"Content-Length: -1", b"Content-Length: 1, 2", b"Transfer-Encoding: chunked, identity",
        b"Content-Length: 0x10", b"Transfer-Encoding: gzip", b"Expect: 100-continue"]
PATHS = [b"/LiveApp/streams/../../../etc/passwd", b"/LiveApp/streams/%2e%2e%2fsecret.m3u8",
         b"//LiveApp//streams//cam1.m3u8", b"/LiveApp/streams/" + b"a" * 200 + b".m3u8",
         b"/LiveApp/streams/cam1" + b"9" * 30 + b".ts", b"/LiveApp/streams/\xe2\x80\xaecam.m3u8",
         b"http://evil/LiveApp/streams/cam1.m3u8", b"*", b"/LiveApp/streams/cam1.m3u8#frag"]


def _query(rng: random.Random) -> bytes:
    parts = []
    for _ in range(rng.randint(1, 40)):
        key = bytes(rng.choice(b"abc_HLS%2e&=+;") for _ in range(rng.randint(0, 8)))
        value = rng.choice([b"", b"%", b"%zz", b"%00", b"%ff%fe", b"\xc3\xa9", b"1" * rng.randint(1, 50),
                            b"a=b=c", b"+++", b"%E2%80%AE"])
        parts.append(key + b"=" + value)
    return b"?" + rng.choice([b"&", b";", b"&&"]).join(parts)


def mutate(seed: bytes, rng: random.Random) -> bytes:
    data = bytearray(seed)
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        op = rng.randrange(12)
        if op == 0 and data:  # bit flips
            for _ in range(rng.randint(1, 4)):
                i = rng.randrange(len(data))
                data[i] ^= 1 << rng.randrange(8)
        elif op == 1:  # an interesting token somewhere
            i = rng.randint(0, len(data))
            data[i:i] = rng.choice(INTERESTING)
        elif op == 2 and data:  # delete a range
            i = rng.randrange(len(data))
            del data[i:i + rng.randint(1, 16)]
        elif op == 3:  # truncate
            del data[rng.randint(0, len(data)):]
        elif op == 4:  # a field repeated, up to past the field-count limit
            line = rng.choice([b"X-A: b", b"Host: x", b"Cookie: " + b"c" * 100, b"Connection: close"])
            i = max(data.find(b"\r\n"), 0)
            data[i:i] = (b"\r\n" + line) * rng.choice((2, 50, 130, 300))
        elif op == 5:  # a huge or contradictory declared length
            i = max(data.find(b"\r\n"), 0)
            data[i:i] = b"\r\n" + rng.choice(HUGE)
        elif op == 6:  # a long line or field
            i = rng.randint(0, len(data))
            data[i:i] = bytes([rng.choice(b"aA/%:. \t")]) * rng.choice((100, 8189, 8191, 20000))
        elif op == 7:  # random bytes
            return bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 300)))
        elif op == 8:  # splice with another seed
            other = rng.choice(SEEDS)
            data = data[:rng.randint(0, len(data))] + other[rng.randint(0, len(other)):]
        elif op == 9:  # a junk query on the request target
            end = data.find(b" HTTP/")
            if end > 0:
                data[end:end] = _query(rng)
        elif op == 10:  # another path
            start, end = data.find(b" "), data.find(b" HTTP/")
            if 0 < start < end:
                data[start + 1:end] = rng.choice(PATHS)
        else:  # another method or version
            start = data.find(b" ")
            if start > 0:
                data[:start] = rng.choice([b"GET", b"get", b"G\x00T", b"CONNECT", b"PRI", b"X" * 40, b""])
            v = data.find(b"HTTP/1.")
            if v >= 0 and rng.random() < 0.5:
                data[v:v + 8] = rng.choice([b"HTTP/1.0", b"HTTP/2.0", b"HTTP/9.9", b"HTTP/1.10", b"http/1.1"])
    return bytes(data)


class _Parse:
    """aiohttp's request parser configured as the node's handler configures it."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.protocol = BaseProtocol(loop)

    def __call__(self, data: bytes, cuts: list[int]) -> list[Any]:
        parser = HttpRequestParser(self.protocol, self.loop, 2 ** 16, max_line_size=8190,
                                   max_field_size=8190, max_headers=128,
                                   payload_exception=RequestPayloadError,
                                   max_msg_queue_size=MAX_MSG_QUEUE_SIZE)
        messages: list[Any] = []
        start = 0
        for cut in [*cuts, len(data)]:
            got, upgraded, _tail = parser.feed_data(data[start:cut])
            messages.extend(msg for msg, _payload in got)
            start = cut
            if upgraded:
                break
        return messages


def _use(message: Any) -> None:
    """What handlers and the router read from a request, and the edge's name rules."""
    url = message.url
    path = url.path
    dict(url.query)
    str(url.raw_query_string)
    message.headers.get("Host")
    if path.startswith(STREAMS_PREFIX):
        name = path[len(STREAMS_PREFIX):]
        if name and "/" not in name:
            m = PLAYLIST_RE.match(name) or SEGMENT_RE.match(name)
            if m and not NAME_RE.match(m.group(1)) and len(m.group(1)) <= 128:
                raise AssertionError(f"edge pattern accepted a stream id the name rule refuses: {name!r}")


def _same_reading(parse: _Parse, head: bytes, fast: Any) -> None:
    """The fast path may answer only what aiohttp would answer the same way: a GET of the same
    path, the same keep-alive, and no error."""
    try:
        messages = parse(head, [])
    except http_exceptions.HttpProcessingError as exc:
        raise AssertionError(f"the fast path accepts a head aiohttp rejects ({exc.message})") from None
    first = messages[0] if messages else None
    target = fast.target + ("?" + fast.query if fast.query else "")
    if (first is None or first.method != "GET" or first.path != target or first.url.path != fast.target
            or first.url.raw_query_string != fast.query or first.should_close != fast.close):
        raise AssertionError("the fast path and aiohttp read a head differently")
    directives = simple_query(fast.query) if fast.query else None
    if directives is not None:  # the edge's fast route reads LL-HLS directives as handle() does
        try:
            full = block_target(first.url.query), skip_directive(first.url.query)
        except BadBlockingRequest:
            full = None
        if full != directives:
            raise AssertionError(f"LL-HLS directives read differently: {directives} vs {full}")


def fuzz(count: int, seed: int = 0) -> dict:
    rng = random.Random(seed)
    loop = asyncio.new_event_loop()
    parse = _Parse(loop)
    accepted = rejected = crashes = fast_accepted = 0
    first_crash = ""
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    try:
        for n in range(count):
            base = SEEDS[n % len(SEEDS)] if n < len(SEEDS) else rng.choice(SEEDS)
            data = base if n < len(SEEDS) else mutate(base, rng)
            cuts = sorted(rng.randint(0, len(data)) for _ in range(rng.randint(0, 2)))
            try:
                end = data.find(b"\r\n\r\n")
                fast = parse_simple_get(data[:end]) if 0 <= end <= FAST_MAX_HEAD else None
                if fast is not None:
                    fast_accepted += 1
                    _same_reading(parse, data[:end + 4], fast)
                try:
                    messages = parse(data, cuts)
                except http_exceptions.HttpProcessingError:
                    rejected += 1
                    continue
                # CONNECT (aiohttp parses "CONNECT" with no target into a request without a URL)
                # never reaches a handler: the node's GuardedHandler answers it 501
                messages = [m for m in messages if m.url is not None and m.method != "CONNECT"]
                for message in messages:
                    _use(message)
                if messages:
                    accepted += 1
                else:
                    rejected += 1  # incomplete: the node's header timeout closes it
            except Exception as exc:  # anything else is a crash
                crashes += 1
                if not first_crash:
                    first_crash = f"{type(exc).__name__}: {exc} on {data[:200]!r}"
    finally:
        loop.close()
    result: dict[str, Any] = {
        "target": TARGET, "inputs": count, "accepted": accepted, "rejected": rejected,
        "crashes": crashes, "seconds": round(time.perf_counter() - started, 3),
        "max_rss_growth_bytes": max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                    - rss_before) * 1024,
    }
    result["fast_path_accepted"] = fast_accepted  # of the accepted, how many the fast path took
    if first_crash:
        result["first_crash"] = first_crash
    return result


if __name__ == "__main__":  # pragma: no cover
    import sys
    print(fuzz(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000))
