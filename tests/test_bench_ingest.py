"""Smoke tests of `mesh bench ingest|latency|e2e`: each runs for real with tiny settings, prints one
JSON object of the documented shape, and its nginx-rtmp baseline really ran (produced segments).

These check that the benchmarks work, not how fast anything is (figures are never asserted).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="Debian ffmpeg not installed"),
    pytest.mark.skipif(not Path("/usr/lib/nginx/modules/ngx_rtmp_module.so").exists(),
                       reason="nginx-rtmp (libnginx-mod-rtmp) not installed"),
]


def bench(*args: str, timeout_s: float = 120) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESH_")}
    out = subprocess.run([sys.executable, "-m", "mesh", "bench", *args, "--json"], capture_output=True,
                         text=True, timeout=timeout_s, env=env, check=False)
    assert out.returncode == 0, f"mesh bench {' '.join(args)} failed:\n{out.stderr[-3000:]}"
    assert out.stderr.strip(), "a benchmark reports progress on stderr"
    return json.loads(out.stdout)


def test_ingest_runs_mesh_and_nginx_rtmp() -> None:
    r = bench("ingest", "--streams", "1", "--duration", "3", "--settle", "1")
    assert r["bench"] == "ingest" and r["nproc"] >= 1 and r["params"]["streams"] == [1]
    assert r["clip"]["kbps"] > 0
    for server in ("mesh", "nginx_rtmp"):
        x = r["results"][server]["1"]
        for key in ("cpu_pct", "cpu_s_per_mbit", "ingest_mbps", "nominal_mbps", "achieved_pct", "producing",
                    "segments_advanced", "publishers_cpu_pct", "db_cpu_pct"):
            assert key in x, (server, key)
        assert x["ingest_mbps"] > 0, server  # the server counted bytes it received
        assert x["segments_advanced"] >= 1 and x["producing"] == 1, (server, x)  # segments came out
    assert r["results"]["mesh"]["1"]["db_cpu_pct"] >= 0
    assert set(r["ratios"]["1"]) >= {"cpu_s_per_mbit", "cpu_s_per_mbit_with_db", "target_met"}


def test_latency_measures_the_edge_and_nginx_rtmp() -> None:
    r = bench("latency", "--duration", "7")
    assert r["bench"] == "latency" and r["params"]["poll_ms"] <= 5
    for server in ("mesh", "nginx_rtmp"):
        x = r["results"][server]
        assert x["segments"] >= 1, (server, x)  # a segment was matched to the keyframe that closed it
        assert x["median_ms"] is not None and x["max_ms"] >= x["median_ms"] >= 0
        for row in x["rows"]:
            assert row["closing_keyframe_ms"] == row["end_ms"]  # cut at the 2 s keyframes, on both
    assert r["ratios"]["median"] > 0
    assert isinstance(r["target"]["met"], bool)


def test_e2e_reports_access_unit_to_listed() -> None:
    r = bench("e2e", "--duration", "7", "--no-player")
    a = r["results"]["access_unit_to_listed"]
    assert r["bench"] == "e2e" and a["segments"] >= 1
    assert a["first_au_ms_median"] > a["last_au_ms_median"] >= 0  # the opener waits a whole segment
    assert r["results"]["player"]["available"] is False
    assert r["target"]["first_au_ms_limit"] == 2100


# ---------------------------------------------------------------------------------------------
# The ingest fast paths that `mesh bench ingest` measures must agree with the reference paths:
# ServerSession.read_media() with next_event(), FlvPublish.on_media() with on_video()/on_audio().
# Pure and quick (no processes); property tests over random publishes.

from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.ingest.flv_source import FlvPublish
from mesh.protocols.rtmp import (
    NEED_DATA,
    PAUSED,
    AudioMessage,
    RemoteProtocolError,
    ServerSession,
    VideoMessage,
)

from .test_rtmp_session import Publisher, handshaken

_media = st.lists(st.tuples(
    st.sampled_from(["v", "a", "meta", "wrap"]),
    st.integers(0, 3000),  # timestamp step
    st.binary(min_size=0, max_size=300)), max_size=40)


def _publish_bytes(items: list[tuple[str, int, bytes]], chunk_size: int) -> bytes:
    pub = Publisher(chunk_size)
    s = ServerSession()
    out = [pub.handshake_c0c1(), bytes(1536), pub.connect(), pub.setup()]
    ts = 0
    for kind, step, body in items:
        ts = (ts + step) & 0xFFFFFFFF
        if kind == "v":
            out.append(pub.video(ts, b"\x27\x01\x00\x00\x00" + body))
        elif kind == "a":
            out.append(pub.audio(ts, b"\xaf\x01" + body))
        elif kind == "meta":
            out.append(pub.metadata())
        else:  # a jump that wraps the 32-bit timestamp
            ts = (ts + 0xFFFFF000) & 0xFFFFFFFF
            out.append(pub.video(ts, b"\x17\x01\x00\x00\x00" + body))
    out.append(pub.teardown())
    del s
    return b"".join(out)


def _reference(data: bytes, pieces: list[int]) -> list[object]:
    s = ServerSession()
    events: list[object] = []
    for piece in _split(data, pieces):
        s.receive_data(piece)
        while (ev := s.next_event()) is not NEED_DATA:
            if ev is PAUSED:
                s.accept_publish()
            elif isinstance(ev, (VideoMessage, AudioMessage)):
                events.append((9 if isinstance(ev, VideoMessage) else 8, ev.timestamp_ms, ev.payload))
            else:
                events.append(ev)
    return events


def _fast(data: bytes, pieces: list[int]) -> tuple[list[object], ServerSession]:
    s = ServerSession()
    events: list[object] = []
    media: list[tuple[int, int, bytes]] = []
    for piece in _split(data, pieces):
        s.receive_data(piece)
        while True:
            ev = s.read_media(media)
            events.extend(media)
            media.clear()
            if ev is NEED_DATA:
                break
            if ev is PAUSED:
                s.accept_publish()
            else:
                events.append(ev)
    return events, s


def _split(data: bytes, pieces: list[int]) -> list[bytes]:
    out, pos = [], 0
    for n in pieces:
        if pos >= len(data):
            break
        out.append(data[pos:pos + n])
        pos += n
    if pos < len(data):
        out.append(data[pos:])
    return out


@settings(max_examples=60, deadline=None)
@given(_media, st.sampled_from([128, 4096]), st.lists(st.integers(1, 5000), max_size=30))
def test_read_media_delivers_what_next_event_does(items, chunk_size, pieces) -> None:
    data = _publish_bytes(items, chunk_size)
    fast, session = _fast(data, pieces)
    assert fast == _reference(data, pieces)
    assert session.video_messages == sum(1 for e in fast if isinstance(e, tuple) and e[0] == 9)
    assert session.audio_messages == sum(1 for e in fast if isinstance(e, tuple) and e[0] == 8)


def test_read_media_keeps_media_before_a_protocol_error() -> None:
    pub = Publisher(4096)
    s = ServerSession()
    handshaken(s, pub)
    s.receive_data(pub.connect() + pub.setup())
    while (ev := s.next_event()) is not NEED_DATA:
        if ev is PAUSED:
            s.accept_publish()
    s.receive_data(pub.audio(10, b"\xaf\x01a") + pub.w.write(4, 8, 7, 20, b"\xaf\x01b"))  # wrong stream
    media: list[tuple[int, int, bytes]] = []
    try:
        s.read_media(media)
    except RemoteProtocolError as exc:
        assert exc.reason == "order"
    else:
        raise AssertionError("media on another message stream must be refused")
    assert media == [(8, 10, b"\xaf\x01a")]


class _Live:
    fenced = False

    def __init__(self) -> None:
        self.pushed: list[tuple] = []
        self.video = self.audio = None

    def push_media(self, track, pts, dts, key, data) -> None:
        self.pushed.append((track, pts, dts, key, bytes(data)))

    def set_video(self, cfg) -> None:
        self.video = cfg

    def set_audio(self, cfg) -> None:
        self.audio = cfg


_tags = st.lists(st.tuples(
    st.sampled_from([9, 8]),
    st.integers(0, 1 << 31),
    st.sampled_from([b"\x17\x01", b"\x27\x01", b"\x17\x02", b"\x37\x01", b"\x27\x00", b"\x22", b"\xaf\x01",
                     b"\xaf\x02", b"\x2f\x01", b"\xa0", b""]),
    st.binary(max_size=12)), max_size=30)


def _outcome(fn) -> tuple[str, str]:
    try:
        fn()
    except Exception as exc:  # PublishAborted, with its reason, must be the same on both paths
        return type(exc).__name__, getattr(exc, "reason", "")
    return "", ""


@settings(max_examples=150, deadline=None)
@given(_tags)
def test_on_media_pushes_what_on_video_and_on_audio_push(tags) -> None:
    batch = [(t, ts, head + body) for t, ts, head, body in tags]
    ref_live, fast_live = _Live(), _Live()
    ref, fast = FlvPublish(ref_live, None), FlvPublish(fast_live, None)  # type: ignore[arg-type]

    def reference() -> None:
        for t, ts, payload in batch:
            (ref.on_video if t == 9 else ref.on_audio)(ts, payload)

    assert _outcome(lambda: fast.on_media(list(batch))) == _outcome(reference)
    assert fast_live.pushed == ref_live.pushed
    assert all(type(key) is bool for _, _, _, key, _ in fast_live.pushed)
