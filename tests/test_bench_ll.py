"""`mesh bench ll-capacity` end to end at tiny settings: a real origin and edge, a real-time feed,
a few simulated LL-HLS players doing blocking reloads. Checks the report's shape and that every
player was answered without errors; no figure is asserted against a target (tests do not time).
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_ll_capacity_runs_the_baseline_and_the_players() -> None:
    out = subprocess.run([sys.executable, "-m", "mesh", "bench", "ll-capacity", "--players", "1,5",
                          "--seconds", "3", "--json"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    assert [r["players"] for r in report["results"]] == [1, 5]
    for r in report["results"]:
        assert r["errors"] == 0 and r["answers"] >= r["players"], r
        assert r["counted"] > 0 and r["delay_ms_p50"] is not None and r["delay_ms_p50"] <= r["delay_ms_p99"]
    assert report["target"] == {"players": 2000, "p99_ms": 50.0, "met": False}, "5 players never meet a 2,000 target"
    assert "--players" in subprocess.run([sys.executable, "-m", "mesh", "bench", "ll-capacity", "--help"],
                                         capture_output=True, text=True, timeout=60).stdout
