"""`mesh bench edge-load` end to end at tiny settings: real origin and edges, ffmpeg publishers, wrk.

Checks the report's shape and that the figures are what they claim (both edges served every
trial without errors, both follow every stream, the ratio is loop over workers). No figure is
asserted against a target: benchmarks measure, tests do not time.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_edge_load_runs_both_edges_and_reports_the_ratio() -> None:
    for tool in ("wrk", "ffmpeg"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (scripts/setup installs it)")
    out = subprocess.run([sys.executable, "-m", "mesh", "bench", "edge-load", "--streams", "2",
                          "--duration", "1", "--repeats", "1", "--connections", "4", "--json"],
                         capture_output=True, text=True, timeout=200)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    assert report["streams"] == 2 and set(report["edges"]) == {"loop", "workers"}
    for name, trials in report["trials"].items():
        assert len(trials) == 1
        t = trials[0]
        assert t["requests"] > 0 and t["non_2xx"] == 0 and t["socket_errors"] == 0, (name, t)
        assert t["segments_cut"] == 2, f"the {name} edge follows every stream"
        assert 0 < t["p50_ms"] <= t["p99_ms"]
    edges = report["edges"]
    assert report["p99_ratio_loop_over_workers"] == round(edges["loop"]["p99_ms"] / edges["workers"]["p99_ms"], 2)
    assert "on the loop" in subprocess.run([sys.executable, "-m", "mesh", "bench", "edge-load", "--help"],
                                           capture_output=True, text=True, timeout=60).stdout
