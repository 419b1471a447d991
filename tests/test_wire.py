"""The bus wire format: round trips, exact errors, and a property/fuzz test of the decoder."""
from __future__ import annotations

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mesh.broker import wire
from mesh.broker.wire import CONFIG, EOS, FLAG_KEY, FLAG_SEG_START, HEARTBEAT, MEDIA, Entry, WireError


def sample_entries() -> list[Entry]:
    return [
        Entry(10, CONFIG, extra={"video": {"width": 640, "avcc": b"\x01\x64"}}, epoch=3),
        Entry(11, MEDIA, 0, 9000, 6000, FLAG_KEY | FLAG_SEG_START, 5, b"\x00\x00\x00\x02\x65\x88", epoch=3),
        Entry(12, MEDIA, 1, 6100, 6100, FLAG_KEY, 5, b"\x21" * 300, epoch=3),
        Entry(13, HEARTBEAT, epoch=3),
        Entry(14, EOS, extra={"reason": "finished"}, epoch=3),
    ]


def test_round_trip_batch() -> None:
    entries = sample_entries()
    frames = wire.encode(b"s/cam1/src/", 3, entries)
    assert frames[0] == b"s/cam1/src/"
    stream, rendition, decoded = wire.decode([bytes(f) for f in frames])
    assert (stream, rendition) == ("cam1", "src")
    assert decoded == entries
    assert decoded[1].key and decoded[1].seg_start and not decoded[2].seg_start


def test_single_entry_payload_is_not_copied() -> None:
    payload = bytearray(b"x" * 100_000)
    frames = wire.encode(b"s/a/src/", 1, [Entry(0, MEDIA, payload=payload, epoch=1)])
    assert frames[2] is payload


def test_topic_names() -> None:
    assert wire.topic_for("cam1") == b"s/cam1/src/"
    assert not wire.topic_for("cam10").startswith(wire.topic_for("cam1"))
    for bad in ("", "a/b", "x" * 129, "café", "a b"):
        with pytest.raises(ValueError):
            wire.topic_for(bad)


@pytest.mark.parametrize("frames, reason", [
    ([b"s/cam1/src/", b"\xc1"], "frames"),
    ([b"x/cam1/src/", b"", b""], "topic"),
    ([b"s/cam1/src", b"", b""], "topic"),
    ([b"s/cam1/src/", b"\xc1", b""], "msgpack"),
    ([b"s/cam1/src/", msgpack.packb([1, 2]), b""], "header"),
    ([b"s/cam1/src/", msgpack.packb({"v": 2, "e": 1, "h": [[0] * 8]}), b""], "version"),
    ([b"s/cam1/src/", msgpack.packb({"v": 1, "e": -1, "h": [[0] * 8]}), b""], "header"),
    ([b"s/cam1/src/", msgpack.packb({"v": 1, "e": 1, "h": []}), b""], "header"),
    ([b"s/cam1/src/", msgpack.packb({"v": 1, "e": 1, "h": [[0, 9, 0, 0, 0, 0, 0, 0]]}), b""], "entry"),
    ([b"s/cam1/src/", msgpack.packb({"v": 1, "e": 1, "h": [[0, 0, 0, 0, 0, 64, 0, 0]]}), b""], "entry"),
    ([b"s/cam1/src/", msgpack.packb({"v": 1, "e": 1, "h": [[0, 0, 0, 0, 0, 0, 0, 5]]}), b"abc"], "length"),
    ([b"s/cam1/src/", msgpack.packb({"v": 1, "e": 1, "h": [[0, 0, 0, 0, 0, 0, 0, 2]]}), b"abc"], "length"),
    ([b"s/cam1/src/", msgpack.packb({"v": 1, "e": 1, "h": [[0, 1, 0, 0, 0, 0, 0, 0, [1]]]}), b""], "entry"),
    ([b"s/cam1/src/", msgpack.packb({"v": 1, "e": 1, "h": [[0, 0, 0, "1", 0, 0, 0, 0]]}), b""], "entry"),
])
def test_exact_errors(frames: list[bytes], reason: str) -> None:
    with pytest.raises(WireError) as err:
        wire.decode(frames)
    assert err.value.reason == reason


ENTRY = st.builds(
    Entry,
    seq=st.integers(0, 2**40), kind=st.sampled_from([MEDIA, CONFIG, EOS, HEARTBEAT]),
    track=st.integers(0, 15), pts=st.integers(-2**40, 2**40), dts=st.integers(-2**40, 2**40),
    flags=st.integers(0, 3), seg=st.integers(0, 2**40), payload=st.binary(max_size=300),
    extra=st.one_of(st.none(), st.dictionaries(st.text(max_size=5), st.integers(-2**62, 2**62), max_size=3)),
    epoch=st.just(7))


@settings(max_examples=400, deadline=None)
@given(st.lists(ENTRY, min_size=1, max_size=20))
def test_round_trip_property(entries: list[Entry]) -> None:
    _, _, decoded = wire.decode(wire.encode(b"s/x/src/", 7, entries))
    assert decoded == entries


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=400), min_size=0, max_size=5))
def test_decoder_never_raises_anything_but_wire_error_on_garbage(frames: list[bytes]) -> None:
    try:
        wire.decode(frames)
    except WireError:
        pass


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ENTRY, min_size=1, max_size=3), st.data())
def test_mutated_valid_frames(entries: list[Entry], data: st.DataObject) -> None:
    """Flip, cut and extend bytes of valid messages: only WireError or a clean decode."""
    frames = [bytearray(bytes(f)) for f in wire.encode(b"s/x/src/", 7, entries)]
    which = data.draw(st.integers(0, 2))
    target = frames[which]
    action = data.draw(st.sampled_from(["flip", "cut", "extend"]))
    if action == "flip" and target:
        i = data.draw(st.integers(0, len(target) - 1))
        target[i] ^= data.draw(st.integers(1, 255))
    elif action == "cut":
        del target[data.draw(st.integers(0, len(target))):]
    else:
        target.extend(data.draw(st.binary(min_size=1, max_size=20)))
    try:
        _, _, decoded = wire.decode([bytes(f) for f in frames])
    except WireError:
        return
    assert all(isinstance(e, Entry) for e in decoded)
