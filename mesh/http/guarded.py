"""aiohttp's request handler with the node's bounds: a head timeout, a head size cap, one counted
line instead of a traceback for a malformed request, and the connection's slot given back.

aiohttp bounds idle keep-alive (``keepalive_timeout``) but lets a request head arrive as slowly as
the client likes. Here a head (from its first byte, or from the accept for a connection's first
request) must be complete within ``header_timeout_s`` and ``max_head_bytes``, and a client that
stops reading an answer is dropped after ``keepalive_s``. "Waiting for a head"
means every request parsed so far (counted from aiohttp's message queue as it grows) has had its
response finished (``finish_response``), none is queued or running, and the connection is not
upgraded; the tests in
tests/test_http_bounds.py fail if a new aiohttp changes those hooks.
"""
from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Any

from aiohttp import http_exceptions, web
from aiohttp.streams import EMPTY_PAYLOAD
from aiohttp.web_protocol import _ErrInfo

from .. import metrics
from .limits import LogBudget, parse_error_reason

if TYPE_CHECKING:
    from .limits import ConnectionOwner

log = logging.getLogger("mesh.http")

_HEAD_TOO_LARGE_BODY = b'{"error": "request head too large; send a shorter one"}'
HEAD_TOO_LARGE = (b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                  % (len(_HEAD_TOO_LARGE_BODY), _HEAD_TOO_LARGE_BODY))

_malformed_log = LogBudget(60.0)


class GuardedHandler(web.RequestHandler):
    """One aiohttp connection of an :class:`~mesh.http.server.HttpServer`."""

    def __init__(self, owner: "ConnectionOwner", ip: str, **kwargs: Any):
        assert owner._aiohttp is not None
        super().__init__(owner._aiohttp, loop=asyncio.get_running_loop(), **kwargs)
        self._owner = owner
        self._ip = ip
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._in_flight = 0  # requests parsed whose response is not finished yet
        self._send_timer: asyncio.TimerHandle | None = None

    # -- state -----------------------------------------------------------------------------
    def _waiting_for_head(self) -> bool:
        # _messages and _request_in_progress also cover requests parsed outside data_received
        # (the tail of a declined upgrade, parsed in finish_response)
        return (self._in_flight == 0 and not self._messages and not self._request_in_progress
                and not self._upgraded)

    def evictable(self) -> bool:
        return self.transport is not None and self._waiting_for_head()

    def evict(self) -> None:
        metrics.reject("http", "evicted")
        self.force_close()

    # -- asyncio callbacks -----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._owner._opened(self)
        self._arm()  # the first head is due header_timeout_s after the accept

    def data_received(self, data: bytes) -> None:
        if data and self.transport is not None and self._waiting_for_head():
            if self._head_timer is None:
                self._arm()
            end = data.find(b"\r\n\r\n")
            # what counts is the head: body bytes that came in the same read do not
            self._head_bytes += len(data) if end < 0 else end + 4
            if self._head_bytes > self._owner.limits.max_head_bytes:
                metrics.reject("http", "head_size")
                self.transport.write(HEAD_TOO_LARGE)
                self.force_close()
                return
        queued = len(self._messages)
        super().data_received(data)
        self._in_flight += max(0, len(self._messages) - queued)
        for i in range(queued, len(self._messages)):
            message = self._messages[i][0]
            if not isinstance(message, _ErrInfo) and (message.url is None or message.method == "CONNECT"):
                # aiohttp parses "CONNECT host:port" (and "CONNECT" with no target, into a
                # request without a URL, which breaks its handler): answered as its parse errors are
                self._messages[i] = (_ErrInfo(status=501, exc=http_exceptions.BadHttpMethod("CONNECT"),
                                              message="CONNECT is not served here (a node is no proxy)"),
                                     EMPTY_PAYLOAD)
        if self._head_timer is not None and not self._waiting_for_head():
            self._head_timer.cancel()
            self._head_timer = None
            self._head_bytes = 0
        self._owner._touch(self)

    def connection_lost(self, exc: BaseException | None) -> None:
        for timer in (self._head_timer, self._send_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._send_timer = None
        self._owner._closed(self)
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        # The client is not reading its answer: it has keepalive_s to take some of it.
        super().pause_writing()
        if self._send_timer is None and self.transport is not None:
            self._send_timer = self._loop.call_later(self._owner.limits.keepalive_s, self._stalled)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    def _stalled(self) -> None:
        self._send_timer = None
        if self.transport is not None:
            metrics.reject("http", "send_timeout")
            self.transport.abort()  # close() would wait for the client to read what is queued

    async def finish_response(self, request: Any, resp: Any, start_time: float | None) -> Any:
        try:
            return await super().finish_response(request, resp, start_time)
        finally:
            self._in_flight = max(0, self._in_flight - 1)

    # -- the head timeout ------------------------------------------------------------------
    def _arm(self) -> None:
        self._head_bytes = 0
        self._head_timer = self._loop.call_later(self._owner.limits.header_timeout_s, self._timed_out)

    def _timed_out(self) -> None:
        self._head_timer = None
        if self.transport is None or not self._waiting_for_head():
            return
        metrics.reject("http", "header_timeout" if self._head_bytes else "idle_timeout")
        self.force_close()

    # -- malformed requests: counted, one line, no traceback -------------------------------
    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if status >= 500 and not isinstance(exc, http_exceptions.HttpProcessingError):
            return super().handle_error(request, status, exc, message)  # our bug: aiohttp logs it
        reason = parse_error_reason(exc)
        metrics.reject("http", reason)
        count = _malformed_log.event(self._loop.time())
        if count:
            log.warning("%d malformed HTTP request(s) answered %d in the last minute (latest: %s); "
                        "counted in mesh_bad_input_total{boundary=\"http\"}", count, status, reason)
        if request.writer.output_size > 0:
            raise ConnectionError("the answer had begun; the connection is dropped instead")
        lines = (message or getattr(exc, "message", "") or "").strip().splitlines()
        what = lines[0][:300].rstrip(".: ") if lines else "malformed request"
        text = json.dumps({"error": f"{what}; send a well-formed HTTP/1.1 request"})
        response = web.Response(status=status, text=text, content_type="application/json")
        response.force_close()
        return response
