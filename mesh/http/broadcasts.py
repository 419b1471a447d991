"""Broadcast REST endpoints, shaped like Ant Media's (``/{app}/rest/v2/broadcasts/...``).

- ``GET  /{app}/rest/v2/broadcasts/{id}``                  one stream (404 JSON if unknown)
- ``GET  /{app}/rest/v2/broadcasts/list/{offset}/{size}``  streams of the app
- ``POST /{app}/rest/v2/broadcasts/create``                ``{"streamId", "streamUrl"}``: pull a
  source (origins only; other nodes answer 409 naming an origin to ask)

With the database away they answer 503 with ``Retry-After`` (see :func:`.cluster.registry_503`).
"""
from __future__ import annotations

import datetime as dt
from typing import Any, Awaitable, Callable

from aiohttp import web

from ..errors import Conflict, Invalid, MeshError
from ..names import NAME_RULE, is_name
from ..registry import Registry
from .app import HttpError, json_response
from .cluster import page_args, registry_503

CreateHandler = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]  # -> stream document


def _ms(value: Any) -> int | None:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return int(value.timestamp() * 1000)
    return None


def broadcast_json(doc: dict[str, Any]) -> dict[str, Any]:
    settings = doc.get("settings") if isinstance(doc.get("settings"), dict) else {}
    renditions = doc.get("renditions") if isinstance(doc.get("renditions"), list) else []
    src = next((r for r in renditions if isinstance(r, dict) and r.get("name") == "src"), {})
    url = settings.get("streamUrl")
    return {
        "streamId": doc["_id"],
        "app": doc.get("app"),
        "status": doc.get("status"),
        "type": "streamSource" if url else "liveStream",
        "streamUrl": url,
        "originNode": doc.get("origin_node"),
        "epoch": doc.get("epoch", 0),
        "mediaSequence": doc.get("media_sequence", 0),
        "discontinuitySequence": doc.get("discontinuity_sequence", 0),
        "codecs": src.get("codecs"),
        "width": src.get("width"),
        "height": src.get("height"),
        "bitrateKbps": src.get("bitrate_kbps"),
        "startTime": _ms(doc.get("started_at")),
        "updateTime": _ms(doc.get("updated_at")),
        "finishTime": _ms(doc.get("finished_at")),
    }


def stream_id_arg(request: web.Request) -> str:
    stream_id = request.match_info["id"]
    if not is_name(stream_id):
        raise HttpError(400, f"stream ids use {NAME_RULE}", "path")
    return stream_id


def add_broadcast_routes(app: web.Application, registry: Registry, app_name: str,
                         create: CreateHandler | None, no_create_hint: Callable[[], Awaitable[str]]) -> None:
    base = f"/{app_name}/rest/v2/broadcasts"

    @registry_503
    async def get_one(request: web.Request) -> web.Response:
        stream_id = stream_id_arg(request)
        doc = await registry.get_stream(stream_id)
        if doc is None or doc.get("app") != app_name:
            raise HttpError(404, f"no stream {stream_id} in {app_name}", "notfound")
        return json_response(broadcast_json(doc))

    @registry_503
    async def list_page(request: web.Request) -> web.Response:
        offset, size = page_args(request)
        docs = await registry.list_streams(offset, size, app=app_name)
        return json_response([broadcast_json(d) for d in docs])

    @registry_503
    async def create_one(request: web.Request) -> web.Response:
        if create is None:
            raise HttpError(409, f"this node does not ingest; {await no_create_hint()}", "role")
        if request.content_type != "application/json":
            raise HttpError(415, "send a JSON body with Content-Type: application/json", "body")
        try:
            body = await request.json()
        except ValueError:
            raise HttpError(400, "the body is not valid JSON", "body") from None
        if not isinstance(body, dict):
            raise HttpError(400, 'the body must be a JSON object like {"streamId": "cam1", '
                                 '"streamUrl": "rtsp://camera/stream"}', "body")
        try:
            doc = await create(app_name, body)
        except Invalid as exc:
            raise HttpError(400, exc.message, exc.reason) from None
        except Conflict as exc:
            raise HttpError(409, exc.message, exc.reason) from None
        except MeshError as exc:
            raise HttpError(503, exc.message, exc.reason) from None
        return json_response(broadcast_json(doc))

    app.router.add_get(base + "/list/{offset}/{size}", list_page)
    app.router.add_post(base + "/create", create_one)
    app.router.add_get(base + "/{id}", get_one)
