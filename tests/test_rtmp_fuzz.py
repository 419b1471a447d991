"""Property/fuzz tests: hostile bytes may only ever produce RemoteProtocolError / FlvError or clean events.

Seeds are valid publisher byte streams (what ffmpeg sends, built with our chunk writer at
chunk sizes 128 and 4096); each example mutates one (flip, overwrite, insert, delete,
duplicate, truncate; driven by a hypothesis-drawn seed) and feeds it in random pieces.
About 4,000 examples in all.
"""
from __future__ import annotations

import random
import struct
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mesh.protocols.rtmp import (NEED_DATA, PAUSED, AudioMessage, Connected, Metadata, PeerClosed,
                                 PublishRequested, RemoteProtocolError, ServerSession, Unpublished,
                                 VideoMessage, amf0)
from mesh.protocols.rtmp.chunk import ChunkReader, basic_header
from mesh_codecs import flv
from tests.test_rtmp_session import Publisher

def fuzz(n: int) -> settings:
    return settings(max_examples=n, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _seed(chunk_size: int) -> bytes:
    pub = Publisher(chunk_size)
    frame = flv.video_tag(True, flv.AVC_NALU, 67, b"\x00\x00\x01\x00" + bytes(range(256)))
    body = (pub.connect() + pub.setup() + pub.metadata()
            + pub.video(0, flv.video_tag(True, 0, 0, b"\x01\x64\x00\x1f\xff\xe1\x00"))
            + pub.audio(0, flv.audio_tag(0, b"\x12\x08")) + pub.video(0, frame)
            + pub.audio(23, b"\xaf\x01" + bytes(200)) + pub.video(33, frame)
            + pub.w.write(2, 4, 0, 0, b"\x00\x06\x00\x00\x00\x01")  # ping
            + pub.w.write(2, 5, 0, 0, struct.pack(">I", 500))  # window ack size
            + pub.video(0x1000000, frame)  # extended timestamp
            + pub.teardown())
    return pub.handshake_c0c1() + bytes(1536) + body


SEEDS = [_seed(128), _seed(4096)]
HANDSHAKE_LEN = 1537 + 1536

KINDS = ("flip", "set", "insert", "delete", "dup", "truncate")
#: A mutation plan is a random seed: one cheap draw per example (hypothesis' per-draw cost
#: dominated the run time), and a failure still reports the seed to replay.
plan = st.integers(0, 2**64 - 1)


def mutate(data: bytes, seed: int, floor: int = 0, max_ops: int = 6) -> bytes:
    """Apply 1..max_ops random edits at or after ``floor`` (deterministic in ``seed``)."""
    rnd = random.Random(seed)
    buf = bytearray(data)
    for _ in range(rnd.randint(1, max_ops)):
        if len(buf) <= floor:
            break
        i = rnd.randrange(floor, len(buf))
        kind = rnd.choice(KINDS)
        span = rnd.randint(1, 64)
        if kind == "flip":
            buf[i] ^= 1 << rnd.randrange(8)
        elif kind == "set":
            buf[i:i + 1] = bytes([rnd.choice((0, 1, 3, 0x7F, 0x80, 0xC0, 0xFF, rnd.randrange(256)))])
        elif kind == "insert":
            buf[i:i] = rnd.randbytes(rnd.randint(1, 16))
        elif kind == "delete":
            del buf[i:i + span]
        elif kind == "dup":
            buf[i:i] = buf[i:i + span]
        elif rnd.random() < 0.3:  # truncation ends the input, so make it rarer
            del buf[i:]
    return bytes(buf)


def run_session(data: bytes, splits: list[int], decisions: list[bool]) -> list[Any]:
    """Feed ``data`` in pieces; only RemoteProtocolError may escape. Returns the events."""
    s = ServerSession(max_message_size=1 << 16)
    events: list[Any] = []
    pos = 0
    pieces = list(splits) + [len(data)]
    decision = iter(decisions + [True] * 8)
    try:
        for n in pieces:
            if pos >= len(data):
                break
            s.receive_data(data[pos:pos + n])
            pos += n
            while True:
                ev = s.next_event()
                if ev is NEED_DATA:
                    break
                if ev is PAUSED:
                    if next(decision, True):
                        s.accept_publish()
                        continue
                    s.reject_publish("NetStream.Publish.Denied", "fuzz")
                    break
                events.append(ev)
            s.data_to_send()
            if s.must_close:
                break
        else:
            s.receive_data(b"")
            while (ev := s.next_event()) is not NEED_DATA and ev is not PAUSED:
                events.append(ev)
    except RemoteProtocolError as exc:
        assert exc.reason and str(exc)
        assert s.must_close
    for ev in events:
        assert isinstance(ev, (Connected, PublishRequested, VideoMessage, AudioMessage, Metadata, Unpublished,
                               PeerClosed))
        if isinstance(ev, (VideoMessage, AudioMessage)):
            assert isinstance(ev.payload, bytes) and ev.timestamp_ms >= 0
            try:  # media bodies from hostile peers go through the FLV parser too
                (flv.parse_video if isinstance(ev, VideoMessage) else flv.parse_audio)(ev.payload)
            except flv.FlvError:
                pass
    return events


def test_seeds_are_valid() -> None:
    for seed in SEEDS:
        events = run_session(seed, [], [])
        kinds = [type(e).__name__ for e in events]
        assert kinds.count("VideoMessage") == 4 and kinds[-2:] == ["Unpublished", "PeerClosed"]


@fuzz(1500)
@given(plan, st.lists(st.integers(1, 3000), max_size=8), st.lists(st.booleans(), max_size=2))
def test_mutated_publisher_streams(seed: int, splits: list[int], decisions: list[bool]) -> None:
    data = SEEDS[seed & 1]
    # Most mutations spare the handshake so that they reach the chunk and AMF layers.
    floor = 0 if seed % 5 == 0 else HANDSHAKE_LEN
    run_session(mutate(data, seed >> 1, floor), splits, decisions)


@fuzz(500)
@given(st.binary(max_size=2000), st.lists(st.integers(1, 500), max_size=5))
def test_random_bytes_after_a_valid_handshake(tail: bytes, splits: list[int]) -> None:
    run_session(SEEDS[0][:HANDSHAKE_LEN] + tail, splits, [])


chunk_header = st.builds(
    lambda fmt, csid, ts, length, type_id, sid, body: (
        basic_header(fmt, csid)
        + (b"" if fmt == 3 else ts.to_bytes(3, "big"))
        + (length.to_bytes(3, "big") + bytes([type_id]) if fmt < 2 else b"")
        + (sid.to_bytes(4, "little") if fmt == 0 else b"")
        + (b"\x00\x00\x00\x10" if ts == 0xFFFFFF and fmt < 3 else b"")
        + body),
    st.integers(0, 3), st.sampled_from([2, 3, 4, 6, 8, 64, 320]),
    st.sampled_from([0, 1, 33, 0xFFFFFF]), st.integers(0, 300),
    st.sampled_from([1, 2, 3, 4, 5, 6, 8, 9, 15, 17, 18, 20, 22, 0, 255]), st.sampled_from([0, 1, 2]),
    st.binary(max_size=200),
)


@fuzz(400)
@given(st.lists(chunk_header, max_size=12))
def test_structured_random_chunks(chunks: list[bytes]) -> None:
    pub = Publisher(128)
    prefix = SEEDS[0][:HANDSHAKE_LEN] + pub.connect() + pub.setup()
    run_session(prefix + b"".join(chunks), [], [True])
    r = ChunkReader(max_message_size=1 << 16)  # and the bare reader on its own
    r.feed(b"".join(chunks))
    try:
        while r.next_message() is not None:
            pass
    except RemoteProtocolError:
        pass


AMF_SEEDS = [
    amf0.encode("connect", 1.0, {"app": "LiveApp", "tcUrl": "rtmp://h/LiveApp", "fpad": False}),
    amf0.encode("@setDataFrame", "onMetaData", amf0.EcmaArray(width=640.0, encoder="Lavf", stereo=True)),
    amf0.encode([1.0, [None, amf0.UNDEFINED, {"a": amf0.AmfDate(0.0)}]], "x" * 300),
]


@fuzz(1000)
@given(st.sampled_from(AMF_SEEDS), plan)
def test_mutated_amf0(data: bytes, seed: int) -> None:
    try:
        amf0.decode(mutate(data, seed, max_ops=4))
    except RemoteProtocolError as exc:
        assert exc.reason == "amf"


FLV_SEEDS = [
    flv.video_tag(True, 0, 0, b"\x01\x64\x00\x1f\xff\xe1\x00\x04gd\x00\x1f"),
    flv.video_tag(False, 1, -33, b"\x00\x00\x00\x02\x41\x9a"),
    flv.audio_tag(0, b"\x12\x08"), flv.audio_tag(1, b"\x21" * 20),
]


@fuzz(500)
@given(st.sampled_from(FLV_SEEDS), plan, st.booleans())
def test_mutated_flv(data: bytes, seed: int, as_video: bool) -> None:
    try:
        (flv.parse_video if as_video else flv.parse_audio)(mutate(data, seed, max_ops=3))
    except flv.FlvError:
        pass
