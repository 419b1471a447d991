"""Cluster REST endpoints, shaped like Ant Media's so its users feel at home, plus health and metrics.

- ``GET /rest/v2/cluster/node-count`` → ``{"number": N}``
- ``GET /rest/v2/cluster/nodes/{offset}/{size}`` → list of nodes with ``status`` alive|dead

Both leave out nodes not seen for ``forget_after_s`` (``node_forget_after_s``, 10 minutes by
default): a node that died long ago is history, not cluster. Its document stays in the database,
and ``mesh cluster nodes --all`` still lists it.
- ``GET /healthz`` → this node's own health
- ``GET /metrics`` → Prometheus text

While the database is away, the registry calls fail fast and these answer ``503`` JSON with
``Retry-After`` (:func:`registry_503`), never a 500 or a hang.
"""
from __future__ import annotations

import functools
from typing import Any, Awaitable, Callable

import prometheus_client
from aiohttp import web

from ..registry import RETRY_AFTER_S, NodeView, Registry, RegistryUnavailable
from .app import HttpError, json_response
from .auth import RestAuth

MAX_PAGE = 1000
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def registry_503(handler: Handler) -> Handler:
    """A handler that reads the registry answers 503 with Retry-After when the database is away."""
    @functools.wraps(handler)
    async def call(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except RegistryUnavailable as exc:
            return json_response({"error": exc.message}, status=503,
                                 headers={"Retry-After": str(RETRY_AFTER_S)})
    return call


def page_args(request: web.Request) -> tuple[int, int]:
    try:
        offset = int(request.match_info["offset"])
        size = int(request.match_info["size"])
    except ValueError:
        raise HttpError(400, "offset and size must be whole numbers, e.g. /0/50", "path") from None
    if offset < 0 or size < 0 or offset > 10**9:
        raise HttpError(400, "offset and size must be 0 or more", "path")
    return offset, min(size, MAX_PAGE)


def node_json(view: NodeView, internal: bool = False) -> dict[str, Any]:
    """A node as the REST API shows it; its internal endpoints (bus, direct RTMP) only when
    ``internal`` (an authenticated caller)."""
    doc = view.doc
    load = doc.get("load") if isinstance(doc.get("load"), dict) else {}
    return {
        "id": view.node_id,
        "role": view.role,
        "host": view.host,
        "status": "alive" if view.alive else "dead",
        "lastUpdateTime": int(view.last_seen.timestamp() * 1000) if view.last_seen else None,
        "lastSeenAgoS": round(view.age_s, 1) if view.age_s is not None else None,
        "cpu": load.get("cpu"),
        "memory": load.get("memory"),
        "streams": load.get("streams"),
        "viewers": load.get("viewers"),
        "ingestKbps": load.get("ingest_kbps"),
        "egressKbps": load.get("egress_kbps"),
        "httpUrl": doc.get("http_url"),
        "version": doc.get("version"),
        **({"rtmpUrl": doc.get("rtmp_url") or None, "busEndpoint": doc.get("bus_endpoint") or None}
           if internal else {}),
    }


def add_cluster_routes(app: web.Application, registry: Registry,
                       health: Callable[[], dict[str, Any]], auth: RestAuth,
                       forget_after_s: float | None = None) -> None:
    @registry_503
    async def node_count(request: web.Request) -> web.Response:
        return json_response({"number": await registry.count_nodes_seen(forget_after_s)})

    @registry_503
    async def nodes(request: web.Request) -> web.Response:
        offset, size = page_args(request)
        internal = auth.authenticated(request)
        views = await registry.list_nodes_seen(offset, size, within_s=forget_after_s)
        return json_response([node_json(v, internal) for v in views])

    async def healthz(request: web.Request) -> web.Response:
        report = health()
        return json_response(report, status=200 if report.get("status") == "ok" else 503)

    async def metrics(request: web.Request) -> web.Response:
        body = prometheus_client.generate_latest()
        return web.Response(body=body, headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST})

    app.router.add_get("/rest/v2/cluster/node-count", node_count)
    app.router.add_get("/rest/v2/cluster/nodes/{offset}/{size}", nodes)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
