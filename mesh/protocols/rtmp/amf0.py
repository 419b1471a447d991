"""AMF0 (Adobe Action Message Format, version 0) encoder and decoder.

RTMP command messages (type 20) and data messages (type 18, ``@setDataFrame`` /
``onMetaData``) are sequences of AMF0 values. Everything here is decoded from hostile
bytes, so the decoder is bounded: nesting depth (default 32), element counts checked
against the bytes that remain (a 4-byte count cannot make us allocate more than the
message holds) and no references (marker 0x07), which would let a peer build cycles.
Every failure is a :class:`RemoteProtocolError` with ``reason="amf"``.

Python mapping (round trips are exact for these types):

============  ==========================================
AMF0          Python
============  ==========================================
number        ``float`` (``int`` accepted when encoding)
boolean       ``bool``
string        ``str`` (long string when > 65535 bytes)
object        ``dict`` (str keys)
null          ``None``
undefined     :data:`UNDEFINED`
ECMA array    :class:`EcmaArray` (a ``dict`` subclass)
strict array  ``list`` (``tuple`` accepted when encoding)
date          :class:`AmfDate`
============  ==========================================
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from .errors import RemoteProtocolError

NUMBER = 0x00
BOOLEAN = 0x01
STRING = 0x02
OBJECT = 0x03
MOVIECLIP = 0x04
NULL = 0x05
UNDEFINED_MARKER = 0x06
REFERENCE = 0x07
ECMA_ARRAY = 0x08
OBJECT_END = 0x09
STRICT_ARRAY = 0x0A
DATE = 0x0B
LONG_STRING = 0x0C
UNSUPPORTED = 0x0D
RECORDSET = 0x0E
XML_DOCUMENT = 0x0F
TYPED_OBJECT = 0x10
AVMPLUS = 0x11  # switch to AMF3

MAX_DEPTH = 32

_F64 = struct.Struct(">d")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_DATE = struct.Struct(">dh")
_OBJECT_END_BYTES = b"\x00\x00\x09"

_MARKER_NAMES = {
    MOVIECLIP: "movieclip (reserved)",
    REFERENCE: "reference",
    OBJECT_END: "object-end outside an object",
    UNSUPPORTED: "unsupported",
    RECORDSET: "recordset (reserved)",
    XML_DOCUMENT: "XML document",
    TYPED_OBJECT: "typed object",
    AVMPLUS: "AMF3 switch (avmplus)",
}


class _Undefined:
    """The AMF0 ``undefined`` value, distinct from ``null`` (``None``)."""

    _instance: _Undefined | None = None

    def __new__(cls) -> _Undefined:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNDEFINED"

    def __bool__(self) -> bool:
        return False


UNDEFINED = _Undefined()


class EcmaArray(dict):  # type: ignore[type-arg]
    """An AMF0 ECMA ("associative") array; kept distinct from an object so it round-trips."""


@dataclass(frozen=True, slots=True)
class AmfDate:
    """An AMF0 date: milliseconds since the Unix epoch (UTC) and a time-zone field
    (minutes; the spec says senders should write 0 and readers ignore it)."""

    ms: float
    tz_min: int = 0


def _err(message: str) -> RemoteProtocolError:
    return RemoteProtocolError(message, reason="amf")


# --------------------------------------------------------------------------- decoding


def _read_utf8(data: bytes | bytearray | memoryview, pos: int, n: int, end: int) -> tuple[str, int]:
    if pos + n > end:
        raise _err(f"AMF0 string of {n} bytes at offset {pos} runs past the end of the message")
    # errors="replace": a stray byte in an encoder name must not refuse a whole stream.
    return bytes(data[pos:pos + n]).decode("utf-8", "replace"), pos + n


def _read_key(data: bytes | bytearray | memoryview, pos: int, end: int) -> tuple[str, int]:
    if pos + 2 > end:
        raise _err(f"AMF0 object key length truncated at offset {pos}")
    (n,) = _U16.unpack_from(data, pos)
    return _read_utf8(data, pos + 2, n, end)


def _read_members(
    data: bytes | bytearray | memoryview, pos: int, end: int, depth: int, out: dict[str, Any]
) -> int:
    """Read ``key value`` pairs until the 00 00 09 object-end sequence."""
    while True:
        if pos + 3 <= end and data[pos] == 0 and data[pos + 1] == 0 and data[pos + 2] == OBJECT_END:
            return pos + 3
        if pos >= end:
            raise _err("AMF0 object ends without an object-end marker")
        key, pos = _read_key(data, pos, end)
        out[key], pos = decode_value(data, pos, depth + 1, end)


def decode_value(
    data: bytes | bytearray | memoryview, pos: int = 0, depth: int = 0, end: int | None = None
) -> tuple[Any, int]:
    """Decode one AMF0 value at ``pos``; return ``(value, next_pos)``."""
    if end is None:
        end = len(data)
    if depth > MAX_DEPTH:
        raise _err(f"AMF0 values nested deeper than {MAX_DEPTH} levels")
    if pos >= end:
        raise _err(f"AMF0 value expected at offset {pos} but the message ended")
    marker = data[pos]
    pos += 1
    if marker == NUMBER:
        if pos + 8 > end:
            raise _err("AMF0 number truncated")
        return _F64.unpack_from(data, pos)[0], pos + 8
    if marker == STRING:
        if pos + 2 > end:
            raise _err("AMF0 string length truncated")
        return _read_utf8(data, pos + 2, _U16.unpack_from(data, pos)[0], end)
    if marker == OBJECT:
        obj: dict[str, Any] = {}
        return obj, _read_members(data, pos, end, depth, obj)
    if marker == NULL:
        return None, pos
    if marker == BOOLEAN:
        if pos >= end:
            raise _err("AMF0 boolean truncated")
        return data[pos] != 0, pos + 1
    if marker == UNDEFINED_MARKER:
        return UNDEFINED, pos
    if marker == ECMA_ARRAY:
        if pos + 4 > end:
            raise _err("AMF0 ECMA array count truncated")
        # The count is advisory (encoders write 0 or wrong values); the end marker rules.
        arr = EcmaArray()
        return arr, _read_members(data, pos + 4, end, depth, arr)
    if marker == STRICT_ARRAY:
        if pos + 4 > end:
            raise _err("AMF0 strict array count truncated")
        (count,) = _U32.unpack_from(data, pos)
        pos += 4
        if count > end - pos:  # every element takes at least one byte
            raise _err(f"AMF0 strict array claims {count} elements but only {end - pos} bytes remain")
        items = []
        for _ in range(count):
            item, pos = decode_value(data, pos, depth + 1, end)
            items.append(item)
        return items, pos
    if marker == DATE:
        if pos + 10 > end:
            raise _err("AMF0 date truncated")
        ms, tz = _DATE.unpack_from(data, pos)
        return AmfDate(ms, tz), pos + 10
    if marker == LONG_STRING:
        if pos + 4 > end:
            raise _err("AMF0 long string length truncated")
        return _read_utf8(data, pos + 4, _U32.unpack_from(data, pos)[0], end)
    name = _MARKER_NAMES.get(marker)
    if name is not None:
        raise _err(f"AMF0 {name} (marker 0x{marker:02x}) is not supported")
    raise _err(f"unknown AMF0 type marker 0x{marker:02x} at offset {pos - 1}")


def decode(data: bytes | bytearray | memoryview, pos: int = 0) -> list[Any]:
    """Decode every AMF0 value in ``data[pos:]`` (a whole command or data message body)."""
    end = len(data)
    values = []
    while pos < end:
        value, pos = decode_value(data, pos, 0, end)
        values.append(value)
    return values


# --------------------------------------------------------------------------- encoding


def _put_key(out: bytearray, key: str) -> None:
    if not isinstance(key, str):
        raise TypeError(f"AMF0 object keys must be str, not {type(key).__name__}")
    raw = key.encode("utf-8")
    if len(raw) > 0xFFFF:
        raise ValueError("AMF0 object key longer than 65535 bytes")
    out += _U16.pack(len(raw))
    out += raw


def encode_value(value: Any, out: bytearray, depth: int = 0) -> None:
    """Append the AMF0 encoding of ``value`` to ``out``.

    Unsupported Python types raise ``TypeError``: that is our bug, not the peer's.
    """
    if depth > MAX_DEPTH:
        raise ValueError(f"refusing to encode AMF0 values nested deeper than {MAX_DEPTH}")
    if value is None:
        out.append(NULL)
    elif value is UNDEFINED:
        out.append(UNDEFINED_MARKER)
    elif isinstance(value, bool):
        out.append(BOOLEAN)
        out.append(1 if value else 0)
    elif isinstance(value, (int, float)):
        out.append(NUMBER)
        out += _F64.pack(float(value))
    elif isinstance(value, str):
        raw = value.encode("utf-8")
        if len(raw) <= 0xFFFF:
            out.append(STRING)
            out += _U16.pack(len(raw))
        else:
            out.append(LONG_STRING)
            out += _U32.pack(len(raw))
        out += raw
    elif isinstance(value, dict):
        if isinstance(value, EcmaArray):
            out.append(ECMA_ARRAY)
            out += _U32.pack(len(value))
        else:
            out.append(OBJECT)
        for key, item in value.items():
            _put_key(out, key)
            encode_value(item, out, depth + 1)
        out += _OBJECT_END_BYTES
    elif isinstance(value, (list, tuple)):
        out.append(STRICT_ARRAY)
        out += _U32.pack(len(value))
        for item in value:
            encode_value(item, out, depth + 1)
    elif isinstance(value, AmfDate):
        out.append(DATE)
        out += _DATE.pack(value.ms, value.tz_min)
    else:
        raise TypeError(f"cannot encode {type(value).__name__} as AMF0")


def encode(*values: Any) -> bytes:
    """Encode ``values`` back to back (a command is ``encode(name, txn, obj, ...)``)."""
    out = bytearray()
    for value in values:
        encode_value(value, out)
    return bytes(out)
