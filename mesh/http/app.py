"""The node's HTTP layer (aiohttp): one application, routes added by the node's parts.

aiohttp rather than our own HTTP code: it is a well-kept asyncio server with keep-alive, request
size limits and a router; mesh adds JSON errors, CORS for browser players and counters.
Every error a client causes gets a JSON body ``{"error": ...}`` and a ``bad_input`` count.

One exception, for throughput: a part may register a *fast route* (the edge does, for HLS
playlists and segments), answered by :mod:`mesh.http.fastpath` without aiohttp until the first
request it does not handle. The server (:mod:`mesh.http.server`) owns the sockets and admits each
connection; strangers' costs are bounded on both paths (the budget is
:class:`~mesh.http.limits.HttpLimits`, written down in the README; aiohttp's side lives in
:mod:`mesh.http.guarded`). This module keeps the names parts import (``HttpServer``, ``Reply``).
"""
from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Awaitable, Callable

from aiohttp import web

from .. import metrics
from .fastpath import FAST_MAX_HEAD, FastConnection, FastRoute, Parking, Reply, SimpleGet, parse_simple_get
from .limits import BODY_TIMEOUT_S, HttpLimits
from .server import HttpServer

__all__ = ["BODY_TIMEOUT_S", "FAST_MAX_HEAD", "FastConnection", "FastRoute", "HttpError", "HttpServer",
           "Parking", "Reply", "SimpleGet", "json_error", "json_response", "make_app", "parse_simple_get"]

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
        response = json_error(exc.status, exc.message, exc.reason, exc.headers)
    except web.HTTPNotFound:
        response = json_error(404, f"no such resource: {request.path[:200]}", "notfound")
    except web.HTTPMethodNotAllowed as exc:
        response = json_error(405, f"method {request.method} not allowed here; use "
                                   f"{', '.join(sorted(exc.allowed_methods))}", "method")
    except web.HTTPRequestEntityTooLarge:  # found while reading the body above, before any handler
        message = f"request body larger than {MAX_BODY_BYTES} bytes"
        if "/rest/v2/" in request.path:  # the REST API's result shape (see mesh.http.broadcasts)
            metrics.reject("http", "body", "413 %s", message)
            response = json_response({"success": False, "message": message, "dataId": None}, status=413)
        else:
            response = json_error(413, message, "body")
    except web.HTTPException:
        raise
    except Exception:
        log.exception("error handling %s %s", request.method, request.path[:200])
        response = json_response({"error": "internal error; see the node's log"}, status=500)
    response.headers.setdefault("Access-Control-Allow-Origin", "*")
    return response


def make_app() -> web.Application:
    return web.Application(middlewares=[errors_and_cors], client_max_size=MAX_BODY_BYTES)
