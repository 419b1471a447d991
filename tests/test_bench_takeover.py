"""`mesh bench takeover` end to end with one kill: a real database, two origins, an edge and a
publisher (the live feed that re-makes its connection, and a restarted ffmpeg). Checks the report's shape, that the baseline ran in the same run, and that the
takeover was broken down step by step in order; no figure is asserted against the target."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .procs import node_env

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("extra", [[], ["--publisher", "ffmpeg"]], ids=["feed", "ffmpeg"])
def test_bench_takeover_one_kill(extra: list[str]) -> None:
    """The README's example, exactly as written there (and with the restarted ffmpeg publisher)."""
    env = node_env()
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")  # the venv's `mesh`
    out = subprocess.run(["mesh", "bench", "takeover", "--kills", "1", "--json", *extra],
                         capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "run 1/1" in out.stderr, "progress goes to stderr"
    report = json.loads(out.stdout)
    assert report["publisher"] == (extra[1] if extra else "feed")
    assert report["kills"] == 1 and report["reconnect_after_s"] == 1.0 and report["gop_s"] == 1.0
    (t,), (c,) = report["takeover_s"], report["baseline_s"]
    assert t > 1.0 and c > 1.0, "both wait at least the publisher's reconnect delay"
    assert report["ratio"] == pytest.approx(t / c, rel=1e-2) and report["paired_ratio"] == report["ratio"]
    steps = report["steps_median_s"]
    assert list(steps) == ["publish asked", "claim written", "first segment on the bus", "edge follows",
                           "edge lists it"]
    assert all(v is not None for v in steps.values()), steps
    assert 1.0 <= steps["publish asked"] <= steps["claim written"] <= steps["first segment on the bus"] \
        <= steps["edge lists it"] <= t + 0.1, steps


def test_bench_takeover_help_teaches() -> None:
    out = subprocess.run([sys.executable, "-m", "mesh", "bench", "takeover", "--help"],
                         capture_output=True, text=True, timeout=60, env=node_env())
    assert out.returncode == 0
    for word in ("--kills", "--reconnect-after", "--gop", "--publisher", "OBS", "baseline", "SIGKILL"):
        assert word in out.stdout, word
    listed = subprocess.run([sys.executable, "-m", "mesh", "bench", "--help"], capture_output=True, text=True,
                            timeout=60, env=node_env())
    assert "takeover" in listed.stdout
