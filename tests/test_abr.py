"""Adaptive bitrate end to end: a 1280x720 ffmpeg publish, a 3-rung ladder at the origin, two edges.

Independent clients judge the output: ffprobe reads each rung through an edge (resolution, codecs,
bitrate, the first picture of every segment), ffmpeg decodes every rung, plain HTTP compares the
master playlist and a rung's segment on both edges, hls.js plays the master in Chromium and is
forced down to the lowest level and back up to the highest.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from .browser import play_hls, play_levels, require_chromium
from .media import FFPROBE, ffmpeg_decode_errors, ffmpeg_publish
from .procs import NodeProcess, start_node, wait_until

pytestmark = pytest.mark.integration

LADDER = "480p1000k,360p600k,240p300k"
RUNGS = {"480p1000kbps": (854, 480, 1000), "360p600kbps": (640, 360, 600), "240p300kbps": (426, 240, 300)}
ABR_ENV = {"MESH_ABR": LADDER, "MESH_ABR_PRESET": "ultrafast"}


def fetch(url: str) -> tuple[int, bytes, dict[str, str]]:
    try:
        with urllib.request.urlopen(url, timeout=20) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read(), dict(err.headers)


def text(url: str) -> str:
    status, body, _ = fetch(url)
    assert status == 200, (url, status, body[:200])
    return body.decode()


def segments(playlist: str) -> list[tuple[float, str]]:
    return [(float(d), n) for d, n in re.findall(r"#EXTINF:([\d.]+),\n(\S+\.ts)", playlist)]


def ffprobe_packets(url: str) -> list[dict]:
    out = subprocess.run([FFPROBE, "-v", "error", "-select_streams", "v:0", "-show_packets",
                          "-show_entries", "packet=pts,size,flags", "-of", "json", url],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["packets"]


def ffprobe_streams(url: str) -> list[dict]:
    out = subprocess.run([FFPROBE, "-v", "error", "-show_streams", "-of", "json", url],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["streams"]


class Ladder:
    def __init__(self, tmp: Path, mongo: str):
        self.origin = start_node("origin", tmp, mongo=mongo, db_name="abr", env=ABR_ENV)
        self.edges = [start_node("edge", tmp, mongo=mongo, db_name="abr") for _ in range(2)]
        # noise: a test pattern alone is too easy for x264 to spend a rung's bitrate on
        self.publisher = ffmpeg_publish(self.origin.rtmp.replace("{stream_id}", "hd"), 150,
                                        size="1280x720", gop=60, noise=12, video_kbps=3000)

    def url(self, edge: NodeProcess, name: str) -> str:
        return f"{edge.http}/LiveApp/streams/{name}"

    def stop(self) -> None:
        self.publisher.kill()
        self.publisher.wait()
        for node in [*self.edges, self.origin]:
            node.stop()


@pytest.fixture(scope="module")
def ladder(tmp_path_factory: pytest.TempPathFactory, mongo: str) -> Iterator[Ladder]:
    lad = Ladder(tmp_path_factory.mktemp("abr"), mongo)
    try:
        for edge in lad.edges:
            for rung in RUNGS:
                wait_until(lambda: len(segments(fetch(lad.url(edge, f"hd_{rung}.m3u8"))[1].decode())) >= 3,
                           timeout_s=90, interval_s=0.5, message=f"3 segments of {rung}")
        yield lad
    finally:
        lad.stop()


def test_each_rung_has_its_resolution_codecs_and_bitrate(ladder: Ladder) -> None:
    edge = ladder.edges[0]
    for rung, (width, height, kbps) in RUNGS.items():
        url = ladder.url(edge, f"hd_{rung}.m3u8")
        streams = ffprobe_streams(url)
        video = next(s for s in streams if s["codec_type"] == "video")
        audio = next(s for s in streams if s["codec_type"] == "audio")
        assert (video["codec_name"], video["width"], video["height"]) == ("h264", width, height), rung
        assert audio["codec_name"] == "aac"
        listed = segments(text(url))[-3:]
        bits = seconds = 0.0
        for duration, name in listed:
            bits += sum(int(p["size"]) for p in ffprobe_packets(ladder.url(edge, name))) * 8
            seconds += duration
        assert abs(bits / seconds / 1000 - kbps) <= 0.25 * kbps, f"{rung}: {bits / seconds / 1000:.0f} kbps"
        assert ffmpeg_decode_errors(url, seconds=4) == "", rung


def test_every_rendition_shares_the_sources_boundaries_and_each_segment_starts_with_an_idr(ladder: Ladder) -> None:
    edge = ladder.edges[0]
    names = {r: [n for _, n in segments(text(ladder.url(edge, f"hd_{r}.m3u8")))] for r in RUNGS}
    names["src"] = [n for _, n in segments(text(ladder.url(edge, "hd.m3u8")))]
    numbers = {r: {int(n[-12:-3]) for n in ns} for r, ns in names.items()}
    common = sorted(set.intersection(*numbers.values()))
    assert common, numbers
    seq = common[-1]
    first_pts = {}
    for rendition in names:
        base = "hd" if rendition == "src" else f"hd_{rendition}"
        packets = ffprobe_packets(ladder.url(edge, f"{base}{seq:09d}.ts"))
        first_pts[rendition] = min(int(p["pts"]) for p in packets)
        if rendition != "src":
            assert packets[0]["flags"].startswith("K"), f"{rendition} segment {seq} starts with an IDR"
    assert len(set(first_pts.values())) == 1, first_pts
    for rung in RUNGS:  # every listed segment of every rung starts with a keyframe
        for name in names[rung][-3:]:
            assert ffprobe_packets(ladder.url(edge, name))[0]["flags"].startswith("K"), name


def master_attrs(master: str) -> list[tuple[dict[str, str], str]]:
    return [(dict(re.findall(r'([A-Z-]+)=("[^"]*"|[^,]*)', attrs)), uri)
            for attrs, uri in re.findall(r"#EXT-X-STREAM-INF:(.*)\n(\S+)\n", master)]


def test_master_playlist_lists_every_rendition_highest_first_identical_on_two_edges(ladder: Ladder) -> None:
    a, b = ladder.edges
    for _ in range(10):  # renditions' windows may slide between requests: take a stable pair
        first = text(ladder.url(a, "hd_adaptive.m3u8"))
        other = text(ladder.url(b, "hd_adaptive.m3u8"))
        if first == other == text(ladder.url(a, "hd_adaptive.m3u8")):
            break
        time.sleep(0.3)
    assert first == other, "two edges holding the same windows render the same master playlist"
    variants = master_attrs(first)
    assert [uri for _, uri in variants] == ["hd.m3u8"] + [f"hd_{r}.m3u8" for r in RUNGS]
    bandwidths = [int(attrs["BANDWIDTH"]) for attrs, _ in variants]
    assert bandwidths == sorted(bandwidths, reverse=True)
    for attrs, uri in variants:
        assert {"BANDWIDTH", "AVERAGE-BANDWIDTH", "RESOLUTION", "CODECS", "FRAME-RATE"} <= set(attrs), uri
        assert re.fullmatch(r'"avc1\.[0-9a-fA-F]{6},mp4a\.40\.\d"', attrs["CODECS"]), attrs["CODECS"]
        assert float(attrs["FRAME-RATE"]) == pytest.approx(30, abs=0.5)
        media = text(ladder.url(a, uri))
        peak = max(len(fetch(ladder.url(a, n))[1]) * 8 / d for d, n in segments(media))
        assert int(attrs["BANDWIDTH"]) >= peak * 0.999, f"{uri}: BANDWIDTH below a listed segment's bitrate"
        assert int(attrs["AVERAGE-BANDWIDTH"]) <= int(attrs["BANDWIDTH"])
    widths = {uri: attrs["RESOLUTION"] for attrs, uri in variants}
    assert widths["hd.m3u8"] == "1280x720"
    assert [widths[f"hd_{r}.m3u8"] for r in RUNGS] == [f"{w}x{h}" for w, h, _ in RUNGS.values()]
    # a rung's segment is byte-identical on both edges
    name = segments(text(ladder.url(a, "hd_360p600kbps.m3u8")))[-1][1]
    assert fetch(ladder.url(a, name))[1] == fetch(ladder.url(b, name))[1]


def test_stream_document_and_rest_list_the_renditions(ladder: Ladder) -> None:
    doc = json.loads(text(f"{ladder.origin.http}/LiveApp/rest/v2/broadcasts/hd"))
    names = [r["name"] for r in doc["renditions"]]
    assert names == ["src", *RUNGS]
    for r in doc["renditions"][1:]:
        width, height, kbps = RUNGS[r["name"]]
        assert (r["width"], r["height"], r["bitrateKbps"]) == (width, height, kbps)
        assert r["codecs"].startswith("avc1.") and r["frameRate"] == pytest.approx(30, abs=0.5)
    assert doc["droppedRenditions"] == []


def test_hlsjs_plays_the_master_and_switches_to_the_lowest_and_back_to_the_highest(ladder: Ladder) -> None:
    require_chromium()
    report = play_levels(ladder.url(ladder.edges[1], "hd_adaptive.m3u8"), timeout_s=90)
    assert report.fatal_error is None, report.errors + report.log[-15:]
    assert report.levels == 4
    assert report.heights_seen[0] == 240 and report.heights_seen[-1] == 720, report.log[-15:]


def test_native_chromium_plays_the_master(ladder: Ladder) -> None:
    require_chromium()
    report = play_hls(ladder.url(ladder.edges[0], "hd_adaptive.m3u8"), mode="native", min_advance_s=2.0,
                      timeout_s=60)
    assert report.fatal_error is None, report.log[-10:]


def test_a_small_source_gets_only_the_rungs_below_it(node_factory) -> None:
    origin = node_factory("origin", env=ABR_ENV)
    edge = node_factory("edge")
    pub = ffmpeg_publish(origin.rtmp.replace("{stream_id}", "small"), 40, size="640x360")
    try:
        master = wait_until(lambda: (m := fetch(f"{edge.http}/LiveApp/streams/small_adaptive.m3u8"))[0] == 200
                            and m[1].count(b"#EXT-X-STREAM-INF") == 3 and m[1].decode(), timeout_s=60,
                            interval_s=0.5, message="two rungs and the source")
        assert [uri for _, uri in master_attrs(master)] == ["small.m3u8", "small_360p600kbps.m3u8",
                                                           "small_240p300kbps.m3u8"]
        assert fetch(f"{edge.http}/LiveApp/streams/small_480p1000kbps.m3u8")[0] == 404
        origin.wait_for_line(r"small: 360p source, so no 480p1000kbps", timeout_s=5)
    finally:
        pub.kill()
        pub.wait()


def test_a_ladder_too_heavy_for_the_machine_drops_rungs_while_the_source_plays(node_factory, mongo: str,
                                                                               db_name: str) -> None:
    origin = node_factory("origin", env={"MESH_ABR": "720p4000k,720p3000k,720p2000k,720p1500k",
                                         "MESH_ABR_PRESET": "veryslow"})
    edge = node_factory("edge")
    pub = ffmpeg_publish(origin.rtmp.replace("{stream_id}", "heavy"), 60, size="1280x720")
    try:
        origin.wait_for_line(r"stream heavy: dropping rung 720p4000kbps \(.* behind real time\)", timeout_s=60)
        url = f"{edge.http}/LiveApp/streams/heavy.m3u8"
        before = wait_until(lambda: segments(text(url)) or None, timeout_s=30)[-1][1]
        wait_until(lambda: segments(text(url))[-1][1] != before, timeout_s=20, interval_s=0.5,
                   message="the source keeps cutting segments")
        assert ffmpeg_decode_errors(url, seconds=3) == ""
        doc = wait_until(lambda: (d := json.loads(text(f"{origin.http}/LiveApp/rest/v2/broadcasts/heavy")))
                         ["droppedRenditions"] and d, timeout_s=10)
        assert doc["droppedRenditions"][0]["name"] == "720p4000kbps"
        metrics = text(f"{origin.http}/metrics")
        assert float(re.search(r"^mesh_abr_rungs_dropped_total (\S+)$", metrics, re.M).group(1)) >= 1
        out = subprocess.run([sys.executable, "-m", "mesh", "streams", "--mongo", mongo],
                             env={**os.environ, "MESH_DB_NAME": db_name}, capture_output=True, text=True, timeout=30)
        assert out.returncode == 0 and "720p4000kbps dropped" in out.stdout, out.stdout + out.stderr
    finally:
        pub.kill()
        pub.wait()
