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
"""
from __future__ import annotations

import asyncio
import email.utils
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

log = logging.getLogger("mesh.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

MAX_BODY_BYTES = 64 << 10
MAX_QUERY_BYTES = 2048


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(text=json.dumps(data, default=str), status=status,
                        content_type="application/json", headers=headers)


def json_error(status: int, message: str, reason: str = "request",
               headers: dict[str, str] | None = None) -> web.Response:
    if 400 <= status < 500:
        metrics.reject("http", reason, "%d %s", status, message)
    return json_response({"error": message}, status=status, headers=headers)


class HttpError(Exception):
    """Raised by handlers to answer with a JSON error."""

    def __init__(self, status: int, message: str, reason: str = "request",
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.reason = status, message, reason
        self.headers = headers


@web.middleware
async def errors_and_cors(request: web.Request, handler: Handler) -> web.StreamResponse:
    if len(request.query_string) > MAX_QUERY_BYTES:
        return json_error(414, f"query string longer than {MAX_QUERY_BYTES} bytes", "query")
    try:
        response = await handler(request)
    except HttpError as exc:
        response = json_error(exc.status, exc.message, exc.reason, exc.headers)
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
KEEPALIVE_S = 3630.0  # idle keep-alive connections are closed after this (aiohttp's default)
SMALL_BODY = 16 << 10  # bodies up to this go out in one write with their headers
_MSG_MORE = getattr(socket, "MSG_MORE", 0)  # headers wait for the body: one packet, not two

# A plain GET: request line, then fields (token ":" value without control characters), CRLF-separated.
_SIMPLE_GET = re.compile(rb"GET (/[A-Za-z0-9_./-]*) HTTP/1\.1"
                         rb"(?:\r\n[!#$%&'*+.^_`|~0-9A-Za-z-]+:[^\x00-\x08\x0a-\x1f\x7f]*)*")
_NOT_SIMPLE = (b"\r\ncontent-length:", b"\r\ntransfer-encoding:", b"\r\nexpect:", b"\r\nupgrade:")
_CONNECTION = b"\r\nconnection:"


class SimpleGet(NamedTuple):
    target: str  # the path: "/" and [A-Za-z0-9_.-] only, no query
    close: bool  # the client sent "Connection: close"


def parse_simple_get(head: bytes) -> SimpleGet | None:
    """Sans-IO: a request head (without the blank line that ends it) if it is a plain
    ``GET /path HTTP/1.1`` with well-formed fields, no body, no upgrade and no expectation;
    None for anything else, which aiohttp then parses and answers in full (errors included)."""
    m = _SIMPLE_GET.fullmatch(head)
    if m is None or head.count(b"\n") > FAST_MAX_FIELDS:
        return None  # not GET, not HTTP/1.1, a query, escapes, malformed fields, obs-fold, bare CR/LF
    low = head.lower()
    for field in _NOT_SIMPLE:
        if field in low:
            return None  # a body, an expectation or an upgrade
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
    """One client connection while it only asks for fast routes; then aiohttp's, for good."""

    def __init__(self, server: "HttpServer"):
        self._server = server
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._fd = -1
        self._sock: socket.socket | None = None  # our duplicate of the socket, for send() flags
        self._remote = "?"
        self._paused = False
        self._last = 0.0
        self._idle: asyncio.TimerHandle | None = None

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
        self._remote = str(peer[0]) if isinstance(peer, (tuple, list)) else str(peer or "?")
        self._server._fast_connections.add(self)
        self._last = self._loop.time()
        self._idle = self._loop.call_at(self._last + KEEPALIVE_S, self._check_idle)

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if not self._paused:
            self._serve()

    def eof_received(self) -> bool:
        return False  # close

    def connection_lost(self, exc: Exception | None) -> None:
        self._forget()

    def pause_writing(self) -> None:
        # The client is not reading: stop reading its requests until it catches up.
        self._paused = True
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        self._paused = False
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()
            self._serve()

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
        handler = self._server._aiohttp()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        data, self._buf = bytes(self._buf), bytearray()
        if data:
            handler.data_received(data)

    def _check_idle(self) -> None:
        due = self._last + KEEPALIVE_S
        if self._loop.time() >= due:
            self._idle = None
            if self._transport is not None:
                self._transport.close()
        else:
            self._idle = self._loop.call_at(due, self._check_idle)

    def _forget(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if self._sock is not None:
            self._sock.close()  # our duplicate only; the transport's socket stays open
            self._sock = None
        self._server._fast_connections.discard(self)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class HttpServer:
    """Owns the aiohttp runner and its listening socket (and the fast path's connections)."""

    def __init__(self, app: web.Application, host: str, port: int):
        self.app, self.host, self.port = app, host, port
        self._runner: web.AppRunner | None = None
        self._server: asyncio.AbstractServer | None = None
        self._aiohttp: web.Server | None = None
        self._fast_routes: list[tuple[str, FastRoute]] = []
        self._fast_connections: set[_FastConnection] = set()

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
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False,
                                     shutdown_timeout=2.0)
        await self._runner.setup()
        self._aiohttp = self._runner.server
        assert self._aiohttp is not None
        factory: Callable[[], asyncio.BaseProtocol] = self._aiohttp
        if self._fast_routes:
            factory = lambda: _FastConnection(self)  # noqa: E731
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(factory, self.host, self.port, reuse_address=True,
                                                backlog=1024)
        if self._server.sockets:  # port 0: learn the one the OS gave us
            self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for conn in list(self._fast_connections):
            conn.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
