"""Smoke test of `mesh bench fmp4`: tiny settings, the JSON shape, and that the baselines ran."""
from __future__ import annotations

import json
import subprocess
import sys

from .procs import node_env


def test_bench_fmp4_smoke() -> None:
    out = subprocess.run([sys.executable, "-m", "mesh", "bench", "fmp4", "--seconds", "2", "--repeats", "1",
                          "--size", "320x180", "--json"], check=False, capture_output=True, text=True, timeout=180,
                         env=node_env())
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    media = result["media"]
    assert media["access_units"] > 60 and media["parts"] >= 2 * media["segments"]
    names = ("numba", "numba_parts", "ffmpeg_mux", "ffmpeg_full", "ffmpeg_stream", "ffmpeg_gop")
    assert all(result[name]["segments_per_s"] > 0 for name in names), "every side ran"
    ours, ffmpeg = result["numba"], result["ffmpeg_mux"]
    assert ours["out_bytes"] == result["numba_parts"]["out_bytes"]
    # Same samples, similar box overhead: the outputs are within a few percent of each other.
    assert abs(ours["out_bytes"] - ffmpeg["out_bytes"]) < 0.05 * ffmpeg["out_bytes"]
    assert ours["out_bytes"] > media["input_bytes"]
    ratio = result["ratio_vs_ffmpeg_mux"]
    assert abs(ratio - ours["segments_per_s"] / ffmpeg["segments_per_s"]) < 1e-6 * ratio
