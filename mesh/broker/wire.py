"""The bus wire format: pure encode/decode, no sockets.

A bus message is three ZeroMQ frames::

    topic    b"s/{stream_id}/{rendition}/"     (trailing "/" so SUB prefix matching never lets
                                               "cam1" receive "cam10")
    header   msgpack map {"v": 1, "e": epoch, "h": [entry, ...]}
    payload  the entries' payloads, concatenated in order

Each entry is a compact msgpack array ``[seq, kind, track, pts, dts, flags, seg, length]`` with an
optional ninth element ``extra`` (a map: codec parameters for ``config``, reasons for ``eos``).
``seq`` is contiguous per topic over every kind, so a subscriber sees any loss as a jump.

Several entries of one topic travel in one message when the publisher has them at the same time
(a burst, a snapshot): one ZeroMQ send instead of many is what lets a Python bus keep pace with raw
pyzmq. A single entry is simply a batch of one. All entries of a message share the epoch.

Timestamps are 90 kHz integers (``codecs/media.py``). ``seg`` is the origin-decided segment number;
``FLAG_SEG_START`` marks the first packet of a segment (always a video keyframe when there is video);
``FLAG_PART_START`` the first packet of an LL-HLS part (a segment start is also a part start).
"""
from __future__ import annotations

import re
from typing import Any, Iterable

import msgpack

from ..names import NAME_PATTERN, is_name

VERSION = 1

MEDIA = 0
CONFIG = 1
EOS = 2
HEARTBEAT = 3
KIND_NAMES = {MEDIA: "media", CONFIG: "config", EOS: "eos", HEARTBEAT: "hb"}

FLAG_KEY = 1
FLAG_SEG_START = 2
FLAG_PART_START = 4  # first packet of an LL-HLS part (every segment start is one too)
_KNOWN_FLAGS = FLAG_KEY | FLAG_SEG_START | FLAG_PART_START

MAX_TOPIC_BYTES = 300
MAX_HEADER_BYTES = 1 << 20
MAX_ENTRIES = 8192
MAX_PAYLOAD_BYTES = 256 << 20
MAX_ENTRY_BYTES = 32 << 20

_TOPIC_RE = re.compile(rf"s/({NAME_PATTERN})/({NAME_PATTERN})/".encode())

_packb = msgpack.Packer(use_bin_type=True, autoreset=True).pack


class WireError(ValueError):
    """A frame from the bus is malformed (the peer sent garbage): drop it and count it."""

    def __init__(self, reason: str, detail: str):
        self.reason = reason
        super().__init__(detail)


class EntryBatch(list):
    """The entries of one decoded message. ``plain_first`` is the first seq when the batch is
    contiguous in seq with no heartbeat (-1 when not, or not known), so the subscriber's tracker
    can take a whole steady-state batch in O(1); ``epoch`` is the message's epoch."""

    __slots__ = ("epoch", "plain_first")


class Entry:
    """One bus packet: a media access unit, a codec config, an end of stream or a heartbeat."""

    __slots__ = ("seq", "kind", "track", "pts", "dts", "flags", "seg", "payload", "extra", "epoch")

    def __init__(self, seq: int, kind: int, track: int = 0, pts: int = 0, dts: int = 0,
                 flags: int = 0, seg: int = 0, payload: bytes | memoryview = b"",
                 extra: dict[str, Any] | None = None, epoch: int = 0):
        self.seq = seq
        self.kind = kind
        self.track = track
        self.pts = pts
        self.dts = dts
        self.flags = flags
        self.seg = seg
        self.payload = payload
        self.extra = extra
        self.epoch = epoch

    @property
    def key(self) -> bool:
        return bool(self.flags & FLAG_KEY)

    @property
    def seg_start(self) -> bool:
        return bool(self.flags & FLAG_SEG_START)

    def __repr__(self) -> str:
        return (f"Entry(seq={self.seq}, {KIND_NAMES.get(self.kind, self.kind)}, track={self.track}, "
                f"dts={self.dts}, flags={self.flags}, seg={self.seg}, {len(self.payload)} B, "
                f"epoch={self.epoch})")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Entry):
            return NotImplemented
        return (self.seq, self.kind, self.track, self.pts, self.dts, self.flags, self.seg,
                bytes(self.payload), self.extra, self.epoch) == \
               (other.seq, other.kind, other.track, other.pts, other.dts, other.flags, other.seg,
                bytes(other.payload), other.extra, other.epoch)


def topic_for(stream_id: str, rendition: str = "src") -> bytes:
    if not is_name(stream_id) or not is_name(rendition):
        raise ValueError(f"bad stream id or rendition: {stream_id!r}/{rendition!r}")
    return f"s/{stream_id}/{rendition}/".encode()


def parse_topic(topic: bytes) -> tuple[str, str]:
    if len(topic) > MAX_TOPIC_BYTES:
        raise WireError("topic", f"topic of {len(topic)} bytes is too long")
    m = _TOPIC_RE.fullmatch(topic)
    if m is None:
        raise WireError("topic", f"topic {bytes(topic[:60])!r} is not s/<stream>/<rendition>/")
    return m.group(1).decode(), m.group(2).decode()


def encode_header(epoch: int, entries: Iterable[Entry]) -> bytes:
    # One tuple per entry (msgpack packs tuples as arrays), built in a comprehension: this runs
    # once per packet on the origin, so it avoids per-row method calls.
    return _packb({"v": VERSION, "e": epoch, "h": [
        (e.seq, e.kind, e.track, e.pts, e.dts, e.flags, e.seg, len(e.payload)) if e.extra is None
        else (e.seq, e.kind, e.track, e.pts, e.dts, e.flags, e.seg, len(e.payload), e.extra)
        for e in entries]})


def encode(topic: bytes, epoch: int, entries: list[Entry]) -> list[bytes | memoryview]:
    """Frames for one message; a lone payload is passed through without a copy."""
    header = encode_header(epoch, entries)
    if len(entries) == 1:
        payload: bytes | memoryview = entries[0].payload
    else:
        payload = b"".join([e.payload for e in entries])
    return [topic, header, payload]


def _int(value: Any, lo: int, hi: int) -> bool:
    return type(value) is int and lo <= value <= hi


_MAX62 = 1 << 62
KERNEL_MIN_HEADER_BYTES = 48  # about four entries
_unpackb = msgpack.unpackb
_topic_cache: dict[bytes, tuple[str, str]] = {}  # valid topics seen, so the regex runs once each
_TOPIC_CACHE_MAX = 4096


def _topic_names(topic: bytes) -> tuple[str, str]:
    names = _topic_cache.get(topic)
    if names is None:
        names = parse_topic(topic)
        if len(_topic_cache) >= _TOPIC_CACHE_MAX:
            _topic_cache.clear()
        _topic_cache[topic] = names
    return names


_kernels: Any = None  # mesh.broker.wire_kernels, imported on first use (it loads Numba)


def load_kernels() -> Any:
    """Import the Numba header kernel (about half a second, once per process); False without Numba."""
    global _kernels
    if _kernels is None:
        try:
            import numpy

            from . import wire_kernels
        except ImportError:  # no Numba here: the general path does everything
            _kernels = False
        else:
            _kernels = (wire_kernels.parse_canonical, numpy.frombuffer, numpy.empty, numpy.uint8,
                        numpy.int64)
            # Run it once so Numba loads (or compiles) this signature now, not on a live packet.
            sample = encode(b"s/warm/up/", 1, [Entry(0, MEDIA, payload=b"x", epoch=1)])
            _decode_canonical(sample[1], len(sample[1]), memoryview(sample[2]), 1)
    return _kernels


def _decode_canonical(header: Any, header_size: int, view: memoryview, size: int) -> EntryBatch | None:
    """The fast path for the publisher's own encoding (see wire_kernels), or None."""
    kernels = _kernels if _kernels is not None else load_kernels()
    if not kernels:
        return None
    parse, frombuffer, empty, uint8, int64 = kernels
    rows = min(MAX_ENTRIES, header_size // 9)  # a canonical row takes at least 9 bytes
    if rows < 1:
        return None
    try:
        buf = frombuffer(header, uint8)
    except (TypeError, ValueError):  # not a buffer: the general path reports it
        return None
    out = empty((rows, 8), int64)
    n, epoch, plain_first = parse(buf, size, MAX_ENTRIES, MAX_ENTRY_BYTES, _KNOWN_FLAGS, out)
    if n < 0:
        return None
    batch = EntryBatch()
    append = batch.append
    start = 0
    for seq, kind, track, pts, dts, flags, seg, end in out[:n].tolist():
        append(Entry(seq, kind, track, pts, dts, flags, seg, view[start:end], None, epoch))
        start = end
    batch.plain_first = plain_first
    batch.epoch = epoch
    return batch


def decode(frames: list[Any]) -> tuple[str, str, list[Entry]]:
    """Parse the frames of one message. Raises :class:`WireError` on anything malformed.

    Frames may be ``bytes``, ``memoryview`` or anything with the buffer protocol; entry payloads
    are zero-copy slices of the payload frame. This is the subscriber's per-packet hot path: a
    header in the publisher's canonical form is parsed by a Numba kernel (wire_kernels), anything
    else by msgpack with the per-entry checks written out inline rather than as helper calls.
    """
    if len(frames) != 3:
        raise WireError("frames", f"message has {len(frames)} frames, expected 3")
    topic, header, payload = frames
    try:
        stream, rendition = _topic_names(topic if type(topic) is bytes else bytes(memoryview(topic)))
        header_size = memoryview(header).nbytes if type(header) is not bytes else len(header)
        view = payload if type(payload) is memoryview else memoryview(payload)
    except TypeError:
        raise WireError("frames", "frames must be bytes-like") from None
    if header_size > MAX_HEADER_BYTES:
        raise WireError("header", f"header of {header_size} bytes is too large")
    size = view.nbytes
    if size > MAX_PAYLOAD_BYTES:
        raise WireError("payload", f"payload of {size} bytes is too large")
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    # The kernel's fixed cost (array set-up, dispatch) pays off from a few entries on.
    batch = (_decode_canonical(header, header_size, view, size)
             if header_size >= KERNEL_MIN_HEADER_BYTES else None)
    if batch is not None:
        return stream, rendition, batch
    try:
        doc = _unpackb(header, raw=False, strict_map_key=True, max_bin_len=MAX_HEADER_BYTES,
                       max_array_len=MAX_ENTRIES, max_map_len=64, max_ext_len=0)
    except Exception as exc:  # msgpack raises several unrelated types for garbage
        raise WireError("msgpack", f"header is not msgpack: {type(exc).__name__}") from None
    if type(doc) is not dict:
        raise WireError("header", "header is not a map")
    if doc.get("v") != VERSION:
        raise WireError("version", f"unsupported wire version {doc.get('v')!r}")
    epoch, rows = doc.get("e"), doc.get("h")
    if not _int(epoch, 0, _MAX62) or type(rows) is not list or not rows:
        raise WireError("header", "header lacks a valid epoch or entries")
    offset = 0
    entries: list[Entry] = []
    append = entries.append
    for row in rows:
        if type(row) is not list:
            raise WireError("entry", "entry is not an 8- or 9-element array")
        n = len(row)
        if n == 8:
            seq, kind, track, pts, dts, flags, seg, length = row
            extra = None
        elif n == 9:
            seq, kind, track, pts, dts, flags, seg, length, extra = row
            if extra is not None and type(extra) is not dict:
                raise WireError("entry", "entry extra is not a map")
        else:
            raise WireError("entry", "entry is not an 8- or 9-element array")
        if not (int is type(seq) is type(kind) is type(track) is type(pts) is type(dts)
                is type(flags) is type(seg) is type(length)
                and 0 <= seq <= _MAX62 and 0 <= kind <= 3 and 0 <= track <= 15
                and -_MAX62 <= pts <= _MAX62 and -_MAX62 <= dts <= _MAX62
                and 0 <= flags <= _KNOWN_FLAGS and 0 <= seg <= _MAX62
                and 0 <= length <= MAX_ENTRY_BYTES):
            raise WireError("entry", f"entry fields out of range: {row[:8]!r}"[:200])
        end = offset + length
        if end > size:
            raise WireError("length", "entry lengths exceed the payload")
        append(Entry(seq, kind, track, pts, dts, flags, seg, view[offset:end], extra, epoch))
        offset = end
    if offset != size:
        raise WireError("length", f"payload has {size - offset} bytes no entry claims")
    return stream, rendition, entries
