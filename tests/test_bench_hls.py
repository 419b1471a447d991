"""`mesh bench hls` end to end at tiny settings: real nodes, ffmpeg, nginx and wrk, as a user runs it.

Checks the JSON's shape and that the figures are what they claim: the nginx baseline really served
(requests, no errors), it served the edge's own bytes, and each ratio is edge over baseline.
No figure is asserted against a target: benchmarks measure, tests do not time.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

FIELDS = {"target", "kind", "requests_per_s", "mb_per_s", "p50_ms", "p99_ms", "errors", "non_2xx",
          "socket_errors", "requests", "bytes", "url"}


@pytest.fixture(scope="module")
def bench() -> tuple[dict, str]:
    for tool in ("wrk", "nginx", "ffmpeg"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (scripts/setup installs it)")
    out = subprocess.run([sys.executable, "-m", "mesh", "bench", "hls", "--duration", "1",
                          "--connections", "4", "--repeats", "1", "--json"],
                         capture_output=True, text=True, timeout=110)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout), out.stderr


def test_every_target_reports_the_documented_fields(bench: tuple[dict, str]) -> None:
    result, _ = bench
    assert result["connections"] == 4 and result["repeats"] == 1 and result["duration_s"] == 1
    rows = {(x["target"], x["kind"]): x for x in result["results"]}
    expected = {(t, k) for t in ("edge", "nginx") for k in ("segment", "playlist")}
    if result["nginx_rtmp"]:
        expected |= {("nginx-rtmp", "segment"), ("nginx-rtmp", "playlist")}
    assert set(rows) == expected
    for row in rows.values():
        assert FIELDS <= set(row), row
        assert row["requests"] > 0 and row["requests_per_s"] > 0 and row["mb_per_s"] > 0, row
        assert row["errors"] == row["non_2xx"] + row["socket_errors"] == 0, row
        assert 0 < row["p50_ms"] <= row["p99_ms"], row


def test_nginx_served_the_edges_bytes(bench: tuple[dict, str]) -> None:
    rows = {(x["target"], x["kind"]): x for x in bench[0]["results"]}
    edge, nginx = rows[("edge", "segment")], rows[("nginx", "segment")]
    assert edge["bytes"] == nginx["bytes"] > 10_000  # one real 2 s segment, not an error body
    assert edge["url"].rsplit("/", 1)[1] == nginx["url"].rsplit("/", 1)[1]
    # (the playlist is copied before each round; the edge's may have grown since its own run)
    assert rows[("edge", "playlist")]["bytes"] > 100 and rows[("nginx", "playlist")]["bytes"] > 100
    for row in rows.values():  # every response carried its whole body, plus headers
        assert row["bytes_per_response"] > row["bytes"], row


def test_ratios_are_edge_over_baseline(bench: tuple[dict, str]) -> None:
    result, _ = bench
    rows = {(x["target"], x["kind"]): x for x in result["results"]}
    bases = ["nginx"] + (["nginx-rtmp"] if result["nginx_rtmp"] else [])
    assert set(result["ratios"]) == {f"{k}_edge_vs_{b}" for k in ("segment", "playlist") for b in bases}
    for kind in ("segment", "playlist"):
        for base in bases:
            want = rows[("edge", kind)]["requests_per_s"] / rows[(base, kind)]["requests_per_s"]
            assert result["ratios"][f"{kind}_edge_vs_{base}"] == pytest.approx(want)


def test_progress_goes_to_stderr(bench: tuple[dict, str]) -> None:
    _, stderr = bench
    assert "edge segment" in stderr and "[1/" in stderr
