"""Recordings (VoDs) over REST and HTTP, shaped like Ant Media's ``vods`` API.

- ``GET /{app}/rest/v2/vods/list/{offset}/{size}``, ``GET …/vods/count``, ``GET …/vods/{id}``
- ``PUT /{app}/rest/v2/broadcasts/{id}/recording/{true|false}``: record that stream (or not),
  overriding the app's ``record_mp4``, from its next publish (authenticated); ``?rungs=true|false``
  also says whether its ladder's rungs are recorded (overriding ``record_rungs``)
- ``GET /{app}/vods/{id}.mp4``: the file, from any node. The origin that recorded it serves it
  from disk (with ranges); any other node streams it from that origin's ``http_url``.

Each recording names its ``rendition`` (``src``, or a rung such as ``360p600kbps``, whose
file is ``{streamId}_{rendition}-{epoch}-{start}.mp4``).
"""
from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from ..ladder import RENDITION_RE
from ..names import NAME_PATTERN
from ..registry import Registry
from .app import HttpError, json_response
from .auth import RestAuth
from .broadcasts import result, stream_id_arg
from .cluster import page_args

VOD_ID = re.compile(rf"{NAME_PATTERN}(?:_{RENDITION_RE.pattern})?-[0-9]{{1,10}}-[0-9]{{14}}")
PROXY_TIMEOUT_S = 30.0
CHUNK = 256 << 10


def _ms(value: Any) -> int | None:
    if isinstance(value, dt.datetime):
        return int((value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)).timestamp() * 1000)
    return None


def vod_json(doc: dict[str, Any], app: str, local: Path | None,
             alive: set[str] | None = None) -> dict[str, Any]:
    """A recording as Ant Media's VoD object. A recording whose origin died while it ran is
    ``interrupted`` (its file plays up to the last fragment written)."""
    size = doc.get("size") or 0
    status = doc.get("status")
    if status == "recording" and alive is not None and doc.get("origin_node") not in alive:
        status = "interrupted"
    if local is not None and local.is_file():
        size = local.stat().st_size  # what is on disk, also for a recording cut short
    return {"vodId": doc["_id"], "vodName": f"{doc['_id']}.mp4", "streamId": doc.get("stream_id"),
            "streamName": doc.get("stream_id"), "filePath": f"/{app}/vods/{doc['_id']}.mp4",
            "fileSize": size, "creationDate": doc.get("started_ms"), "duration": doc.get("duration_ms"),
            "type": "streamVod", "rendition": doc.get("rendition") or "src", "status": status,
            "originNode": doc.get("origin_node"),
            "updateTime": _ms(doc.get("updated_at"))}


def add_vod_routes(app: web.Application, registry: Registry, app_name: str, record_dir: Path,
                   auth: RestAuth) -> None:
    rest = f"/{app_name}/rest/v2"

    def local_file(vod_id: str) -> Path:
        return record_dir / f"{vod_id}.mp4"

    def vod_id_arg(request: web.Request) -> str:
        vod_id = request.match_info["id"]
        if not VOD_ID.fullmatch(vod_id):
            raise HttpError(400, "vod ids look like {streamId}-{epoch}-{YYYYmmddHHMMSS}", "path")
        return vod_id

    async def find(vod_id: str) -> dict[str, Any]:
        doc = await registry.get_vod(vod_id)
        if doc is None or doc.get("app") != app_name:
            raise HttpError(404, f"no recording {vod_id} in {app_name}", "notfound")
        return doc

    async def list_page(request: web.Request) -> web.Response:
        offset, size = page_args(request)
        docs = await registry.list_vods(app_name, offset, size)
        alive = await registry.alive_node_ids()
        return json_response([vod_json(d, app_name, local_file(d["_id"]), alive) for d in docs])

    async def count(request: web.Request) -> web.Response:
        return json_response({"number": await registry.count_vods(app_name)})

    async def get_one(request: web.Request) -> web.Response:
        vod_id = vod_id_arg(request)
        doc = await find(vod_id)
        return json_response(vod_json(doc, app_name, local_file(vod_id), await registry.alive_node_ids()))

    async def set_recording(request: web.Request) -> web.Response:
        auth.require(request)
        stream_id = stream_id_arg(request)
        flag = request.match_info["on"].lower()
        if flag not in ("true", "false"):
            raise HttpError(400, "use …/recording/true or …/recording/false", "path")
        if request.query.get("recordType", "mp4") != "mp4":
            raise HttpError(400, "only mp4 recording is supported", "query")
        rungs = request.query.get("rungs", "").lower()
        if rungs not in ("", "true", "false"):
            raise HttpError(400, "use ?rungs=true or ?rungs=false (record the ladder's rungs too, or not)",
                            "query")
        doc = await registry.get_stream(stream_id)
        if doc is None or doc.get("app") != app_name:
            raise HttpError(404, f"no broadcast {stream_id} in {app_name}", "notfound")
        fields = {"mp4_enabled": 1 if flag == "true" else -1}
        if rungs:
            fields["mp4_rungs"] = 1 if rungs == "true" else -1
        await registry.update_stream_fields(stream_id, app_name, fields)
        what = "recording" + (" of src and rungs" if rungs == "true" else "")
        return json_response(result(True, what + (" on" if flag == "true" else " off")
                                    + " from the stream's next publish", stream_id))

    async def download(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if not name.endswith(".mp4") or not VOD_ID.fullmatch(name[:-4]):
            raise HttpError(404, f"no such recording: {name[:100]}", "notfound")
        vod_id = name[:-4]
        path = local_file(vod_id)
        if path.is_file():
            return web.FileResponse(path, headers={"Content-Type": "video/mp4"})
        doc = await find(vod_id)
        node = await registry.get_node(str(doc.get("origin_node")))
        if node is None or not node.alive or not node.doc.get("http_url"):
            raise HttpError(503, f"the origin that recorded {vod_id} ({doc.get('origin_node')}) "
                                 f"is not alive; its file is on that machine", "unavailable")
        return await _proxy(request, f"{node.doc['http_url']}/{app_name}/vods/{name}")

    app.router.add_get(rest + "/vods/list/{offset}/{size}", list_page)
    app.router.add_get(rest + "/vods/count", count)
    app.router.add_get(rest + "/vods/{id}", get_one)
    app.router.add_put(rest + "/broadcasts/{id}/recording/{on}", set_recording)
    app.router.add_get(f"/{app_name}/vods/{{name}}", download)


async def _proxy(request: web.Request, url: str) -> web.StreamResponse:
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=PROXY_TIMEOUT_S)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.get(url) as upstream:
                if upstream.status != 200:
                    raise HttpError(502 if upstream.status >= 500 else upstream.status,
                                    f"the recording's origin answered {upstream.status}", "upstream")
                response = web.StreamResponse(headers={"Content-Type": "video/mp4"})
                if upstream.content_length is not None:
                    response.content_length = upstream.content_length
                await response.prepare(request)
                async for chunk in upstream.content.iter_chunked(CHUNK):
                    await response.write(chunk)
                await response.write_eof()
                return response
    except aiohttp.ClientError as exc:
        raise HttpError(502, f"could not fetch the recording from its origin ({type(exc).__name__})",
                        "upstream") from None
