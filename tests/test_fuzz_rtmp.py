"""The RTMP fuzz target (bench/fuzz_rtmp.py): its seeds are real publishes, it counts crashes,
and ~2,000 inputs crash nothing. `mesh bench fuzz` runs it at 100,000 inputs."""
from __future__ import annotations

from mesh.protocols.rtmp import NEED_DATA, PAUSED, ServerSession
from mesh_bench import fuzz_rtmp


def events_of(data: bytes) -> list[str]:
    s = ServerSession()
    s.receive_data(data)
    kinds = []
    while (ev := s.next_event()) is not NEED_DATA:
        if ev is PAUSED:
            s.accept_publish()
            continue
        kinds.append(type(ev).__name__)
    return kinds


def test_seeds_are_complete_valid_publishes() -> None:
    for seed in fuzz_rtmp.SEEDS:
        kinds = events_of(seed)
        assert kinds[:3] == ["Connected", "PublishRequested", "Metadata"]
        assert kinds.count("VideoMessage") == 5 and kinds.count("AudioMessage") == 3  # one pair aggregated
        assert kinds[-1] == "Unpublished"


def test_two_thousand_inputs_crash_nothing() -> None:
    result = fuzz_rtmp.fuzz(2000, seed=1)
    assert set(result) == {"target", "inputs", "accepted", "rejected", "crashes", "seconds",
                           "max_rss_growth_bytes"}
    assert result["target"] == "rtmp" and result["inputs"] == 2000
    assert result["crashes"] == 0, result
    assert result["accepted"] + result["rejected"] == 2000
    assert result["accepted"] > 200 and result["rejected"] > 200  # both sides of the parser are reached
    assert result["max_rss_growth_bytes"] < 32 << 20  # huge declared lengths allocate nothing


def test_the_same_seed_gives_the_same_run() -> None:
    a, b = fuzz_rtmp.fuzz(300, seed=7), fuzz_rtmp.fuzz(300, seed=7)
    assert (a["accepted"], a["rejected"]) == (b["accepted"], b["rejected"])


def test_an_unexpected_exception_counts_as_a_crash(monkeypatch) -> None:
    def broken(payload: bytes) -> None:
        raise KeyError("a parser bug")

    monkeypatch.setattr(fuzz_rtmp.flv, "parse_video", broken)
    assert fuzz_rtmp.fuzz(200, seed=3)["crashes"] > 0
