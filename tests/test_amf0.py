"""AMF0: exact encodings, round trips, exact errors and a property test."""
from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.protocols.rtmp import amf0
from mesh.protocols.rtmp.amf0 import UNDEFINED, AmfDate, EcmaArray
from mesh.protocols.rtmp.errors import RemoteProtocolError


@pytest.mark.parametrize("value, encoded", [
    (1.0, b"\x00\x3f\xf0\x00\x00\x00\x00\x00\x00"),
    (5, b"\x00" + struct.pack(">d", 5.0)),
    (True, b"\x01\x01"),
    (False, b"\x01\x00"),
    ("connect", b"\x02\x00\x07connect"),
    ({"app": "live"}, b"\x03\x00\x03app\x02\x00\x04live\x00\x00\x09"),
    (None, b"\x05"),
    (UNDEFINED, b"\x06"),
    (EcmaArray(a=1.0), b"\x08\x00\x00\x00\x01\x00\x01a\x00" + struct.pack(">d", 1.0) + b"\x00\x00\x09"),
    ([1.0, "x"], b"\x0a\x00\x00\x00\x02\x00" + struct.pack(">d", 1.0) + b"\x02\x00\x01x"),
    (AmfDate(1.5e12, 0), b"\x0b" + struct.pack(">dh", 1.5e12, 0)),
])
def test_exact_encodings_and_round_trip(value: object, encoded: bytes) -> None:
    assert amf0.encode(value) == encoded
    decoded, end = amf0.decode_value(encoded)
    assert end == len(encoded)
    assert decoded == value if value is not UNDEFINED else decoded is UNDEFINED
    assert type(decoded) is (float if isinstance(value, (int, float)) and not isinstance(value, bool)
                             else type(value))


def test_long_string_round_trip() -> None:
    s = "é" * 40000  # 80000 UTF-8 bytes: needs the 32-bit length form
    data = amf0.encode(s)
    assert data[0] == amf0.LONG_STRING and struct.unpack(">I", data[1:5])[0] == 80000
    assert amf0.decode(data) == [s]


def test_ffmpeg_connect_command_decodes() -> None:
    obj = {"app": "LiveApp", "type": "nonprivate", "flashVer": "FMLE/3.0 (compatible; Lavf59.27.100)",
           "tcUrl": "rtmp://127.0.0.1:1935/LiveApp"}
    data = amf0.encode("connect", 1, obj)
    assert amf0.decode(data) == ["connect", 1.0, obj]


def test_ecma_array_count_is_advisory() -> None:
    # Encoders write 0 (or a wrong number); the object-end marker decides.
    data = b"\x08\x00\x00\x00\x00" + b"\x00\x05width\x00" + struct.pack(">d", 640.0) + b"\x00\x00\x09"
    assert amf0.decode(data) == [EcmaArray(width=640.0)]


def test_invalid_utf8_is_replaced_not_fatal() -> None:
    assert amf0.decode(b"\x02\x00\x02\xff\xfe") == ["\ufffd\ufffd"]


@pytest.mark.parametrize("data, match", [
    (b"\x00\x3f\xf0", "AMF0 number truncated"),
    (b"\x02\x00\x09abc", "string of 9 bytes at offset 3 runs past the end"),
    (b"\x0c\xff\xff\xff\xffabc", "string of 4294967295 bytes"),
    (b"\x03\x00\x01a\x05", "object ends without an object-end marker"),
    (b"\x03\x00\x01a", "value expected at offset 4 but the message ended"),
    (b"\x07\x00\x01", r"reference \(marker 0x07\) is not supported"),
    (b"\x11\x06", r"AMF3 switch \(avmplus\) \(marker 0x11\) is not supported"),
    (b"\xff", "unknown AMF0 type marker 0xff at offset 0"),
    (b"\x09", "object-end outside an object"),
    (b"\x04", "movieclip"),
    (b"\x10\x00\x01C\x00\x00\x09", "typed object"),
    (b"\x0a\x7f\xff\xff\xff\x05", "claims 2147483647 elements but only 1 bytes remain"),
    (b"\x01", "boolean truncated"),
    (b"\x0b\x00", "date truncated"),
    (b"\x08\x00\x00", "ECMA array count truncated"),
])
def test_exact_errors(data: bytes, match: str) -> None:
    with pytest.raises(RemoteProtocolError, match=match) as info:
        amf0.decode(data)
    assert info.value.reason == "amf"


def test_nesting_depth_limit() -> None:
    ok = b"\x0a\x00\x00\x00\x01" * 32 + b"\x05"
    assert amf0.decode(ok)  # 32 levels of arrays around a null is fine
    too_deep = b"\x0a\x00\x00\x00\x01" * 33 + b"\x05"
    with pytest.raises(RemoteProtocolError, match="nested deeper than 32"):
        amf0.decode(too_deep)


def test_encoding_our_bugs_raise_type_errors() -> None:
    with pytest.raises(TypeError, match="cannot encode bytes"):
        amf0.encode(b"raw")
    with pytest.raises(TypeError, match="keys must be str"):
        amf0.encode({1: "x"})


# ------------------------------------------------------------------ properties

scalars = (st.none() | st.just(UNDEFINED) | st.booleans()
           | st.floats(allow_nan=False) | st.text(max_size=40)
           | st.builds(AmfDate, st.floats(allow_nan=False), st.integers(-720, 720)))
values = st.recursive(
    scalars,
    lambda inner: (st.lists(inner, max_size=5)
                   | st.dictionaries(st.text(max_size=10), inner, max_size=5)
                   | st.dictionaries(st.text(max_size=10), inner, max_size=5).map(EcmaArray)),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(st.lists(values, max_size=3))
def test_round_trip_property(vals: list) -> None:
    assert amf0.decode(amf0.encode(*vals)) == vals


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=300))
def test_decoder_only_raises_remote_protocol_error(data: bytes) -> None:
    try:
        result = amf0.decode(data)
    except RemoteProtocolError:
        return
    assert isinstance(result, list)


def test_nan_round_trips_as_nan() -> None:
    (value,) = amf0.decode(amf0.encode(math.nan))
    assert math.isnan(value)
