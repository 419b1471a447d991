"""Smoke test of `mesh bench packetise`: tiny settings, the JSON shape, and that the baseline ran."""
from __future__ import annotations

import json
import subprocess
import sys

from .procs import node_env


def test_bench_packetise_smoke() -> None:
    out = subprocess.run([sys.executable, "-m", "mesh", "bench", "packetise", "--seconds", "1", "--repeats",
                          "1", "--size", "320x180", "--no-compile-times", "--json"],
                         capture_output=True, text=True, timeout=120, env=node_env())
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    numba, ffmpeg = result["numba"], result["ffmpeg_mux"]
    assert result["media"]["access_units"] > 30
    assert numba["segments_per_s"] > 0 and ffmpeg["segments_per_s"] > 0, "both sides ran"
    assert ffmpeg["ts_bytes"] > 0 and abs(numba["ts_bytes"] - ffmpeg["ts_bytes"]) < 0.1 * ffmpeg["ts_bytes"]
    ratio = result["ratio_vs_ffmpeg_mux"]
    assert abs(ratio - numba["segments_per_s"] / ffmpeg["segments_per_s"]) < 1e-6 * ratio
