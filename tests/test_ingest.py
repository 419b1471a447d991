"""Origin ingest with real publishers: Debian ffmpeg over RTMP, pull sources, the registry."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import zmq.asyncio

from mesh.broker.subscriber import BusSubscriber
from mesh.broker.wire import CONFIG, FLAG_SEG_START
from mesh.registry import Registry
from mesh_codecs.h264 import split_avcc
from mesh_codecs.media import AUDIO, VIDEO, video_from_dict

from .busclient import Collector
from .media import ffmpeg_publish, ffmpeg_write
from .procs import node_env, wait_until

pytestmark = pytest.mark.integration


def registry_call(mongo: str, db_name: str, fn):
    async def go():
        reg = Registry(mongo, db_name)
        await reg.connect()
        try:
            return await fn(reg)
        finally:
            await reg.close()
    return asyncio.run(go())


def stream_doc(mongo: str, db_name: str, stream_id: str) -> dict[str, Any] | None:
    return registry_call(mongo, db_name, lambda r: r.get_stream(stream_id))


def http(method: str, url: str, body: Any = None, content_type: str = "application/json"):
    data = json.dumps(body).encode() if body is not None and not isinstance(body, bytes) else body
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


# The tests below read the origin's bus with a plain subscriber, an independent witness of what
# ingest published; the bus is CURVE-secured by default (tests/test_bus_security_nodes.py covers that).
PLAIN_BUS = {"MESH_BUS_SECURITY": "none"}


async def watch(bus: str, snapshot: str, streams: list[str], until, timeout: float = 40.0
                ) -> dict[str, Collector]:
    """Subscribe to ``streams`` on the bus and collect until ``until(collectors)`` is true."""
    ctx = zmq.asyncio.Context()
    sub = BusSubscriber(ctx)
    got = {s: Collector() for s in streams}
    for s in streams:
        sub.subscribe(bus, snapshot, s, "src", got[s])
    try:
        async def wait() -> None:
            while not until(got):
                await asyncio.sleep(0.05)
        await asyncio.wait_for(wait(), timeout)
    finally:
        await sub.stop()
        ctx.term()
    return got


def check_media(c: Collector, name: str) -> None:
    entries = c.entries()
    configs = [e for e in entries if e.kind == CONFIG]
    assert configs, f"{name}: no config"
    video = video_from_dict(configs[-1].extra["video"])
    assert (video.width, video.height) == (640, 360)
    assert configs[-1].extra["audio"]["codec"] == "aac"
    media = c.media()
    for track in (VIDEO, AUDIO):
        dts = [e.dts for e in media if e.track == track]
        assert len(dts) > 30, f"{name}: too few packets on track {track}"
        assert all(b > a for a, b in zip(dts, dts[1:])), f"{name}: DTS not increasing on {track}"
    for e in media:
        if e.track != VIDEO:
            continue
        nal_types = {n[0] & 0x1F for n in split_avcc(bytes(e.payload))}
        assert e.key == (5 in nal_types), f"{name}: key flag {e.key} but NAL types {nal_types}"
    starts = [e for e in media if e.flags & FLAG_SEG_START]
    assert starts and all(e.track == VIDEO and e.key for e in starts)
    segs = [e.seg for e in starts]
    assert segs == list(range(segs[0], segs[0] + len(segs)))
    for a, b in zip(starts, starts[1:]):
        assert b.dts - a.dts >= 2 * 90000  # each segment lasts at least the 2 s target
    assert all(e.seg == max(s.seg for s in starts if s.seq <= e.seq) for e in media if e.seq >= starts[0].seq)


def test_two_ffmpeg_publishers_cam1_and_cam10(node_factory, mongo, db_name) -> None:
    origin = node_factory("origin", env=PLAIN_BUS)
    node_doc = registry_call(mongo, db_name, lambda r: r.get_node(origin.node_id)).doc
    pubs = {name: ffmpeg_publish(f"{origin.rtmp.replace('{stream_id}', '')}{name}", 7)
            for name in ("cam1", "cam10")}
    try:
        wait_until(lambda: all((stream_doc(mongo, db_name, s) or {}).get("status") == "broadcasting"
                               for s in pubs), timeout_s=20, message="both streams broadcasting")
        for s in pubs:
            doc = stream_doc(mongo, db_name, s)
            assert doc["origin_node"] == origin.node_id and doc["epoch"] == 1
        got = asyncio.run(watch(node_doc["bus_endpoint"], node_doc["snapshot_endpoint"], list(pubs),
                                lambda g: all(c.ended() for c in g.values())))
    finally:
        for p in pubs.values():
            p.wait(30)
    for name, c in got.items():
        check_media(c, name)
        assert all(len(e.payload) > 0 for e in c.media())
    # the two streams never mix: different tones, different packet sequences
    assert {e.seq for e in got["cam1"].media()} != set() and got["cam1"].media()[0].epoch == 1
    wait_until(lambda: all(stream_doc(mongo, db_name, s)["status"] == "finished" for s in pubs),
               timeout_s=15, message="both streams finished")
    assert all(p.returncode == 0 for p in pubs.values())
    out = subprocess.run([sys.executable, "-m", "mesh", "streams", "--mongo", mongo], capture_output=True,
                         text=True, timeout=60, env=node_env(MESH_DB_NAME=db_name))
    assert out.returncode == 0, out.stderr
    header, *rows = out.stdout.strip().splitlines()
    assert header.split() == ["STREAM", "APP", "STATUS", "ORIGIN", "EPOCH", "SEGMENTS", "RUNGS", "UPDATED"]
    assert sorted(r.split()[:5] for r in rows) == [[s, "LiveApp", "finished", origin.node_id, "1"]
                                                   for s in ("cam1", "cam10")]


def test_second_publisher_of_a_live_stream_is_refused(node_factory, mongo, db_name) -> None:
    origin = node_factory("origin")
    other = node_factory("origin")
    first = ffmpeg_publish(f"{origin.rtmp.replace('{stream_id}', '')}cam1", 12)
    try:
        wait_until(lambda: (stream_doc(mongo, db_name, "cam1") or {}).get("status") == "broadcasting",
                   timeout_s=20, message="cam1 broadcasting")
        for target in (origin, other):  # the same origin, and another origin of the cluster
            second = ffmpeg_publish(f"{target.rtmp.replace('{stream_id}', '')}cam1", 5)
            _, err = second.communicate(timeout=30)
            assert second.returncode != 0, "the second publisher must fail"
            assert "cam1" in target.wait_for_line(r"publish refused: LiveApp/cam1").string
        assert first.poll() is None, "the first publisher keeps going"
        doc = stream_doc(mongo, db_name, "cam1")
        assert doc["origin_node"] == origin.node_id and doc["epoch"] == 1
        assert "already being published on " + origin.node_id in other.output()
    finally:
        first.kill()
        first.wait()


def test_pull_sources_mp4_and_hls(node_factory, mongo, db_name, tmp_path: Path) -> None:
    media = tmp_path / "media"
    media.mkdir()
    mp4 = ffmpeg_write(media / "clip.mp4", 6)
    hls = ffmpeg_write(media / "clip.m3u8", 6, fmt="hls", extra=["-hls_time", "2", "-hls_list_size", "0",
                                                                  "-hls_playlist_type", "vod"])
    origin = node_factory("origin", env={"MESH_PULL_FILE_ROOT": str(media), **PLAIN_BUS})
    node_doc = registry_call(mongo, db_name, lambda r: r.get_node(origin.node_id)).doc
    base = f"{origin.http}/LiveApp/rest/v2/broadcasts"

    for stream_id, path in (("pullmp4", mp4), ("pullhls", hls)):
        status, body = http("POST", f"{base}/create", {"streamId": stream_id, "streamUrl": str(path)})
        assert status == 200, body
        assert body["streamId"] == stream_id and body["status"] == "broadcasting"
        assert body["type"] == "streamSource" and body["originNode"] == origin.node_id
    got = asyncio.run(watch(node_doc["bus_endpoint"], node_doc["snapshot_endpoint"],
                            ["pullmp4", "pullhls"], lambda g: all(c.ended() for c in g.values())))
    for name, c in got.items():
        check_media(c, name)
    wait_until(lambda: stream_doc(mongo, db_name, "pullhls")["status"] == "finished", timeout_s=10)
    status, one = http("GET", f"{base}/pullmp4")
    assert status == 200 and one["codecs"].startswith("avc1.") and one["width"] == 640
    assert one["status"] == "finished" and one["startTime"] and one["streamUrl"] == str(mp4)
    status, listed = http("GET", f"{base}/list/0/10")
    assert status == 200 and {b["streamId"] for b in listed} == {"pullmp4", "pullhls"}


def test_create_rejects_bad_bodies_with_json_errors(node_factory, tmp_path: Path) -> None:
    origin = node_factory("origin", env={"MESH_PULL_FILE_ROOT": str(tmp_path)})
    edge = node_factory("edge")
    url = f"{origin.http}/LiveApp/rest/v2/broadcasts/create"
    cases = [
        (b"{not json", "application/json", 400, "not valid JSON"),
        (b"[1, 2]", "application/json", 400, "JSON object"),
        (b'{"streamId": "a b", "streamUrl": "rtsp://x/y"}', "application/json", 400, "streamId"),
        (b'{"streamId": "ok", "streamUrl": 5}', "application/json", 400, "streamUrl"),
        (b'{"streamId": "ok", "streamUrl": "gopher://x"}', "application/json", 400, "scheme"),
        (b'{"streamId": "ok", "streamUrl": "/etc/passwd"}', "application/json", 400, "below"),
        (b'{"streamId": "ok", "streamUrl": "../../etc/passwd"}', "application/json", 400, "below"),
        (b"streamId=x", "application/x-www-form-urlencoded", 415, "JSON"),
        (b"{" + b" " * 70000 + b"}", "application/json", 413, "larger"),
    ]
    for body, ctype, status, words in cases:
        got, reply = http("POST", url, body, ctype)
        assert got == status and words in reply.get("message", ""), (body[:40], got, reply)
        assert reply["success"] is False
    got, reply = http("POST", f"{edge.http}/LiveApp/rest/v2/broadcasts/create",
                      {"streamId": "x", "streamUrl": "rtsp://h/s"})
    assert got == 409 and origin.http in reply["message"]
    assert http("GET", f"{origin.http}/LiveApp/rest/v2/broadcasts/nosuch")[0] == 404
    assert http("GET", f"{origin.http}/OtherApp/rest/v2/broadcasts/list/0/5")[0] == 404
    # the origin still serves
    assert http("GET", f"{origin.http}/healthz")[0] == 200


def test_killed_origin_shows_terminated_unexpectedly(node_factory, mongo, db_name) -> None:
    origin = node_factory("origin")
    pub = ffmpeg_publish(f"{origin.rtmp.replace('{stream_id}', '')}cam5", 30)
    try:
        wait_until(lambda: (stream_doc(mongo, db_name, "cam5") or {}).get("status") == "broadcasting",
                   timeout_s=20)
        origin.kill()
        wait_until(lambda: stream_doc(mongo, db_name, "cam5")["status"] == "terminated_unexpectedly",
                   timeout_s=10, interval_s=0.2, message="cam5 terminated_unexpectedly")
    finally:
        pub.kill()
        pub.wait()


def test_mesh_publish_test_pattern(node_factory, mongo, db_name) -> None:
    origin = node_factory("origin")
    out = subprocess.run([sys.executable, "-m", "mesh", "publish", "--duration", "4", "--url",
                          f"{origin.rtmp.replace('{stream_id}', '')}pattern"],
                         capture_output=True, text=True, timeout=60, env=node_env())
    assert out.returncode == 0, out.stderr
    assert "fps" in out.stderr and "kbps" in out.stderr  # the progress line
    doc = wait_until(lambda: (d := stream_doc(mongo, db_name, "pattern")) and d["status"] == "finished"
                     and d, timeout_s=10)
    assert doc["media_sequence"] >= 2
    assert doc["renditions"][0]["codecs"].startswith("avc1.") and doc["renditions"][0]["height"] == 360
