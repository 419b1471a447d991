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


def probe_video(path: Path) -> tuple[int, int]:
    out = subprocess.run([FFPROBE, "-v", "error", "-select_streams", "v:0", "-show_entries", "stream=width,height",
                          "-of", "json", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    stream = json.loads(out.stdout)["streams"][0]
    return stream["width"], stream["height"]


def test_rungs_are_recorded_each_to_its_own_file_with_its_resolution(node_factory, tmp_path: Path) -> None:
    records = tmp_path / "records"
    # the README's flags (the TOML and the environment: the test below)
    # an 854x480 source: two rungs the CI machine transcodes in real time with room to spare
    origin = node_factory("origin", extra_args=["--record-mp4", "--record-rungs", "--abr", "360p600k,240p300k"],
                          # 4 s segments: a rung is dropped only 4 s behind real time (a loaded machine)
                          env={"MESH_RECORD_DIR": str(records), "MESH_ABR_PRESET": "ultrafast",
                               "MESH_SEGMENT_TARGET_S": "4"})
    edge = node_factory("edge")
    pub = ffmpeg_publish(origin.rtmp_url("rungs"), 10, size="854x480")
    assert pub.wait(timeout=90) == 0, pub.stderr.read()
    api = f"{edge.http}/LiveApp/rest/v2/vods"
    vods = wait_until(lambda: (v := get(f"{api}/list/0/10")[1]) and len(v) == 3
                      and all(x["status"] == "finished" for x in v) and v,
                      timeout_s=60, message="three recordings finished")
    by_rendition = {v["rendition"]: v for v in vods}
    assert set(by_rendition) == {"src", "360p600kbps", "240p300kbps"}
    dropped = get(f"{origin.http}/LiveApp/rest/v2/broadcasts/rungs")[1]["droppedRenditions"]
    assert dropped == [], f"the machine was too loaded to keep the ladder in real time: {dropped}"
    assert all(v["streamId"] == "rungs" for v in vods)
    for rendition, size in (("src", (854, 480)), ("360p600kbps", (640, 360)), ("240p300kbps", (428, 240))):
        vod = by_rendition[rendition]
        name = vod["vodName"]
        assert name.startswith("rungs-" if rendition == "src" else f"rungs_{rendition}-"), name
        assert get(f"{api}/{vod['vodId']}")[1]["rendition"] == rendition
        path = tmp_path / name
        with urllib.request.urlopen(f"{edge.http}{vod['filePath']}", timeout=60) as resp:
            path.write_bytes(resp.read())
        assert path.read_bytes() == (records / name).read_bytes()
        assert top_level_boxes(path)[:2] == [b"ftyp", b"moov"]
        duration, codecs = probe(path)
        assert 8.5 <= duration <= 11.0 and codecs == {"h264", "aac"}, (rendition, duration, codecs)
        assert probe_video(path) == size, rendition
        assert decode_errors(path) == "", rendition
        assert 8_000 <= vod["duration"] <= 11_000, (rendition, vod["duration"])


def test_a_dropped_rung_closes_its_recording_while_the_rest_go_on(node_factory, tmp_path: Path) -> None:
    records = tmp_path / "records"
    origin = node_factory("origin", env={"MESH_RECORD_DIR": str(records),
                                         "MESH_ABR": "720p4000k,720p3000k,720p2000k,720p1500k",
                                         "MESH_ABR_PRESET": "veryslow"})
    api = f"{origin.http}/LiveApp/rest/v2"
    req = urllib.request.Request(f"{api}/broadcasts/create", data=b'{"streamId": "heavyrec"}', method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 200
    assert put(f"{api}/broadcasts/heavyrec/recording/true?rungs=maybe")[0] == 400
    status, reply = put(f"{api}/broadcasts/heavyrec/recording/true?rungs=true")
    assert status == 200 and reply["success"] is True
    pub = ffmpeg_publish(origin.rtmp_url("heavyrec"), 60, size="1280x720")
    try:
        origin.wait_for_line(r"stream heavyrec: dropping rung 720p4000kbps", timeout_s=60)
        dropped = wait_until(lambda: next((v for v in get(f"{api}/vods/list/0/10")[1]
                                           if v["rendition"] == "720p4000kbps" and v["status"] == "finished"), None),
                             timeout_s=30, message="the dropped rung's recording finished")
        src = next(v for v in get(f"{api}/vods/list/0/10")[1] if v["rendition"] == "src")
        assert src["status"] == "recording" and pub.poll() is None, "the stream goes on"
        path = records / dropped["vodName"]
        if path.exists():  # a rung dropped before its first keyframe leaves no file
            assert top_level_boxes(path)[:2] == [b"ftyp", b"moov"]
            assert decode_errors(path) == ""
            assert probe_video(path) == (1280, 720)
        size = path.stat().st_size if path.exists() else 0
        # closed: nothing is appended after the drop
        wait_until(lambda: (s := src["duration"]) is not None and
                   next(v for v in get(f"{api}/vods/list/0/10")[1] if v["rendition"] == "src")["duration"] > s,
                   timeout_s=30, message="the source's recording goes on")
        assert (path.stat().st_size if path.exists() else 0) == size
    finally:
        pub.kill()
        pub.wait()


def test_a_rungs_recording_is_named_for_its_rendition_and_its_id_is_accepted() -> None:
    from mesh.http.vods import VOD_ID
    from mesh.ingest.record import vod_name

    started = 1_796_150_000.0  # 2026-12-01 ...
    src, rung = vod_name("cam1", 3, started), vod_name("cam1", 3, started, "360p600kbps")
    assert rung == src.replace("cam1-", "cam1_360p600kbps-", 1) and src.startswith("cam1-3-2026")
    long_id = "s" * 128
    for vod_id in (src, rung, vod_name(long_id, 1, started, "1080p6000kbps")):
        assert VOD_ID.fullmatch(vod_id), vod_id
    assert not VOD_ID.fullmatch(f"{long_id}_x-1-20261201000000")  # 130 characters, not a rendition


def test_record_rungs_comes_from_the_toml_the_environment_and_the_flag(tmp_path: Path) -> None:
    import pytest

    from mesh.config import ConfigError, load_config

    toml = tmp_path / "mesh.toml"
    toml.write_text("[node]\nrecord_mp4 = true\nrecord_rungs = true\n")
    assert load_config(toml, env={}).record_rungs is True
    assert load_config(toml, env={"MESH_RECORD_RUNGS": "0"}).record_rungs is False
    assert load_config(toml, env={"MESH_RECORD_RUNGS": "0"}, record_rungs=True).record_rungs is True
    assert load_config(None, env={}).record_rungs is False
    with pytest.raises(ConfigError, match="record_rungs"):
        load_config(None, env={"MESH_RECORD_RUNGS": "maybe"})
