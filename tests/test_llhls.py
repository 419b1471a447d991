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
import time
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


def test_end_of_stream_lists_the_last_segment_and_ends() -> None:
    entries = stamped_entries(4.5)
    w = LlWindow("cam1")
    feed_all(w, entries + [Entry(len(entries), EOS, extra={"reason": "finished"}, epoch=1)])
    assert w.ended and w.next_part() is None
    text = render_ll_playlist("cam1", w.shown(), target_s=2.0, part_target_s=0.2, ended=True, preload=None)
    assert text.endswith("#EXT-X-ENDLIST\n") and "PRELOAD-HINT" not in text
