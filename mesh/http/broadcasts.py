"""Broadcast REST endpoints, shaped like Ant Media's v2 API so scripts written for it work.

Under ``/{app}/rest/v2/broadcasts``:

- ``GET  /{id}``, ``GET /list/{offset}/{size}``: broadcasts (Ant Media's field names)
- ``GET  /count``, ``GET /active-live-stream-count``: ``{"number": N}``
- ``POST /create``: without ``streamUrl`` a broadcast a publisher will go live on (``created``,
  type ``liveStream``, any node); with ``streamUrl`` a pulled source (type ``streamSource``; an
  origin starts pulling at once unless ``?autoStart=false``; other nodes answer 409 naming one)
- ``PUT  /{id}``: ``name``, ``description``; ``streamUrl`` of a source while it is not live
- ``DELETE /{id}``: removes a broadcast no live origin broadcasts (409 while it is live)
- ``POST /{id}/start``: start pulling a stream source; ``POST /{id}/stop``: stop a pull or
  disconnect an RTMP publisher. Either may land on any node: it is relayed to the origin that
  owns the stream (or any origin, to start) over HTTP (:mod:`.relay`).
- ``GET  /{id}/broadcast-statistics``, ``GET /total-broadcast-statistics``, ``GET /{id}/stream-info``
- ``GET  /{app}/rest/v2/version`` and ``GET /rest/v2/version``

Actions answer Ant Media's result shape ``{"success": bool, "message": str, "dataId": str}``, and
so does every error under ``/{app}/rest/v2/`` (with a meaningful HTTP status). Calls that change
state pass :class:`~.auth.RestAuth` first (an allowed network or a REST token).
"""
from __future__ import annotations

import datetime as dt
import secrets as _secrets
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Sequence

from aiohttp import web

from .. import __version__, metrics
from ..errors import Conflict, Invalid, MeshError, NotFound, Unavailable
from ..names import NAME_RULE, is_name
from ..registry import BROADCASTING, RETRY_AFTER_S, Registry, RegistryUnavailable
from .app import MAX_BODY_BYTES, HttpError, json_response
from .auth import RestAuth
from .cluster import page_args
from .relay import RELAYED, relay

CreateHandler = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]  # -> stream document
MAX_TEXT = 1024  # name and description


@dataclass
class BroadcastActions:
    """What this node can do for the broadcast API (the origin's parts, when it has them)."""

    node_id: str
    create_pull: CreateHandler | None  # start pulling a source here
    stop_stream: Callable[[str], Awaitable[str]] | None  # stop a stream live here
    check_url: Callable[[Any], Awaitable[str]] | None  # judge a pull source's URL
    no_create_hint: Callable[[], Awaitable[str]]  # where to send a create this node cannot do
    secrets: Sequence[str] = ()  # signs relayed calls


# -- shapes --------------------------------------------------------------------------------------

def result(success: bool, message: str = "", data_id: str | None = None) -> dict[str, Any]:
    return {"success": success, "message": message, "dataId": data_id}


def result_error(status: int, message: str, reason: str = "request", data_id: str | None = None,
                 headers: dict[str, str] | None = None) -> web.Response:
    if 400 <= status < 500:
        metrics.reject("http", reason, "%d %s", status, message)
    return json_response(result(False, message, data_id), status=status, headers=headers)


def _ms(value: Any) -> int | None:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return int(value.timestamp() * 1000)
    return None


@dataclass
class ClusterView:
    """What a broadcast's JSON needs from beyond its document: the time, hosts, viewers."""

    now: dt.datetime | None = None
    hosts: dict[str, str] | None = None  # node id -> host
    viewers: dict[str, int] | None = None  # stream id -> HLS viewers on alive edges


def broadcast_json(doc: dict[str, Any], view: ClusterView | None = None) -> dict[str, Any]:
    view = view or ClusterView()
    settings = doc.get("settings") if isinstance(doc.get("settings"), dict) else {}
    renditions = doc.get("renditions") if isinstance(doc.get("renditions"), list) else []
    src = next((r for r in renditions if isinstance(r, dict) and r.get("name") == "src"), {})
    url = settings.get("streamUrl")
    origin = doc.get("origin_node")
    start, finish = _ms(doc.get("started_at")), _ms(doc.get("finished_at"))
    now = _ms(view.now)
    status = doc.get("status")
    duration = None
    if start is not None:
        end = now if status == BROADCASTING else finish
        duration = max(0, end - start) if end is not None else None
    bitrate = src.get("average_bps") or (src.get("bitrate_kbps") or 0) * 1000 or None
    return {
        "streamId": doc["_id"],
        "app": doc.get("app"),
        "status": status,
        "type": "streamSource" if url else "liveStream",
        "publishType": ("Pull" if url else "RTMP") if start is not None else None,
        "name": doc.get("name") or doc["_id"],
        "description": doc.get("description") or "",
        "streamUrl": url,
        "originAdress": (view.hosts or {}).get(origin) if origin else None,  # sic: Ant Media's name
        "originNode": origin,
        "hlsViewerCount": (view.viewers or {}).get(doc["_id"], 0),
        "webRTCViewerCount": 0, "rtmpViewerCount": 0, "dashViewerCount": 0,
        "date": _ms(doc.get("created_at")),
        "startTime": start,
        "duration": duration,
        "bitrate": bitrate,
        "epoch": doc.get("epoch", 0),
        "mediaSequence": doc.get("media_sequence", 0),
        "discontinuitySequence": doc.get("discontinuity_sequence", 0),
        "codecs": src.get("codecs"),
        "width": src.get("width"),
        "height": src.get("height"),
        "bitrateKbps": src.get("bitrate_kbps"),
        "renditions": [_rendition_json(r) for r in renditions if isinstance(r, dict)],
        "droppedRenditions": [{"name": d.get("name"), "why": d.get("why")}
                              for d in (doc.get("dropped_renditions") or []) if isinstance(d, dict)],
        "updateTime": _ms(doc.get("updated_at")),
        "finishTime": finish,
    }


def _rendition_json(r: dict[str, Any]) -> dict[str, Any]:
    return {"name": r.get("name"), "width": r.get("width"), "height": r.get("height"),
            "bitrateKbps": r.get("bitrate_kbps"), "codecs": r.get("codecs"), "frameRate": r.get("frame_rate"),
            "peakBps": r.get("peak_bps"), "averageBps": r.get("average_bps")}


def stream_info_json(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Ant Media's ``stream-info``: one entry per rendition of a live stream."""
    if doc.get("status") != BROADCASTING:
        return []
    out = []
    for r in doc.get("renditions") or []:
        if not isinstance(r, dict):
            continue
        codecs = str(r.get("codecs") or "")
        bps = r.get("average_bps") or (r.get("bitrate_kbps") or 0) * 1000
        out.append({"streamId": doc["_id"], "rendition": r.get("name"),
                    "videoWidth": r.get("width") or 0, "videoHeight": r.get("height") or 0,
                    "videoBitrate": int(bps or 0), "audioBitrate": int(r.get("audio_bps") or 0),
                    "videoCodec": "H264" if "avc1" in codecs else None,
                    "audioCodec": "AAC" if "mp4a" in codecs else None, "codecs": codecs or None})
    return out


def statistics_json(hls_viewers: int) -> dict[str, int]:
    return {"totalRTMPWatchersCount": 0, "totalHLSWatchersCount": hls_viewers,
            "totalWebRTCWatchersCount": 0, "totalDASHWatchersCount": 0}


def stream_id_arg(request: web.Request) -> str:
    stream_id = request.match_info["id"]
    if not is_name(stream_id):
        raise HttpError(400, f"stream ids use {NAME_RULE}", "path")
    return stream_id


def _text(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise HttpError(400, f"{key} must be text of at most {MAX_TEXT} characters", "body")
    return value


async def json_body(request: web.Request, required: bool = True) -> dict[str, Any]:
    if not request.body_exists:
        if required:
            raise HttpError(400, "send a JSON object in the body", "body")
        return {}
    if request.content_type != "application/json":
        raise HttpError(415, "send a JSON body with Content-Type: application/json", "body")
    try:
        body = await request.json()
    except ValueError:
        raise HttpError(400, "the body is not valid JSON", "body") from None
    except web.HTTPRequestEntityTooLarge:
        raise HttpError(413, f"request body larger than {MAX_BODY_BYTES} bytes", "body") from None
    if body is None and not required:
        return {}
    if not isinstance(body, dict):
        raise HttpError(400, 'the body must be a JSON object like {"streamId": "cam1", '
                             '"streamUrl": "rtsp://camera/stream"}', "body")
    return body


def _domain(exc: MeshError) -> HttpError:
    status = {Invalid: 400, NotFound: 404, Conflict: 409, Unavailable: 503}.get(type(exc), 503)
    return HttpError(status, exc.message, exc.reason)


# -- routes ---------------------------------------------------------------------------------------

def add_broadcast_routes(app: web.Application, registry: Registry, app_name: str,
                         actions: BroadcastActions, auth: RestAuth) -> None:
    rest = f"/{app_name}/rest/v2/"
    base = rest + "broadcasts"

    @web.middleware
    async def result_errors(request: web.Request, handler: Any) -> web.StreamResponse:
        """Errors under /{app}/rest/v2/ in Ant Media's result shape (the rest of the node keeps
        the house's ``{"error": ...}``)."""
        if not request.path.startswith(rest):
            return await handler(request)
        data_id = request.match_info.get("id")
        try:
            return await handler(request)
        except HttpError as exc:
            return result_error(exc.status, exc.message, exc.reason, data_id, exc.headers)
        except RegistryUnavailable as exc:  # the database is away: a quick 503, try again soon
            return result_error(503, exc.message, exc.reason, data_id, {"Retry-After": str(RETRY_AFTER_S)})
        except MeshError as exc:
            err = _domain(exc)
            return result_error(err.status, err.message, err.reason, data_id)
        except web.HTTPNotFound:
            return result_error(404, f"no such resource: {request.path[:200]}", "notfound")
        except web.HTTPMethodNotAllowed as exc:
            return result_error(405, f"method {request.method} not allowed here; use "
                                     f"{', '.join(sorted(exc.allowed_methods))}", "method", data_id)
        except web.HTTPRequestEntityTooLarge:
            return result_error(413, f"request body larger than {MAX_BODY_BYTES} bytes", "body")

    app.middlewares.append(result_errors)

    async def cluster_view() -> ClusterView:
        hosts: dict[str, str] = {}
        viewers: dict[str, int] = {}
        for node in await registry.list_nodes():
            hosts[node.node_id] = node.host
            load = node.doc.get("load") if isinstance(node.doc.get("load"), dict) else {}
            per_stream = load.get("stream_viewers")
            if node.alive and isinstance(per_stream, dict):
                for sid, n in per_stream.items():
                    if isinstance(sid, str) and isinstance(n, int) and n > 0:
                        viewers[sid] = viewers.get(sid, 0) + n
        return ClusterView(await registry.server_time(), hosts, viewers)

    async def find(stream_id: str) -> dict[str, Any]:
        doc = await registry.get_stream(stream_id)
        if doc is None or doc.get("app") != app_name:
            raise HttpError(404, f"no broadcast {stream_id} in {app_name}", "notfound")
        return doc

    async def get_one(request: web.Request) -> web.Response:
        doc = await find(stream_id_arg(request))
        return json_response(broadcast_json(doc, await cluster_view()))

    async def list_page(request: web.Request) -> web.Response:
        offset, size = page_args(request)
        docs = await registry.list_streams(offset, size, app=app_name)
        view = await cluster_view()
        return json_response([broadcast_json(d, view) for d in docs])

    async def count(request: web.Request) -> web.Response:
        return json_response({"number": await registry.count_streams(app_name)})

    async def active_count(request: web.Request) -> web.Response:
        return json_response({"number": await registry.count_live_streams(app_name)})

    async def create_one(request: web.Request) -> web.Response:
        auth.require(request)
        body = await json_body(request, required=False)
        name, description = _text(body, "name"), _text(body, "description")
        extra = {k: v for k, v in (("name", name), ("description", description)) if v is not None}
        stream_id = body.get("streamId") or f"stream{_secrets.token_hex(4)}"
        if not isinstance(stream_id, str) or not is_name(stream_id):
            raise HttpError(400, f"streamId must be {NAME_RULE}", "body")
        url = body.get("streamUrl")
        if url is None:  # a broadcast a publisher will go live on
            doc = await registry.insert_stream(stream_id, app_name, extra)
            if doc is None:
                raise HttpError(400, f"stream id {stream_id} is already used; pick another or "
                                     f"DELETE the old broadcast first", "busy")
            return json_response(broadcast_json(doc, await cluster_view()))
        if actions.create_pull is None or actions.check_url is None:
            raise HttpError(409, f"this node does not ingest; {await actions.no_create_hint()}", "role")
        if request.query.get("autoStart", "true").lower() == "false":
            await actions.check_url(url)  # judged now, and again when it starts
            doc = await registry.insert_stream(stream_id, app_name, {**extra, "settings": {"streamUrl": url}})
            if doc is None:
                raise HttpError(400, f"stream id {stream_id} is already used", "busy")
            return json_response(broadcast_json(doc, await cluster_view()))
        doc = await actions.create_pull(app_name, {"streamId": stream_id, "streamUrl": url})
        if extra:
            await registry.update_stream_fields(stream_id, app_name, extra)
            doc = await registry.get_stream(stream_id) or doc
        return json_response(broadcast_json(doc, await cluster_view()))

    async def update_one(request: web.Request) -> web.Response:
        auth.require(request)
        stream_id = stream_id_arg(request)
        doc = await find(stream_id)
        body = await json_body(request)
        fields: dict[str, Any] = {}
        for key in ("name", "description"):
            value = _text(body, key)
            if value is not None:
                fields[key] = value
        url = body.get("streamUrl")
        changes_url = url is not None and url != (doc.get("settings") or {}).get("streamUrl")
        if url is not None and not changes_url:
            fields["settings.streamUrl"] = url  # the same source again: nothing to judge
        if changes_url:
            if doc.get("status") == BROADCASTING:
                raise HttpError(409, f"{stream_id} is live; POST {base}/{stream_id}/stop before "
                                     f"changing its streamUrl", "busy")
            if actions.check_url is None:
                raise HttpError(409, f"only an origin can judge a streamUrl; "
                                     f"{await actions.no_create_hint()}", "role")
            await actions.check_url(url)
            fields["settings.streamUrl"] = url
        unknown = sorted(set(body) - {"name", "description", "streamUrl", "streamId"})
        if not fields:
            raise HttpError(400, "nothing to update: send name, description or streamUrl"
                            + (f" (ignored: {', '.join(unknown)[:200]})" if unknown else ""), "body")
        if not await registry.update_stream_fields(stream_id, app_name, fields,
                                                   unless_live=changes_url):
            raise HttpError(409, f"{stream_id} went live meanwhile; stop it first", "busy")
        return json_response(result(True, "updated", stream_id))

    async def delete_one(request: web.Request) -> web.Response:
        auth.require(request)
        stream_id = stream_id_arg(request)
        doc = await find(stream_id)
        if doc.get("status") == BROADCASTING or not await registry.delete_stream(stream_id, app_name):
            raise HttpError(409, f"{stream_id} is live on {doc.get('origin_node')}; "
                                 f"POST {base}/{stream_id}/stop first", "busy")
        return json_response(result(True, "deleted", stream_id))

    async def start_one(request: web.Request) -> web.Response:
        auth.require(request)
        stream_id = stream_id_arg(request)
        doc = await find(stream_id)
        url = (doc.get("settings") or {}).get("streamUrl")
        if not url:
            raise HttpError(400, f"{stream_id} is a liveStream: it starts when its publisher "
                                 f"connects over RTMP; only stream sources are started", "body")
        if doc.get("status") == BROADCASTING:
            raise HttpError(409, f"{stream_id} is already live on {doc.get('origin_node')}", "busy")
        if actions.create_pull is not None:
            await actions.create_pull(app_name, {"streamId": stream_id, "streamUrl": url})
            return json_response(result(True, "started", stream_id))
        if request.headers.get(RELAYED):
            raise HttpError(409, f"{actions.node_id} is not an origin", "role")
        origins = [v for v in await registry.list_nodes() if v.alive and v.role != "edge"
                   and v.doc.get("http_url")]
        if not origins:
            raise HttpError(503, "no origin is alive in the cluster to pull it", "unavailable")
        return await _relayed(f"{origins[0].doc['http_url']}{base}/{stream_id}/start")

    async def stop_one(request: web.Request) -> web.Response:
        auth.require(request)
        stream_id = stream_id_arg(request)
        doc = await find(stream_id)
        owner = doc.get("origin_node")
        if doc.get("status") != BROADCASTING:
            raise HttpError(409, f"{stream_id} is not live (status {doc.get('status')})", "busy")
        if owner == actions.node_id and actions.stop_stream is not None:
            kind = await actions.stop_stream(stream_id)
            what = "pull source stopped" if kind == "pull" else "publisher disconnected"
            return json_response(result(True, what, stream_id))
        if request.headers.get(RELAYED):
            raise HttpError(409, f"{stream_id} is not live on {actions.node_id}", "busy")
        node = await registry.get_node(owner) if isinstance(owner, str) else None
        if node is None or not node.alive or not node.doc.get("http_url"):
            raise HttpError(503, f"the origin of {stream_id} ({owner}) is not reachable", "unavailable")
        return await _relayed(f"{node.doc['http_url']}{base}/{stream_id}/stop")

    async def _relayed(url: str) -> web.Response:
        status, answer = await relay(url, "POST", secrets=actions.secrets, node_id=actions.node_id)
        return json_response(answer, status=status)

    async def statistics(request: web.Request) -> web.Response:
        doc = await find(stream_id_arg(request))
        view = await cluster_view()
        return json_response(statistics_json((view.viewers or {}).get(doc["_id"], 0)))

    async def total_statistics(request: web.Request) -> web.Response:
        view = await cluster_view()
        ids = {d["_id"] for d in await registry.list_streams(0, 100_000, app=app_name)}
        total = sum(n for sid, n in (view.viewers or {}).items() if sid in ids)
        return json_response({**statistics_json(total),
                              "activeLiveStreamCount": await registry.count_live_streams(app_name)})

    async def stream_info(request: web.Request) -> web.Response:
        return json_response(stream_info_json(await find(stream_id_arg(request))))

    async def version(request: web.Request) -> web.Response:
        return json_response({"versionName": __version__, "versionType": "mesh",
                              "buildNumber": __version__})

    app.router.add_get(base + "/list/{offset}/{size}", list_page)
    app.router.add_get(base + "/count", count)
    app.router.add_get(base + "/active-live-stream-count", active_count)
    app.router.add_get(base + "/total-broadcast-statistics", total_statistics)
    app.router.add_post(base + "/create", create_one)
    app.router.add_get(base + "/{id}", get_one)
    app.router.add_put(base + "/{id}", update_one)
    app.router.add_delete(base + "/{id}", delete_one)
    app.router.add_post(base + "/{id}/start", start_one)
    app.router.add_post(base + "/{id}/stop", stop_one)
    app.router.add_get(base + "/{id}/broadcast-statistics", statistics)
    app.router.add_get(base + "/{id}/stream-info", stream_info)
    app.router.add_get(rest + "version", version)
    if not any(r.canonical == "/rest/v2/version" for r in app.router.resources()):
        app.router.add_get("/rest/v2/version", version)


__all__ = ["BroadcastActions", "add_broadcast_routes", "broadcast_json", "result"]
