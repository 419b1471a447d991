"""The HTTP fast path: plain ``GET /prefix/name HTTP/1.1`` requests answered without aiohttp.

A part may register a *fast route* (the edge does, for HLS playlists and segments). Each connection
starts with :class:`FastConnection`'s small protocol, which answers plain GETs for which the route has
a ready :class:`Reply` itself: pre-built header lines, the body sent from a memory file with
``sendfile`` (no copy through Python), the same headers aiohttp would send. At the first request it
does not handle (any other path or method, a query it does not take, a body, an error, a stream not
open yet) it hands the connection, with the bytes it holds, to aiohttp for good.

A route registered with ``queries=True`` also sees plain queries (``name=value`` pairs of letters,
digits and ``_``, joined by ``&``: nothing aiohttp would decode differently), and may answer
*later*: it returns a :class:`Parking` (an LL-HLS blocking playlist request, waiting for a part),
the connection parks its answer callback there and reads nothing more until the route calls it
with the reply (or drops it when the client goes away). A parked request costs no task and no
timer of its own: the route keeps its waiters in a list and its own deadline.

:func:`parse_simple_get` is the sans-IO head parser; it accepts only what aiohttp would answer the
same way (bench/fuzz_http.py checks the two against each other).
"""
from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import re
import socket
import time
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Protocol, cast

from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE

from .. import metrics

if TYPE_CHECKING:
    from .limits import ConnectionOwner

log = logging.getLogger("mesh.http")

FAST_MAX_HEAD = 8190  # longer request heads go to aiohttp (its line/field limit is 8190)
FAST_MAX_FIELDS = 128  # aiohttp's max_headers
SMALL_BODY = 16 << 10  # bodies up to this go out in one write with their headers
_MSG_MORE = getattr(socket, "MSG_MORE", 0)  # headers wait for the body: one packet, not two

# A plain GET: request line, then fields (token ":" value without control characters), CRLF-separated.
_SIMPLE_GET = re.compile(rb"GET (/[A-Za-z0-9_./-]*)"
                         rb"(?:\?([A-Za-z0-9_]+=[A-Za-z0-9]+(?:&[A-Za-z0-9_]+=[A-Za-z0-9]+)*))?"
                         rb" HTTP/1\.1"
                         rb"(?:\r\n[!#$%&'*+.^_`|~0-9A-Za-z-]+:[^\x00-\x08\x0a-\x1f\x7f]*)*")
# The fields that decide: a body, an expectation or an upgrade make a request not plain; Host
# must be there once, and fields aiohttp refuses to see twice (RFC 9110 singletons) must not repeat.
_FIELDS_OF_NOTE = re.compile(rb"\r\n(content-length|transfer-encoding|expect|upgrade|host|content-location"
                             rb"|content-range|content-type|etag|max-forwards|server|user-agent):")
_NOT_SIMPLE = frozenset((b"content-length", b"transfer-encoding", b"expect", b"upgrade"))
_CONNECTION = b"\r\nconnection:"
HEADS_KEPT = 512  # parsed short heads remembered (players of one stream send the same heads)
HEAD_KEPT_MAX = 512  # bytes: longer heads are parsed every time
_heads: dict[bytes, "SimpleGet | None"] = {}


class SimpleGet(NamedTuple):
    target: str  # the path: "/" and [A-Za-z0-9_.-] only, without the query
    close: bool  # the client sent "Connection: close"
    query: str = ""  # "k=v&k2=v2" (letters, digits, "_" only; aiohttp reads it as is), or ""


def parse_simple_get(head: bytes) -> SimpleGet | None:
    """Sans-IO: a request head (without the blank line that ends it) if it is a plain
    ``GET /path[?k=v&...] HTTP/1.1`` (a query of letters, digits and ``_`` only) with
    well-formed fields, one Host, no repeated singleton field, no body, no upgrade and no
    expectation;
    None for anything else, which aiohttp then parses and answers in full (errors included)."""
    m = _SIMPLE_GET.fullmatch(head)
    if m is None or head.count(b"\n") > FAST_MAX_FIELDS:
        return None  # not GET, not HTTP/1.1, an odd query, escapes, malformed fields, obs-fold, bare CR/LF
    low = head.lower()
    names = _FIELDS_OF_NOTE.findall(low)
    if b"host" not in names or len(names) != len(set(names)) or not _NOT_SIMPLE.isdisjoint(names):
        return None  # no Host, a field twice (aiohttp answers 400), a body, expectation or upgrade
    close = False
    at = low.find(_CONNECTION)
    while at >= 0:
        start = at + len(_CONNECTION)
        end = low.find(b"\r\n", start)
        tokens = [t.strip() for t in low[start:end if end >= 0 else len(low)].split(b",")]
        if b"upgrade" in tokens:
            return None
        close = close or b"close" in tokens
        at = low.find(_CONNECTION, start)
    query = m.group(2)
    return SimpleGet(m.group(1).decode("ascii"), close, query.decode("ascii") if query else "")


def parse_head(head: bytes) -> SimpleGet | None:
    """:func:`parse_simple_get`, remembered for short heads: thousands of players of one stream
    send byte-identical heads (the same blocking request, the same fields), parsed once."""
    if len(head) > HEAD_KEPT_MAX:
        return parse_simple_get(head)
    try:
        return _heads[head]
    except KeyError:
        pass
    if len(_heads) >= HEADS_KEPT:
        _heads.clear()
    parsed = _heads[head] = parse_simple_get(head)
    return parsed


def _memory_file(data: bytes) -> int:
    """The descriptor of an anonymous memory file holding ``data`` (for sendfile), or -1."""
    try:
        fd = os.memfd_create("mesh-reply", os.MFD_CLOEXEC)
    except (AttributeError, OSError):
        return -1
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except OSError:
        os.close(fd)
        return -1
    return fd


class Reply:
    """An answer built once and sent many times, by the fast path or as an aiohttp response:
    its header lines, its body and, with ``file=True``, a memory file holding the body so the
    fast path can ``sendfile`` it. The file is the owner's to :meth:`close`; never changed.
    200 unless ``status`` says otherwise (then ``cache_control`` may be None and ``headers``
    come first, as aiohttp orders an error's fields)."""

    __slots__ = ("headers", "body", "head", "fd", "status", "_wire")

    def __init__(self, body: bytes, content_type: str, cache_control: str | None, *, file: bool = False,
                 status: int = 200, headers: dict[str, str] | None = None):
        self.headers = dict(headers or {})
        if cache_control is not None:
            self.headers["Cache-Control"] = cache_control
        self.headers["Content-Type"] = content_type
        self.body = body
        self.status = status
        # In aiohttp's order, so both paths send the same bytes; Date and Server follow.
        fields = "".join(f"{k}: {v}\r\n" for k, v in self.headers.items())
        self.head = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n{fields}"
                     f"Access-Control-Allow-Origin: *\r\nContent-Length: {len(body)}\r\n").encode()
        self.fd = _memory_file(body) if file else -1
        self._wire: tuple[bytes, bytes] = (b"", b"")  # (Date/Server lines, the whole keep-alive answer)

    def response(self) -> web.Response:
        return web.Response(body=self.body, status=self.status, headers=self.headers)

    def wire(self) -> bytes:
        """The whole keep-alive answer (head and body), built once per second of Date: what the
        fast path writes to every parked request that gets this reply."""
        lines = _date_server_lines()
        if self._wire[0] is not lines:
            self._wire = (lines, self.head + lines + b"\r\n" + self.body)
        return self._wire[1]

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)


class Parking(Protocol):
    """A fast route's "later": :meth:`park` keeps ``answer`` and calls it once with the reply
    (from the event loop, never from inside park); the callable it returns forgets ``answer``
    (the client went away first). The route bounds the wait and answers at its end."""

    def park(self, answer: Callable[[Reply], None]) -> Callable[[], None]: ...


# (name after the prefix, client address[, query]); the query only to routes that take queries
FastRoute = Callable[..., "Reply | Parking | None"]

_date: list[Any] = [0, b""]


def _date_server_lines() -> bytes:
    now = int(time.time())
    if now != _date[0]:
        _date[0] = now
        _date[1] = (f"Date: {email.utils.formatdate(now, usegmt=True)}\r\n"
                    f"Server: {SERVER_SOFTWARE}\r\n").encode()
    return _date[1]


class FastConnection(asyncio.Protocol):
    """One client connection while it only asks for fast routes; then aiohttp's, for good.

    One timer bounds it: the first request head is due ``header_timeout_s`` after the accept, a
    started head ``header_timeout_s`` after its first byte, an idle keep-alive connection lasts
    ``keepalive_s``, and so does a client that stops reading its answers. The timer is moved
    only when a head is left incomplete, so a request that arrives whole costs no timer work.
    While a request is parked (:class:`Parking`) its route bounds the wait; the timer then only
    looks again a keep-alive later, and the connection reads on (to see the client leave) but
    serves nothing more until the answer is out (at most a head's worth of bytes is read meanwhile)."""

    def __init__(self, server: "ConnectionOwner", ip: str):
        self._server = server
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._fd = -1
        self._sock: socket.socket | None = None  # our duplicate of the socket, for send() flags
        self._ip = self._remote = ip  # _ip is what the per-IP cap counts (an IPv6 /64)
        self._paused = False
        self._served = False
        self._last = 0.0  # the accept, the last request answered, or the last resume of writing
        self._head_at: float | None = None  # when the incomplete head in _buf started
        self._timer: asyncio.TimerHandle | None = None
        self._unpark: Callable[[], None] | None = None  # set while a request is parked
        self._close_after = False  # the parked request said Connection: close
        self._held = False  # reading paused: bytes piled up behind a parked request

    # -- asyncio callbacks -----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport (uvloop's are not asyncio.Transport subclasses, only alike)
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            self._fd = sock.fileno()
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        peer = transport.get_extra_info("peername")
        if isinstance(peer, (tuple, list)):
            self._remote = str(peer[0])  # the client's own address, for the route
        self._server._opened(self)
        self._last = self._loop.time()
        self._timer = self._loop.call_at(self._deadline(), self._check_timer)

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if self._unpark is not None:  # answers go out in order: the parked one first
            if len(self._buf) > FAST_MAX_HEAD and self._transport is not None and not self._held:
                self._held = True
                self._transport.pause_reading()
            return
        if not self._paused:
            self._serve()
            if self._buf and self._head_at is None:
                self._head_started()

    def eof_received(self) -> bool:
        return False  # close

    def connection_lost(self, exc: Exception | None) -> None:
        self._forget()
        self._server._closed(self)

    def pause_writing(self) -> None:
        # The client is not reading: stop reading its requests until it catches up.
        self._paused = True
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        self._paused = False
        self._last = self._loop.time()
        if self._transport is not None and not self._transport.is_closing():
            if not self._held:
                self._transport.resume_reading()
            if self._unpark is not None:
                return
            self._serve()
            if self._buf and self._head_at is None:
                self._head_started()

    # -- requests --------------------------------------------------------------------------
    def _serve(self) -> None:
        buf, transport = self._buf, self._transport
        assert transport is not None
        while buf and not self._paused and not transport.is_closing():
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > FAST_MAX_HEAD or b"\n\n" in buf:  # too long, or bare-LF line ends
                    self._hand_over()
                return
            request = parse_head(bytes(buf[:end])) if end <= FAST_MAX_HEAD else None
            reply = None
            if request is not None:
                try:
                    reply = self._server._route(request.target, self._remote, request.query)
                except Exception:
                    log.exception("fast route for %s failed; aiohttp answers it", request.target[:200])
            if request is None or reply is None:
                self._hand_over()
                return
            del buf[:end + 4]
            self._last = self._loop.time()
            self._served = True
            self._head_at = None
            self._server._touch(self)
            if not isinstance(reply, Reply):  # parked: the route answers when it can
                self._close_after = request.close
                self._unpark = reply.park(self._answer)
                return
            self._send(reply, request.close)
            if request.close:
                transport.close()
                return

    def _answer(self, reply: Reply) -> None:
        """The parked request's answer: send it, then serve what the client sent meanwhile."""
        self._unpark = None
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        self._last = self._loop.time()
        if self._close_after:
            self._send(reply, True)
            transport.close()
            return
        self._send(reply, False)
        if self._held:
            self._held = False
            transport.resume_reading()
        if self._buf and not self._paused:
            self._serve()
            if self._buf and self._head_at is None and self._unpark is None:
                self._head_started()

    def _send(self, reply: Reply, close: bool) -> None:
        transport = self._transport
        assert transport is not None
        body = reply.body
        if not close and reply.fd < 0 and len(body) <= SMALL_BODY:
            transport.write(reply.wire())  # built once a second for everyone asking the same
            return
        head = reply.head + _date_server_lines() + (b"Connection: close\r\n\r\n" if close else b"\r\n")
        if reply.fd < 0 or self._fd < 0 or transport.get_write_buffer_size():
            if len(body) <= SMALL_BODY:
                transport.write(head + body)
            else:
                transport.write(head)
                transport.write(body)
            return
        # Nothing queued in the transport: write straight to the socket, the body with sendfile.
        # Whatever the socket does not take now is queued in the transport, in order.
        try:
            if self._sock is None:
                self._sock = socket.socket(fileno=os.dup(self._fd))
                self._sock.setblocking(False)
            sent = self._sock.send(head, _MSG_MORE)
        except BlockingIOError:
            sent = 0
        except OSError:
            transport.abort()
            return
        if sent < len(head):
            transport.write(head[sent:])
            transport.write(body)
            return
        offset, size = 0, len(body)
        try:
            while offset < size:
                n = os.sendfile(self._fd, reply.fd, offset, size - offset)
                if n == 0:
                    break  # cannot happen (the file holds the body); fall back to writing
                offset += n
        except BlockingIOError:
            pass
        except OSError:
            transport.abort()
            return
        if offset < size:
            transport.write(memoryview(body)[offset:])


    def _hand_over(self) -> None:
        """From now on aiohttp serves this connection, starting with the bytes we hold."""
        transport = self._transport
        assert transport is not None and self._server._aiohttp is not None
        self._forget()
        handler = self._server._aiohttp_handler(self._ip)
        self._server._replace(self, handler)
        transport.set_protocol(handler)
        handler.connection_made(transport)
        data, self._buf = bytes(self._buf), bytearray()
        self._transport = None
        if data:
            handler.data_received(data)

    # -- the timer -------------------------------------------------------------------------
    def _deadline(self) -> float:
        limits = self._server.limits
        if self._unpark is not None:
            return self._loop.time() + limits.keepalive_s  # the route bounds a parked wait
        if self._paused:
            return self._last + limits.keepalive_s
        if self._buf:
            return (self._head_at or self._last) + limits.header_timeout_s
        return self._last + (limits.keepalive_s if self._served else limits.header_timeout_s)

    def _head_started(self) -> None:
        """An incomplete head waits in the buffer: it is due header_timeout_s from now."""
        if self._timer is None:
            return  # handed over or closed
        self._head_at = self._loop.time()
        due = self._deadline()
        if self._timer.when() > due:
            self._timer.cancel()
            self._timer = self._loop.call_at(due, self._check_timer)

    def _check_timer(self) -> None:
        self._timer = None
        if self._transport is None:
            return
        due = self._deadline()
        if self._loop.time() < due:
            self._timer = self._loop.call_at(due, self._check_timer)
            return
        if self._paused:
            metrics.reject("http", "send_timeout")
            self._transport.abort()  # close() would wait for the client to read what is queued
            return
        if self._buf:
            metrics.reject("http", "header_timeout")
        elif not self._served:
            metrics.reject("http", "idle_timeout")
        self._transport.close()

    # -- eviction (the server is full and needs room for a new connection) -----------------
    def evictable(self) -> bool:
        return (self._transport is not None and not self._paused and self._unpark is None
                and not self._transport.is_closing())

    def evict(self) -> None:
        metrics.reject("http", "evicted")
        if self._transport is not None:
            self._transport.close()

    def _forget(self) -> None:
        unpark, self._unpark = self._unpark, None
        if unpark is not None:
            unpark()  # the client left while its request was parked
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._sock is not None:
            self._sock.close()  # our duplicate only; the transport's socket stays open
            self._sock = None

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
