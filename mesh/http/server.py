"""The node's HTTP server: the listening sockets, every connection's admission, the aiohttp runner.

Connections are accepted here, not by asyncio's server, so that each one is counted per IP and in
total before it costs anything (the rules are in :mod:`mesh.http.limits`). A connection is served
by :class:`~mesh.http.fastpath.FastConnection` when a part registered fast routes, else by aiohttp's
handler with the node's bounds (:class:`~mesh.http.guarded.GuardedHandler`).
"""
from __future__ import annotations

import asyncio
import errno
import logging
import socket
from typing import Any

from aiohttp import web

from .. import metrics
from .fastpath import FastConnection, FastRoute, Parking, Reply
from .guarded import GuardedHandler
from .limits import (BODY_TIMEOUT_S, ConnectionCounts, HttpLimits, LogBudget, connection_budget, ip_key,
                     raise_nofile_limit)

log = logging.getLogger("mesh.http")

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
        self._fast_routes: list[tuple[str, FastRoute, bool]] = []
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

    def add_fast_get(self, prefix: str, route: FastRoute, *, queries: bool = False) -> None:
        """Serve ``GET {prefix}{name}`` (``name`` without ``/``) on the fast path when
        ``route(name, client_address)`` returns a :class:`Reply`. It must have the same effects
        (counters, viewers) as the aiohttp handler for that URL, and return None whenever that
        handler would do anything but answer that reply; aiohttp then answers. With
        ``queries=True`` it is also asked ``route(name, client_address, query)`` for plain queries
        (see :func:`~mesh.http.fastpath.parse_simple_get`) and may return a
        :class:`~mesh.http.fastpath.Parking` to answer later. Before start()."""
        assert prefix.startswith("/") and prefix.endswith("/")
        self._fast_routes.append((prefix, route, queries))

    def _route(self, target: str, remote: str, query: str = "") -> Reply | Parking | None:
        for prefix, route, queries in self._fast_routes:
            if target.startswith(prefix):
                name = target[len(prefix):]
                if name and "/" not in name:
                    if not query:
                        return route(name, remote)
                    return route(name, remote, query) if queries else None
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
            if isinstance(conn, FastConnection):
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
            proto: asyncio.Protocol = (FastConnection(self, ip) if self._fast_routes
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
