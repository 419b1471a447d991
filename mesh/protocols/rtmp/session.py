"""The server side of one RTMP connection, sans-IO (after h11's ``Connection``).

    session.receive_data(data)       # bytes from the socket; b"" means the peer closed
    ev = session.next_event()        # an event, NEED_DATA, or PAUSED (publish decision pending)
    out = session.data_to_send()     # bytes to write (handshake replies, acks, command replies)

    media = []
    ev = session.read_media(media)   # the same, but audio/video go into ``media`` as tuples

Input is parsed lazily inside ``next_event()``, one message at a time, so the driver
controls how far parsing runs ahead: after :class:`PublishRequested` the session returns
:data:`PAUSED` and parses nothing until the application calls :meth:`accept_publish` or
:meth:`reject_publish` (media that the client sends early stays unparsed in the buffer).

Memory: until a publish is accepted, the bytes a connection may hold (unparsed input plus
partial messages) are capped at ``max_setup_bytes`` (64 KiB: commands are small); while it
publishes, at one ``max_message_size`` message plus that. A peer over the cap, or announcing
a message longer than the cap allows, gets ``RemoteProtocolError`` (``oversize``) at once.

Bad input raises :class:`RemoteProtocolError` from ``next_event()``; the session is then
errored (later calls raise the same error) and ``data_to_send()`` may still hold a last
reply for the client (``onStatus ... BadName``) that the driver should flush before it
closes. Which commands and messages are legal in which state is the table
:data:`TRANSITIONS`, not flags spread over methods.

``read_media()`` is the media path of a publishing connection: where ``next_event()`` returns
one event object per message, it appends every audio/video message to a list as a
``(type_id, timestamp_ms, payload)`` tuple and returns at the first other event, so a driver
handles a whole read in one call (no event object, no per-message dispatch).
"""
from __future__ import annotations

import enum
import os
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from mesh_codecs import flv

from . import amf0
from .chunk import (AGGREGATE, AUDIO, COMMAND_AMF0, COMMAND_AMF3, DATA_AMF0, DATA_AMF3, SET_CHUNK_SIZE,
                    SET_PEER_BANDWIDTH, USER_CONTROL, VIDEO, WINDOW_ACK_SIZE, ChunkReader, ChunkWriter,
                    Message)
from ...names import NAME_MAX, NAME_RULE, is_name
from .errors import LocalProtocolError, RemoteProtocolError
from .handshake import C0C1_SIZE, C2_SIZE, check_c0, server_response


class State(enum.Enum):
    """Session states; each value reads naturally after "not allowed ..."."""

    AWAIT_C0C1 = "before the handshake"
    AWAIT_C2 = "during the handshake"
    AWAIT_CONNECT = "before connect"
    CONNECTED = "while connected but not publishing"
    PUBLISH_PENDING = "while a publish decision is pending"
    PUBLISHING = "while publishing"
    CLOSING = "after the publish was refused or aborted"
    ERROR = "after a protocol error"
    CLOSED = "after the peer closed the connection"


class Trigger(enum.Enum):
    """What can move the session; the value names it in error messages."""

    C0C1 = "C0/C1"
    C2 = "C2"
    CONNECT = "a 'connect' command"
    CALL = "this command"
    PUBLISH = "a 'publish' command"
    ACCEPT = "accept_publish()"
    REJECT = "reject_publish()"
    ABORT = "abort_publish()"
    MEDIA = "audio/video data"
    UNPUBLISH = "'FCUnpublish'/'deleteStream' of the published stream"


S, T = State, Trigger
#: (state, trigger) -> next state. A missing pair is a protocol error (or, for the local
#: triggers ACCEPT/REJECT/ABORT, a bug in our code). Peer EOF and errors apply in every state.
TRANSITIONS: dict[tuple[State, Trigger], State] = {
    (S.AWAIT_C0C1, T.C0C1): S.AWAIT_C2,
    (S.AWAIT_C2, T.C2): S.AWAIT_CONNECT,
    (S.AWAIT_CONNECT, T.CONNECT): S.CONNECTED,
    (S.CONNECTED, T.CALL): S.CONNECTED,
    (S.CONNECTED, T.PUBLISH): S.PUBLISH_PENDING,
    (S.PUBLISH_PENDING, T.ACCEPT): S.PUBLISHING,
    (S.PUBLISH_PENDING, T.REJECT): S.CLOSING,
    (S.PUBLISHING, T.CALL): S.PUBLISHING,
    (S.PUBLISHING, T.MEDIA): S.PUBLISHING,
    (S.PUBLISHING, T.UNPUBLISH): S.CONNECTED,
    (S.PUBLISHING, T.ABORT): S.CLOSING,
}
LOCAL_TRIGGERS = frozenset({T.ACCEPT, T.REJECT, T.ABORT})
del S, T

# Enum member lookups (State.X) cost ~0.3 us each on Python 3.11; the per-message paths below
# compare against these module constants instead.
_AWAIT_C0C1, _AWAIT_C2, _PUBLISHING = State.AWAIT_C0C1, State.AWAIT_C2, State.PUBLISHING
_CLOSING, _ERROR, _CLOSED = State.CLOSING, State.ERROR, State.CLOSED

MAX_QUERY_LEN = 2048
_MASK32 = 0xFFFFFFFF
_U32 = struct.Struct(">I")
_CSID_CONTROL, _CSID_COMMAND, _CSID_STREAM = 2, 3, 5


# ------------------------------------------------------------------------------ events


@dataclass(slots=True)
class Connected:
    """The client sent ``connect`` and we accepted it."""

    app: str
    tc_url: str
    params: dict[str, Any] = field(default_factory=dict)  # the whole connect command object


@dataclass(slots=True)
class PublishRequested:
    """The client wants to publish; answer with accept_publish() or reject_publish()."""

    app: str
    stream_name: str  # validated, query stripped
    query: dict[str, str]  # from "name?k=v" (and from "app?k=v", the stream's query winning)
    stream_id: int = 1
    publish_type: str = "live"


@dataclass(slots=True)
class VideoMessage:
    timestamp_ms: int  # absolute, unwrapped past 2**32
    payload: bytes  # an FLV video tag body


@dataclass(slots=True)
class AudioMessage:
    timestamp_ms: int
    payload: bytes  # an FLV audio tag body


@dataclass(slots=True)
class Metadata:
    values: dict[str, Any]  # onMetaData (from @setDataFrame)


@dataclass(slots=True)
class Unpublished:
    stream_name: str = ""


@dataclass(slots=True)
class PeerClosed:
    """The peer closed its side (after every complete message before it was delivered)."""


Event = Connected | PublishRequested | VideoMessage | AudioMessage | Metadata | Unpublished | PeerClosed


class _Sentinel:
    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


NEED_DATA = _Sentinel("NEED_DATA")
PAUSED = _Sentinel("PAUSED")


def _status(level: str, code: str, description: str, **extra: Any) -> dict[str, Any]:
    return {"level": level, "code": code, "description": description, **extra}


def _parse_query(query: str) -> dict[str, str]:
    if len(query) > MAX_QUERY_LEN:
        raise RemoteProtocolError(f"query string longer than {MAX_QUERY_LEN} characters", reason="badname")
    try:
        return dict(parse_qsl(query, keep_blank_values=True, max_num_fields=32))
    except ValueError:
        raise RemoteProtocolError("query string has more than 32 fields", reason="badname") from None


class ServerSession:
    """One RTMP server connection (publish only). See the module docstring for the contract."""

    def __init__(self, *, max_message_size: int = 8 << 20, max_setup_bytes: int = 64 << 10,
                 out_chunk_size: int = 4096, window_ack_size: int = 2_500_000,
                 peer_bandwidth: int = 2_500_000,
                 random_bytes: Callable[[int], bytes] = os.urandom) -> None:
        self.state = State.AWAIT_C0C1
        self._setup_bytes = max_setup_bytes
        self._publishing_bytes = max_message_size + max_setup_bytes
        self._reader = ChunkReader(max_message_size, max_buffered=max_setup_bytes)
        self._writer = ChunkWriter()
        self._out = bytearray()
        self._hs = bytearray()
        self._events: deque[Event] = deque()
        self._error: RemoteProtocolError | None = None
        self._eof = False
        self._out_chunk_size = out_chunk_size
        self._window_ack_size = window_ack_size
        self._peer_bandwidth = peer_bandwidth
        self._random_bytes = random_bytes
        self._received = 0  # all bytes from the peer, for Acknowledgement
        self._last_ack = 0
        self._peer_window = 0  # 0 until the peer sends Window Acknowledgement Size
        self._last_ts: int | None = None
        self.video_messages = 0  # media messages parsed by read_media(), for the driver's counts
        self.audio_messages = 0
        self._next_stream_id = 1
        self._streams: set[int] = set()
        self.app = ""
        self.app_query: dict[str, str] = {}
        self.stream_name = ""
        self.stream_id = 0  # the published message stream

    # ------------------------------------------------------------------ public API

    @property
    def must_close(self) -> bool:
        """True once the driver should flush ``data_to_send()`` and close the socket."""
        state = self.state
        return state is _CLOSING or state is _ERROR or state is _CLOSED

    @property
    def bytes_received(self) -> int:
        """Every byte given to :meth:`receive_data` so far."""
        return self._received

    @property
    def buffered_bytes(self) -> int:
        """Received bytes not yet parsed (for the driver's read back-pressure)."""
        return len(self._hs) + self._reader.buffered

    @property
    def held_bytes(self) -> int:
        """What this connection holds in memory: unparsed input plus partial message bodies
        (the quantity the setup and publishing caps bound)."""
        return len(self._hs) + self._reader.held
    def incomplete(self) -> tuple[int, int]:
        """``(length, due)`` of the longest message partly received (see
        :meth:`ChunkReader.incomplete`): how long a driver may wait before it reads again."""
        return self._reader.incomplete()

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Add bytes from the peer; ``b""`` means end of stream. Never raises on bad input."""
        if self._eof:
            raise LocalProtocolError("receive_data() after end of stream")
        if not data:
            self._eof = True
            return
        state = self.state
        if state is _ERROR or state is _CLOSING or state is _CLOSED:
            return
        self._received += len(data)
        if self._peer_window and self._received - self._last_ack >= self._peer_window:
            self._last_ack = self._received
            self._send(_CSID_CONTROL, 3, 0, _U32.pack(self._received & _MASK32))
        if state is _AWAIT_C0C1 or state is _AWAIT_C2:
            self._hs += data
        else:
            self._reader.feed(data)

    def data_to_send(self) -> bytes:
        if not self._out:
            return b""
        out = bytes(self._out)
        self._out.clear()
        return out

    def next_event(self) -> Event | _Sentinel:
        """The next event, :data:`NEED_DATA` or :data:`PAUSED`; raises RemoteProtocolError."""
        if self._error is not None:
            raise self._error
        try:
            return self._next_event()
        except RemoteProtocolError as exc:
            self._error = exc
            self.state = State.ERROR
            raise

    def read_media(self, out: list[tuple[int, int, bytes]]) -> Event | _Sentinel:
        """:meth:`next_event` for the media path: each audio/video message is appended to ``out``
        as a ``(type_id, timestamp_ms, payload)`` tuple (8 audio, 9 video; the same values a
        :class:`AudioMessage`/:class:`VideoMessage` would carry) instead of being returned, and
        the first other event, :data:`NEED_DATA` or :data:`PAUSED` is returned.

        ``out`` then holds every media message that came before the returned event, in order;
        if this raises :class:`RemoteProtocolError`, it holds those that came before the error.
        Outside a publish (and for aggregate messages) this is :meth:`next_event` and ``out``
        stays as it was.
        """
        if self._error is not None or self._events or self.state is not _PUBLISHING:
            return self.next_event()
        next_raw = self._reader.next_raw
        append = out.append
        stream_id = self.stream_id
        last = self._last_ts
        start = len(out)
        videos = 0
        try:
            while True:
                msg = next_raw()
                if msg is None:
                    self._last_ts = last
                    return self._eof_or(NEED_DATA)
                _, t, sid, ts, payload = msg
                if t == VIDEO or t == AUDIO:
                    if sid != stream_id:
                        raise RemoteProtocolError(f"media on message stream {sid}, but stream "
                                                  f"{stream_id} is the one being published", reason="order")
                    if last is not None:  # unwrap the 32-bit timestamp (as _unwrap does)
                        delta = (ts - last) & _MASK32
                        if delta >= 0x80000000:
                            delta -= 0x100000000
                        ts = last + delta
                    last = ts
                    if t == VIDEO:
                        videos += 1
                    append((t, ts if ts >= 0 else 0, payload))
                    continue
                self._last_ts = last
                self._dispatch(Message(*msg))
                last = self._last_ts
                if self._events or self.state is not _PUBLISHING:
                    return self._next_event()
        except RemoteProtocolError as exc:
            self._last_ts = last
            self._error = exc
            self.state = State.ERROR
            raise
        finally:
            self.video_messages += videos
            self.audio_messages += len(out) - start - videos

    def accept_publish(self) -> None:
        """Let the pending publish start: Stream Begin + onStatus NetStream.Publish.Start."""
        self._fire(Trigger.ACCEPT)
        self._send(_CSID_CONTROL, USER_CONTROL, 0, b"\x00\x00" + _U32.pack(self.stream_id))
        self._on_status(_status("status", "NetStream.Publish.Start", f"{self.stream_name} is now published.",
                                details=self.stream_name))

    def reject_publish(self, code: str = "NetStream.Publish.Denied",
                       description: str = "publish refused") -> None:
        """Refuse the pending publish with an error onStatus; the driver then closes."""
        self._fire(Trigger.REJECT)
        self._on_status(_status("error", code, description, details=self.stream_name))

    def abort_publish(self, code: str = "NetStream.Publish.Failed",
                      description: str = "publish aborted by the server") -> None:
        """End a running publish from our side (bad codec, stream taken over): an error
        onStatus, then the driver closes."""
        self._fire(Trigger.ABORT)
        self._on_status(_status("error", code, description, details=self.stream_name))

    # ------------------------------------------------------------------ internals

    def _fire(self, trigger: Trigger) -> None:
        new = TRANSITIONS.get((self.state, trigger))
        if new is None:
            if trigger in LOCAL_TRIGGERS:
                raise LocalProtocolError(f"{trigger.value} is not allowed {self.state.value}")
            raise RemoteProtocolError(f"{trigger.value} is not allowed {self.state.value}", reason="order")
        self.state = new
        # what the connection may hold: one full message while publishing, a few commands otherwise
        self._reader.max_buffered = self._publishing_bytes if new is _PUBLISHING else self._setup_bytes

    def _send(self, csid: int, type_id: int, stream_id: int, payload: bytes) -> None:
        self._out += self._writer.write(csid, type_id, stream_id, 0, payload)

    def _command(self, *values: Any, stream_id: int = 0) -> None:
        csid = _CSID_STREAM if stream_id else _CSID_COMMAND
        self._send(csid, COMMAND_AMF0, stream_id, amf0.encode(*values))

    def _on_status(self, info: dict[str, Any], stream_id: int | None = None) -> None:
        self._command("onStatus", 0, None, info, stream_id=self.stream_id if stream_id is None else stream_id)

    def _unwrap(self, ts: int) -> int:
        """Extend 32-bit timestamps monotonically: the nearest value to the previous one."""
        last = self._last_ts
        if last is None:
            value = ts
        else:
            delta = (ts - last) & _MASK32
            if delta >= 0x80000000:
                delta -= 0x100000000
            value = last + delta
        self._last_ts = value
        return value if value >= 0 else 0

    def _next_event(self) -> Event | _Sentinel:
        while True:
            if self._events:
                return self._events.popleft()
            state = self.state
            if state is State.PUBLISH_PENDING:
                self._reader.check_held()  # input sent before the answer stays within the setup cap
                return PAUSED
            if state is State.AWAIT_C0C1 or state is State.AWAIT_C2:
                if not self._handshake():
                    return self._eof_or(NEED_DATA)
                continue
            if state is State.CLOSING or state is State.CLOSED:
                return NEED_DATA
            msg = self._reader.next_message()
            if msg is None:
                return self._eof_or(NEED_DATA)
            t = msg.type_id
            if t == VIDEO or t == AUDIO:  # the hot path
                if state is not State.PUBLISHING:
                    self._fire(Trigger.MEDIA)
                if msg.stream_id != self.stream_id:
                    raise RemoteProtocolError(f"media on message stream {msg.stream_id}, but stream "
                                              f"{self.stream_id} is the one being published", reason="order")
                ts = self._unwrap(msg.timestamp)
                return VideoMessage(ts, msg.payload) if t == VIDEO else AudioMessage(ts, msg.payload)
            self._dispatch(msg)

    def _eof_or(self, sentinel: _Sentinel) -> Event | _Sentinel:
        if self._eof and self.state is not State.CLOSED:
            self.state = State.CLOSED
            return PeerClosed()
        return sentinel

    def _handshake(self) -> bool:
        """Advance the handshake with buffered bytes; False when more are needed."""
        hs = self._hs
        if self.state is State.AWAIT_C0C1:
            if not hs:
                return False
            check_c0(hs[0])
            if len(hs) < C0C1_SIZE:
                return False
            self._fire(Trigger.C0C1)
            self._out += server_response(hs[1:C0C1_SIZE], self._random_bytes)
            del hs[:C0C1_SIZE]
            return True
        if len(hs) < C2_SIZE:
            return False
        self._fire(Trigger.C2)
        rest = bytes(hs[C2_SIZE:])
        self._hs = bytearray()
        if rest:
            self._reader.feed(rest)
        return True

    def _dispatch(self, msg: Message) -> None:
        t = msg.type_id
        payload = msg.payload
        if t == COMMAND_AMF0 or t == COMMAND_AMF3:
            self._on_command(msg, self._amf_values(payload, t == COMMAND_AMF3))
        elif t == DATA_AMF0 or t == DATA_AMF3:
            self._on_data(msg, self._amf_values(payload, t == DATA_AMF3))
        elif t == USER_CONTROL:
            if len(payload) < 2:
                raise RemoteProtocolError("user control message shorter than 2 bytes", reason="chunk")
            if payload[1] == 6 and payload[0] == 0 and len(payload) >= 6:  # ping request -> ping response
                self._send(_CSID_CONTROL, USER_CONTROL, 0, b"\x00\x07" + payload[2:6])
        elif t == WINDOW_ACK_SIZE:
            if len(payload) < 4:
                raise RemoteProtocolError("Window Acknowledgement Size shorter than 4 bytes", reason="chunk")
            self._peer_window = _U32.unpack_from(payload)[0] & 0x7FFFFFFF
        elif t == AGGREGATE:
            self._on_aggregate(msg)
        # Set Chunk Size and Abort were applied by the reader; Acknowledgement, Set Peer
        # Bandwidth (we send little), shared objects and unknown types are ignored.

    @staticmethod
    def _amf_values(payload: bytes, amf3_envelope: bool) -> list[Any]:
        start = 0
        if amf3_envelope:  # types 15/17 start with a format byte; 0 means "AMF0 follows"
            if not payload or payload[0] != 0:
                raise RemoteProtocolError("AMF3-encoded messages are not supported (use AMF0)", reason="amf")
            start = 1
        return amf0.decode(payload, start)

    def _on_command(self, msg: Message, values: list[Any]) -> None:
        if not values or not isinstance(values[0], str):
            raise RemoteProtocolError("command message does not start with a command name", reason="command")
        name = values[0]
        txn = values[1] if len(values) > 1 and isinstance(values[1], float) else 0.0
        if name == "connect":
            self._on_connect(txn, values)
            return
        if name in ("_result", "_error", "onStatus", "onBWDone"):  # replies to calls we never make
            return
        if name == "publish":
            self._on_publish(msg, values)
            return
        self._fire(Trigger.CALL)
        arg = values[3] if len(values) > 3 and isinstance(values[3], str) else ""
        if name in ("FCUnpublish", "deleteStream", "closeStream"):
            # ffmpeg sends FCUnpublish, deleteStream and closes without reading. We answer
            # neither: a byte sent to its closed socket makes its kernel reply RST, and an
            # RST makes ours drop the unread deleteStream. FCUnpublish alone therefore ends
            # the publish (its name is the stream's, maybe with the query still on).
            if name == "FCUnpublish":
                ours = arg.partition("?")[0] in ("", self.stream_name)
            elif name == "deleteStream":
                ours = len(values) > 3 and values[3] == float(self.stream_id)
            else:
                ours = msg.stream_id == self.stream_id
            if self.state is State.PUBLISHING and ours:
                self._fire(Trigger.UNPUBLISH)
                self._events.append(Unpublished(self.stream_name))
            return
        if name == "createStream":
            sid = self._next_stream_id
            if sid > 8:
                raise RemoteProtocolError("more than 8 createStream calls on one connection",
                                          reason="command")
            self._next_stream_id += 1
            self._streams.add(sid)
            self._command("_result", txn, None, float(sid))
        elif name == "releaseStream":
            self._command("_result", txn, None, amf0.UNDEFINED)
        elif name == "FCPublish":
            self._command("onFCPublish", 0, None, {"code": "NetStream.Publish.Start", "description": arg})
        elif name in ("_checkbw", "getStreamLength"):
            self._command("_result", txn, None, 0.0 if name == "getStreamLength" else amf0.UNDEFINED)
        elif name == "play":
            self._on_status(_status("error", "NetStream.Play.Failed",
                                    "this server only ingests; play the stream over HLS"), msg.stream_id)
        elif txn:
            self._command("_error", txn, None, _status("error", "NetConnection.Call.Failed",
                                                       f"unknown command {name[:64]!r}"))

    def _on_connect(self, txn: float, values: list[Any]) -> None:
        self._fire(Trigger.CONNECT)
        obj = values[2] if len(values) > 2 else None
        if not isinstance(obj, dict) or not isinstance(obj.get("app"), str):
            raise RemoteProtocolError("connect without a command object naming the app", reason="command")
        app, _, query = obj["app"].partition("?")
        app = app.strip("/")
        if not is_name(app):
            self._command("_error", txn, None, _status("error", "NetConnection.Connect.Rejected",
                                                       "bad application name"))
            raise RemoteProtocolError(f"application name {app[:80]!r} is not {NAME_RULE}",
                                      reason="badname")
        self.app = app
        self.app_query = _parse_query(query)
        tc_url = obj.get("tcUrl")
        self._send(_CSID_CONTROL, WINDOW_ACK_SIZE, 0, _U32.pack(self._window_ack_size))
        self._send(_CSID_CONTROL, SET_PEER_BANDWIDTH, 0, _U32.pack(self._peer_bandwidth) + b"\x02")
        self._send(_CSID_CONTROL, SET_CHUNK_SIZE, 0, _U32.pack(self._out_chunk_size))
        self._writer.chunk_size = self._out_chunk_size
        self._command("_result", txn, {"fmsVer": "FMS/3,0,1,123", "capabilities": 31.0, "mode": 1.0},
                      _status("status", "NetConnection.Connect.Success", "Connection succeeded.",
                              objectEncoding=0.0))
        self._events.append(Connected(app, tc_url if isinstance(tc_url, str) else "", dict(obj)))

    def _on_publish(self, msg: Message, values: list[Any]) -> None:
        if self.state is not State.CONNECTED:
            self._fire(Trigger.PUBLISH)  # raises, naming the state ("not allowed before connect")
        if msg.stream_id not in self._streams:
            raise RemoteProtocolError(f"publish on message stream {msg.stream_id}, which createStream "
                                      "did not return", reason="order")
        raw = values[3] if len(values) > 3 else None
        if not isinstance(raw, str):
            raise RemoteProtocolError("publish without a stream name", reason="command")
        name, _, query = raw.partition("?")
        self.stream_id = msg.stream_id
        self.stream_name = name[:NAME_MAX]
        if not is_name(name):
            self._on_status(_status("error", "NetStream.Publish.BadName", f"stream names are {NAME_RULE}"))
            raise RemoteProtocolError(f"stream name {name[:80]!r} is not {NAME_RULE}", reason="badname")
        merged = {**self.app_query, **_parse_query(query)}
        self._fire(Trigger.PUBLISH)
        kind = values[4] if len(values) > 4 and isinstance(values[4], str) else "live"
        self._events.append(PublishRequested(self.app, name, merged, msg.stream_id, kind))

    def _on_data(self, msg: Message, values: list[Any]) -> None:
        if values and values[0] == "@setDataFrame":
            values = values[1:]
        if (self.state is State.PUBLISHING and msg.stream_id == self.stream_id and len(values) > 1
                and values[0] == "onMetaData" and isinstance(values[1], dict)):
            self._events.append(Metadata(dict(values[1])))
        # other data messages (onTextData, |RtmpSampleAccess, metadata outside a publish) are ignored

    def _on_aggregate(self, msg: Message) -> None:
        """Split an aggregate message (FLV tags back to back) into audio/video events; the
        tags' own timestamps count from the message's."""
        if self.state is not State.PUBLISHING:
            self._fire(Trigger.MEDIA)
        if msg.stream_id != self.stream_id:
            raise RemoteProtocolError(f"aggregate on message stream {msg.stream_id}, not the published "
                                      f"{self.stream_id}", reason="order")
        try:
            tags = list(flv.iter_tags(msg.payload))
        except flv.FlvError as exc:
            raise RemoteProtocolError(f"bad aggregate message: {exc}", reason="chunk") from None
        for tag in tags:
            if tag.tag_type == VIDEO or tag.tag_type == AUDIO:
                ts = self._unwrap((msg.timestamp + tag.timestamp_ms - tags[0].timestamp_ms) & _MASK32)
                event = VideoMessage if tag.tag_type == VIDEO else AudioMessage
                self._events.append(event(ts, bytes(tag.data)))
