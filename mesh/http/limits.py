"""What a stranger's HTTP connections may cost a node: the limits and the pure rules behind them.

The server (:mod:`mesh.http.server`) owns sockets and timers; this module only decides, with time
passed in:

- :class:`HttpLimits`: the configured budget (timeouts, head size, connection caps, fd reserve).
- :func:`connection_budget`: how many connections the process can afford, from its
  ``RLIMIT_NOFILE`` minus a reserve of descriptors kept for the bus, the database and files.
- :class:`ConnectionCounts`: per-IP and total admission (the caller evicts or refuses);
  :func:`ip_key` says what "one IP" is (an IPv6 /64).
- :class:`LogBudget`: at most one log line per interval, with the count of what it folds in.
- :func:`parse_error_reason`: a fixed counter word for an HTTP parse error (never peer text).
"""
from __future__ import annotations

import ipaddress
import resource
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

BODY_TIMEOUT_S = web.AppKey("mesh_http_body_timeout_s", float)  # the app's body timeout (HttpServer sets it)
MIN_CONNECTIONS = 64  # below this the fd reserve is cut to half the limit instead
# With max_connections = 0 (auto), at most this many whatever the open-files limit: an idle
# connection costs about 3 KB, one holding a full 16 KiB head about 40 KB as aiohttp parses it
# (measured), so about 660 MB at this cap.
AUTO_MAX_CONNECTIONS = 16384


@dataclass(frozen=True)
class HttpLimits:
    header_timeout_s: float = 10.0  # a request head must be complete this long after it starts
    keepalive_s: float = 75.0  # idle keep-alive connections are closed after this
    body_timeout_s: float = 20.0  # a request body must have arrived this long after its head
    max_head_bytes: int = 16 << 10  # bytes of one request head (line and fields)
    max_connections: int = 0  # 0: RLIMIT_NOFILE minus fd_reserve, at most AUTO_MAX_CONNECTIONS
    max_connections_per_ip: int = 512
    fd_reserve: int = 1024  # descriptors HTTP never takes (bus, database, files, RTMP)

    @classmethod
    def from_config(cls, cfg: Any) -> "HttpLimits":
        return cls(header_timeout_s=cfg.http_header_timeout_s, keepalive_s=cfg.http_keepalive_s,
                   body_timeout_s=cfg.http_body_timeout_s, max_head_bytes=cfg.http_max_head_bytes,
                   max_connections=cfg.http_max_connections,
                   max_connections_per_ip=cfg.http_max_connections_per_ip,
                   fd_reserve=cfg.http_fd_reserve)


def raise_nofile_limit() -> int:
    """Raise this process's soft ``RLIMIT_NOFILE`` to its hard limit; return the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    infinity = resource.RLIM_INFINITY
    if soft == infinity:
        return 1 << 20  # as good as unlimited; budget as if it were this
    target = 1 << 20 if hard == infinity else hard  # the kernel refuses more than nr_open anyway
    if soft >= target:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))  # the hard limit stays
        return target
    except (ValueError, OSError):
        return soft


def connection_budget(limits: HttpLimits, nofile: int) -> tuple[int, int]:
    """``(total, fd_ceiling)``: the most HTTP connections at once, and the descriptor number at or
    above which an accepted socket counts as "full" (fewer than the reserve would be left free;
    Linux hands out the lowest free number, so the number is the count of descriptors in use)."""
    reserve = limits.fd_reserve
    if nofile - reserve < MIN_CONNECTIONS:
        reserve = nofile // 2
    ceiling = nofile - reserve
    wanted = AUTO_MAX_CONNECTIONS if limits.max_connections <= 0 else limits.max_connections
    total = min(wanted, ceiling)
    return total, ceiling


class ConnectionCounts:
    """Open connections per IP and in total, and whether one more may come in."""

    OK, FULL, PER_IP = "ok", "full", "per_ip"

    def __init__(self, total: int, per_ip: int, fd_ceiling: int):
        self.max_total, self.max_per_ip, self.fd_ceiling = total, per_ip, fd_ceiling
        self.total = 0
        self.by_ip: dict[str, int] = {}

    def admit(self, ip: str, fd: int) -> str:
        """OK, PER_IP (refuse: this address has its share) or FULL (make room or refuse)."""
        if self.by_ip.get(ip, 0) >= self.max_per_ip:
            return self.PER_IP
        if self.total >= self.max_total or fd >= self.fd_ceiling:
            return self.FULL
        return self.OK

    def add(self, ip: str) -> None:
        self.total += 1
        self.by_ip[ip] = self.by_ip.get(ip, 0) + 1

    def remove(self, ip: str) -> None:
        n = self.by_ip.get(ip, 0) - 1
        if n > 0:
            self.by_ip[ip] = n
        else:
            self.by_ip.pop(ip, None)
        self.total = max(0, self.total - 1)


def ip_key(ip: str) -> str:
    """The address a per-IP cap counts: IPv4 as is (also when mapped into IPv6), IPv6 by its /64,
    since one subscriber usually holds a whole /64."""
    if ":" not in ip:
        return ip
    try:
        addr = ipaddress.IPv6Address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(ipaddress.IPv6Network((addr, 64), strict=False).network_address) + "/64"


class LogBudget:
    """One line per ``interval_s`` at most: :meth:`event` returns how many events the line due
    now stands for (this one included), or 0 when the line waits."""

    def __init__(self, interval_s: float):
        self.interval_s = interval_s
        self._next = float("-inf")
        self._pending = 0

    def event(self, now: float) -> int:
        self._pending += 1
        if now < self._next:
            return 0
        count, self._pending = self._pending, 0
        self._next = now + self.interval_s
        return count


_PARSE_REASONS = {
    "LineTooLong": "head_size", "BadStatusLine": "request_line", "BadHttpMethod": "method",
    "InvalidURLError": "target", "InvalidHeader": "header", "TransferEncodingError": "body",
    "ContentLengthError": "body", "ContentEncodingError": "body",
}


def parse_error_reason(exc: BaseException | None) -> str:
    """A fixed word for the bad-input counter from an aiohttp parse error."""
    if exc is None:
        return "malformed"
    for cls in type(exc).__mro__:
        reason = _PARSE_REASONS.get(cls.__name__)
        if reason:
            return reason
    return "malformed"


class ConnectionOwner(Protocol):
    """What a connection protocol (:mod:`.fastpath`, :mod:`.guarded`) needs of the server that
    accepted it (:class:`mesh.http.server.HttpServer`), so they do not import it."""

    limits: "HttpLimits"
    _aiohttp: Any

    def _opened(self, conn: Any) -> None: ...

    def _closed(self, conn: Any) -> None: ...

    def _touch(self, conn: Any) -> None: ...

    def _route(self, target: str, remote: str) -> Any: ...

    def _aiohttp_handler(self, ip: str) -> Any: ...

    def _replace(self, conn: Any, handler: Any) -> None: ...
