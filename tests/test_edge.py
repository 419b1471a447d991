"""Edges serving HLS from real processes: one origin, two (and more) edges, a Debian ffmpeg publisher.

Independent clients check the output: ffprobe and ffmpeg decode the edges' playlists, hls.js plays
one in headless Chromium, and plain HTTP compares what the edges serve byte for byte.
"""
from __future__ import annotations

import concurrent.futures
import re
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from .browser import play_hls, require_chromium
from .media import ffmpeg_decode_errors, ffmpeg_publish, ffprobe_streams
from .procs import NodeProcess, start_node, wait_until

pytestmark = pytest.mark.integration

SEGMENT_NAME = re.compile(r"^(cam1\d{9}\.ts)$", re.M)


def fetch(url: str) -> tuple[int, bytes, dict[str, str]]:
    try:
        with urllib.request.urlopen(url, timeout=20) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read(), dict(err.headers)


def playlist(edge: NodeProcess, stream: str = "cam1") -> str:
    status, body, _ = fetch(f"{edge.http}/LiveApp/streams/{stream}.m3u8")
    assert status == 200, body
    return body.decode()


class Cluster:
    def __init__(self, tmp: Path, mongo: str):
        self.tmp, self.mongo = tmp, mongo
        self.origin = start_node("origin", tmp, mongo=mongo, db_name="edges")
        self.edges = [start_node("edge", tmp, mongo=mongo, db_name="edges") for _ in range(2)]
        self.publisher = ffmpeg_publish(self.origin.rtmp.replace("{stream_id}", "cam1"), 90)
        self.started = time.monotonic()

    def new_edge(self) -> NodeProcess:
        edge = start_node("edge", self.tmp, mongo=self.mongo, db_name="edges")
        self.edges.append(edge)
        return edge

    def wait_for_segments(self, n: int) -> None:
        """Wait (on the edge's own playlist) until the origin has cut ``n`` segments."""
        def enough() -> bool:
            status, body, _ = fetch(f"{self.edges[0].http}/LiveApp/streams/cam1.m3u8")
            return status == 200 and len(SEGMENT_NAME.findall(body.decode())) >= n
        wait_until(enough, timeout_s=40, interval_s=0.3, message=f"{n} segments on edge 0")

    def stop(self) -> None:
        self.publisher.kill()
        self.publisher.wait()
        for node in [*self.edges, self.origin]:
            node.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, mongo: str) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("edges"), mongo)
    try:
        c.wait_for_segments(3)
        yield c
    finally:
        c.stop()


def test_each_edge_serves_h264_aac_that_ffmpeg_decodes_cleanly(cluster: Cluster) -> None:
    for edge in cluster.edges[:2]:
        url = f"{edge.http}/LiveApp/streams/cam1.m3u8"
        streams = ffprobe_streams(url)
        video = next(s for s in streams if s["codec_type"] == "video")
        audio = next(s for s in streams if s["codec_type"] == "audio")
        assert (video["codec_name"], video["width"], video["height"]) == ("h264", 640, 360)
        assert audio["codec_name"] == "aac"
        assert ffmpeg_decode_errors(url, seconds=4) == ""


def test_edges_agree_on_names_sequence_and_bytes(cluster: Cluster) -> None:
    a, b = cluster.edges[:2]
    for _ in range(10):  # a segment may close between fetches, on each edge at its own moment
        first, other, again = playlist(a), playlist(b), playlist(a)
        if first == other == again:
            break
        time.sleep(0.1)
    assert first == other, "two edges must serve the same playlist text"
    names = SEGMENT_NAME.findall(first)
    assert len(names) >= 3
    media_sequence = int(re.search(r"#EXT-X-MEDIA-SEQUENCE:(\d+)", first).group(1))
    assert names[0] == f"cam1{media_sequence:09d}.ts"
    for name in names[-2:]:
        sa, body_a, headers = fetch(f"{a.http}/LiveApp/streams/{name}")
        sb, body_b, _ = fetch(f"{b.http}/LiveApp/streams/{name}")
        assert sa == sb == 200 and len(body_a) > 10_000
        assert body_a == body_b, f"{name} differs between edges"
        assert len(body_a) % 188 == 0 and body_a[0] == 0x47
        assert "immutable" in headers["Cache-Control"] and headers["Content-Type"] == "video/mp2t"
        assert headers["Access-Control-Allow-Origin"] == "*"


def test_cold_edge_answers_at_once_with_a_full_window_and_one_subscription(cluster: Cluster) -> None:
    cluster.wait_for_segments(5)
    cold = cluster.new_edge()
    url = f"{cold.http}/LiveApp/streams/cam1.m3u8"
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: fetch(url), range(8)))
    assert all(status == 200 for status, _, _ in results)
    first = results[0][1].decode()
    assert len(SEGMENT_NAME.findall(first)) >= 2, first
    assert sum("serving cam1 from" in line for line in cold.output().splitlines()) == 1
    # the cold edge's window is the warm edge's window
    for _ in range(10):  # each edge lists a closing segment at its own moment
        warm, mine, warm2 = playlist(cluster.edges[0]), playlist(cold), playlist(cluster.edges[0])
        if warm == mine == warm2:
            break
        time.sleep(0.1)
    assert mine == warm


def test_hlsjs_in_chromium_plays_an_edge(cluster: Cluster) -> None:
    require_chromium()
    report = play_hls(f"{cluster.edges[1].http}/LiveApp/streams/cam1.m3u8", min_advance_s=2.0,
                      timeout_s=45)
    assert report.fatal_error is None, report.errors + report.log[-10:]
    assert report.advanced_s >= 2.0 and report.video_width == 640 and report.video_height == 360


def test_bad_paths_get_4xx_and_the_edge_keeps_serving(cluster: Cluster) -> None:
    edge = cluster.edges[0]
    bad = [
        "/LiveApp/streams/../../../etc/passwd", "/LiveApp/streams/..%2F..%2Fetc%2Fpasswd",
        "/LiveApp/streams/%2e%2e%2fsecret.m3u8", "/OtherApp/streams/cam1.m3u8",
        "/LiveApp/streams/cam1.mp4", "/LiveApp/streams/cam1abc.ts", "/LiveApp/streams/cam112.ts",
        "/LiveApp/streams/cam1999999999.ts", "/LiveApp/streams/nosuch.m3u8",
        "/LiveApp/streams/" + "x" * 300 + ".m3u8", "/LiveApp/streams/cam1.m3u8?" + "a=1&" * 2000,
        "/LiveApp/streams/caf%C3%A9.m3u8", "/LiveApp/streams/cam1%00.m3u8",
    ]
    for path in bad:
        status, body, _ = fetch(edge.http + path)
        assert 400 <= status < 500, (path[:60], status)
        assert b"root:" not in body and body.startswith(b"{\"error\"")
    assert fetch(f"{edge.http}/LiveApp/streams/cam1.m3u8")[0] == 200


def metric(node: NodeProcess, name: str) -> float:
    text = fetch(f"{node.http}/metrics")[1].decode()
    found = re.findall(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert found, f"{name} is not exported by {node.http}"
    return float(found[0])


def test_operators_see_streams_bus_traffic_and_egress_move(cluster: Cluster) -> None:
    edge = cluster.edges[0]
    playlist(edge)
    assert metric(cluster.origin, 'mesh_streams{role="origin"}') == 1
    assert metric(edge, 'mesh_streams{role="edge"}') == 1
    sent = metric(cluster.origin, "mesh_bus_messages_sent_total")
    received = metric(edge, "mesh_bus_messages_received_total")
    assert sent > 0 and received > 0 and metric(edge, "mesh_bus_entries_received_total") >= received
    # egress: counted per reply, published with the heartbeat (metric and the node JSON)
    before = metric(edge, "mesh_hls_egress_bytes_total")
    name = SEGMENT_NAME.findall(playlist(edge))[-1]
    size = len(fetch(f"{edge.http}/LiveApp/streams/{name}")[1])
    wait_until(lambda: metric(edge, "mesh_hls_egress_bytes_total") >= before + size, timeout_s=10,
               interval_s=0.3, message="egress bytes counted")
    assert wait_until(lambda: metric(cluster.origin, "mesh_bus_messages_sent_total") > sent, timeout_s=10)

    def edge_row() -> dict | None:
        import json
        fetch(f"{edge.http}/LiveApp/streams/{name}")  # egress is a rate over the last beat: keep it flowing
        rows = json.loads(fetch(f"{edge.http}/rest/v2/cluster/nodes/0/50")[1])
        return next((r for r in rows if r["httpUrl"] == edge.http and r["egressKbps"]), None)
    row = wait_until(edge_row, timeout_s=10, interval_s=0.5, message="egressKbps in the node JSON")
    assert row["egressKbps"] > 0 and row["role"] == "edge"


def test_master_playlist_lists_the_source_with_measured_peak_bandwidth(cluster: Cluster) -> None:
    a, b = cluster.edges[:2]
    for _ in range(10):  # the window may slide between requests: take a stable triple
        media = playlist(a)
        status, body, headers = fetch(f"{a.http}/LiveApp/streams/cam1_adaptive.m3u8")
        other = fetch(f"{b.http}/LiveApp/streams/cam1_adaptive.m3u8")[1]
        if playlist(a) == media and playlist(b) == media:
            break
    assert status == 200 and headers["Content-Type"].startswith("application/vnd.apple.mpegurl")
    text = body.decode()
    assert other == body, "two edges holding the same window render the same master playlist"
    info = re.search(r"#EXT-X-STREAM-INF:(.*)\n(.*)\n", text)
    assert info and info.group(2) == "cam1.m3u8"
    attrs = dict(re.findall(r'([A-Z-]+)=("[^"]*"|[^,]*)', info.group(1)))
    assert attrs["RESOLUTION"] == "640x360" and attrs["CODECS"].startswith('"avc1.')
    peak, average = int(attrs["BANDWIDTH"]), int(attrs["AVERAGE-BANDWIDTH"])
    assert 0 < average <= peak
    rates = [len(fetch(f"{a.http}/LiveApp/streams/{name}")[1]) * 8 / float(duration)
             for duration, name in re.findall(r"#EXTINF:([\d.]+),\n(cam1\d{9}\.ts)", media)]
    assert rates and max(rates) == pytest.approx(peak, rel=0.01), "BANDWIDTH is the peak segment bitrate"


def test_unknown_stream_is_404_json(cluster: Cluster) -> None:
    status, body, headers = fetch(f"{cluster.edges[0].http}/LiveApp/streams/ghost.m3u8")
    assert status == 404 and b"no stream ghost" in body and headers["Content-Type"].startswith("application/json")


def test_finished_stream_ends_with_endlist_then_is_dropped(node_factory, tmp_path: Path) -> None:
    origin = node_factory("origin")
    edge = node_factory("edge", env={"MESH_EDGE_IDLE_UNSUBSCRIBE_S": "3"})
    pub = ffmpeg_publish(origin.rtmp.replace("{stream_id}", "short"), 6)
    url = f"{edge.http}/LiveApp/streams/short.m3u8"
    # a viewer keeps polling (so the edge keeps the stream) until the playlist ends
    text = wait_until(lambda: (b := fetch(url)[1]).endswith(b"#EXT-X-ENDLIST\n") and b, timeout_s=30,
                      interval_s=0.5).decode()
    assert pub.wait(30) == 0
    assert len(re.findall(r"short\d{9}\.ts", text)) >= 2
    assert ffmpeg_decode_errors(url, seconds=10) == ""
    edge.wait_for_line(r"no viewer asked for short", timeout_s=15)
    status, body, _ = fetch(url)
    assert status == 404 and b"has finished" in body


def test_edge_follows_a_stream_to_its_new_origin_with_a_discontinuity(node_factory) -> None:
    first = node_factory("origin")
    second = node_factory("origin")
    edge = node_factory("edge")
    pub = ffmpeg_publish(first.rtmp.replace("{stream_id}", "moving"), 60)
    url = f"{edge.http}/LiveApp/streams/moving.m3u8"
    try:
        wait_until(lambda: len(re.findall(r"moving\d{9}\.ts", fetch(url)[1].decode())) >= 2,
                   timeout_s=30, interval_s=0.3)
        before = fetch(url)[1].decode()
        first.kill()  # the origin dies; its publisher reconnects elsewhere once it is judged dead
        pub.kill()
        pub.wait()

        def republished() -> bool:
            p = ffmpeg_publish(second.rtmp.replace("{stream_id}", "moving"), 40)
            try:
                p.wait(3)
                return False  # refused: the old owner is not judged dead yet
            except Exception:
                nonlocal pub
                pub = p
                return True
        wait_until(republished, timeout_s=20, interval_s=0.5, message="publish on the second origin")
        # the new epoch starts above the old owner's reserved numbers: a new window, one discontinuity
        after = wait_until(lambda: "#EXT-X-DISCONTINUITY-SEQUENCE:1\n" in (t := fetch(url)[1].decode())
                           and "moving" in t and t, timeout_s=30, interval_s=0.3)
    finally:
        pub.kill()
        pub.wait()
    old = re.findall(r"moving(\d{9})\.ts", before)
    new = re.findall(r"moving(\d{9})\.ts", after)
    numbers = [int(n) for n in new]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), "numbering continues"
    assert int(new[-1]) > int(old[-1])
    assert "moved to" in edge.output()
    assert ffmpeg_decode_errors(url, seconds=3) == ""


def test_standalone_serves_its_own_streams(tmp_path: Path, nodes) -> None:
    node = start_node("standalone", tmp_path)  # no --mongo: it starts the embedded database
    nodes.append(node)
    assert node.urls["db"].startswith("mongodb://127.0.0.1:")
    pub = ffmpeg_publish(node.rtmp.replace("{stream_id}", "solo"), 8)
    url = f"{node.http}/LiveApp/streams/solo.m3u8"
    try:
        wait_until(lambda: len(re.findall(r"solo\d{9}\.ts", fetch(url)[1].decode())) >= 2,
                   timeout_s=30, interval_s=0.3)
        streams = ffprobe_streams(url)
        assert {s["codec_name"] for s in streams} == {"h264", "aac"}
    finally:
        pub.kill()
        pub.wait()

