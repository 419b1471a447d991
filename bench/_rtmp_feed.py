"""A small RTMP publisher built from mesh's own pieces, for benchmarks that must know *when* each
byte left: `mesh bench latency` and `mesh bench e2e` record the wall time at which the last byte of
every video keyframe was written to the socket.

    tags = read_flv(Path("clip.flv"))                      # an ffmpeg-written FLV file
    with RtmpPublisher("rtmp://127.0.0.1:1935/LiveApp/cam1") as pub:
        keyframes = pub.feed(tags, duration_s=20)          # real time, looping the clip

It speaks what ffmpeg speaks: the plain handshake (``handshake.client_c0c1/client_c2``), ``connect``,
``releaseStream``, ``FCPublish``, ``createStream``, ``publish``, Set Chunk Size 4096, metadata as
``@setDataFrame``, audio on chunk stream 4 and video on 6 (``chunk.ChunkWriter``, AMF0 from
``amf0.encode``), so mesh and nginx-rtmp receive the same bytes. It is blocking and single-threaded;
replies from the server are read (and mostly ignored) between tags so that its acknowledgements
never fill a socket buffer.

:func:`recording` renders the same publish into bytes without a socket, for micro-benchmarks of
the ingest path.
"""
from __future__ import annotations

import select
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mesh_codecs import flv

from mesh.protocols.rtmp import amf0
from mesh.protocols.rtmp.chunk import ChunkReader, ChunkWriter
from mesh.protocols.rtmp.handshake import C0C1_SIZE, HANDSHAKE_SIZE, client_c0c1, client_c2

CHUNK_SIZE = 4096
CSID_COMMAND, CSID_AUDIO, CSID_VIDEO, CSID_STREAM_CMD = 3, 4, 6, 8
CONNECT_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class Tag:
    type_id: int  # 8 audio, 9 video, 18 script data
    timestamp_ms: int
    body: bytes

    @property
    def keyframe(self) -> bool:
        """A video keyframe carrying a picture (not a sequence header)."""
        return self.type_id == 9 and len(self.body) > 1 and self.body[0] >> 4 == 1 and self.body[1] == 1


@dataclass(frozen=True, slots=True)
class KeyframeSent:
    media_ms: int  # the keyframe's RTMP timestamp (looped clips keep counting up)
    wall_s: float  # time.time() just after its last byte was written
    mono_s: float  # time.monotonic() at the same moment


def read_flv(path: Path) -> list[Tag]:
    """The tags of an FLV file (header and previous-tag sizes dropped)."""
    data = Path(path).read_bytes()
    if data[:3] != b"FLV":
        raise ValueError(f"{path} is not an FLV file")
    offset = int.from_bytes(data[5:9], "big") + 4
    return [Tag(t.tag_type, t.timestamp_ms, bytes(t.data)) for t in flv.iter_tags(data[offset:])]


def clip_duration_ms(tags: list[Tag]) -> int:
    """How far the clip's timestamps advance per loop: its video frame count times the mean
    frame interval (FLV milliseconds are rounded, so one step is not exact: 30 fps is 33 or 34)."""
    video = sorted(t.timestamp_ms for t in tags if t.type_id == 9 and t.body[1:2] == b"\x01")
    if len(video) < 2:
        return max((t.timestamp_ms for t in tags), default=0) + 1
    return round((video[-1] - video[0]) * len(video) / (len(video) - 1))


def _metadata_body(tag: Tag) -> bytes:
    return amf0.encode("@setDataFrame") + tag.body


class RtmpPublisher:
    """One blocking RTMP publish to ``url`` (``rtmp://host:port/app/stream``)."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme != "rtmp" or not parts.hostname:
            raise ValueError(f"not an rtmp:// URL: {url}")
        path = parts.path.strip("/")
        self.app, _, self.stream = path.rpartition("/")
        if not self.app or not self.stream:
            raise ValueError(f"{url} does not name rtmp://host:port/app/stream")
        self.host, self.port = parts.hostname, parts.port or 1935
        self.tc_url = f"rtmp://{self.host}:{self.port}/{self.app}"
        self.writer = ChunkWriter(128)
        self.reader = ChunkReader()
        self.sock: socket.socket | None = None
        self.bytes_sent = 0
        self.statuses: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ session

    def __enter__(self) -> RtmpPublisher:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
        sock = self.sock = socket.create_connection((self.host, self.port), timeout=timeout_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(client_c0c1())
        s0s1s2 = self._recv_exactly(1 + 2 * HANDSHAKE_SIZE)
        sock.sendall(client_c2(s0s1s2))
        assert C0C1_SIZE == 1 + HANDSHAKE_SIZE
        self._command(CSID_COMMAND, 0, "connect", 1, {
            "app": self.app, "type": "nonprivate", "flashVer": "FMLE/3.0 (compatible; mesh-bench)",
            "tcUrl": self.tc_url})
        self._until(lambda name, values: name in ("_result", "_error") and values[1] == 1.0,
                    timeout_s, "connect")
        self._send(2, 1, 0, 0, struct.pack(">I", CHUNK_SIZE))
        self.writer.chunk_size = CHUNK_SIZE
        self._command(CSID_COMMAND, 0, "releaseStream", 2, None, self.stream)
        self._command(CSID_COMMAND, 0, "FCPublish", 3, None, self.stream)
        self._command(CSID_COMMAND, 0, "createStream", 4, None)
        self._until(lambda name, values: name == "_result" and values[1] == 4.0, timeout_s, "createStream")
        self._command(CSID_STREAM_CMD, 1, "publish", 5, None, self.stream, "live")
        status = self._until(lambda name, values: name == "onStatus", timeout_s, "publish")
        info = status[3] if len(status) > 3 and isinstance(status[3], dict) else {}
        if info.get("code") != "NetStream.Publish.Start":
            raise ConnectionError(f"publish of {self.stream} refused: {info.get('code')} "
                                  f"{info.get('description', '')}")
        sock.settimeout(None)

    def close(self) -> None:
        sock = self.sock
        if sock is None:
            return
        try:
            sock.settimeout(1.0)
            self._command(CSID_COMMAND, 0, "FCUnpublish", 6, None, self.stream)
            self._command(CSID_COMMAND, 0, "deleteStream", 7, None, 1.0)
        except OSError:
            pass
        finally:
            self.sock = None
            sock.close()

    # ------------------------------------------------------------------ media

    def send_tag(self, tag: Tag, timestamp_ms: int | None = None) -> None:
        ts = tag.timestamp_ms if timestamp_ms is None else timestamp_ms
        if tag.type_id == 8:
            self._send(CSID_AUDIO, 8, 1, ts, tag.body)
        elif tag.type_id == 9:
            self._send(CSID_VIDEO, 9, 1, ts, tag.body)
        elif tag.type_id == 18:
            self._send(CSID_AUDIO, 18, 1, ts, _metadata_body(tag))

    def feed(self, tags: list[Tag], duration_s: float, *, loop: bool = True,
             on_keyframe: Callable[[KeyframeSent], None] | None = None,
             stop: Callable[[], bool] | None = None) -> list[KeyframeSent]:
        """Send ``tags`` in real time (their timestamps against the wall clock) for ``duration_s``;
        a looped clip's timestamps keep increasing. Returns every keyframe's send time."""
        period = clip_duration_ms(tags)
        sent: list[KeyframeSent] = []
        start = time.monotonic()
        offset = 0
        first = True
        while True:
            for tag in tags:
                if tag.type_id == 18 and not first:
                    continue
                ts = tag.timestamp_ms + offset
                due = start + ts / 1000
                now = time.monotonic()
                if now - start >= duration_s or (stop is not None and stop()):
                    return sent
                if due > now:
                    self._drain_replies(due - now)
                self.send_tag(tag, ts)
                if tag.keyframe:
                    ks = KeyframeSent(ts, time.time(), time.monotonic())
                    sent.append(ks)
                    if on_keyframe is not None:
                        on_keyframe(ks)
            first = False
            if not loop:
                return sent
            offset += period
            # sequence headers again on each loop are harmless (identical), as ffmpeg's -stream_loop

    # ------------------------------------------------------------------ plumbing

    def _send(self, csid: int, type_id: int, stream_id: int, ts: int, payload: bytes) -> None:
        assert self.sock is not None
        data = self.writer.write(csid, type_id, stream_id, ts, payload)
        self.sock.sendall(data)
        self.bytes_sent += len(data)

    def _command(self, csid: int, stream_id: int, *values: Any) -> None:
        self._send(csid, 20, stream_id, 0, amf0.encode(*values))

    def _recv_exactly(self, n: int) -> bytes:
        assert self.sock is not None
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("the server closed the connection during the handshake")
            buf += chunk
        return bytes(buf)

    def _until(self, match: Callable[[str, list[Any]], bool], timeout_s: float, what: str) -> list[Any]:
        assert self.sock is not None
        deadline = time.monotonic() + timeout_s
        while True:
            while (msg := self.reader.next_message()) is not None:
                if msg.type_id == 20:
                    values = amf0.decode(msg.payload)
                    if values and isinstance(values[0], str):
                        if values[0] == "onStatus" and len(values) > 3 and isinstance(values[3], dict):
                            self.statuses.append(values[3])
                        if match(values[0], values):
                            if values[0] == "_error":
                                raise ConnectionError(f"{what} failed: {values}")
                            return values
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no reply to {what} within {timeout_s:g} s")
            self.sock.settimeout(remaining)
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError(f"the server closed the connection during {what}")
            self.reader.feed(data)

    def _drain_replies(self, wait_s: float) -> None:
        """Sleep up to ``wait_s``, reading (and dropping) whatever the server sends meanwhile."""
        assert self.sock is not None
        end = time.monotonic() + wait_s
        while True:
            remaining = end - time.monotonic()
            if remaining <= 0:
                return
            ready, _, _ = select.select([self.sock], [], [], remaining)
            if not ready:
                return
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("the server closed the connection")
            self.reader.feed(data)
            while (msg := self.reader.next_message()) is not None:
                if msg.type_id == 20:
                    values = amf0.decode(msg.payload)
                    if values and values[0] == "onStatus" and len(values) > 3 and isinstance(values[3], dict):
                        self.statuses.append(values[3])
                        if values[3].get("level") == "error":
                            raise ConnectionError(f"the server ended the publish: {values[3]}")


def recording(tags: list[Tag], app: str = "LiveApp", stream: str = "cam1", loops: int = 1,
              handshake: bool = True) -> tuple[bytes, list[int]]:
    """What :class:`RtmpPublisher` would send for ``tags`` (no socket): the whole byte stream and
    the offset just past each media message, for feeding a server session message by message."""
    w = ChunkWriter(128)
    out = bytearray()
    ends: list[int] = []
    if handshake:
        out += client_c0c1(lambda n: bytes(n)) + bytes(HANDSHAKE_SIZE)

    def cmd(csid: int, sid: int, *values: Any) -> None:
        out.extend(w.write(csid, 20, sid, 0, amf0.encode(*values)))

    cmd(CSID_COMMAND, 0, "connect", 1, {"app": app, "type": "nonprivate", "flashVer": "FMLE/3.0",
                                        "tcUrl": f"rtmp://127.0.0.1/{app}"})
    out += w.write(2, 1, 0, 0, struct.pack(">I", CHUNK_SIZE))
    w.chunk_size = CHUNK_SIZE
    cmd(CSID_COMMAND, 0, "releaseStream", 2, None, stream)
    cmd(CSID_COMMAND, 0, "FCPublish", 3, None, stream)
    cmd(CSID_COMMAND, 0, "createStream", 4, None)
    cmd(CSID_STREAM_CMD, 1, "publish", 5, None, stream, "live")
    period = clip_duration_ms(tags)
    for i in range(loops):
        for tag in tags:
            ts = tag.timestamp_ms + i * period
            if tag.type_id == 18:
                if i:
                    continue
                out += w.write(CSID_AUDIO, 18, 1, ts, _metadata_body(tag))
            else:
                out += w.write(CSID_AUDIO if tag.type_id == 8 else CSID_VIDEO, tag.type_id, 1, ts, tag.body)
            ends.append(len(out))
    return bytes(out), ends
