"""LL-HLS: parts cut at the origin, CMAF parts and segments on edges, blocking playlist reload.

The first tests feed the real segmenter's stamps to the edge's LL window (no sockets); the rest run
real processes (an origin, two edges, a Debian ffmpeg publisher) and check what the edges serve
with plain HTTP, ffprobe/ffmpeg and hls.js in headless Chromium through a private nginx rendered by
``mesh lb nginx``.
"""
from __future__ import annotations

import concurrent.futures
import json
import re
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from mesh.broker.wire import CONFIG, EOS, FLAG_PART_START, FLAG_SEG_START, MEDIA, Entry
from mesh.hls.cmaf import LlWindow
from mesh.hls.ll_playlist import BadBlockingRequest, block_target, reached, render_ll_playlist, too_far
from mesh.ingest.segmenter import Segmenter
from mesh_codecs.media import AUDIO, VIDEO

AVCC = bytes.fromhex("01640028ffe1001967640028acd940780227e5c04400000fa40003a9803c60c65801000568ebecb22c")
VIDEO_PARAMS = {"codec": "h264", "avcc": AVCC, "width": 1920, "height": 1080, "codec_string": "avc1.640028"}
AUDIO_PARAMS = {"codec": "aac", "asc": b"\x11\x90", "sample_rate": 48000, "channels": 2, "codec_string": "mp4a.40.2"}

PART_LINE = re.compile(r'#EXT-X-PART:DURATION=([\d.]+),URI="([^"]+)"(,INDEPENDENT=YES)?')


# -- pure: segmenter stamps -> LL window ---------------------------------------------------------

def stamped_entries(seconds: float, *, fps: int = 30, gop: int = 30, jitter_ms: bool = True) -> list[Entry]:
    """What an origin publishes for ``seconds`` of 30 fps video (keyframe every ``gop`` frames)
    and 48 kHz AAC, with RTMP's whole-millisecond timestamps, stamped by the real segmenter."""
    seg = Segmenter(2.0, 0, 0.2)
    seg.video_present()
    out = [Entry(0, CONFIG, extra={"video": VIDEO_PARAMS, "audio": AUDIO_PARAMS, "disc": 0,
                                   "part_ticks": seg.part_target_ticks}, epoch=1)]
    events = [(int(i * 1000 / fps) if jitter_ms else i * 1000 / fps, VIDEO, i) for i in range(int(seconds * fps))]
    events += [(int(j * 1024 * 1000 / 48000), AUDIO, j) for j in range(int(seconds * 48000 / 1024))]
    events.sort(key=lambda e: (e[0], e[1]))
    for ms, track, i in events:
        dts = int(ms * 90)
        key = track == VIDEO and i % gop == 0
        payload = (b"\x00\x00\x00\x02\x65\x88" if key else b"\x00\x00\x00\x02\x41\x9a") if track == VIDEO else b"\x21\x00"
        pts, dts, s, flags, _ = seg.stamp(track, dts, dts, key)
        if s is None:
            continue
        extra = {"t": 1_700_000_000_000 + ms} if flags & FLAG_SEG_START else None
        out.append(Entry(len(out), MEDIA, track, pts, dts, flags, s, payload, extra, 1))
    return out


def test_segmenter_marks_parts_on_frame_boundaries_within_the_target() -> None:
    entries = [e for e in stamped_entries(6.5) if e.kind == MEDIA]
    starts = [e for e in entries if e.flags & FLAG_PART_START]
    assert all(e.track == VIDEO for e in starts), "parts are cut on the video track"
    assert all(e.flags & FLAG_PART_START for e in entries if e.flags & FLAG_SEG_START), \
        "a segment start is a part start"
    gaps = [b.dts - a.dts for a, b in zip(starts, starts[1:])]
    assert gaps and max(gaps) <= 18_000, "no part is longer than the 200 ms target"
    assert sum(g == 18_000 for g in gaps) >= len(gaps) - 1, "at 30 fps, parts are six frames"
    segs = [e for e in entries if e.flags & FLAG_SEG_START]
    assert [s.seg for s in segs] == [0, 1, 2, 3]  # every 2 s at a 1 s GOP


def feed_all(w: LlWindow, entries: list[Entry], step: int = 7) -> None:
    for i in range(0, len(entries), step):  # in bus-sized batches
        w.feed(entries[i:i + step])


def test_two_windows_cut_identical_parts_and_segments_are_their_parts() -> None:
    entries = stamped_entries(9)
    a, b = LlWindow("cam1", window=3, retired=2), LlWindow("cam1", window=3, retired=2)
    feed_all(a, entries)
    # b joins late, mid-segment, as a cold edge's snapshot might: it drops until a segment start.
    config = entries[0]
    late = [e for e in entries[1:] if e.seg >= 1]
    feed_all(b, [config] + late[5:])
    assert a.segments_cut == 4 and b.segments_cut == 2
    for seq in (2, 3):
        parts_a = [a.part(seq, i) for i in range(10)]
        assert all(parts_a) and a.part(seq, 10) is None, "2 s of 30 fps in 200 ms parts: ten parts"
        assert parts_a == [b.part(seq, i) for i in range(10)], "byte-identical parts"
        assert a.segment(seq) == b"".join(parts_a) == b.segment(seq), "a segment is its parts"
    assert a.last_part() == b.last_part() and a.last_part()[0] == 4
    # the playlist: tags, numbering, durations
    text = render_ll_playlist("cam1", a.shown(), target_s=2.0, part_target_s=0.2, ended=False,
                              preload=a.next_part())
    check_ll_playlist(text, "cam1")


def check_ll_playlist(text: str, base: str) -> dict:
    """Every LL tag present and consistent; returns what it found."""
    lines = text.splitlines()
    assert lines[0] == "#EXTM3U" and "#EXT-X-VERSION:9" in lines
    target = float(re.search(r"#EXT-X-PART-INF:PART-TARGET=([\d.]+)", text).group(1))
    control = re.search(r"#EXT-X-SERVER-CONTROL:(.*)", text).group(1)
    assert "CAN-BLOCK-RELOAD=YES" in control
    hold_back = float(re.search(r"PART-HOLD-BACK=([\d.]+)", control).group(1))
    assert hold_back >= 3 * target - 1e-9
    assert re.search(r'#EXT-X-MAP:URI="%s_ll_init[0-9a-f]{8}\.mp4' % base, text)
    assert "#EXT-X-PROGRAM-DATE-TIME:" in text
    msn = int(re.search(r"#EXT-X-MEDIA-SEQUENCE:(\d+)", text).group(1))
    seq, parts, segments, all_parts = msn, [], [], []
    for line in lines:
        if m := PART_LINE.match(line):
            duration, uri, independent = float(m.group(1)), m.group(2), bool(m.group(3))
            pm = re.fullmatch(r"%s_ll(\d{9})\.(\d+)\.m4s" % base, uri.split("?")[0])
            assert pm, uri
            assert duration <= target + 1e-9, f"part {uri} of {duration} s > PART-TARGET {target}"
            parts.append((int(pm.group(1)), int(pm.group(2)), duration, independent))
        elif line.startswith("#EXTINF:"):
            duration = float(line[8:].rstrip(","))
            mine = [p for p in parts if p[0] == seq]
            if mine:
                assert [p[1] for p in mine] == list(range(len(mine))), "parts numbered 0, 1, 2 ..."
                assert abs(sum(p[2] for p in mine) - duration) < 1e-3, "a segment lasts as long as its parts"
                assert mine[0][3], "a segment's first part is independent"
            segments.append((seq, duration))
        elif line.startswith(base + "_ll") and line.split("?")[0].endswith(".m4s"):
            assert line.split("?")[0] == f"{base}_ll{seq:09d}.m4s", "MSN numbering is continuous"
            seq += 1
    open_parts = [p for p in parts if p[0] == seq]
    assert [p[1] for p in open_parts] == list(range(len(open_parts)))
    hint = re.search(r'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="%s_ll(\d{9})\.(\d+)\.m4s' % base, text)
    assert hint and (int(hint.group(1)), int(hint.group(2))) == (seq, len(open_parts)), "hint: the next part"
    all_parts = parts
    return {"msn": msn, "segments": segments, "parts": all_parts, "next": (seq, len(open_parts)),
            "part_target": target}


def test_blocking_request_directives() -> None:
    assert block_target({}) is None
    assert block_target({"_HLS_msn": "5"}) == (5, None)
    assert block_target({"_HLS_msn": "5", "_HLS_part": "2"}) == (5, 2)
    for bad in ({"_HLS_part": "1"}, {"_HLS_msn": "x"}, {"_HLS_msn": "-1"}):
        with pytest.raises(BadBlockingRequest):
            block_target(bad)
    assert reached((5, 2), (5, 2), 4) and reached((5, 2), (6, 0), 5) and not reached((5, 3), (5, 2), 4)
    assert reached((5, None), (6, 0), 5) and not reached((5, None), (5, 9), 4)
    assert too_far((9, 0), (5, 2), ) and not too_far((7, 0), (5, 2)) and too_far((5, 6), (5, 2))


def test_balancer_configs_pass_blocking_requests_unbuffered_and_never_cache_ll_playlists() -> None:
    from mesh.lb import LL_PROXY_TIMEOUT_S, Backend, Backends, render_haproxy, render_nginx

    b = Backends([Backend("o", "10.0.0.1", 1935)], [Backend("e1", "10.0.0.2", 5080), Backend("e2", "10.0.0.3", 5080)],
                 [Backend("o", "10.0.0.1", 5080)])
    conf = render_nginx(b)
    ll_block = conf.split("location ~ _ll\\.m3u8$ {", 1)[1].split("}", 1)[0]
    assert "proxy_buffering off;" in ll_block and "proxy_cache " not in ll_block
    assert f"proxy_read_timeout {LL_PROXY_TIMEOUT_S}s;" in ll_block and LL_PROXY_TIMEOUT_S > 30  # ll_block_s <= 30
    assert conf.index("location ~ _ll\\.m3u8$") < conf.index("location ~ \\.m3u8$"), "matched before the cached one"
    parts = conf.split("location ~ _ll[^/]*\\.(m4s|mp4)$ {", 1)[1].split("}", 1)[0]
    assert "proxy_cache mesh_hls;" in parts and "proxy_cache_valid 200 10m;" in parts
    haproxy = render_haproxy(b)
    assert "use_backend mesh_edges_ll if ll_playlist" in haproxy and f"timeout server {LL_PROXY_TIMEOUT_S}s" in haproxy


def test_end_of_stream_lists_the_last_segment_and_ends() -> None:
    entries = stamped_entries(4.5)
    w = LlWindow("cam1")
    feed_all(w, entries + [Entry(len(entries), EOS, extra={"reason": "finished"}, epoch=1)])
    assert w.ended and w.next_part() is None
    text = render_ll_playlist("cam1", w.shown(), target_s=2.0, part_target_s=0.2, ended=True, preload=None)
    assert text.endswith("#EXT-X-ENDLIST\n") and "PRELOAD-HINT" not in text


# -- real processes: an origin, two edges, an ffmpeg publisher -----------------------------------

from mesh.cluster import Nginx, wait_for_port  # noqa: E402
from mesh.embedded_db import free_port  # noqa: E402
from mesh.lb import Backend, Backends, render_nginx  # noqa: E402

from .browser import page_eval, play_hls, require_chromium  # noqa: E402
from .media import ffmpeg_publish  # noqa: E402
from .procs import NodeProcess, start_node, wait_until  # noqa: E402


def fetch(url: str, timeout_s: float = 30) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _port(url: str) -> int:
    return int(re.search(r":(\d+)(?:/|$)", url).group(1))


EDGE_ENV = {"MESH_PLAYLIST_WINDOW": "8", "MESH_SNAPSHOT_SEGMENTS": "8"}


class LlCluster:
    def __init__(self, tmp: Path, mongo: str):
        self.tmp, self.mongo = tmp, mongo
        self.origin = start_node("origin", tmp, mongo=mongo, db_name="llhls")
        # 8 segments of 2 s: longer than the 12 s Skip Boundary, so edges offer delta updates
        self.edges = [start_node("edge", tmp, mongo=mongo, db_name="llhls", env=EDGE_ENV) for _ in range(2)]
        self.publisher = ffmpeg_publish(self.origin.rtmp.replace("{stream_id}", "cam1"), 120)
        self.nginx: Nginx | None = None

    def url(self, edge: NodeProcess, name: str) -> str:
        return f"{edge.http}/LiveApp/streams/{name}"

    def playlist(self, edge: NodeProcess, query: str = "") -> str:
        status, body = fetch(self.url(edge, "cam1_ll.m3u8" + query))
        assert status == 200, body
        return body.decode()

    def start_balancer(self, prefix: Path) -> str:
        backends = Backends([Backend(self.origin.node_id, "127.0.0.1", _port(self.origin.rtmp))],
                            [Backend(e.node_id, "127.0.0.1", _port(e.http)) for e in self.edges[:2]],
                            [Backend(self.origin.node_id, "127.0.0.1", _port(self.origin.http))])
        port = free_port()
        self.nginx = Nginx(prefix, render_nginx(backends, http_port=port, rtmp_port=free_port(), prefix=str(prefix)))
        wait_for_port("127.0.0.1", port)
        return f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        self.publisher.kill()
        self.publisher.wait()
        if self.nginx is not None:
            self.nginx.stop()
        for node in [*self.edges, self.origin]:
            node.stop()


@pytest.fixture(scope="module")
def ll(tmp_path_factory: pytest.TempPathFactory, mongo: str) -> Iterator[LlCluster]:
    c = LlCluster(tmp_path_factory.mktemp("llhls"), mongo)
    try:
        def three_segments() -> bool:
            status, body = fetch(c.url(c.edges[0], "cam1_ll.m3u8"))
            return status == 200 and body.count(b"#EXTINF") >= 3
        wait_until(three_segments, timeout_s=60, interval_s=0.3, message="3 LL segments on edge 0")
        yield c
    finally:
        c.stop()


@pytest.mark.integration
def test_llhls_playlists_on_both_edges_are_complete_and_consistent(ll: LlCluster) -> None:
    for edge in ll.edges:
        found = check_ll_playlist(ll.playlist(edge), "cam1")
        assert found["part_target"] == 0.2 and len(found["segments"]) >= 3
        assert all(abs(d - 2.0) < 0.05 for _, d in found["segments"]), found["segments"]


@pytest.mark.integration
def test_parts_and_segments_are_byte_identical_on_two_edges_and_segments_are_their_parts(ll: LlCluster) -> None:
    found = check_ll_playlist(ll.playlist(ll.edges[0]), "cam1")
    seq = max(s for s, parts in ((s, [p for p in found["parts"] if p[0] == s]) for s, _ in found["segments"])
              if parts)
    indices = [p[1] for p in found["parts"] if p[0] == seq]
    init = re.search(r'#EXT-X-MAP:URI="([^"]+)"', ll.playlist(ll.edges[0])).group(1)
    objects = [init, f"cam1_ll{seq:09d}.m4s"] + [f"cam1_ll{seq:09d}.{i}.m4s" for i in indices]
    got = [[fetch(ll.url(edge, name)) for name in objects] for edge in ll.edges]
    assert all(status == 200 for per_edge in got for status, _ in per_edge)
    assert [b for _, b in got[0]] == [b for _, b in got[1]], "every edge serves the same bytes"
    bodies = [b for _, b in got[0]]
    assert bodies[1] == b"".join(bodies[2:]), "a segment is its parts concatenated"
    assert bodies[0][4:8] == b"ftyp" and bodies[2][4:8] == b"moof"


def ffprobe_frames(path: Path) -> list[dict]:
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                          "packet=pts,dts,flags", "-of", "json", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["packets"]


@pytest.mark.integration
def test_fmp4_segment_with_its_init_decodes_with_the_source_timestamps_and_frame_count(
        ll: LlCluster, tmp_path: Path) -> None:
    text = ll.playlist(ll.edges[1])
    init = re.search(r'#EXT-X-MAP:URI="([^"]+)"', text).group(1)
    seq = int(re.findall(r"^cam1_ll(\d{9})\.m4s$", text, re.M)[-1])
    status, mp4 = fetch(ll.url(ll.edges[1], init))
    status2, seg = fetch(ll.url(ll.edges[1], f"cam1_ll{seq:09d}.m4s"))
    # the TS window lists a segment once a worker has packetised it: maybe a moment after the LL one
    ts_url = ll.url(ll.edges[1], f"cam1{seq:09d}.ts")
    status3, ts = wait_until(lambda: (got := fetch(ts_url))[0] == 200 and got, timeout_s=10, interval_s=0.1,
                             message=f"TS segment {seq} listed too")
    assert status == status2 == status3 == 200
    (tmp_path / "seg.mp4").write_bytes(mp4 + seg)
    (tmp_path / "seg.ts").write_bytes(ts)
    decoded = subprocess.run(["ffmpeg", "-hide_banner", "-v", "error", "-nostdin", "-i", str(tmp_path / "seg.mp4"),
                              "-f", "null", "-"], capture_output=True, text=True, timeout=60)
    assert decoded.returncode == 0 and not decoded.stderr.strip(), decoded.stderr
    frames, reference = ffprobe_frames(tmp_path / "seg.mp4"), ffprobe_frames(tmp_path / "seg.ts")
    assert len(frames) == len(reference) == 60, "2 s of 30 fps: the same 60 frames as the TS segment"
    assert frames[0]["flags"].startswith("K")
    # The source's timestamps: the same PTS/DTS steps as the TS segment cut from the same bus entries
    # (90 kHz both; the TS packetiser adds a constant offset).
    offset = int(reference[0]["dts"]) - int(frames[0]["dts"])
    assert [int(f["dts"]) + offset for f in frames] == [int(r["dts"]) for r in reference]
    assert [int(f["pts"]) + offset for f in frames] == [int(r["pts"]) for r in reference]


@pytest.mark.integration
def test_blocking_request_returns_when_the_part_exists_and_far_ahead_is_400(ll: LlCluster) -> None:
    edge = ll.edges[0]
    before = ll.playlist(edge)
    hint = re.search(r'PRELOAD-HINT:TYPE=PART,URI="cam1_ll(\d{9})\.(\d+)\.m4s"', before)
    seq, part = int(hint.group(1)), int(hint.group(2))
    name = f"cam1_ll{seq:09d}.{part}.m4s"
    assert f'URI="{name}"' not in before.split("PRELOAD-HINT")[0], "the hinted part does not exist yet"
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        blocked = pool.submit(fetch, ll.url(edge, f"cam1_ll.m3u8?_HLS_msn={seq}&_HLS_part={part}"))
        preload = pool.submit(fetch, ll.url(edge, name))  # a preload-hint fetch blocks the same way
        status, body = blocked.result(timeout=20)
        pstatus, pbody = preload.result(timeout=20)
    assert status == 200 and f'URI="{name}"' in body.decode(), "answered once the part is listed"
    check_ll_playlist(body.decode(), "cam1")
    assert pstatus == 200 and pbody[4:8] == b"moof"
    assert fetch(ll.url(edge, name))[1] == pbody
    status, body = fetch(ll.url(edge, f"cam1_ll.m3u8?_HLS_msn={seq + 10}&_HLS_part=0"))
    assert status == 400 and b"too far" in body
    assert fetch(ll.url(edge, "cam1_ll.m3u8?_HLS_part=1"))[0] == 400


@pytest.mark.integration
def test_cold_edge_answers_a_blocking_request_by_joining(ll: LlCluster) -> None:
    found = check_ll_playlist(ll.playlist(ll.edges[0]), "cam1")
    seq, part = found["next"]
    cold = start_node("edge", ll.tmp, mongo=ll.mongo, db_name="llhls", env=EDGE_ENV)
    ll.edges.append(cold)
    status, body = fetch(ll.url(cold, f"cam1_ll.m3u8?_HLS_msn={seq}&_HLS_part={part}"))
    assert status == 200, body
    # the part asked for, or later (the node may take long to start on a loaded machine)
    assert check_ll_playlist(body.decode(), "cam1")["next"] > (seq, part)


@pytest.mark.integration
def test_hlsjs_low_latency_plays_through_nginx_over_two_edges(ll: LlCluster, tmp_path: Path) -> None:
    require_chromium()
    base = ll.start_balancer(tmp_path / "nginx")
    # A delta update skips segments once the window is longer than the 12 s Skip Boundary (7
    # segments of 2 s): wait for that on both edges, or the 4 s of playing may end before any
    # segment is old enough to skip (CI saw it when the tests before this one ran quickly).
    wait_until(lambda: all("#EXT-X-SKIP:SKIPPED-SEGMENTS=" in ll.playlist(e, "?_HLS_skip=YES") for e in ll.edges),
               timeout_s=60, interval_s=0.3, message="both edges skip a segment in a delta update")
    report = play_hls(f"{base}/LiveApp/streams/cam1_ll.m3u8", min_advance_s=4.0, timeout_s=60, low_latency=True)
    assert report.fatal_error is None, "\n".join(report.log[-40:])
    assert report.advanced_s >= 4.0 and report.latency_s is not None and report.latency_s > 0, report
    # the edges advertise CAN-SKIP-UNTIL, so hls.js asks for delta updates and plays on with them
    assert any("delta update:" in line for line in report.log), "\n".join(report.log[-40:])
    # the node's own player page offers the LL playlist (hls.js in low-latency mode)
    played = page_eval(f"{base}/LiveApp/play.html?id=cam1&ll=1",
                       "const v = document.getElementById('video'); return [v.currentTime, v.videoWidth]",
                       lambda v: v[0] >= 2.0, timeout_s=40)
    assert played[0] >= 2.0 and played[1] == 640
    # and classic HLS of the same stream through the same balancer is unchanged
    classic = play_hls(f"{base}/LiveApp/streams/cam1.m3u8", min_advance_s=2.0, timeout_s=60)
    assert classic.fatal_error is None, "\n".join(classic.log[-40:])


def test_every_listed_uri_carries_the_play_token_query() -> None:
    w = LlWindow("cam1")
    feed_all(w, stamped_entries(5))
    text = render_ll_playlist("cam1", w.shown(), target_s=2.0, part_target_s=0.2, ended=False,
                              preload=w.next_part(), query="?token=abc")
    uris = re.findall(r'URI="([^"]+)"', text) + [line for line in text.splitlines() if line.endswith(".m4s?token=abc")]
    assert len(uris) > 10
    assert all(u.endswith("?token=abc") for u in uris), uris
    assert not [line for line in text.splitlines() if line and not line.startswith("#") and "?token=" not in line]


@pytest.mark.integration
def test_a_real_edge_answers_skip_requests_with_a_valid_delta_update(ll: LlCluster) -> None:
    def eight_segments() -> bool:
        return ll.playlist(ll.edges[0]).count("#EXTINF") >= 8
    wait_until(eight_segments, timeout_s=60, interval_s=0.3, message="8 LL segments on edge 0")
    for _ in range(20):  # the three answers must see the same window (a part comes every 200 ms)
        full, delta, again = (ll.playlist(ll.edges[0], q) for q in ("", "?_HLS_skip=YES", ""))
        if full == again:
            break
    assert full == again, "the window kept moving"
    assert "CAN-SKIP-UNTIL=12.0" in full
    skipped = int(re.search(r"^#EXT-X-SKIP:SKIPPED-SEGMENTS=(\d+)$", delta, re.M).group(1))
    segments = [line for line in full.splitlines() if line.endswith(".m4s") and not line.startswith("#")]
    kept = [line for line in delta.splitlines() if line.endswith(".m4s") and not line.startswith("#")]
    assert skipped >= 1 and segments[skipped:] == kept
    assert full.endswith(delta.split("#EXT-X-SKIP:", 1)[1].split("\n", 1)[1]), "the tail is the full playlist's"
