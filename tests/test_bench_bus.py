"""`mesh bench throughput` and `mesh bench fanout` through the CLI (tiny runs: shape, not speed).
The bus fast paths those benchmarks drove are checked in test_bus_fast_paths.py."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bench(*args: str, timeout: float = 120) -> dict:
    proc = subprocess.run([sys.executable, "-m", "mesh", "bench", *args, "--json"], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.strip(), "progress lines go to stderr"
    return json.loads(proc.stdout)  # exactly one JSON object, nothing else on stdout


def test_throughput_cli_reports_mesh_and_the_raw_baseline() -> None:
    report = bench("throughput", "--payload", "1500", "--duration", "0.5")
    (row,) = report["results"]
    assert row["payload_bytes"] == 1500 and row["subscribers"] == 1
    assert row["raw_msgs_per_s"] > 0 and row["raw_mb_per_s"] > 0, "the baseline ran"
    assert row["mesh_msgs_per_s"] > 0 and row["mesh_mb_per_s"] > 0
    assert abs(row["ratio"] - row["mesh_msgs_per_s"] / row["raw_msgs_per_s"]) < 1e-9 * row["ratio"]
    assert isinstance(row["lost"], int) and row["lost"] == row["mesh_lost"] >= 0
    assert 0 < row["mesh_delivered_ratio"] <= 1 and 0 < row["raw_delivered_ratio"] <= 1
    assert 0 < row["mesh_p50_ms"] <= row["mesh_p99_ms"] and 0 < row["raw_p50_ms"] <= row["raw_p99_ms"]
    assert row["mesh_units_per_zmq_message"] >= 1
    assert len(row["mesh_runs_msgs_per_s"]) == report["repeats"] == len(row["raw_runs_msgs_per_s"])


def test_fanout_cli_reports_aggregate_and_largest_clean_n() -> None:
    report = bench("fanout", "--edges", "1,2", "--size", "160x96", "--seconds", "1",
                   "--bitrate-kbps", "300", "--speed", "20", "--duration", "0.5")
    assert [r["edges"] for r in report["results"]] == [1, 2]
    media = report["media"]
    assert media["access_units"] > 30 and media["video_units"] and media["audio_units"]
    assert media["segments"] >= 1, "the encoded pattern has keyframes to cut segments at"
    for row in report["results"]:
        assert row["raw_gbit_s"] > 0 and row["mesh_gbit_s"] > 0, "both ran"
        assert abs(row["ratio"] - row["mesh_gbit_s"] / row["raw_gbit_s"]) < 1e-9 * row["ratio"]
        assert row["lost"] == row["mesh_lost"] >= 0 and row["raw_lost"] >= 0
    for impl in ("mesh", "raw"):
        assert report[f"{impl}_max_edges_without_loss"] in (0, 1, 2)


def test_a_worker_failure_is_a_clean_cli_error() -> None:
    proc = subprocess.run([sys.executable, "-m", "mesh", "bench", "throughput", "--payload", "4"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode != 0 and "at least 8 bytes" in proc.stderr


def test_cached_media_file_is_reused(tmp_path) -> None:
    """The fan-out media is encoded once per parameter set (the second run must not re-encode)."""
    from mesh_bench.fanout import prepare_media

    path1, info1 = prepare_media(1.0, 160, 96, 15, 200)
    path2, info2 = prepare_media(1.0, 160, 96, 15, 200)
    assert path1 == path2 and path1.startswith(tempfile.gettempdir())
    assert info2["encode_s"] is None and info1["access_units"] == info2["access_units"]
