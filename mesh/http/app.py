"""The node's HTTP layer (aiohttp): one application, routes added by the node's parts.

aiohttp rather than our own HTTP code: it is a well-kept asyncio server with keep-alive, request
size limits and a router; mesh adds JSON errors, CORS for browser players and counters.
Every error a client causes gets a JSON body ``{"error": ...}`` and a ``bad_input`` count.

One exception, for throughput: a part may register a *fast route* (the edge does, for HLS
playlists and segments). Each connection starts with a small protocol that answers plain
``GET /prefix/name HTTP/1.1`` requests for which the route has a ready :class:`Reply` itself:
pre-built header lines, the body sent from a memory file with ``sendfile`` (no copy through
Python), the same headers aiohttp would send. At the first request it does not handle (any other
path or method, a query string, a body, an error, a stream not open yet) it hands the connection,
with the bytes it holds, to aiohttp for good, so everything else keeps aiohttp's behaviour.

Strangers' costs are bounded on both paths (the budget is :class:`~mesh.http.limits.HttpLimits`,
written down in the README): :class:`HttpServer` accepts connections itself and counts them per
IP and in total against the open-files limit; a request head must be complete in
``header_timeout_s``, idle keep-alive ends after ``keepalive_s``, a body must arrive in
``body_timeout_s``. aiohttp's side of this lives in :mod:`mesh.http.guarded`.
"""
from __future__ import annotations

import asyncio
import email.utils
import errno
import json
import logging
import os
import re
import socket
import time
from typing import Any, Awaitable, Callable, NamedTuple

from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE

from .. import metrics
from .guarded import GuardedHandler
from .limits import (ConnectionCounts, HttpLimits, LogBudget, connection_budget, ip_key,
                     raise_nofile_limit)

log = logging.getLogger("mesh.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

MAX_BODY_BYTES = 64 << 10
MAX_QUERY_BYTES = 2048


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(text=json.dumps(data, default=str), status=status,
                        content_type="application/json", headers=headers)


def json_error(status: int, message: str, reason: str = "request") -> web.Response:
    if 400 <= status < 500:
        metrics.reject("http", reason, "%d %s", status, message)
    return json_response({"error": message}, status=status)


class HttpError(Exception):
    """Raised by handlers to answer with a JSON error."""

    def __init__(self, status: int, message: str, reason: str = "request"):
        super().__init__(message)
        self.status, self.message, self.reason = status, message, reason


BODY_TIMEOUT_S = web.AppKey("mesh_http_body_timeout_s", float)  # set by HttpServer


@web.middleware
async def errors_and_cors(request: web.Request, handler: Handler) -> web.StreamResponse:
    if len(request.query_string) > MAX_QUERY_BYTES:
        return json_error(414, f"query string longer than {MAX_QUERY_BYTES} bytes", "query")
    try:
        if request.body_exists:  # read it here, in bounded time, so no handler waits on a slow body
            timeout = request.app.get(BODY_TIMEOUT_S, HttpLimits.body_timeout_s)
            try:
                await asyncio.wait_for(request.read(), timeout)
            except asyncio.TimeoutError:
                response = json_error(408, f"request body not received within {timeout:g} s",
                                      "body_timeout")
                response.force_close()
                return response
        response = await handler(request)
    except HttpError as exc:
        response = json_error(exc.status, exc.message, exc.reason)
    except web.HTTPNotFound:
        response = json_error(404, f"no such resource: {request.path[:200]}", "notfound")
    except web.HTTPMethodNotAllowed as exc:
        response = json_error(405, f"method {request.method} not allowed here; use "
                                   f"{', '.join(sorted(exc.allowed_methods))}", "method")
    except web.HTTPRequestEntityTooLarge:
        response = json_error(413, f"request body larger than {MAX_BODY_BYTES} bytes", "body")
    except web.HTTPException:
        raise
    except Exception:
        log.exception("error handling %s %s", request.method, request.path[:200])
        response = json_response({"error": "internal error; see the node's log"}, status=500)
    response.headers.setdefault("Access-Control-Allow-Origin", "*")
    return response


def make_app() -> web.Application:
    return web.Application(middlewares=[errors_and_cors], client_max_size=MAX_BODY_BYTES)


# -- the fast path -------------------------------------------------------------------------

FAST_MAX_HEAD = 8190  # longer request heads go to aiohttp (its line/field limit is 8190)
FAST_MAX_FIELDS = 128  # aiohttp's max_headers
SMALL_BODY = 16 << 10  # bodies up to this go out in one write with their headers
_MSG_MORE = getattr(socket, "MSG_MORE", 0)  # headers wait for the body: one packet, not two

# A plain GET: request line, then fields (token ":" value without control characters), CRLF-separated.
_SIMPLE_GET = re.compile(rb"GET (/[A-Za-z0-9_./-]*) HTTP/1\.1"
                         rb"(?:\r\n[!#$%&'*+.^_`|~0-9A-Za-z-]+:[^\x00-\x08\x0a-\x1f\x7f]*)*")
# The fields that decide: a body, an expectation or an upgrade make a request not plain; Host
# must be there once, and fields aiohttp refuses to see twice (RFC 9110 singletons) must not repeat.
_FIELDS_OF_NOTE = re.compile(rb"\r\n(content-length|transfer-encoding|expect|upgrade|host|content-location"
                             rb"|content-range|content-type|etag|max-forwards|server|user-agent):")
_NOT_SIMPLE = frozenset((b"content-length", b"transfer-encoding", b"expect", b"upgrade"))
_CONNECTION = b"\r\nconnection:"


class SimpleGet(NamedTuple):
    target: str  # the path: "/" and [A-Za-z0-9_.-] only, no query
    close: bool  # the client sent "Connection: close"


def parse_simple_get(head: bytes) -> SimpleGet | None:
    """Sans-IO: a request head (without the blank line that ends it) if it is a plain
    ``GET /path HTTP/1.1`` with well-formed fields, one Host, no repeated singleton field, no
    body, no upgrade and no expectation;
    None for anything else, which aiohttp then parses and answers in full (errors included)."""
    m = _SIMPLE_GET.fullmatch(head)
    if m is None or head.count(b"\n") > FAST_MAX_FIELDS:
        return None  # not GET, not HTTP/1.1, a query, escapes, malformed fields, obs-fold, bare CR/LF
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
    return SimpleGet(m.group(1).decode("ascii"), close)


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
    """A 200 answer built once and sent many times, by the fast path or as an aiohttp response:
    its header lines, its body and, with ``file=True``, a memory file holding the body so the
    fast path can ``sendfile`` it. The file is the owner's to :meth:`close`; never changed."""

    __slots__ = ("headers", "body", "head", "fd")

    def __init__(self, body: bytes, content_type: str, cache_control: str, *, file: bool = False):
        self.headers = {"Cache-Control": cache_control, "Content-Type": content_type}
        self.body = body
        # In aiohttp's order, so both paths send the same bytes; Date and Server follow.
        self.head = (f"HTTP/1.1 200 OK\r\nCache-Control: {cache_control}\r\nContent-Type: {content_type}"
                     f"\r\nAccess-Control-Allow-Origin: *\r\nContent-Length: {len(body)}\r\n").encode()
        self.fd = _memory_file(body) if file else -1

    def response(self) -> web.Response:
        return web.Response(body=self.body, headers=self.headers)

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)


FastRoute = Callable[[str, str], Reply | None]  # (name after the prefix, client address)

_date: list[Any] = [0, b""]


def _date_server_lines() -> bytes:
    now = int(time.time())
    if now != _date[0]:
        _date[0] = now
        _date[1] = (f"Date: {email.utils.formatdate(now, usegmt=True)}\r\n"
                    f"Server: {SERVER_SOFTWARE}\r\n").encode()
    return _date[1]


class _FastConnection(asyncio.Protocol):
    """One client connection while it only asks for fast routes; then aiohttp's, for good.

    One timer bounds it: the first request head is due ``header_timeout_s`` after the accept, a
    started head ``header_timeout_s`` after its first byte, an idle keep-alive connection lasts
    ``keepalive_s``, and so does a client that stops reading its answers. The timer is moved
    only when a head is left incomplete, so a request that arrives whole costs no timer work."""

    def __init__(self, server: "HttpServer", ip: str):
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

    # -- asyncio callbacks -----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
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
            self._transport.resume_reading()
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
            request = parse_simple_get(bytes(buf[:end])) if end <= FAST_MAX_HEAD else None
            reply = None
            if request is not None:
                try:
                    reply = self._server._route(request.target, self._remote)
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
            self._send(reply, request.close)
            if request.close:
                transport.close()
                return

    def _send(self, reply: Reply, close: bool) -> None:
        transport = self._transport
        assert transport is not None
        head = reply.head + _date_server_lines() + (b"Connection: close\r\n\r\n" if close else b"\r\n")
        body = reply.body
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
        return self._transport is not None and not self._paused and not self._transport.is_closing()

    def evict(self) -> None:
        metrics.reject("http", "evicted")
        if self._transport is not None:
            self._transport.close()

    def _forget(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._sock is not None:
            self._sock.close()  # our duplicate only; the transport's socket stays open
            self._sock = None

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


_RESOURCE_ERRNOS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_REFUSED = {
    ConnectionCounts.PER_IP: (b"HTTP/1.1 429 Too Many Requests\r\nContent-Length: 0\r\n"
                              b"Connection: close\r\n\r\n", "conn_per_ip"),
    ConnectionCounts.FULL: (b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nRetry-After: 1\r\n"
                            b"Connection: close\r\n\r\n", "conn_full"),
}
ACCEPT_BATCH = 128  # connections accepted per wake-up of the listening socket
EVICT_SCAN = 64  # oldest connections looked at for an idle one to close when full
ACCEPT_BACKOFF_S = (0.05, 1.0)  # pause after accept() runs out of descriptors, doubling to the max
LOG_EVERY_S = 10.0


class HttpServer:
    """Owns the listening socket, every connection's admission and the aiohttp runner.

    Connections are accepted here, not by asyncio's server, so that each one is counted per IP and
    in total before it costs anything (see :mod:`mesh.http.limits`): over the per-IP cap it is
    refused at once (429, closed); when the node is full the longest-idle connection that is not
    in the middle of a request is closed to make room, else the new one is refused (503). When
    accept() itself fails for want of descriptors the server pauses accepting (50 ms doubling to
    1 s) and says so in one line per 10 s."""

    def __init__(self, app: web.Application, host: str, port: int, limits: HttpLimits | None = None):
        self.app, self.host, self.port = app, host, port
        self.limits = limits or HttpLimits()
        app[BODY_TIMEOUT_S] = self.limits.body_timeout_s
        self._runner: web.AppRunner | None = None
        self._aiohttp: web.Server | None = None
        self._handler_kwargs: dict[str, Any] = {}
        self._fast_routes: list[tuple[str, FastRoute]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._socks: list[socket.socket] = []  # listening
        self.counts = ConnectionCounts(0, 0, 0)
        self._conns: dict[Any, None] = {}  # open connections, least recently active first
        self._connecting: set[asyncio.Task[None]] = set()
        self._backoff_s = 0.0
        self._resume: asyncio.TimerHandle | None = None
        self._accept_log = LogBudget(LOG_EVERY_S)
        self._refuse_log = LogBudget(LOG_EVERY_S)
        self.accept_failures = 0  # accept() errors since start (the log says them in aggregate)

    def add_fast_get(self, prefix: str, route: FastRoute) -> None:
        """Serve ``GET {prefix}{name}`` (``name`` without ``/``) on the fast path when
        ``route(name, client_address)`` returns a :class:`Reply`. It must have the same effects
        (counters, viewers) as the aiohttp handler for that URL, and return None whenever that
        handler would do anything but answer 200 at once; aiohttp then answers. Before start()."""
        assert prefix.startswith("/") and prefix.endswith("/")
        self._fast_routes.append((prefix, route))

    def _route(self, target: str, remote: str) -> Reply | None:
        for prefix, route in self._fast_routes:
            if target.startswith(prefix):
                name = target[len(prefix):]
                if name and "/" not in name:
                    return route(name, remote)
        return None

    async def start(self) -> None:
        limits = self.limits
        nofile = raise_nofile_limit()
        total, fd_ceiling = connection_budget(limits, nofile)
        self.counts = ConnectionCounts(total, limits.max_connections_per_ip, fd_ceiling)
        self._handler_kwargs = {"access_log": None, "keepalive_timeout": limits.keepalive_s}
        self._runner = web.AppRunner(self.app, handle_signals=False, shutdown_timeout=2.0,
                                     **self._handler_kwargs)
        await self._runner.setup()
        self._aiohttp = self._runner.server
        self._loop = asyncio.get_running_loop()
        self._socks = _listen(self.host, self.port)
        self.port = self._socks[0].getsockname()[1]  # port 0: learn the one the OS gave us
        self._resume_accepting()
        log.info("http: at most %d connections (%d per IP; %d of %d descriptors kept for the rest), "
                 "heads within %g s, keep-alive %g s", total, limits.max_connections_per_ip,
                 nofile - fd_ceiling, nofile, limits.header_timeout_s, limits.keepalive_s)

    async def stop(self) -> None:
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        self._pause_accepting()
        for sock in self._socks:
            sock.close()
        self._socks = []
        for task in list(self._connecting):
            task.cancel()
        for conn in list(self._conns):
            if isinstance(conn, _FastConnection):
                conn.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def connections(self) -> int:
        return self.counts.total

    # -- accepting -------------------------------------------------------------------------
    def _accept(self, sock: socket.socket) -> None:
        counts, loop = self.counts, self._loop
        assert loop is not None
        for _ in range(ACCEPT_BATCH):
            try:
                conn, addr = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                self._accept_failed(exc)
                return
            self._backoff_s = 0.0
            ip = ip_key(str(addr[0])) if isinstance(addr, tuple) else str(addr or "?")
            verdict = counts.admit(ip, conn.fileno())
            if verdict == ConnectionCounts.FULL and self._evict_one():
                verdict = ConnectionCounts.OK
                self._say_full()
            if verdict != ConnectionCounts.OK:
                self._refuse(conn, verdict)
                continue
            counts.add(ip)
            task = loop.create_task(self._connect(conn, ip))
            self._connecting.add(task)
            task.add_done_callback(self._connecting.discard)

    async def _connect(self, conn: socket.socket, ip: str) -> None:
        assert self._loop is not None
        made: list[asyncio.Protocol] = []

        def factory() -> asyncio.Protocol:
            proto: asyncio.Protocol = (_FastConnection(self, ip) if self._fast_routes
                                       else self._aiohttp_handler(ip))
            made.append(proto)
            return proto
        try:
            conn.setblocking(False)
            await self._loop.connect_accepted_socket(factory, conn)
        except (OSError, asyncio.CancelledError):
            if not made:  # else the protocol's connection_lost gives the slot back
                self.counts.remove(ip)
                conn.close()

    def _refuse(self, conn: socket.socket, verdict: str) -> None:
        answer, reason = _REFUSED[verdict]
        metrics.reject("http", reason)
        try:
            conn.setblocking(False)
            conn.send(answer)
        except OSError:
            pass
        conn.close()
        self._say_full()

    def _say_full(self) -> None:
        """One line per 10 s while connections are refused or idle ones closed to make room."""
        assert self._loop is not None
        count = self._refuse_log.event(self._loop.time())
        if count:
            log.warning("HTTP connection caps reached: %d connection(s) refused or idle ones closed "
                        "to make room in the last %g s (at most %d per IP, %d in all; %d open); "
                        "counted in mesh_bad_input_total", count, LOG_EVERY_S,
                        self.counts.max_per_ip, self.counts.max_total, self.counts.total)

    def _accept_failed(self, exc: OSError) -> None:
        """accept() failed (out of descriptors or memory): pause accepting, say so once in a while."""
        loop = self._loop
        assert loop is not None
        if exc.errno in _RESOURCE_ERRNOS:
            self._evict_one()  # give a descriptor back, so the next accept can succeed
        self.accept_failures += 1
        low, high = ACCEPT_BACKOFF_S
        self._backoff_s = min(high, max(low, self._backoff_s * 2))
        count = self._accept_log.event(loop.time())
        if count:
            log.warning("accept() failed %d time(s) in the last %g s (%s); %d HTTP connections open; "
                        "accepting again in %g s. Raise the open-files limit (LimitNOFILE) or lower "
                        "http_max_connections", count, LOG_EVERY_S, exc.strerror or exc,
                        self.counts.total, self._backoff_s)
        self._pause_accepting()
        self._resume = loop.call_later(self._backoff_s, self._resume_accepting)

    def _pause_accepting(self) -> None:
        if self._loop is not None:
            for sock in self._socks:
                self._loop.remove_reader(sock.fileno())

    def _resume_accepting(self) -> None:
        self._resume = None
        if self._loop is not None:
            for sock in self._socks:
                self._loop.add_reader(sock.fileno(), self._accept, sock)

    def _evict_one(self) -> bool:
        """Close the least recently active connection that is between requests."""
        for n, conn in enumerate(self._conns):
            if n >= EVICT_SCAN:
                break
            if conn.evictable():
                del self._conns[conn]
                self.counts.remove(conn._ip)
                conn.evict()
                return True
        return False

    # -- the connections' bookkeeping (called by the connections) ---------------------------
    def _aiohttp_handler(self, ip: str) -> GuardedHandler:
        return GuardedHandler(self, ip, **self._handler_kwargs)

    def _opened(self, conn: Any) -> None:
        self._conns[conn] = None

    def _touch(self, conn: Any) -> None:
        if self._conns.pop(conn, False) is None:
            self._conns[conn] = None

    def _replace(self, old: Any, new: Any) -> None:
        """``new`` serves ``old``'s connection from now on (the same slot)."""
        if self._conns.pop(old, False) is None:
            self._conns[new] = None

    def _closed(self, conn: Any) -> None:
        if self._conns.pop(conn, False) is None:
            self.counts.remove(conn._ip)


def _listen(host: str, port: int) -> list[socket.socket]:
    """Listening sockets on every address ``host`` resolves to (as asyncio's create_server), all
    on one port (the first one's, when ``port`` is 0)."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    addrs = list(dict.fromkeys((family, addr) for family, _, _, _, addr in infos))
    socks: list[socket.socket] = []
    try:
        for family, addr in addrs:
            sock = socket.socket(family, socket.SOCK_STREAM)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and len(addrs) > 1:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if socks[0] is not sock:
                addr = (addr[0], socks[0].getsockname()[1], *addr[2:])
            sock.bind(addr)
            sock.listen(1024)
            sock.setblocking(False)
    except OSError:
        for sock in socks:
            sock.close()
        raise
    return socks
