"""The ingest fast paths that `mesh bench ingest` measures agree with the reference paths:
ServerSession.read_media() with next_event(), FlvPublish.on_media() with on_video()/on_audio().
Pure and quick (no processes); property tests over random publishes."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.ingest.flv_source import FlvPublish
from mesh.ingest.segmenter import Segmenter
from mesh.protocols.rtmp.chunk import ChunkReader, ChunkWriter
from mesh.protocols.rtmp import (
    NEED_DATA,
    PAUSED,
    AudioMessage,
    RemoteProtocolError,
    ServerSession,
    VideoMessage,
)

from .test_rtmp_session import Publisher, handshaken

_media = st.lists(st.tuples(
    st.sampled_from(["v", "a", "meta", "wrap"]),
    st.integers(0, 3000),  # timestamp step
    st.binary(min_size=0, max_size=300)), max_size=40)


def _publish_bytes(items: list[tuple[str, int, bytes]], chunk_size: int) -> bytes:
    pub = Publisher(chunk_size)
    s = ServerSession()
    out = [pub.handshake_c0c1(), bytes(1536), pub.connect(), pub.setup()]
    ts = 0
    for kind, step, body in items:
        ts = (ts + step) & 0xFFFFFFFF
        if kind == "v":
            out.append(pub.video(ts, b"\x27\x01\x00\x00\x00" + body))
        elif kind == "a":
            out.append(pub.audio(ts, b"\xaf\x01" + body))
        elif kind == "meta":
            out.append(pub.metadata())
        else:  # a jump that wraps the 32-bit timestamp
            ts = (ts + 0xFFFFF000) & 0xFFFFFFFF
            out.append(pub.video(ts, b"\x17\x01\x00\x00\x00" + body))
    out.append(pub.teardown())
    del s
    return b"".join(out)


def _reference(data: bytes, pieces: list[int]) -> list[object]:
    s = ServerSession()
    events: list[object] = []
    for piece in _split(data, pieces):
        s.receive_data(piece)
        while (ev := s.next_event()) is not NEED_DATA:
            if ev is PAUSED:
                s.accept_publish()
            elif isinstance(ev, (VideoMessage, AudioMessage)):
                events.append((9 if isinstance(ev, VideoMessage) else 8, ev.timestamp_ms, ev.payload))
            else:
                events.append(ev)
    return events


def _fast(data: bytes, pieces: list[int]) -> tuple[list[object], ServerSession]:
    s = ServerSession()
    events: list[object] = []
    media: list[tuple[int, int, bytes]] = []
    for piece in _split(data, pieces):
        s.receive_data(piece)
        while True:
            ev = s.read_media(media)
            events.extend(media)
            media.clear()
            if ev is NEED_DATA:
                break
            if ev is PAUSED:
                s.accept_publish()
            else:
                events.append(ev)
    return events, s


def _split(data: bytes, pieces: list[int]) -> list[bytes]:
    out, pos = [], 0
    for n in pieces:
        if pos >= len(data):
            break
        out.append(data[pos:pos + n])
        pos += n
    if pos < len(data):
        out.append(data[pos:])
    return out


@settings(max_examples=60, deadline=None)
@given(_media, st.sampled_from([128, 4096]), st.lists(st.integers(1, 5000), max_size=30))
def test_read_media_delivers_what_next_event_does(items, chunk_size, pieces) -> None:
    data = _publish_bytes(items, chunk_size)
    fast, session = _fast(data, pieces)
    assert fast == _reference(data, pieces)
    assert session.video_messages == sum(1 for e in fast if isinstance(e, tuple) and e[0] == 9)
    assert session.audio_messages == sum(1 for e in fast if isinstance(e, tuple) and e[0] == 8)


def test_read_media_keeps_media_before_a_protocol_error() -> None:
    pub = Publisher(4096)
    s = ServerSession()
    handshaken(s, pub)
    s.receive_data(pub.connect() + pub.setup())
    while (ev := s.next_event()) is not NEED_DATA:
        if ev is PAUSED:
            s.accept_publish()
    s.receive_data(pub.audio(10, b"\xaf\x01a") + pub.w.write(4, 8, 7, 20, b"\xaf\x01b"))  # wrong stream
    media: list[tuple[int, int, bytes]] = []
    try:
        s.read_media(media)
    except RemoteProtocolError as exc:
        assert exc.reason == "order"
    else:
        raise AssertionError("media on another message stream must be refused")
    assert media == [(8, 10, b"\xaf\x01a")]


class _Live:
    fenced = False

    def __init__(self) -> None:
        self.pushed: list[tuple] = []
        self.video = self.audio = None

    def push_media(self, track, pts, dts, key, data) -> None:
        self.pushed.append((track, pts, dts, key, bytes(data)))

    def set_video(self, cfg) -> None:
        self.video = cfg

    def set_audio(self, cfg) -> None:
        self.audio = cfg


_tags = st.lists(st.tuples(
    st.sampled_from([9, 8]),
    st.integers(0, 1 << 31),
    st.sampled_from([b"\x17\x01", b"\x27\x01", b"\x17\x02", b"\x37\x01", b"\x27\x00", b"\x22", b"\xaf\x01",
                     b"\xaf\x02", b"\x2f\x01", b"\xa0", b""]),
    st.binary(max_size=12)), max_size=30)


def _outcome(fn) -> tuple[str, str]:
    try:
        fn()
    except Exception as exc:  # PublishAborted, with its reason, must be the same on both paths
        return type(exc).__name__, getattr(exc, "reason", "")
    return "", ""


@settings(max_examples=150, deadline=None)
@given(_tags)
def test_on_media_pushes_what_on_video_and_on_audio_push(tags) -> None:
    batch = [(t, ts, head + body) for t, ts, head, body in tags]
    ref_live, fast_live = _Live(), _Live()
    ref, fast = FlvPublish(ref_live, None), FlvPublish(fast_live, None)  # type: ignore[arg-type]

    def reference() -> None:
        for t, ts, payload in batch:
            (ref.on_video if t == 9 else ref.on_audio)(ts, payload)

    assert _outcome(lambda: fast.on_media(list(batch))) == _outcome(reference)
    assert fast_live.pushed == ref_live.pushed
    assert all(type(key) is bool for _, _, _, key, _ in fast_live.pushed)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([4, 6, 8]), st.integers(0, 12000)), min_size=1, max_size=8),
       st.sampled_from([128, 4096]))
def test_incomplete_never_asks_for_more_than_the_message_still_needs(msgs, chunk_size) -> None:
    """ChunkReader.incomplete() is what the ingest sets SO_RCVLOWAT from while a long message is
    arriving: its ``due`` must be a lower bound of the bytes still to come for that message,
    else the kernel would hold back its last bytes (and a keyframe's segment) until more came."""
    w = ChunkWriter(chunk_size)
    bodies = [(csid, bytes([i % 251]) * n) for i, (csid, n) in enumerate(msgs)]
    wire = b"".join(w.write(csid, 9, 1, i * 33, body) for i, (csid, body) in enumerate(bodies))
    ends: dict[int, list[int]] = {}  # message length -> offsets just past each such message
    probe = ChunkReader()
    probe.chunk_size = chunk_size
    for i in range(len(wire)):
        probe.feed(wire[i:i + 1])
        while (m := probe.next_raw()) is not None:
            ends.setdefault(len(m[4]), []).append(i + 1)
    r = ChunkReader()
    r.chunk_size = chunk_size
    step = max(1, len(wire) // 400)
    for i in range(0, len(wire), step):
        r.feed(wire[i:i + step])
        while r.next_raw() is not None:
            pass
        length, due = r.incomplete()
        at = min(i + step, len(wire))
        if length:
            remaining = [e - at for e in ends[length] if e > at]
            assert remaining and 1 <= due <= min(remaining), (length, due, remaining)
    assert r.incomplete() == (0, 0)


def test_an_origin_stream_is_read_by_its_parts_only_while_an_edge_follows_it() -> None:
    """The origin's sink names the frame closing the open LL part (the RTMP server reads the
    publisher then) only while some rendition of the stream is followed on the bus; otherwise
    None, and the server reads it on its shared max-interval grid."""
    class Bus:
        followed_streams: set[str] = set()

    live = _Live()
    live.stream_id, live.bus = "cam1", Bus()  # type: ignore[attr-defined]
    segmenter = live.segmenter = Segmenter(2.0, 0, 0.2)  # type: ignore[attr-defined]
    segmenter.video_present()
    sink = FlvPublish(live, None)  # type: ignore[arg-type]
    for ts in range(0, 400, 40):  # 25 fps: the part opened at 200 ms closes with the frame of 400
        segmenter.stamp(0, ts * 90, ts * 90, ts == 0)
    assert segmenter.part_due_ms() == 400
    assert sink.part_due_ms() is None
    Bus.followed_streams = {"cam2"}
    assert sink.part_due_ms() is None
    Bus.followed_streams = {"cam1", "cam2"}
    assert sink.part_due_ms() == 400
