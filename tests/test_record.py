"""MP4 recording on the origin: real ffmpeg publishers, real node processes, ffprobe/ffmpeg as
independent judges of the files; listing and download through the REST API and an edge."""
from __future__ import annotations

import json
import struct
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

from .browser import page_eval
from .media import FFMPEG, FFPROBE, ffmpeg_publish
from .procs import wait_until


def get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def put(url: str) -> tuple[int, Any]:
    req = urllib.request.Request(url, method="PUT")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def probe(path: Path) -> tuple[float, set[str]]:
    out = subprocess.run([FFPROBE, "-v", "error", "-show_entries", "format=duration:stream=codec_name",
                          "-of", "json", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    return float(doc["format"]["duration"]), {s["codec_name"] for s in doc["streams"]}


def decode_errors(path: Path) -> str:
    out = subprocess.run([FFMPEG, "-hide_banner", "-v", "error", "-nostdin", "-i", str(path), "-f", "null", "-"],
                         capture_output=True, text=True, timeout=120)
    return out.stderr.strip() + ("" if out.returncode == 0 else f"\n(exit {out.returncode})")


def top_level_boxes(path: Path) -> list[bytes]:
    data, kinds, at = path.read_bytes(), [], 0
    while at + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[at:at + 8])
        if size < 8 or at + size > len(data):
            break
        kinds.append(kind)
        at += size
    return kinds


def test_a_20_s_publish_records_20_s_with_both_tracks_listed_and_downloaded_via_an_edge(
        node_factory, tmp_path: Path) -> None:
    records = tmp_path / "records"
    origin = node_factory("origin", env={"MESH_RECORD_MP4": "1", "MESH_RECORD_DIR": str(records)})
    edge = node_factory("edge")
    pub = ffmpeg_publish(origin.rtmp_url("rec20"), 20)
    assert pub.wait(timeout=90) == 0, pub.stderr.read()
    api = f"{edge.http}/LiveApp/rest/v2/vods"
    vods = wait_until(lambda: (v := get(f"{api}/list/0/10")[1]) and v[0]["status"] == "finished" and v,
                      timeout_s=30, message="the recording finished")
    vod = vods[0]
    assert vod["streamId"] == "rec20" and vod["type"] == "streamVod" and vod["vodName"].endswith(".mp4")
    assert 17_000 <= vod["duration"] <= 22_000 and vod["fileSize"] > 100_000
    assert get(f"{api}/count") == (200, {"number": 1})
    assert get(f"{api}/{vod['vodId']}")[1]["vodId"] == vod["vodId"]
    # downloaded through the edge (streamed from the origin) and from the origin: the same bytes
    via_edge, direct = tmp_path / "edge.mp4", tmp_path / "origin.mp4"
    for url, path in ((f"{edge.http}{vod['filePath']}", via_edge), (f"{origin.http}{vod['filePath']}", direct)):
        with urllib.request.urlopen(url, timeout=60) as resp:
            assert resp.headers["Content-Type"] == "video/mp4"
            path.write_bytes(resp.read())
    assert via_edge.read_bytes() == direct.read_bytes() == (records / vod["vodName"]).read_bytes()
    duration, codecs = probe(via_edge)
    assert 18.0 <= duration <= 21.5 and codecs == {"h264", "aac"}, (duration, codecs)
    assert decode_errors(via_edge) == ""
    boxes = top_level_boxes(direct)
    assert boxes[:2] == [b"ftyp", b"moov"] and boxes.count(b"moof") >= 8
    # the recordings page lists it with a download link
    page = page_eval(f"{edge.http}/#/vods", "return document.body.innerText", lambda t: vod["vodName"] in t)
    assert vod["vodName"] in page and "finished" in page and "download" in page


def test_a_recording_from_a_killed_origin_still_decodes_up_to_the_kill(node_factory, tmp_path: Path) -> None:
    records = tmp_path / "records"
    # the app does not record; this stream asks to
    origin = node_factory("origin", env={"MESH_RECORD_DIR": str(records)})
    edge = node_factory("edge")
    api = f"{origin.http}/LiveApp/rest/v2"
    req = urllib.request.Request(f"{api}/broadcasts/create", data=b'{"streamId": "crash"}', method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 200
    status, reply = put(f"{api}/broadcasts/crash/recording/true")
    assert status == 200 and reply["success"] is True
    assert put(f"{api}/broadcasts/crash/recording/maybe")[0] == 400
    pub = ffmpeg_publish(origin.rtmp_url("crash"), 120)
    try:
        path = wait_until(lambda: next(records.glob("crash-*.mp4"), None), timeout_s=60, message="a file")
        wait_until(lambda: top_level_boxes(path).count(b"moof") >= 5, timeout_s=60, message="5 fragments")
        # the registry is told how far it got, every few heartbeats
        wait_until(lambda: (v := get(f"{edge.http}/LiveApp/rest/v2/vods/list/0/10")[1]) and v[0]["duration"] >= 6000,
                   timeout_s=30, message="the recording's progress in the registry")
        origin.kill()
    finally:
        pub.kill()
        pub.wait()
    boxes = top_level_boxes(path)
    assert boxes[:2] == [b"ftyp", b"moov"] and boxes.count(b"moof") >= 5
    duration, codecs = probe(path)
    assert duration >= 8.0 and codecs == {"h264", "aac"}, (duration, codecs)
    assert decode_errors(path) == ""
    # the list shows it cut short; its file is on the dead origin's disk
    vod = wait_until(lambda: (v := get(f"{edge.http}/LiveApp/rest/v2/vods/list/0/10")[1])[0]["status"] == "interrupted"
                     and v[0], timeout_s=20, message="interrupted")
    assert vod["duration"] >= 6000
    status, reply = get(f"{edge.http}{vod['filePath']}")
    assert status == 503 and "not alive" in reply["error"]


def test_a_recording_that_cannot_be_written_is_counted_and_the_stream_goes_on(node_factory, tmp_path: Path) -> None:
    not_a_dir = tmp_path / "records"
    not_a_dir.write_text("a file where the recording directory should be\n")
    origin = node_factory("origin", env={"MESH_RECORD_MP4": "1", "MESH_RECORD_DIR": str(not_a_dir)})
    edge = node_factory("edge")
    pub = ffmpeg_publish(origin.rtmp_url("norec"), 60)
    try:
        origin.wait_for_line(r"recording norec-\S+ stopped .*the live stream goes on", timeout_s=60)
        with urllib.request.urlopen(f"{edge.http}/LiveApp/streams/norec.m3u8", timeout=30) as resp:
            assert resp.status == 200 and b"#EXTINF" in resp.read()
        with urllib.request.urlopen(f"{origin.http}/metrics", timeout=30) as resp:
            text = resp.read().decode()
        assert 'mesh_record_errors_total{reason="write"} 1.0' in text, text[-2000:]
        assert pub.poll() is None, "the publisher is still live"
        vods = get(f"{origin.http}/LiveApp/rest/v2/vods/list/0/10")[1]
        assert vods and vods[0]["status"] in ("recording", "failed")
    finally:
        pub.kill()
        pub.wait()
