"""The JWT fuzz target (bench/fuzz_jwt.py) in a fast run: hostile tokens only ever raise TokenError."""
from __future__ import annotations

from mesh_bench.fuzz_jwt import fuzz


def test_fuzz_jwt_has_no_crashes() -> None:
    result = fuzz(2000, seed=1)
    assert result["crashes"] == 0, result.get("first_crash")
    assert result["inputs"] == 2000 == result["accepted"] + result["rejected"]
    # The generator reaches both sides: some inputs verify, most are refused.
    assert result["accepted"] > 20 and result["rejected"] > 1000, result


def test_fuzz_jwt_is_deterministic_for_a_seed() -> None:
    a, b = fuzz(300, seed=7), fuzz(300, seed=7)
    assert (a["accepted"], a["rejected"]) == (b["accepted"], b["rejected"])
