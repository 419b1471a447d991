"""Chunk stream reader/writer: header forms, timestamps, chunk size, abort, errors."""
from __future__ import annotations

import struct
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.protocols.rtmp.chunk import (MAX_PARTIAL_MESSAGES, ChunkReader, ChunkWriter, basic_header,
                                       check_chunk_size)
from mesh.protocols.rtmp.errors import RemoteProtocolError


def read_all(reader: ChunkReader, data: bytes, *, piecewise: bool = False) -> list[tuple]:
    """Feed ``data`` (all at once or one byte at a time) and return (csid, type, sid, ts, payload)."""
    out = []
    pieces = [data[i:i + 1] for i in range(len(data))] if piecewise else [data]
    for piece in pieces:
        reader.feed(piece)
        while (m := reader.next_message()) is not None:
            out.append((m.csid, m.type_id, m.stream_id, m.timestamp, m.payload))
    return out


def fmt0(csid: int, ts: int, length: int, type_id: int, sid: int) -> bytes:
    ext = b""
    if ts >= 0xFFFFFF:
        ext, ts = struct.pack(">I", ts), 0xFFFFFF
    return (basic_header(0, csid) + ts.to_bytes(3, "big") + length.to_bytes(3, "big") + bytes([type_id])
            + sid.to_bytes(4, "little") + ext)


def fmt1(csid: int, delta: int, length: int, type_id: int) -> bytes:
    return basic_header(1, csid) + delta.to_bytes(3, "big") + length.to_bytes(3, "big") + bytes([type_id])


def fmt2(csid: int, delta: int) -> bytes:
    return basic_header(2, csid) + delta.to_bytes(3, "big")


def fmt3(csid: int) -> bytes:
    return basic_header(3, csid)


def set_chunk_size(n: int) -> bytes:
    return fmt0(2, 0, 4, 1, 0) + struct.pack(">I", n)


# ------------------------------------------------------------------ basic header forms


@pytest.mark.parametrize("csid, encoded", [
    (2, b"\x02"), (63, b"\x3f"), (64, b"\x00\x00"), (319, b"\x00\xff"),
    (320, b"\x01\x00\x01"), (65599, b"\x01\xff\xff"),
])
def test_basic_header_forms(csid: int, encoded: bytes) -> None:
    assert basic_header(0, csid) == encoded
    data = encoded + b"\x00\x00\x00" + b"\x00\x00\x03" + b"\x08" + (1).to_bytes(4, "little") + b"abc"
    assert read_all(ChunkReader(), data) == [(csid, 8, 1, 0, b"abc")]


# ------------------------------------------------------------------ the four header types


def test_all_four_header_types_and_timestamp_deltas() -> None:
    data = (
        fmt0(4, 1000, 3, 8, 1) + b"aaa"     # absolute 1000
        + fmt1(4, 20, 2, 9) + b"bb"         # 1020, new length and type
        + fmt2(4, 30) + b"cc"               # 1050, same length/type
        + fmt3(4) + b"dd"                   # 1080: repeats the previous delta (30)
        + fmt3(4) + b"ee"                   # 1110
    )
    assert read_all(ChunkReader(), data) == [
        (4, 8, 1, 1000, b"aaa"), (4, 9, 1, 1020, b"bb"), (4, 9, 1, 1050, b"cc"),
        (4, 9, 1, 1080, b"dd"), (4, 9, 1, 1110, b"ee"),
    ]


def test_fmt3_after_fmt0_uses_the_fmt0_timestamp_as_delta() -> None:
    # Spec 5.3.1.2.4, and what FMLE/ffmpeg send: fmt 0 at 26 followed by fmt 3 means 52.
    data = fmt0(4, 26, 2, 8, 1) + b"xx" + fmt3(4) + b"yy"
    assert [m[3] for m in read_all(ChunkReader(), data)] == [26, 52]


def test_multi_chunk_message_with_continuations_and_piecewise_feeding() -> None:
    payload = bytes(range(256)) * 2  # 512 bytes -> 4 chunks of 128
    data = fmt0(6, 5, len(payload), 9, 1) + payload[:128]
    for off in range(128, 512, 128):
        data += fmt3(6) + payload[off:off + 128]
    expected = [(6, 9, 1, 5, payload)]
    assert read_all(ChunkReader(), data) == expected
    assert read_all(ChunkReader(), data, piecewise=True) == expected


def test_zero_length_message() -> None:
    assert read_all(ChunkReader(), fmt0(3, 7, 0, 20, 0)) == [(3, 20, 0, 7, b"")]


# ------------------------------------------------------------------ extended timestamps


def test_extended_timestamp_repeated_on_fmt3_chunks() -> None:
    ts = 0x01234567
    payload = b"v" * 200
    ext = struct.pack(">I", ts)
    data = fmt0(6, ts, 200, 9, 1) + payload[:128] + fmt3(6) + ext + payload[128:]
    assert read_all(ChunkReader(), data) == [(6, 9, 1, ts, payload)]


def test_extended_timestamp_on_fmt1_delta_and_fmt3_new_message() -> None:
    big = 0x1000000  # a delta that needs the extended field
    ext = struct.pack(">I", big)
    data = (fmt0(4, 10, 1, 8, 1) + b"a"
            + basic_header(1, 4) + b"\xff\xff\xff" + (1).to_bytes(3, "big") + b"\x08" + ext + b"b"
            + fmt3(4) + ext + b"c")  # new message repeating the extended delta
    assert [m[3] for m in read_all(ChunkReader(), data)] == [10, 10 + big, 10 + 2 * big]


def test_writer_round_trips_extended_timestamps() -> None:
    w = ChunkWriter(128)
    msgs = [(6, 9, 1, ts, bytes([ts & 0xFF]) * 300) for ts in (0xFFFFFE, 0xFFFFFF, 0x7FFFFFFF, 0xFFFFFFFF)]
    data = b"".join(w.write(*m) for m in msgs)
    assert read_all(ChunkReader(), data) == msgs


# ------------------------------------------------------------------ chunk size, interleaving, abort


def test_chunk_size_change_mid_stream_applies_to_the_message_in_progress() -> None:
    payload = b"p" * 1000
    data = (fmt0(6, 0, 1000, 9, 1) + payload[:128]         # first chunk at the default size 128
            + set_chunk_size(4096)                         # interleaved on csid 2
            + fmt3(6) + payload[128:])                     # the other 872 bytes in one chunk
    r = ChunkReader()
    assert read_all(r, data) == [(2, 1, 0, 0, struct.pack(">I", 4096)), (6, 9, 1, 0, payload)]
    assert r.chunk_size == 4096


def test_interleaved_audio_and_video_chunk_streams() -> None:
    video = b"V" * 300
    audio1, audio2 = b"A" * 100, b"B" * 100
    data = (fmt0(6, 0, 300, 9, 1) + video[:128]
            + fmt0(4, 0, 100, 8, 1) + audio1
            + fmt3(6) + video[128:256]
            + fmt2(4, 23) + audio2
            + fmt3(6) + video[256:])
    assert read_all(ChunkReader(), data) == [
        (4, 8, 1, 0, audio1), (4, 8, 1, 23, audio2), (6, 9, 1, 0, video)]


def test_abort_discards_the_partial_message() -> None:
    abort = fmt0(2, 0, 4, 2, 0) + struct.pack(">I", 6)
    data = (fmt0(6, 0, 300, 9, 1) + b"x" * 128 + abort
            + fmt0(6, 40, 3, 9, 1) + b"new")  # fmt 0 is legal again: nothing in progress
    msgs = read_all(ChunkReader(), data)
    assert msgs[-1] == (6, 9, 1, 40, b"new")
    assert all(m[4] != b"x" * 300 for m in msgs)


def test_librtmp_fmt1_on_fresh_csid2_is_accepted() -> None:
    ping = b"\x00\x06" + struct.pack(">I", 1234)
    data = fmt1(2, 0, len(ping), 4) + ping
    assert read_all(ChunkReader(), data) == [(2, 4, 0, 0, ping)]


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize("data, match", [
    (fmt3(5) + b"x", "fmt 3 chunk on chunk stream 5, which has no previous header"),
    (fmt1(5, 0, 1, 8) + b"x", "fmt 1 chunk on chunk stream 5, which has no previous header"),
    (fmt2(5, 0) + b"x", "fmt 2 chunk on chunk stream 5, which has no previous header"),
    (fmt0(6, 0, 300, 9, 1) + b"x" * 128 + fmt0(6, 0, 1, 9, 1) + b"y",
     "while a 300-byte message is incomplete"),
    (set_chunk_size(0), r"Set Chunk Size 0 is outside"),
    (set_chunk_size(0x80000080), "reserved top bit"),
    (set_chunk_size(0x1000000), "outside 1..16777215"),
    (fmt0(2, 0, 2, 1, 0) + b"\x00\x01", "shorter than 4 bytes"),
])
def test_chunk_errors(data: bytes, match: str) -> None:
    with pytest.raises(RemoteProtocolError, match=match) as info:
        read_all(ChunkReader(), data)
    assert info.value.reason == "chunk"


def test_oversize_message_rejected_before_its_payload_arrives() -> None:
    r = ChunkReader(max_message_size=1000)
    r.feed(fmt0(6, 0, 1001, 9, 1))  # header only: no payload buffered yet
    with pytest.raises(RemoteProtocolError, match="1001 bytes .* exceeds the 1000-byte limit") as info:
        r.next_message()
    assert info.value.reason == "oversize"


def test_declared_length_allocates_nothing_until_the_bytes_arrive() -> None:
    """The issue-11 amplification: an 8 MB message announced with 128 bytes sent holds ~128 bytes."""
    r = ChunkReader(max_message_size=8 << 20, max_buffered=(8 << 20) + (64 << 10))
    r.feed(fmt0(6, 0, 8 << 20, 9, 1) + b"z" * 128)
    assert r.next_message() is None
    assert r.held == 128
    body = r._streams[6].body
    assert body is not None and len(body) == 128
    assert sys.getsizeof(body) < 1024  # the object itself, not a preallocated 8 MB
    # and it keeps growing only with what arrives (fmt 3 continuations, 128 bytes each)
    r.feed((fmt3(6) + b"y" * 128) * 10)
    assert r.next_message() is None and r.held == 11 * 128


def test_held_bytes_over_the_cap_are_refused() -> None:
    r = ChunkReader(max_message_size=1 << 20, max_buffered=1000)
    r.feed(fmt0(6, 0, 900, 9, 1) + b"z" * 128 + fmt0(4, 0, 900, 8, 1) + b"a" * 128)
    assert r.next_message() is None and r.held == 256
    r.feed(b"".join(fmt3(csid) + b"q" * 128 for _ in range(3) for csid in (6, 4)))  # 1024 held
    with pytest.raises(RemoteProtocolError,
                       match="1024 bytes buffered on this connection.*1000-byte limit") as info:
        r.next_message()
    assert info.value.reason == "oversize"


def test_a_header_announcing_more_than_the_cap_is_refused_before_its_payload() -> None:
    r = ChunkReader(max_message_size=8 << 20, max_buffered=64 << 10)
    r.feed(fmt0(6, 0, 8 << 20, 9, 1))
    with pytest.raises(RemoteProtocolError, match="8388608 bytes .* exceeds the 65536-byte limit for a "
                       "connection that is not publishing") as info:
        r.next_message()
    assert info.value.reason == "oversize"


def test_unparsed_input_counts_against_the_cap() -> None:
    r = ChunkReader(max_message_size=1 << 20, max_buffered=1000)
    r.feed(set_chunk_size(400))
    assert r.next_message() is not None
    r.feed(fmt0(6, 0, 900, 9, 1) + b"z" * 400 + fmt3(6) + b"z" * 400)  # 800 bytes of a partial body
    assert r.next_message() is None and r.held == 800 and r.buffered == 0
    r.feed(fmt0(4, 0, 300, 8, 1) + b"a" * 150)  # an incomplete chunk waits, unparsed
    assert r.next_message() is None and r.held == 962 and r.buffered == 162
    r.feed(b"a" * 100)
    with pytest.raises(RemoteProtocolError, match="1062 bytes buffered") as info:
        r.next_message()
    assert info.value.reason == "oversize"


def test_too_many_partial_messages_at_once() -> None:
    r = ChunkReader(max_message_size=1000)
    data = b"".join(fmt0(csid, 0, 1000, 9, 1) + b"z" * 128 for csid in range(3, 3 + MAX_PARTIAL_MESSAGES))
    assert read_all(r, data) == [] and r.held == 128 * MAX_PARTIAL_MESSAGES
    with pytest.raises(RemoteProtocolError, match=f"more than {MAX_PARTIAL_MESSAGES} messages in progress") \
            as info:
        read_all(r, fmt0(60, 0, 1000, 9, 1) + b"z" * 128)
    assert info.value.reason == "limit"


def test_finished_and_aborted_messages_release_their_bytes() -> None:
    r = ChunkReader(max_message_size=1000)
    r.feed(fmt0(6, 0, 300, 9, 1) + b"a" * 128 + fmt0(4, 0, 300, 8, 1) + b"b" * 128)
    assert r.next_message() is None and r.held == 256
    r.feed(fmt3(6) + b"a" * 128 + fmt3(6) + b"a" * 44)
    assert r.next_message().payload == b"a" * 300
    assert r.held == 128
    r.feed(fmt0(2, 0, 4, 2, 0) + struct.pack(">I", 4))  # Abort csid 4
    assert r.next_message().type_id == 2
    assert r.next_message() is None and r.held == 0
    r.feed(b"".join(fmt0(csid, 0, 300, 9, 1) + b"z" * 128 for csid in range(10, 10 + MAX_PARTIAL_MESSAGES)))
    assert r.next_message() is None  # the two finished slots are free again


def test_too_many_chunk_streams() -> None:
    data = b"".join(fmt0(csid, 0, 1, 8, 1) + b"a" for csid in range(2, 2 + 300))
    with pytest.raises(RemoteProtocolError, match="more than 256 chunk streams"):
        read_all(ChunkReader(), data)


def test_check_chunk_size_accepts_the_extremes() -> None:
    check_chunk_size(1)
    check_chunk_size(0xFFFFFF)


# ------------------------------------------------------------------ writer <-> reader property

message = st.tuples(
    st.sampled_from([2, 3, 4, 6, 8, 63, 64, 300, 319, 320, 65599]),
    st.sampled_from([8, 9, 18, 20]),
    st.sampled_from([0, 1, 2]),
    st.integers(0, 0xFFFFFFFF),
    st.binary(max_size=700),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(message, max_size=12), st.sampled_from([1, 7, 128, 4096]), st.booleans(),
       st.lists(st.integers(1, 400), max_size=20))
def test_writer_reader_round_trip(msgs: list, chunk_size: int, compress: bool, splits: list[int]) -> None:
    w = ChunkWriter(128, compress=compress)
    data = set_chunk_size(chunk_size) if chunk_size != 128 else b""
    w.chunk_size = chunk_size
    data += b"".join(w.write(*m) for m in msgs)
    r = ChunkReader(max_message_size=1 << 20)
    got = []
    pos = 0
    for n in splits + [len(data)]:
        r.feed(data[pos:pos + n])
        pos += n
        while (m := r.next_message()) is not None:
            if m.type_id != 1:
                got.append((m.csid, m.type_id, m.stream_id, m.timestamp, m.payload))
    assert got == msgs
