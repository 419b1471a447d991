"""The HTTP fuzz target (bench/fuzz_http.py) on 2,000 inputs: no crash, no disagreement between the
fast path's parser and aiohttp's, and the run really reaches both parsers' accept and reject sides.
"""
from __future__ import annotations

import asyncio

import pytest

from mesh.http.app import SimpleGet
from mesh_bench.fuzz_http import SEEDS, _Parse, _same_reading, fuzz, mutate


def test_two_thousand_inputs_crash_nothing() -> None:
    result = fuzz(2000, seed=1)
    assert result["crashes"] == 0, result.get("first_crash")
    assert result["inputs"] == 2000 == result["accepted"] + result["rejected"]
    assert result["accepted"] > 100 and result["rejected"] > 100
    assert result["fast_path_accepted"] > 50  # the differential check ran


def test_the_run_is_deterministic_for_a_seed() -> None:
    import random
    a, b = random.Random(7), random.Random(7)
    assert [mutate(s, a) for s in SEEDS * 5] == [mutate(s, b) for s in SEEDS * 5]


def test_the_differential_check_catches_a_fast_path_that_accepts_too_much() -> None:
    """A head aiohttp refuses (no Host) read as plain by a too-lax fast parser is a crash."""
    loop = asyncio.new_event_loop()
    try:
        parse = _Parse(loop)
        _same_reading(parse, b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n", SimpleGet("/x", False))
        with pytest.raises(AssertionError, match="rejects"):
            _same_reading(parse, b"GET /x HTTP/1.1\r\n\r\n", SimpleGet("/x", False))
        with pytest.raises(AssertionError, match="differently"):
            _same_reading(parse, b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n", SimpleGet("/x", True))
    finally:
        loop.close()
