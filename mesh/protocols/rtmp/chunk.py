"""The RTMP chunk stream: reassembling messages from chunks, and cutting messages into chunks.

A message travels as chunks on a chunk stream (csid). Each chunk starts with a basic
header (fmt + csid in 1, 2 or 3 bytes) and a message header whose size depends on fmt:

* fmt 0 (11 bytes): absolute timestamp, length, type, message stream id (little endian)
* fmt 1 (7 bytes):  timestamp delta, length, type (stream id as before)
* fmt 2 (3 bytes):  timestamp delta (everything else as before)
* fmt 3 (0 bytes):  everything as before -- a continuation chunk, or a new message whose
  delta equals the previous one. After a fmt 0 header the "previous delta" is the fmt 0
  timestamp itself (spec 5.3.1.2.4); ffmpeg's writer relies on this literally.

A 24-bit timestamp field of 0xFFFFFF means a 32-bit extended timestamp follows. As
ffmpeg and librtmp write it (and later spec errata say), fmt 3 chunks of such a message
repeat those 4 bytes, so we read them whenever the csid's last header was extended.

Quirk accepted on purpose: librtmp sends its first user-control message on a fresh csid 2
with a fmt 1 header; we treat the missing fields as zero (stream 0, time 0), as SRS does.
Any other fmt 1/2/3 chunk on a csid never seen with fmt 0 is a protocol error.

Memory follows the bytes that arrived, never a declared length: a message's body grows
chunk by chunk, and what one connection holds -- unparsed input plus the bodies of partial
messages on every csid -- is capped by :attr:`ChunkReader.max_buffered` (the session keeps it
small until a publish is accepted), as is the number of messages partial at once
(:data:`MAX_PARTIAL_MESSAGES`). A header declaring more than either cap allows is refused
at once, before its payload is waited for.

Speed: the input is one ``bytearray`` consumed by index and compacted only when the
consumed prefix is large; headers are read with ``struct.unpack_from``; a message that
fits in one chunk is copied once. ``next_raw()`` returns a message as a plain tuple (the
session's media path uses it); ``next_message()`` wraps that in a :class:`Message`. Set Chunk Size (type 1) and Abort (type 2) change how
the *following* chunks parse, so the reader applies them itself, the moment they arrive.
"""
from __future__ import annotations

import struct

from .errors import RemoteProtocolError

# message types
SET_CHUNK_SIZE = 1
ABORT = 2
ACKNOWLEDGEMENT = 3
USER_CONTROL = 4
WINDOW_ACK_SIZE = 5
SET_PEER_BANDWIDTH = 6
AUDIO = 8
VIDEO = 9
DATA_AMF3 = 15
SHARED_OBJECT_AMF3 = 16
COMMAND_AMF3 = 17
DATA_AMF0 = 18
SHARED_OBJECT_AMF0 = 19
COMMAND_AMF0 = 20
AGGREGATE = 22

DEFAULT_CHUNK_SIZE = 128
MAX_CHUNK_SIZE = 0xFFFFFF  # a message can never be longer, so a larger chunk means nothing
MAX_CHUNK_STREAMS = 256  # distinct csids one connection may use (ffmpeg uses 5, OBS 6)
MAX_PARTIAL_MESSAGES = 8  # messages in progress at once, on distinct csids (publishers interleave 2-3)
_COMPACT_AT = 1 << 16

_BE32 = struct.Struct(">I").unpack_from
_LE32 = struct.Struct("<I").unpack_from
_MASK32 = 0xFFFFFFFF


class Message:
    """One reassembled RTMP message. ``timestamp`` is the 32-bit wire value (it wraps)."""

    __slots__ = ("csid", "type_id", "stream_id", "timestamp", "payload")

    def __init__(self, csid: int, type_id: int, stream_id: int, timestamp: int, payload: bytes) -> None:
        self.csid = csid
        self.type_id = type_id
        self.stream_id = stream_id
        self.timestamp = timestamp
        self.payload = payload

    def __repr__(self) -> str:
        return (f"Message(csid={self.csid}, type={self.type_id}, stream={self.stream_id}, "
                f"ts={self.timestamp}, len={len(self.payload)})")


class _ChunkStream:
    """What one csid remembers between chunks (the previous header, the message in progress)."""

    __slots__ = ("timestamp", "delta", "extended", "length", "type_id", "stream_id", "body", "received")

    def __init__(self) -> None:
        self.timestamp = 0
        self.delta = 0
        self.extended = False
        self.length = 0
        self.type_id = 0
        self.stream_id = 0
        self.body: bytearray | None = None  # set while a multi-chunk message is in progress
        self.received = 0  # == len(body): bodies grow as chunks arrive


def _chunk_error(message: str) -> RemoteProtocolError:
    return RemoteProtocolError(message, reason="chunk")


def check_chunk_size(size: int) -> None:
    """Validate a Set Chunk Size value (31 bits; 1..0xFFFFFF)."""
    if size & 0x80000000:
        raise _chunk_error(f"Set Chunk Size with the reserved top bit set (0x{size:08x})")
    if size < 1 or size > MAX_CHUNK_SIZE:
        raise _chunk_error(f"Set Chunk Size {size} is outside 1..{MAX_CHUNK_SIZE}")


class ChunkReader:
    """Turns the byte stream after the handshake into :class:`Message` objects.

    ``feed(data)`` appends input; ``next_message()`` returns the next complete message or
    ``None`` when more input is needed. Raises :class:`RemoteProtocolError` on bad input
    (``reason`` ``chunk``, ``oversize`` or ``limit``); after that the reader must not be used.

    ``max_buffered`` caps :attr:`held` (checked whenever parsing runs out of input, and against
    every declared message length); the owner may change it between calls. Default: one
    maximal message plus 64 KiB.
    """

    def __init__(self, max_message_size: int = 8 << 20, max_buffered: int | None = None) -> None:
        self.chunk_size = DEFAULT_CHUNK_SIZE
        self.max_message_size = max_message_size
        self.max_buffered = max_message_size + (64 << 10) if max_buffered is None else max_buffered
        self._buf = bytearray()
        self._pos = 0
        self._streams: dict[int, _ChunkStream] = {}
        self._partial_bytes = 0  # body bytes received of all messages in progress
        self._partial_count = 0  # messages in progress

    @property
    def buffered(self) -> int:
        """Bytes received but not yet parsed."""
        return len(self._buf) - self._pos

    @property
    def held(self) -> int:
        """What this connection holds: unparsed input plus the bodies of partial messages."""
        return len(self._buf) - self._pos + self._partial_bytes

    def check_held(self) -> None:
        """Raise ``oversize`` if :attr:`held` exceeds :attr:`max_buffered`."""
        held = len(self._buf) - self._pos + self._partial_bytes
        if held > self.max_buffered:
            raise RemoteProtocolError(
                f"{held} bytes buffered on this connection (unparsed input and partial messages), "
                f"over the {self.max_buffered}-byte limit", reason="oversize")
    def incomplete(self) -> tuple[int, int]:
        """``(length, due)`` of the longest message that has begun arriving and is not complete
        (declared length, and payload bytes still to come: a lower bound of what the peer has
        yet to send for it, chunk headers come on top), or ``(0, 0)``. A message whose header
        itself is not whole yet is not counted. For a driver deciding how soon to read again."""
        unparsed = len(self._buf) - self._pos
        if not unparsed and not self._partial_count:  # every read ends here most of the time
            return 0, 0
        length = due = 0
        streams = self._streams
        head_csid = -1
        if unparsed:  # the start of a chunk that is not whole yet
            buf, p = self._buf, self._pos
            b0 = buf[p]
            fmt, csid = b0 >> 6, b0 & 0x3F
            p += 1
            if csid == 0:
                csid, p = (buf[p] + 64, p + 1) if p < len(buf) else (-1, p)
            elif csid == 1:
                csid, p = (buf[p] + (buf[p + 1] << 8) + 64, p + 2) if p + 1 < len(buf) else (-1, p)
            st = streams.get(csid)
            if csid >= 0:
                head_csid = csid
                if st is not None and st.body is not None:  # the next chunk of a message in progress
                    length, due = st.length, st.length - st.received - unparsed
                elif fmt < 2 and p + 6 <= len(buf):
                    length = (buf[p + 3] << 16) | (buf[p + 4] << 8) | buf[p + 5]
                    due = length - unparsed
                elif fmt >= 2 and st is not None:
                    length, due = st.length, st.length - unparsed
        for csid, st in streams.items():
            if st.body is not None and csid != head_csid and st.length > length:
                length, due = st.length, st.length - st.received
        return length, due if due > 0 else (1 if length else 0)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        pos = self._pos
        if pos:
            if pos == len(self._buf):
                self._buf.clear()
                self._pos = 0
            elif pos >= _COMPACT_AT:
                del self._buf[:pos]
                self._pos = 0
        self._buf += data

    def next_message(self) -> Message | None:
        raw = self.next_raw()
        return None if raw is None else Message(*raw)

    def next_raw(self) -> tuple[int, int, int, int, bytes] | None:
        """The next complete message as a ``(csid, type_id, stream_id, timestamp, payload)`` tuple
        (what :class:`Message` holds, without building one), or ``None`` when more input is needed."""
        next_chunk = self._next_chunk
        while True:
            msg = next_chunk()
            if msg is not _CONSUMED:
                if msg is None and len(self._buf) - self._pos + self._partial_bytes > self.max_buffered:
                    self.check_held()
                return msg  # type: ignore[return-value]

    def _next_chunk(self) -> tuple[int, int, int, int, bytes] | object | None:
        """Parse one chunk. Returns a message tuple, ``_CONSUMED`` (chunk eaten, no message yet)
        or ``None`` (the whole chunk is not buffered yet; nothing was consumed)."""
        buf = self._buf
        pos = self._pos
        end = len(buf)
        if pos >= end:
            return None
        b0 = buf[pos]
        fmt = b0 >> 6
        csid = b0 & 0x3F
        p = pos + 1
        if csid < 2:
            if csid == 0:
                if p + 1 > end:
                    return None
                csid = buf[p] + 64
                p += 1
            else:
                if p + 2 > end:
                    return None
                csid = buf[p] + (buf[p + 1] << 8) + 64
                p += 2
        st = self._streams.get(csid)
        in_progress = st is not None and st.body is not None

        if fmt == 3:
            if st is None:
                raise _chunk_error(f"fmt 3 chunk on chunk stream {csid}, which has no previous header")
            if st.extended:
                if p + 4 > end:
                    return None
                ext = _BE32(buf, p)[0]
                p += 4
            else:
                ext = -1
            if in_progress:
                # Continuation chunks. When the header is the 1-byte form, copy the run of
                # back-to-back continuations of this csid in one loop (the common case at
                # chunk size 128: a video frame is dozens of chunks in a row).
                body = st.body
                assert body is not None
                length = st.length
                received = st.received
                size = self.chunk_size
                fast = p - pos == 1
                consumed = False
                while True:
                    n = length - received
                    if n > size:
                        n = size
                    if p + n > end:
                        break
                    # grow by what came (a bytearray slice beats a memoryview slice at chunk sizes)
                    body += buf[p:p + n]
                    received += n
                    pos = p + n
                    consumed = True
                    if received == length or not fast or pos >= end or buf[pos] != b0:
                        break
                    p = pos + 1
                if not consumed:
                    return None
                self._pos = pos
                self._partial_bytes += received - st.received
                st.received = received
                if received < length:
                    return _CONSUMED
                st.body = None
                self._partial_bytes -= length
                self._partial_count -= 1
                return self._complete((csid, st.type_id, st.stream_id, st.timestamp, bytes(body)))
            # a new message that repeats the previous header and delta
            length = st.length
            n = length if length < self.chunk_size else self.chunk_size
            if p + n > end:
                return None
            if ext >= 0:
                st.delta = ext
            st.timestamp = (st.timestamp + st.delta) & _MASK32
            return self._start_message(csid, st, p, n)

        if in_progress:
            assert st is not None
            raise _chunk_error(
                f"fmt {fmt} header on chunk stream {csid} while a {st.length}-byte message is "
                f"incomplete ({st.received} bytes received); continuation chunks must be fmt 3")
        hdr = (11, 7, 3)[fmt]
        if p + hdr > end:
            return None
        ts_field = _BE32(buf, p)[0] >> 8 if fmt < 2 else (buf[p] << 16) | (buf[p + 1] << 8) | buf[p + 2]
        q = p + hdr
        extended = ts_field == 0xFFFFFF
        if extended:
            if q + 4 > end:
                return None
            ts_field = _BE32(buf, q)[0]
            q += 4
        if fmt < 2:
            length = _BE32(buf, p + 2)[0] & 0xFFFFFF
            if length > self.max_message_size or length > self.max_buffered:
                raise self._too_long(length, buf[p + 6], csid)  # before we wait for (and buffer) the payload
            n = length if length < self.chunk_size else self.chunk_size
        else:
            if st is None:
                raise _chunk_error(f"fmt 2 chunk on chunk stream {csid}, which has no previous header")
            length = st.length
            n = length if length < self.chunk_size else self.chunk_size
        if q + n > end:
            return None  # wait for the whole chunk before touching any state
        if st is None:
            if fmt == 1 and csid != 2:
                raise _chunk_error(f"fmt 1 chunk on chunk stream {csid}, which has no previous header")
            if len(self._streams) >= MAX_CHUNK_STREAMS:
                raise _chunk_error(f"more than {MAX_CHUNK_STREAMS} chunk streams on one connection")
            st = self._streams[csid] = _ChunkStream()
        if fmt == 0:
            st.timestamp = ts_field
            st.stream_id = _LE32(buf, p + 7)[0]
        else:
            st.timestamp = (st.timestamp + ts_field) & _MASK32
        st.delta = ts_field
        st.extended = extended
        if fmt < 2:
            st.length = length
            st.type_id = buf[p + 6]
        return self._start_message(csid, st, q, n)

    def _start_message(self, csid: int, st: _ChunkStream, p: int, n: int
                       ) -> tuple[int, int, int, int, bytes] | object:
        """First chunk of a message: its ``n`` payload bytes start at ``p`` (all buffered)."""
        length = st.length
        if length > self.max_buffered:  # a fmt 2/3 header repeating a length the cap no longer allows
            raise self._too_long(length, st.type_id, csid)
        self._pos = p + n
        if n == length:  # the whole message is in this chunk (the common case)
            type_id = st.type_id
            msg = (csid, type_id, st.stream_id, st.timestamp, bytes(self._buf[p:p + n]))
            if type_id == SET_CHUNK_SIZE or type_id == ABORT:
                self._control(msg)
            return msg
        if self._partial_count >= MAX_PARTIAL_MESSAGES:
            raise RemoteProtocolError(
                f"more than {MAX_PARTIAL_MESSAGES} messages in progress at once on one connection "
                f"(chunk stream {csid} starts another); finish a message before starting the next",
                reason="limit")
        st.body = self._buf[p:p + n]  # grows as its chunks arrive, never to a declared length
        st.received = n
        self._partial_bytes += n
        self._partial_count += 1
        return _CONSUMED

    def _too_long(self, length: int, type_id: int, csid: int) -> RemoteProtocolError:
        limit = min(self.max_message_size, self.max_buffered)
        return RemoteProtocolError(
            f"message of {length} bytes (type {type_id}) on chunk stream {csid} exceeds the {limit}-byte "
            f"limit" + ("" if limit == self.max_message_size else " for a connection that is not publishing"),
            reason="oversize")

    def _complete(self, msg: tuple[int, int, int, int, bytes]) -> tuple[int, int, int, int, bytes]:
        type_id = msg[1]
        if type_id == SET_CHUNK_SIZE or type_id == ABORT:
            self._control(msg)
        return msg

    def _control(self, msg: tuple[int, int, int, int, bytes]) -> None:
        """Apply Set Chunk Size / Abort at once: they change how the next chunk parses."""
        _, type_id, _, _, payload = msg
        if len(payload) < 4:
            raise _chunk_error(f"protocol control message type {type_id} shorter than 4 bytes")
        value = _BE32(payload, 0)[0]
        if type_id == SET_CHUNK_SIZE:
            check_chunk_size(value)
            self.chunk_size = value
        elif type_id == ABORT:
            st = self._streams.get(value)
            if st is not None and st.body is not None:
                self._partial_bytes -= st.received
                self._partial_count -= 1
                st.body = None


_CONSUMED = object()


class ChunkWriter:
    """Cuts messages into chunks, compressing headers per csid like ffmpeg and nginx-rtmp do.

    ``chunk_size`` is what the peer was told with Set Chunk Size; change it only right
    after writing that message. ``compress=False`` forces fmt 0 on every message.
    """

    def __init__(self, chunk_size: int = DEFAULT_CHUNK_SIZE, compress: bool = True) -> None:
        check_chunk_size(chunk_size)
        self.chunk_size = chunk_size
        self.compress = compress
        # csid -> (stream_id, type_id, length, timestamp, delta)
        self._last: dict[int, tuple[int, int, int, int, int]] = {}

    def write(self, csid: int, type_id: int, stream_id: int, timestamp: int, payload: bytes) -> bytes:
        """Return the chunks of one message (timestamp is the 32-bit absolute value)."""
        if not 2 <= csid <= 65599:
            raise ValueError(f"chunk stream id {csid} outside 2..65599")
        length = len(payload)
        if length > 0xFFFFFF:
            raise ValueError("RTMP messages are at most 16 MiB - 1 bytes")
        timestamp &= _MASK32
        last = self._last.get(csid) if self.compress else None
        fmt = 0
        field = timestamp
        if last is not None and last[0] == stream_id and timestamp >= last[3]:
            field = timestamp - last[3]
            fmt = 1
            if last[1] == type_id and last[2] == length:
                fmt = 3 if field == last[4] else 2
        self._last[csid] = (stream_id, type_id, length, timestamp, field)
        basic = basic_header(fmt, csid)
        extended = field >= 0xFFFFFF
        ts24 = 0xFFFFFF if extended else field
        parts = [basic]
        if fmt < 3:
            parts.append(ts24.to_bytes(3, "big"))
            if fmt < 2:
                parts.append(length.to_bytes(3, "big"))
                parts.append(bytes((type_id,)))
                if fmt == 0:
                    parts.append(stream_id.to_bytes(4, "little"))
        ext = field.to_bytes(4, "big") if extended else b""
        parts.append(ext)
        cont = basic_header(3, csid) + ext
        size = self.chunk_size
        view = memoryview(payload)
        parts.append(view[:size])
        for off in range(size, length, size):
            parts.append(cont)
            parts.append(view[off:off + size])
        return b"".join(parts)


def basic_header(fmt: int, csid: int) -> bytes:
    """The 1-, 2- or 3-byte basic header for ``fmt``/``csid``."""
    if csid < 64:
        return bytes(((fmt << 6) | csid,))
    if csid < 320:
        return bytes((fmt << 6, csid - 64))
    rest = csid - 64
    return bytes(((fmt << 6) | 1, rest & 0xFF, rest >> 8))
