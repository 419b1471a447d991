"""The REST v2 broadcasts API against Ant Media's documented shapes, with real node processes,
real ffmpeg publishers and pull sources; cluster list hygiene and the origin's player page."""
from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from mesh import tokens

from .media import ffmpeg_publish, ffmpeg_write
from .procs import node_env, wait_until

SECRET = "a-cluster-secret-of-32-characters!"
# Loopback is not an allowed network: the test client (and a relaying node) is a stranger that
# needs a REST token.
LOCKED = {"MESH_CLUSTER_SECRET": SECRET, "MESH_REST_ALLOWED_CIDRS": "10.99.0.0/16"}
RESULT_KEYS = {"success", "message", "dataId"}
# Fields of Ant Media's Broadcast object that its users' scripts read.
BROADCAST_KEYS = {"streamId", "status", "name", "description", "type", "publishType", "streamUrl",
                  "originAdress", "hlsViewerCount", "webRTCViewerCount", "rtmpViewerCount",
                  "dashViewerCount", "date", "startTime", "duration", "bitrate", "updateTime"}
STAT_KEYS = {"totalRTMPWatchersCount", "totalHLSWatchersCount", "totalWebRTCWatchersCount",
             "totalDASHWatchersCount"}


def token() -> str:
    return tokens.issue_rest_token(SECRET, ttl_s=600, now=time.time())


def call(method: str, url: str, body: Any = None, *, auth: bool = True, raw: bytes | None = None,
         content_type: str = "application/json") -> tuple[int, Any]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    headers = {"Content-Type": content_type} if data is not None else {}
    if auth:
        headers["Authorization"] = f"Bearer {token()}"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def is_error(status: int, reply: Any, code: int, data_id: str | None = None) -> bool:
    return (status == code and isinstance(reply, dict) and set(reply) == RESULT_KEYS
            and reply["success"] is False and bool(reply["message"])
            and (data_id is None or reply["dataId"] == data_id))


def test_broadcast_lifecycle_of_a_live_stream(node_factory) -> None:
    origin = node_factory("origin", env=LOCKED)
    edge = node_factory("edge", env=LOCKED)
    api = f"{edge.http}/LiveApp/rest/v2"
    b = f"{api}/broadcasts"

    for url in (f"{edge.http}/rest/v2/version", f"{api}/version"):
        status, version = call("GET", url, auth=False)
        assert status == 200 and set(version) == {"versionName", "versionType", "buildNumber"}

    # create without streamUrl: a broadcast a publisher will go live on, on any node
    status, made = call("POST", f"{b}/create", {"streamId": "show", "name": "Show", "description": "d1"})
    assert status == 200 and BROADCAST_KEYS <= set(made), made
    assert (made["streamId"], made["status"], made["type"], made["name"]) == ("show", "created", "liveStream", "Show")
    assert made["startTime"] is None and made["hlsViewerCount"] == 0 and made["date"] > 0
    assert is_error(*call("POST", f"{b}/create", {"streamId": "show"}), 400)
    status, generated = call("POST", f"{b}/create", raw=b"", content_type="application/json")
    assert status == 200 and generated["streamId"].startswith("stream") and generated["status"] == "created"
    assert call("DELETE", f"{b}/{generated['streamId']}") == (200, {"success": True, "message": "deleted",
                                                                    "dataId": generated["streamId"]})

    assert call("GET", f"{b}/count", auth=False) == (200, {"number": 1})
    assert call("GET", f"{b}/active-live-stream-count", auth=False) == (200, {"number": 0})
    status, page = call("GET", f"{b}/list/0/10", auth=False)
    assert status == 200 and [x["streamId"] for x in page] == ["show"]
    assert call("GET", f"{b}/list/1/10", auth=False) == (200, [])

    # update: name and description; bad bodies are result-shaped errors
    status, updated = call("PUT", f"{b}/show", {"name": "Evening show", "description": "d2"})
    assert status == 200 and updated["success"] is True and updated["dataId"] == "show"
    got = call("GET", f"{b}/show", auth=False)[1]
    assert (got["name"], got["description"]) == ("Evening show", "d2")
    assert is_error(*call("PUT", f"{b}/show", {}), 400, "show")
    assert is_error(*call("PUT", f"{b}/show", raw=b"name=x", content_type="text/plain"), 415, "show")
    assert is_error(*call("PUT", f"{b}/show", {"name": 5}), 400)
    assert is_error(*call("POST", f"{b}/show/start"), 400, "show"), "a liveStream is started by its publisher"
    assert is_error(*call("POST", f"{b}/show/stop"), 409, "show"), "not live"
    assert is_error(*call("GET", f"{b}/nosuch", auth=False), 404, "nosuch")
    assert is_error(*call("GET", f"{b}/show/nonsense", auth=False), 404)
    assert is_error(*call("PATCH", f"{b}/show", {}), 405)
    assert is_error(*call("GET", f"{b}/a%20b", auth=False), 400)

    # the publisher goes live on the broadcast
    pub = ffmpeg_publish(origin.rtmp_url("show"), 120)
    try:
        live = wait_until(lambda: (d := call("GET", f"{b}/show", auth=False)[1])["status"] == "broadcasting"
                          and d["width"] and d, timeout_s=30, message="show broadcasting")
        assert live["publishType"] == "RTMP" and live["originAdress"] == "127.0.0.1"
        assert live["name"] == "Evening show", "the publish keeps what was created"
        assert live["startTime"] > 0 and live["duration"] >= 0
        assert call("GET", f"{b}/active-live-stream-count", auth=False) == (200, {"number": 1})
        status, info = call("GET", f"{b}/show/stream-info", auth=False)
        assert status == 200 and info[0]["videoWidth"] == 640 and info[0]["videoHeight"] == 360
        assert info[0]["videoCodec"] == "H264" and info[0]["audioCodec"] == "AAC"

        # a viewer on the edge shows in the statistics
        with urllib.request.urlopen(f"{edge.http}/LiveApp/streams/show.m3u8", timeout=30) as resp:
            assert resp.status == 200
        stats = wait_until(lambda: (s := call("GET", f"{b}/show/broadcast-statistics", auth=False)[1])
                           ["totalHLSWatchersCount"] >= 1 and s, timeout_s=15, message="a viewer counted")
        assert set(stats) == STAT_KEYS
        status, total = call("GET", f"{b}/total-broadcast-statistics", auth=False)
        assert status == 200 and STAT_KEYS | {"activeLiveStreamCount"} == set(total)
        assert total["activeLiveStreamCount"] == 1 and total["totalHLSWatchersCount"] >= 1
        assert call("GET", f"{b}/show", auth=False)[1]["hlsViewerCount"] >= 1

        # a live broadcast cannot be deleted
        assert is_error(*call("DELETE", f"{b}/show"), 409, "show")
        assert call("GET", f"{b}/show", auth=False)[0] == 200
        # stop lands on the edge; the edge relays it, authenticated, to the origin that owns it
        status, stopped = call("POST", f"{b}/show/stop")
        assert (status, stopped["success"], stopped["dataId"]) == (200, True, "show"), stopped
        assert pub.wait(timeout=20) != 0, "the publisher was disconnected"
        origin.wait_for_line(r"\(LiveApp/show\): stream show was stopped over the REST API")
    finally:
        pub.kill()
        pub.wait()
    got = call("GET", f"{b}/show", auth=False)[1]
    assert got["status"] == "finished" and got["duration"] > 0
    assert call("GET", f"{b}/active-live-stream-count", auth=False) == (200, {"number": 0})
    assert call("DELETE", f"{b}/show")[0] == 200
    assert is_error(*call("GET", f"{b}/show", auth=False), 404, "show")
    assert call("GET", f"{b}/count", auth=False) == (200, {"number": 0})


def test_stream_source_created_started_and_stopped_through_any_node(node_factory, tmp_path: Path) -> None:
    media = tmp_path / "media"
    media.mkdir()
    clip = ffmpeg_write(media / "clip.mp4", 40)
    origin = node_factory("origin", env={**LOCKED, "MESH_PULL_FILE_ROOT": str(media)})
    edge = node_factory("edge", env=LOCKED)
    b = f"{edge.http}/LiveApp/rest/v2/broadcasts"
    ob = f"{origin.http}/LiveApp/rest/v2/broadcasts"

    # an edge cannot pull; it names an origin
    status, reply = call("POST", f"{b}/create", {"streamId": "cam", "streamUrl": str(clip)})
    assert is_error(status, reply, 409) and origin.http in reply["message"]
    # created on the origin without starting, then started and stopped through the edge
    status, made = call("POST", f"{ob}/create?autoStart=false",
                        {"streamId": "cam", "streamUrl": str(clip), "name": "Camera"})
    assert status == 200 and (made["status"], made["type"], made["streamUrl"]) == ("created", "streamSource", str(clip))
    assert is_error(*call("POST", f"{ob}/create?autoStart=false", {"streamId": "bad", "streamUrl": "/etc/passwd"}), 400)
    status, started = call("POST", f"{b}/cam/start")
    assert (status, started["success"]) == (200, True), started
    live = call("GET", f"{b}/cam", auth=False)[1]
    assert (live["status"], live["publishType"], live["name"]) == ("broadcasting", "Pull", "Camera")
    assert is_error(*call("POST", f"{b}/cam/start"), 409, "cam")
    assert is_error(*call("PUT", f"{ob}/cam", {"streamUrl": str(clip) + ".x"}), 409, "cam")
    assert is_error(*call("DELETE", f"{b}/cam"), 409, "cam")
    status, stopped = call("POST", f"{b}/cam/stop")
    assert (status, stopped["success"], stopped["message"]) == (200, True, "pull source stopped"), stopped
    assert call("GET", f"{b}/cam", auth=False)[1]["status"] == "finished"
    origin.wait_for_line(r"stream LiveApp/cam ended")
    # not live any more: its source may change (judged by the origin), then it goes away
    assert is_error(*call("PUT", f"{ob}/cam", {"streamUrl": "/etc/passwd"}), 400, "cam")
    assert call("PUT", f"{ob}/cam", {"streamUrl": str(clip)})[0] == 200
    assert call("DELETE", f"{b}/cam")[0] == 200
    assert call("GET", f"{b}/count", auth=False) == (200, {"number": 0})


def test_every_change_needs_authentication_and_refusals_change_nothing(node_factory) -> None:
    origin = node_factory("origin", env=LOCKED)
    b = f"{origin.http}/LiveApp/rest/v2/broadcasts"
    assert call("POST", f"{b}/create", {"streamId": "keep", "name": "Keep"})[0] == 200
    for method, url, body in (("POST", f"{b}/create", {"streamId": "intruder"}),
                              ("PUT", f"{b}/keep", {"name": "Owned"}), ("DELETE", f"{b}/keep", None),
                              ("POST", f"{b}/keep/start", None), ("POST", f"{b}/keep/stop", None)):
        status, reply = call(method, url, body, auth=False)
        assert is_error(status, reply, 401), (method, url, reply)
        assert "Authorization: Bearer" in reply["message"]
    assert is_error(*call("GET", f"{b}/intruder", auth=False), 404)
    assert call("GET", f"{b}/keep", auth=False)[1]["name"] == "Keep"
    assert call("GET", f"{b}/count", auth=False) == (200, {"number": 1})


def nodes_listed(node: Any) -> dict[str, str]:
    status, listed = call("GET", f"{node.http}/rest/v2/cluster/nodes/0/100", auth=False)
    assert status == 200
    return {n["id"]: n["status"] for n in listed}


def test_dead_nodes_leave_the_list_after_node_forget_after_s(node_factory, mongo, db_name) -> None:
    forget = {"MESH_NODE_FORGET_AFTER_S": "6"}
    origin = node_factory("origin", env=forget)
    edge = node_factory("edge", env=forget)
    assert nodes_listed(origin) == {origin.node_id: "alive", edge.node_id: "alive"}
    edge.kill()
    wait_until(lambda: nodes_listed(origin).get(edge.node_id) == "dead", timeout_s=15, message="edge dead")
    assert call("GET", f"{origin.http}/rest/v2/cluster/node-count", auth=False)[1] == {"number": 2}
    wait_until(lambda: edge.node_id not in nodes_listed(origin), timeout_s=20, message="edge forgotten")
    assert call("GET", f"{origin.http}/rest/v2/cluster/node-count", auth=False)[1] == {"number": 1}

    def cli(*extra: str) -> set[str]:
        out = subprocess.run([sys.executable, "-m", "mesh", "cluster", "nodes", "--mongo", mongo, "--json", *extra],
                             capture_output=True, text=True, timeout=60,
                             env=node_env(MESH_DB_NAME=db_name, **forget))
        assert out.returncode == 0, out.stderr
        return {n["id"] for n in json.loads(out.stdout)}

    assert cli() == {origin.node_id}
    assert cli("--all") == {origin.node_id, edge.node_id}, "the document stays in the database"
    # the README's command, exactly as written (the database from MESH_MONGO)
    env = node_env(MESH_MONGO=mongo, MESH_DB_NAME=db_name, **forget)
    table = subprocess.run([sys.executable, "-m", "mesh", "cluster", "nodes", "--all"],
                           capture_output=True, text=True, timeout=60, env=env)
    assert table.returncode == 0 and f"{edge.node_id} " in table.stdout and " dead " in table.stdout
    table = subprocess.run([sys.executable, "-m", "mesh", "cluster", "nodes"],
                           capture_output=True, text=True, timeout=60, env=env)
    assert table.returncode == 0 and edge.node_id not in table.stdout and origin.node_id in table.stdout


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kw: Any) -> None:
        return None


def test_the_player_page_of_an_origin_sends_viewers_to_an_edge(node_factory) -> None:
    origin = node_factory("origin")
    opener = urllib.request.build_opener(NoRedirect)
    page = f"{origin.http}/LiveApp/play.html?id=cam1"
    try:
        opener.open(page, timeout=20)
        raise AssertionError("an origin without edges must not serve a player that cannot play")
    except urllib.error.HTTPError as err:
        assert err.code == 503 and b"do not serve HLS" in err.read().replace(b"\n", b" ")
    edge = node_factory("edge")

    def redirected() -> str | None:
        try:
            opener.open(page, timeout=20)
        except urllib.error.HTTPError as err:
            return err.headers.get("Location") if err.code == 307 else None
        return None

    location = wait_until(redirected, timeout_s=15, message="a redirect to the edge")
    assert location == f"{edge.http}/LiveApp/play.html?id=cam1"
    with urllib.request.urlopen(page, timeout=20) as resp:  # followed: the edge's player
        assert resp.status == 200 and resp.url == location and b"<video" in resp.read()
