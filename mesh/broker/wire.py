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
``FLAG_SEG_START`` marks the first packet of a segment (always a video keyframe when there is video).
"""
from __future__ import annotations

import re
from typing import Any, Iterable, Iterator

import msgpack

VERSION = 1

MEDIA = 0
CONFIG = 1
EOS = 2
HEARTBEAT = 3
KIND_NAMES = {MEDIA: "media", CONFIG: "config", EOS: "eos", HEARTBEAT: "hb"}

FLAG_KEY = 1
FLAG_SEG_START = 2
_KNOWN_FLAGS = FLAG_KEY | FLAG_SEG_START

MAX_TOPIC_BYTES = 300
MAX_HEADER_BYTES = 1 << 20
MAX_ENTRIES = 8192
MAX_PAYLOAD_BYTES = 256 << 20
MAX_ENTRY_BYTES = 32 << 20

_NAME = r"[A-Za-z0-9_-]{1,128}"
_TOPIC_RE = re.compile(rf"^s/({_NAME})/({_NAME})/$".encode())
NAME_RE = re.compile(rf"^{_NAME}$")

_packb = msgpack.Packer(use_bin_type=True, autoreset=True).pack


class WireError(ValueError):
    """A frame from the bus is malformed (the peer sent garbage): drop it and count it."""

    def __init__(self, reason: str, detail: str):
        self.reason = reason
        super().__init__(detail)


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
    if not NAME_RE.match(stream_id) or not NAME_RE.match(rendition):
        raise ValueError(f"bad stream id or rendition: {stream_id!r}/{rendition!r}")
    return f"s/{stream_id}/{rendition}/".encode()


def parse_topic(topic: bytes) -> tuple[str, str]:
    if len(topic) > MAX_TOPIC_BYTES:
        raise WireError("topic", f"topic of {len(topic)} bytes is too long")
    m = _TOPIC_RE.match(topic)
    if m is None:
        raise WireError("topic", f"topic {bytes(topic[:60])!r} is not s/<stream>/<rendition>/")
    return m.group(1).decode(), m.group(2).decode()


def encode_header(epoch: int, entries: Iterable[Entry]) -> bytes:
    rows = []
    for e in entries:
        row = [e.seq, e.kind, e.track, e.pts, e.dts, e.flags, e.seg, len(e.payload)]
        if e.extra is not None:
            row.append(e.extra)
        rows.append(row)
    return _packb({"v": VERSION, "e": epoch, "h": rows})


def encode(topic: bytes, epoch: int, entries: list[Entry]) -> list[bytes | memoryview]:
    """Frames for one message; a lone payload is passed through without a copy."""
    header = encode_header(epoch, entries)
    if len(entries) == 1:
        payload: bytes | memoryview = entries[0].payload
    else:
        payload = b"".join(e.payload for e in entries)
    return [topic, header, payload]


def _int(value: Any, lo: int, hi: int) -> bool:
    return type(value) is int and lo <= value <= hi


def decode(frames: list[Any]) -> tuple[str, str, list[Entry]]:
    """Parse the frames of one message. Raises :class:`WireError` on anything malformed."""
    if len(frames) != 3:
        raise WireError("frames", f"message has {len(frames)} frames, expected 3")
    topic, header, payload = (bytes(f) if not isinstance(f, (bytes, memoryview)) else f
                              for f in frames)
    stream, rendition = parse_topic(bytes(topic))
    if len(header) > MAX_HEADER_BYTES:
        raise WireError("header", f"header of {len(header)} bytes is too large")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise WireError("payload", f"payload of {len(payload)} bytes is too large")
    try:
        doc = msgpack.unpackb(header, raw=False, strict_map_key=True, max_bin_len=MAX_HEADER_BYTES,
                              max_array_len=MAX_ENTRIES, max_map_len=64, max_ext_len=0)
    except Exception as exc:  # msgpack raises several unrelated types for garbage
        raise WireError("msgpack", f"header is not msgpack: {type(exc).__name__}") from None
    if type(doc) is not dict:
        raise WireError("header", "header is not a map")
    if doc.get("v") != VERSION:
        raise WireError("version", f"unsupported wire version {doc.get('v')!r}")
    epoch, rows = doc.get("e"), doc.get("h")
    if not _int(epoch, 0, 1 << 62) or type(rows) is not list or not rows:
        raise WireError("header", "header lacks a valid epoch or entries")
    view = memoryview(payload)
    offset = 0
    entries = []
    for row in rows:
        if type(row) is not list or not 8 <= len(row) <= 9:
            raise WireError("entry", "entry is not an 8- or 9-element array")
        seq, kind, track, pts, dts, flags, seg, length = row[:8]
        if not (_int(seq, 0, 1 << 62) and _int(kind, 0, 3) and _int(track, 0, 15)
                and _int(pts, -(1 << 62), 1 << 62) and _int(dts, -(1 << 62), 1 << 62)
                and _int(flags, 0, _KNOWN_FLAGS) and _int(seg, 0, 1 << 62)
                and _int(length, 0, MAX_ENTRY_BYTES)):
            raise WireError("entry", f"entry fields out of range: {row[:8]!r}"[:200])
        extra = row[8] if len(row) == 9 else None
        if extra is not None and type(extra) is not dict:
            raise WireError("entry", "entry extra is not a map")
        end = offset + length
        if end > len(view):
            raise WireError("length", "entry lengths exceed the payload")
        entries.append(Entry(seq, kind, track, pts, dts, flags, seg, view[offset:end], extra, epoch))
        offset = end
    if offset != len(view):
        raise WireError("length", f"payload has {len(view) - offset} bytes no entry claims")
    return stream, rendition, entries


def iter_entries(messages: Iterable[list[Any]]) -> Iterator[Entry]:
    for frames in messages:
        yield from decode(frames)[2]
