"""`mesh bench fuzz` runs every fuzz target (a few inputs each here) and fails on a crash."""
from __future__ import annotations

import json
import subprocess
import sys

from mesh_bench import fuzz


def test_fuzz_runs_every_target_and_reports_counts() -> None:
    out = subprocess.run([sys.executable, "-m", "mesh", "bench", "fuzz", "--count", "200", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    assert {r["target"] for r in report["results"]} == set(fuzz.targets()) >= {"rtmp", "jwt"}
    for r in report["results"]:
        assert r["inputs"] == 200 == r["accepted"] + r["rejected"] + r["crashes"]
        assert r["crashes"] == 0 and r["rejected"] > 0


def test_a_crashing_target_fails_the_command(monkeypatch) -> None:
    import mesh_bench.fuzz_jwt as target

    monkeypatch.setattr(target, "fuzz", lambda count, seed=0: {
        "target": "jwt", "inputs": count, "accepted": 0, "rejected": count - 1, "crashes": 1,
        "seconds": 0.0, "max_rss_growth_bytes": 0})
    from click.testing import CliRunner

    result = CliRunner().invoke(fuzz.command, ["--count", "5", "--target", "jwt"])
    assert result.exit_code == 1 and "jwt" in result.output
