"""`mesh bench ladder` at tiny settings: both sides really transcode, the ratio is mesh over ffmpeg."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from mesh_bench.ladder import ffmpeg_args

pytestmark = pytest.mark.integration


def test_ladder_bench_measures_mesh_and_ffmpeg_on_the_same_clip() -> None:
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed (scripts/setup installs it)")
    out = subprocess.run([sys.executable, "-m", "mesh", "bench", "ladder", "--ladder", "360p600k,240p300k",
                          "--seconds", "1", "--repeats", "1", "--preset", "ultrafast", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    (row,) = report["results"]
    assert row["ladder"] == "360p600k,240p300k" and report["input_s"] == pytest.approx(1.0, abs=0.1)
    assert row["mesh_cpu_per_s"] > 0 and row["ffmpeg_cpu_per_s"] > 0
    assert row["ratio"] == pytest.approx(row["mesh_cpu_per_s"] / row["ffmpeg_cpu_per_s"], abs=0.01)


def test_the_ffmpeg_baseline_does_the_same_work() -> None:
    args = " ".join(ffmpeg_args("in.mp4", "720p2500k,480p1000k,360p600k", "veryfast", 1))
    assert "split=3" in args and args.count("-c:v libx264") == 3 and args.count("-tune zerolatency") == 3
    assert "scale=854:480:flags=bilinear" in args and "bframes=0" in args and "-force_key_frames source" in args
