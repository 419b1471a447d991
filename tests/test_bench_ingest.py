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
    # a ratio row for every N, always: a figure, or None with the side(s) below /proc's resolution
    q = r["ratios"]["1"]
    assert set(q) >= {"cpu_s_per_mbit", "cpu_s_per_mbit_with_db", "target_met", "below_resolution", "pairs"}
    if q["cpu_s_per_mbit"] is None:
        assert q["below_resolution"] and q["pairs"] == 0 and q["target_met"] is None
    else:
        assert q["cpu_s_per_mbit"] > 0 and q["pairs"] == 1 and isinstance(q["target_met"], bool)
    for server in ("mesh", "nginx_rtmp"):
        x = r["results"][server]["1"]
        assert x["cpu_source"] in ("schedstat", "stat") and x["cpu_ticks"] >= 0
        assert x["below_resolution"] == (server in q["below_resolution"])


def test_ingest_says_below_resolution_instead_of_dropping_the_ratio() -> None:
    """The KeyError: '1' of a 3 s, one-stream run: nginx-rtmp showed 0 clock ticks. Now the row
    stays, says which side could not be read, and the table says so."""
    from mesh_bench.ingest import Trial, _ratio, format_table

    def trial(server: str, cpu_s: float, below: bool) -> Trial:
        return Trial(server=server, streams=1, duration_s=3.0, cpu_pct=100 * cpu_s / 3, db_cpu_pct=0.0,
                     publishers_cpu_pct=1.0, ingest_mbps=0.6, nominal_mbps=0.62, cpu_s_per_mbit=cpu_s / 1.8,
                     cpu_s_per_mbit_with_db=cpu_s / 1.8, producing=1, segments_advanced=1, publishers_alive=1,
                     start_s=1.0, loadavg=1.0, cpu_source="stat", cpu_ticks=round(cpu_s * 100),
                     below_resolution=below)

    q = _ratio([trial("mesh", 0.05, True)], [trial("nginx_rtmp", 0.0, True)])
    assert q["cpu_s_per_mbit"] is None and q["below_resolution"] == ["mesh", "nginx_rtmp"] and q["pairs"] == 0
    ok = _ratio([trial("mesh", 0.4, False), trial("mesh", 0.3, False)],
                [trial("nginx_rtmp", 0.2, False), trial("nginx_rtmp", 0.0, True)])
    assert ok["pairs"] == 1 and ok["cpu_s_per_mbit"] == 2.0 and ok["below_resolution"] == ["nginx_rtmp"]
    r = {"clip": {"size": "640x360", "fps": 30, "kbps": 619.2, "nominal_kbps": 600, "gop_s": 2.0},
         "params": {"duration_s": 3.0}, "nproc": 2, "results": {}, "ratios": {"1": q}}
    assert "N=1: below resolution: mesh and nginx_rtmp" in format_table(r)


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


def test_a_refused_publisher_is_started_again_until_its_stream_is_live(tmp_path: Path) -> None:
    """A mesh origin refuses a publish ("try again in 2 s") when its database cannot keep up
    with a burst of claims; ffmpeg then exits, and the bench starts it again, as OBS reconnects.
    Here every first attempt finds no server (ffmpeg exits at once) and a stream counts as live
    once its publisher was started a second time."""
    from bench.ingest import publish_until_live, stop_all
    from mesh.embedded_db import free_port

    class Refusing:
        name = "refusing"

        def __init__(self) -> None:
            self.port = free_port()  # nothing listens here
            self.starts: dict[str, int] = {}

        def rtmp_url(self, stream: str) -> str:
            self.starts[stream] = self.starts.get(stream, 0) + 1
            return f"rtmp://127.0.0.1:{self.port}/LiveApp/{stream}"

        def live_streams(self, names: list[str]) -> int:
            return sum(1 for n in names if self.starts.get(n, 0) >= 2)

    clip = tmp_path / "clip.flv"
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i",
                    "testsrc=size=64x64:rate=5:duration=1", "-c:v", "libx264", "-f", "flv", str(clip)],
                   check=True, timeout=60)
    server = Refusing()
    pubs: list[subprocess.Popen[bytes]] = []
    try:
        restarts = publish_until_live(server, clip, ["a", "b", "c"], pubs, timeout_s=30, retry_s=0.2)
    finally:
        stop_all(pubs)
    assert restarts == 3 and server.starts == {"a": 2, "b": 2, "c": 2}
