"""Smoke test of `mesh bench scale`: tiny settings, the JSON shape, and that both scalers ran."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from .procs import node_env


def test_bench_scale_smoke() -> None:
    out = subprocess.run([sys.executable, "-m", "mesh", "bench", "scale", "--size", "240x180:160x120",
                          "--size", "320x180:160x90", "--frames", "2", "--trials", "2", "--json"],
                         capture_output=True, text=True, timeout=300, env=node_env())
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["linesize"]["320x180"] >= 320 and result["linesize"]["240x180"] >= 240
    sizes = [(p["src"], p["dst"]) for p in result["pairs"]]
    assert sizes == [("240x180", "160x120"), ("320x180", "160x90")]
    threads = f"{result['threads']}t"
    for p in result["pairs"]:
        for name in ("numba_1t", "swscale_1t", f"numba_{threads}", f"swscale_{threads}"):
            assert p[name]["fps"] > 0, f"{name} ran"
        ratio = p["ratio_1t"]
        assert abs(ratio - p["numba_1t"]["fps"] / p["swscale_1t"]["fps"]) < 1e-6 * ratio
        assert p["auto"] in ("numba", "swscale")
    assert [p["auto"] for p in result["pairs"]] == ["numba", "swscale"]  # the documented per-size choice
    assert result["bitrate_meter"]["us_per_segment"] > 0


def test_bench_scale_refuses_bad_sizes() -> None:
    out = subprocess.run([sys.executable, "-m", "mesh", "bench", "scale", "--size", "1280x720"],
                         capture_output=True, text=True, timeout=120, env=node_env())
    assert out.returncode != 0 and "SRCWxSRCH:DSTWxDSTH" in out.stderr


def test_bench_scale_readme_command() -> None:
    """The README's example, exactly as written there."""
    env = node_env()
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")  # the venv's `mesh`
    cmd = ["mesh", "bench", "scale", "--size", "1280x720:640x360", "--frames", "2", "--trials", "2"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    assert "1280x720->640x360" in out.stdout and "numba" in out.stdout
