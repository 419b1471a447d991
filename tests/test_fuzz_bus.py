"""The bus fuzz target (bench/fuzz_bus.py) at a test's size: no crash in 2,000 inputs."""
from __future__ import annotations

from mesh_bench.fuzz_bus import fuzz


def test_bus_parsers_only_ever_reject_with_wire_error() -> None:
    result = fuzz(2000, seed=1)
    assert result["crashes"] == 0, result.get("first_crash")
    assert result["inputs"] == 2000 == result["accepted"] + result["rejected"]
    assert result["accepted"] > 50 and result["rejected"] > 500, result  # both ways were exercised


def test_inputs_are_deterministic_for_a_seed() -> None:
    a, b = fuzz(300, seed=7), fuzz(300, seed=7)
    a.pop("seconds"), b.pop("seconds")
    a.pop("max_rss_growth_bytes"), b.pop("max_rss_growth_bytes")
    assert a == b
