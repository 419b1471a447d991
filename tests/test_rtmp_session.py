"""The server session on handcrafted publisher byte streams (no sockets)."""
from __future__ import annotations

import struct
import weakref
from typing import Any

import pytest

from mesh.protocols.rtmp import (NEED_DATA, PAUSED, TRANSITIONS, AudioMessage, Connected, LocalProtocolError,
                                 Metadata, PeerClosed, PublishRequested, RemoteProtocolError, ServerSession,
                                 State, Trigger, Unpublished, VideoMessage, amf0)
from mesh.protocols.rtmp.chunk import ChunkReader, ChunkWriter
from mesh.protocols.rtmp.handshake import client_c0c1, client_c2
from mesh.protocols.rtmp.session import LOCAL_TRIGGERS
from mesh_codecs import flv

CONNECT_OBJ = {"app": "LiveApp", "type": "nonprivate", "flashVer": "FMLE/3.0 (compatible; Lavf59.27.100)",
               "tcUrl": "rtmp://127.0.0.1:1935/LiveApp"}


class Publisher:
    """A scripted client that writes what ffmpeg writes (same csids, same command order)."""

    def __init__(self, chunk_size: int = 128) -> None:
        self.w = ChunkWriter(128)
        self.chunk_size = chunk_size

    def handshake_c0c1(self) -> bytes:
        return client_c0c1(lambda n: bytes(n))

    def set_chunk_size(self) -> bytes:
        data = self.w.write(2, 1, 0, 0, struct.pack(">I", self.chunk_size))
        self.w.chunk_size = self.chunk_size
        return data

    def command(self, *values: Any, csid: int = 3, stream_id: int = 0) -> bytes:
        return self.w.write(csid, 20, stream_id, 0, amf0.encode(*values))

    def connect(self, app: str = "LiveApp") -> bytes:
        return self.command("connect", 1, {**CONNECT_OBJ, "app": app})

    def setup(self, name: str = "cam1") -> bytes:
        """Everything ffmpeg sends after connect, up to and including publish."""
        return (self.set_chunk_size() + self.command("releaseStream", 2, None, name)
                + self.command("FCPublish", 3, None, name) + self.command("createStream", 4, None)
                + self.command("publish", 5, None, name, "live", csid=8, stream_id=1))

    def metadata(self) -> bytes:
        body = amf0.encode("@setDataFrame", "onMetaData", amf0.EcmaArray(width=640.0, videocodecid=7.0))
        return self.w.write(4, 18, 1, 0, body)

    def video(self, ts: int, body: bytes) -> bytes:
        return self.w.write(6, 9, 1, ts, body)

    def audio(self, ts: int, body: bytes) -> bytes:
        return self.w.write(4, 8, 1, ts, body)

    def teardown(self, name: str = "cam1") -> bytes:
        return self.command("FCUnpublish", 6, None, name) + self.command("deleteStream", 7, None, 1.0)


def drain(session: ServerSession, *, accept: bool = True) -> list[Any]:
    """Pull events until NEED_DATA (accepting publishes when asked), including the sentinels' effects."""
    events: list[Any] = []
    while True:
        ev = session.next_event()
        if ev is NEED_DATA:
            return events
        if ev is PAUSED:
            if not accept:
                return events
            session.accept_publish()
            continue
        events.append(ev)


def handshaken(session: ServerSession, pub: Publisher) -> bytes:
    session.receive_data(pub.handshake_c0c1())
    assert drain(session) == []
    s0s1s2 = session.data_to_send()
    session.receive_data(client_c2(s0s1s2))
    assert drain(session) == []
    return s0s1s2


_readers: "weakref.WeakKeyDictionary[ServerSession, ChunkReader]" = weakref.WeakKeyDictionary()


def replies(session: ServerSession) -> list[tuple[int, int, Any]]:
    """Parse what the server sent since the last call: (type, stream id, decoded payload).

    One reader per session, because the server compresses chunk headers across writes."""
    r = _readers.setdefault(session, ChunkReader())
    r.feed(session.data_to_send())
    out = []
    while (m := r.next_message()) is not None:
        payload: Any = amf0.decode(m.payload) if m.type_id == 20 else m.payload
        out.append((m.type_id, m.stream_id, payload))
    return out


def publishing_session(pub: Publisher | None = None, **kwargs: Any) -> tuple[ServerSession, Publisher]:
    pub = pub or Publisher(4096)
    s = ServerSession(**kwargs)
    handshaken(s, pub)
    s.receive_data(pub.connect() + pub.setup())
    drain(s)
    replies(s)
    assert s.state is State.PUBLISHING
    return s, pub


# ------------------------------------------------------------------ handshake


def test_handshake_replies_s0_s1_s2_and_accepts_any_c2() -> None:
    s = ServerSession(random_bytes=lambda n: b"\xab" * n)
    c0c1 = client_c0c1()
    s.receive_data(c0c1[:700])
    assert drain(s) == [] and s.data_to_send() == b""  # nothing until C1 is complete
    s.receive_data(c0c1[700:])
    assert drain(s) == []
    out = s.data_to_send()
    assert len(out) == 1 + 1536 * 2
    assert out[0] == 3 and out[1:9] == b"\x00" * 8 and out[9:1537] == b"\xab" * 1528
    assert out[1537:] == c0c1[1:]  # S2 echoes C1
    assert s.state is State.AWAIT_C2
    # C2 can be anything and may arrive glued to the first chunk (connect)
    s.receive_data(b"\x55" * 1536 + Publisher().connect())
    events = drain(s)
    assert isinstance(events[0], Connected) and s.state is State.CONNECTED


@pytest.mark.parametrize("first, match", [
    (b"\x06", "encrypted RTMPE"),
    (b"GET / HTTP/1.1\r\n", "looks like an HTTP request"),
    (b"\x16\x03\x01", "looks like a TLS ClientHello"),
    (b"\x00", "unsupported RTMP handshake version 0"),
])
def test_bad_c0_is_rejected_at_once(first: bytes, match: str) -> None:
    s = ServerSession()
    s.receive_data(first)
    with pytest.raises(RemoteProtocolError, match=match) as info:
        s.next_event()
    assert info.value.reason == "handshake"
    assert s.state is State.ERROR and s.must_close
    with pytest.raises(RemoteProtocolError):  # errors are sticky
        s.next_event()


def test_eof_during_handshake() -> None:
    s = ServerSession()
    s.receive_data(b"\x03" + b"\x00" * 100)
    s.receive_data(b"")
    assert drain(s) == [PeerClosed()]
    assert s.state is State.CLOSED


# ------------------------------------------------------------------ the ffmpeg command sequence


def test_full_ffmpeg_publish_sequence() -> None:
    pub = Publisher(4096)
    s = ServerSession()
    handshaken(s, pub)
    s.receive_data(pub.connect())
    assert drain(s) == [Connected("LiveApp", CONNECT_OBJ["tcUrl"], CONNECT_OBJ)]
    sent = replies(s)
    assert [r[0] for r in sent] == [5, 6, 1, 20]
    assert sent[0][2] == struct.pack(">I", 2_500_000)
    assert sent[1][2] == struct.pack(">I", 2_500_000) + b"\x02"
    assert sent[2][2] == struct.pack(">I", 4096)
    name, txn, props, info = sent[3][2]
    assert (name, txn, info["level"]) == ("_result", 1.0, "status")
    assert info["code"] == "NetConnection.Connect.Success"

    s.receive_data(pub.setup())
    events = drain(s, accept=False)
    assert events == [PublishRequested("LiveApp", "cam1", {}, 1, "live")]
    assert s.next_event() is PAUSED
    cmds = [r[2] for r in replies(s) if r[0] == 20]
    assert cmds[0][:2] == ["_result", 2.0]  # releaseStream
    assert cmds[1][0] == "onFCPublish"
    assert cmds[2] == ["_result", 4.0, None, 1.0]  # createStream -> stream 1

    s.accept_publish()
    started = replies(s)
    assert started[0] == (4, 0, b"\x00\x00\x00\x00\x00\x01")  # Stream Begin 1
    assert started[1][1] == 1 and started[1][2][0] == "onStatus"
    assert started[1][2][3]["code"] == "NetStream.Publish.Start"

    seq = flv.video_tag(True, flv.AVC_SEQUENCE_HEADER, 0, b"\x01\x64\x00\x1f\xff\xe1\x00")
    asc = flv.audio_tag(flv.AAC_SEQUENCE_HEADER, b"\x12\x08")
    frame = flv.video_tag(True, flv.AVC_NALU, 67, b"\x00\x00\x10\x00" + b"\x65" * 4096)
    s.receive_data(pub.metadata() + pub.video(0, seq) + pub.audio(0, asc) + pub.video(0, frame)
                   + pub.audio(23, b"\xaf\x01" + b"a" * 300) + pub.video(33, frame) + pub.teardown())
    events = drain(s)
    assert events == [
        Metadata({"width": 640.0, "videocodecid": 7.0}),
        VideoMessage(0, seq), AudioMessage(0, asc), VideoMessage(0, frame),
        AudioMessage(23, b"\xaf\x01" + b"a" * 300), VideoMessage(33, frame),
        Unpublished("cam1"),
    ]
    assert s.state is State.CONNECTED
    assert replies(s) == []  # nothing that could race ffmpeg's close into an RST
    s.receive_data(b"")
    assert drain(s) == [PeerClosed()]


def test_media_stays_unparsed_while_the_publish_decision_is_pending() -> None:
    pub = Publisher()
    s = ServerSession()
    handshaken(s, pub)
    s.receive_data(pub.connect() + pub.setup() + pub.video(0, b"\x17\x01\x00\x00\x00x"))
    events = drain(s, accept=False)
    assert isinstance(events[-1], PublishRequested)
    assert s.next_event() is PAUSED and s.buffered_bytes > 0
    s.accept_publish()
    assert drain(s) == [VideoMessage(0, b"\x17\x01\x00\x00\x00x")]


def test_query_in_stream_name_and_app() -> None:
    pub = Publisher()
    s = ServerSession()
    handshaken(s, pub)
    s.receive_data(pub.connect("LiveApp?region=eu") + pub.setup("cam1?token=abc&empty="))
    events = drain(s, accept=False)
    assert events[0].app == "LiveApp"
    assert events[-1] == PublishRequested("LiveApp", "cam1", {"region": "eu", "token": "abc", "empty": ""}, 1)


def test_reject_publish_sends_error_status_and_must_close() -> None:
    pub = Publisher()
    s = ServerSession()
    handshaken(s, pub)
    s.receive_data(pub.connect() + pub.setup())
    drain(s, accept=False)
    replies(s)
    s.reject_publish("NetStream.Publish.BadName", "stream cam1 is already being published")
    (status,) = replies(s)
    assert status[2][3] == {"level": "error", "code": "NetStream.Publish.BadName",
                            "description": "stream cam1 is already being published", "details": "cam1"}
    assert s.state is State.CLOSING and s.must_close
    s.receive_data(pub.video(0, b"\x17"))  # ignored after the refusal
    assert s.next_event() is NEED_DATA


def test_abort_publish_sends_error_status_and_must_close() -> None:
    s, pub = publishing_session()
    s.abort_publish("NetStream.Publish.Failed", "video codec VP6 is not supported; publish H.264")
    (status,) = replies(s)
    assert status[1] == 1 and status[2][3]["level"] == "error"
    assert status[2][3]["description"] == "video codec VP6 is not supported; publish H.264"
    assert s.state is State.CLOSING and s.must_close
    with pytest.raises(LocalProtocolError, match=r"abort_publish\(\) is not allowed after the publish"):
        s.abort_publish()


def test_local_misuse_raises_local_protocol_error() -> None:
    s, _ = publishing_session()
    with pytest.raises(LocalProtocolError, match=r"accept_publish\(\) is not allowed while publishing"):
        s.accept_publish()
    with pytest.raises(LocalProtocolError, match="reject_publish"):
        ServerSession().reject_publish()


# ------------------------------------------------------------------ order and names


def test_publish_before_connect_is_rejected() -> None:
    pub = Publisher()
    s = ServerSession()
    handshaken(s, pub)
    s.receive_data(pub.command("publish", 5, None, "cam1", "live", csid=8, stream_id=1))
    with pytest.raises(RemoteProtocolError,
                       match="a 'publish' command is not allowed before connect") as info:
        drain(s)
    assert info.value.reason == "order"


def test_media_before_publish_is_rejected() -> None:
    pub = Publisher()
    s = ServerSession()
    handshaken(s, pub)
    s.receive_data(pub.connect() + pub.video(0, b"\x17\x00"))
    with pytest.raises(RemoteProtocolError, match="audio/video data is not allowed while connected but not "
                                                  "publishing") as info:
        drain(s)
    assert info.value.reason == "order"


def test_publish_on_a_stream_that_was_not_created() -> None:
    pub = Publisher()
    s = ServerSession()
    handshaken(s, pub)
    s.receive_data(pub.connect() + pub.command("publish", 5, None, "cam1", csid=8, stream_id=3))
    with pytest.raises(RemoteProtocolError, match="message stream 3, which createStream did not return"):
        drain(s)


def test_second_connect_is_rejected() -> None:
    pub = Publisher()
    s = ServerSession()
    handshaken(s, pub)
    s.receive_data(pub.connect() + pub.connect())
    with pytest.raises(RemoteProtocolError, match="'connect' command is not allowed while connected"):
        drain(s)


@pytest.mark.parametrize("name", ["", "a b", "../etc/passwd", "x" * 129, "cam1;rm", "mp4:cam1", "kam\u00e9ra",
                                  "cam/1"])
def test_bad_stream_names_are_rejected_with_badname(name: str) -> None:
    pub = Publisher()
    s = ServerSession()
    handshaken(s, pub)
    s.receive_data(pub.connect())
    drain(s)
    replies(s)
    s.receive_data(pub.setup(name))
    with pytest.raises(RemoteProtocolError, match="is not 1-128 characters") as info:
        drain(s)
    assert info.value.reason == "badname"
    status = [m for m in replies(s) if m[2][0] == "onStatus"]
    assert status[0][2][3]["code"] == "NetStream.Publish.BadName"


def test_longest_good_stream_name() -> None:
    pub = Publisher()
    s = ServerSession()
    handshaken(s, pub)
    s.receive_data(pub.connect() + pub.setup("A-z_9" * 25 + "abc"))
    assert drain(s, accept=False)[-1].stream_name == "A-z_9" * 25 + "abc"


@pytest.mark.parametrize("app", ["", "a/b", "..", "x" * 129, "live app", "cam\n"])
def test_bad_app_names_are_rejected(app: str) -> None:
    pub = Publisher()
    s = ServerSession()
    handshaken(s, pub)
    s.receive_data(pub.connect(app))
    with pytest.raises(RemoteProtocolError, match="application name") as info:
        drain(s)
    assert info.value.reason == "badname"
    assert replies(s)[-1][2][3]["code"] == "NetConnection.Connect.Rejected"


# ------------------------------------------------------------------ control messages and other commands


def test_ping_request_gets_a_ping_response() -> None:
    s, pub = publishing_session()
    s.receive_data(pub.w.write(2, 4, 0, 0, b"\x00\x06\x00\x00\x12\x34"))
    assert drain(s) == []
    assert replies(s) == [(4, 0, b"\x00\x07\x00\x00\x12\x34")]


def test_acknowledgements_are_sent_at_the_peers_window() -> None:
    s, pub = publishing_session()
    s.receive_data(pub.w.write(2, 5, 0, 0, struct.pack(">I", 5000)))
    drain(s)
    assert replies(s) == []  # the window message itself does not trigger an ack
    totals, acks = [], []
    total = s._received  # everything the peer sent, handshake included
    for i in range(40):
        chunk = pub.audio(i * 23, b"\xaf\x01" + bytes(500))
        total += len(chunk)
        totals.append(total)
        s.receive_data(chunk)
        drain(s)
        acks += [struct.unpack(">I", m[2])[0] for m in replies(s) if m[0] == 3]
    assert len(acks) >= 3
    assert set(acks) <= set(totals)  # each ack carries the byte count at that moment
    assert all(b - a >= 5000 for a, b in zip(acks, acks[1:]))  # ...and they come one window apart
    assert all(b - a < 5000 + 600 for a, b in zip(acks, acks[1:]))
    assert totals[-1] - acks[-1] < 5000


def test_timestamps_are_extended_past_32_bits() -> None:
    s, pub = publishing_session()
    stamps = [0xFFFFFF00, 0xFFFFFFF0, 0x10, 0x80]  # wraps between the 2nd and 3rd
    for ts in stamps:
        s.receive_data(pub.audio(ts, b"\xaf\x01x"))
    assert [e.timestamp_ms for e in drain(s)] == [0xFFFFFF00, 0xFFFFFFF0, 0x100000010, 0x100000080]


def test_small_backwards_steps_are_not_wraps() -> None:
    s, pub = publishing_session()
    for ts in (1000, 990, 1033):  # audio slightly behind video is normal
        s.receive_data(pub.w.write(4, 8, 1, ts, b"\xaf\x01x"))
    assert [e.timestamp_ms for e in drain(s)] == [1000, 990, 1033]


@pytest.mark.parametrize("command, expect", [
    (("play", 0, None, "cam1"), ("onStatus", "NetStream.Play.Failed")),
    (("frobnicate", 9, None), ("_error", "NetConnection.Call.Failed")),
    (("_checkbw", 9, None), ("_result", None)),
    (("getStreamLength", 9, None, "cam1"), ("_result", None)),
])
def test_other_commands_get_clean_answers(command: tuple, expect: tuple) -> None:
    s, pub = publishing_session()
    s.receive_data(pub.command(*command, stream_id=1 if command[0] == "play" else 0))
    assert drain(s) == []
    (reply,) = replies(s)
    assert reply[2][0] == expect[0]
    if expect[1]:
        assert reply[2][3]["code"] == expect[1]
    assert s.state is State.PUBLISHING


def test_unknown_command_without_transaction_is_ignored() -> None:
    s, pub = publishing_session()
    s.receive_data(pub.command("someNotification", 0, None))
    assert drain(s) == [] and replies(s) == []


def test_amf3_command_envelope() -> None:
    pub = Publisher()
    s = ServerSession()
    handshaken(s, pub)
    s.receive_data(pub.w.write(3, 17, 0, 0, b"\x00" + amf0.encode("connect", 1, CONNECT_OBJ)))
    assert isinstance(drain(s)[0], Connected)
    s.receive_data(pub.w.write(3, 17, 0, 0, b"\x00\x02\x00\x01x\x11\x04"))
    with pytest.raises(RemoteProtocolError, match="AMF3 switch") as info:
        drain(s)
    assert info.value.reason == "amf"


def test_aggregate_message_is_split_into_media() -> None:
    s, pub = publishing_session()

    def tag(kind: int, ts: int, body: bytes) -> bytes:
        return (bytes([kind]) + len(body).to_bytes(3, "big") + (ts & 0xFFFFFF).to_bytes(3, "big")
                + bytes([ts >> 24]) + b"\x00\x00\x00" + body + (11 + len(body)).to_bytes(4, "big"))

    agg = tag(9, 5000, b"\x17\x01\x00\x00\x00v") + tag(8, 5010, b"\xaf\x01a")
    s.receive_data(pub.w.write(6, 22, 1, 100, agg))
    assert drain(s) == [VideoMessage(100, b"\x17\x01\x00\x00\x00v"), AudioMessage(110, b"\xaf\x01a")]


def test_oversize_message() -> None:
    s, pub = publishing_session(max_message_size=10_000)
    s.receive_data(pub.video(0, bytes(20_000)))
    with pytest.raises(RemoteProtocolError, match="exceeds the 10000-byte limit") as info:
        drain(s)
    assert info.value.reason == "oversize"


@pytest.mark.parametrize("command", [
    ("deleteStream", 7, None, 1.0), ("FCUnpublish", 6, None, "cam1?token=x"), ("closeStream", 0, None)])
def test_each_unpublish_command_ends_the_publish_once(command: tuple) -> None:
    s, pub = publishing_session()
    s.receive_data(pub.command(*command, stream_id=1 if command[0] == "closeStream" else 0)
                   + pub.teardown())
    assert drain(s) == [Unpublished("cam1")]
    assert s.state is State.CONNECTED


def test_unpublish_commands_for_other_streams_are_ignored() -> None:
    s, pub = publishing_session()
    s.receive_data(pub.command("FCUnpublish", 6, None, "cam2") + pub.command("deleteStream", 7, None, 2.0))
    assert drain(s) == [] and s.state is State.PUBLISHING


def test_peer_closed_mid_publish() -> None:
    s, pub = publishing_session()
    s.receive_data(pub.audio(0, b"\xaf\x01x"))
    s.receive_data(b"")
    assert drain(s) == [AudioMessage(0, b"\xaf\x01x"), PeerClosed()]
    assert s.must_close
    with pytest.raises(LocalProtocolError):
        s.receive_data(b"more")


# ------------------------------------------------------------------ the transition table as data


def test_transition_table_shape() -> None:
    terminal = {State.CLOSING, State.ERROR, State.CLOSED}
    assert not any(state in terminal for state, _ in TRANSITIONS)
    local = {(st, tr) for st, tr in TRANSITIONS if tr in LOCAL_TRIGGERS}
    assert local == {(State.PUBLISH_PENDING, Trigger.ACCEPT), (State.PUBLISH_PENDING, Trigger.REJECT),
                     (State.PUBLISHING, Trigger.ABORT)}
    # media only ever flows while publishing, and the only way into publishing is an accept
    assert [k for k, v in TRANSITIONS.items() if v is State.PUBLISHING and k[0] is not State.PUBLISHING] == [
        (State.PUBLISH_PENDING, Trigger.ACCEPT)]
    assert {k[0] for k in TRANSITIONS if k[1] is Trigger.MEDIA} == {State.PUBLISHING}
