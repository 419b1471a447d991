"""FLV tag bodies (mesh_codecs.flv): parsing, writers, exact errors, fuzz."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh_codecs import flv
from mesh_codecs.flv import FlvError, FlvUnsupportedCodec

AVCC = bytes.fromhex("0164001fffe10004" "6764001f" "0100046" "8ebecb2")  # SPS/PPS record (synthetic)
ASC = bytes.fromhex("1208")  # AAC-LC, 44.1 kHz, mono (ffmpeg lavfi sine)


def test_avc_sequence_header() -> None:
    v = flv.parse_video(flv.video_tag(True, flv.AVC_SEQUENCE_HEADER, 0, AVCC))
    assert (v.key, v.frame_type, v.codec_id, v.packet_type, v.cts_ms) == (True, 1, 7, 0, 0)
    assert bytes(v.data) == AVCC


@pytest.mark.parametrize("cts", [0, 67, -33, 0x7FFFFF, -0x800000])
def test_avc_nalu_with_signed_composition_time(cts: int) -> None:
    nalus = b"\x00\x00\x00\x02\x41\x9a"
    body = flv.video_tag(False, flv.AVC_NALU, cts, nalus)
    v = flv.parse_video(body)
    assert (v.key, v.packet_type, v.cts_ms, bytes(v.data)) == (False, 1, cts, nalus)


def test_ffmpeg_bytes_exactly() -> None:
    # First bytes of real ffmpeg tags: keyframe AVC NALU with cts 67 ms; inter frame cts 133 ms.
    assert flv.parse_video(bytes.fromhex("1701000043") + b"x").cts_ms == 67
    inter = flv.parse_video(bytes.fromhex("2701000085") + b"x")
    assert (inter.key, inter.cts_ms) == (False, 133)
    aac = flv.parse_audio(bytes.fromhex("af001208"))
    assert (aac.sound_format, aac.packet_type, bytes(aac.data)) == (10, 0, ASC)
    assert (aac.rate_index, aac.stereo) == (3, True)  # FLV's AAC header always says 44 kHz stereo


def test_end_of_sequence_and_command_frame_and_other_codecs() -> None:
    eos = flv.parse_video(bytes.fromhex("1702000000"))
    assert eos.packet_type == flv.AVC_END_OF_SEQUENCE and bytes(eos.data) == b""
    cmd = flv.parse_video(bytes([0x57, 0x00]))
    assert (cmd.frame_type, cmd.packet_type, cmd.key) == (5, -1, False)
    vp6 = flv.parse_video(bytes([0x14]) + b"payload")
    assert (vp6.codec_id, vp6.packet_type, bytes(vp6.data)) == (4, -1, b"payload")
    assert flv.describe_video_codec(4) == "On2 VP6"


def test_audio_aac_raw_and_other_formats() -> None:
    raw = flv.parse_audio(flv.audio_tag(flv.AAC_RAW, b"\x21\x10\x05"))
    assert (raw.sound_format, raw.packet_type, bytes(raw.data)) == (10, 1, b"\x21\x10\x05")
    mp3 = flv.parse_audio(flv.audio_tag(0, b"\xff\xfb", sound_format=2, rate_index=2, stereo=False))
    assert (mp3.sound_format, mp3.packet_type, bytes(mp3.data)) == (2, -1, b"\xff\xfb")
    assert (mp3.rate_index, mp3.stereo) == (2, False)
    assert flv.describe_sound_format(mp3.sound_format) == "MP3"


def test_data_is_a_zero_copy_view() -> None:
    body = bytearray(flv.video_tag(True, 1, 0, b"abcd"))
    v = flv.parse_video(body)
    body[-1] = ord("Z")
    assert bytes(v.data) == b"abcZ"


def test_enhanced_rtmp_is_recognised_and_refused() -> None:
    with pytest.raises(FlvUnsupportedCodec, match="FourCC 'hvc1' is not supported") as info:
        flv.parse_video(bytes([0x90]) + b"hvc1" + b"\x00" * 8)
    assert info.value.fourcc == "hvc1"
    with pytest.raises(FlvUnsupportedCodec, match="'Opus'"):
        flv.parse_audio(bytes([0x90]) + b"Opus")


@pytest.mark.parametrize("fn, data, match", [
    (flv.parse_video, b"", "empty video tag"),
    (flv.parse_video, bytes.fromhex("1701"), "AVC video tag of 2 bytes is shorter than its 5-byte header"),
    (flv.parse_video, bytes.fromhex("1703000000"), "invalid AVC packet type 3"),
    (flv.parse_video, bytes.fromhex("0700000000"), "invalid video frame type 0"),
    (flv.parse_video, bytes.fromhex("1700000000") + b"\x01",
     "too short to hold an AVCDecoderConfigurationRecord"),
    (flv.parse_audio, b"", "empty audio tag"),
    (flv.parse_audio, b"\xaf", "AAC audio tag shorter than its 2-byte header"),
    (flv.parse_audio, b"\xaf\x02", "invalid AAC packet type 2"),
    (flv.parse_audio, b"\xaf\x00\x12", "too short to hold an AudioSpecificConfig"),
])
def test_exact_errors(fn, data: bytes, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(FlvError, match=match):
        fn(data)


def test_writer_rejects_out_of_range_cts() -> None:
    with pytest.raises(ValueError, match="does not fit in 24 signed bits"):
        flv.video_tag(True, 1, 0x800000, b"")


@settings(max_examples=600, deadline=None)
@given(st.binary(max_size=40))
def test_parsers_only_raise_flv_error(data: bytes) -> None:
    for fn in (flv.parse_video, flv.parse_audio):
        try:
            fn(data)
        except FlvError:
            pass


@settings(max_examples=200, deadline=None)
@given(st.booleans(), st.integers(0, 2), st.integers(-0x800000, 0x7FFFFF), st.binary(min_size=7, max_size=64))
def test_video_round_trip(key: bool, packet_type: int, cts: int, data: bytes) -> None:
    v = flv.parse_video(flv.video_tag(key, packet_type, cts, data))
    assert (v.key, v.packet_type, v.cts_ms, bytes(v.data)) == (key, packet_type, cts, data)


def _tag(kind: int, ts: int, body: bytes) -> bytes:
    return (bytes([kind]) + len(body).to_bytes(3, "big") + (ts & 0xFFFFFF).to_bytes(3, "big")
            + bytes([ts >> 24]) + b"\x00\x00\x00" + body + (11 + len(body)).to_bytes(4, "big"))


def test_iter_tags_splits_flv_framing_with_extended_timestamps() -> None:
    data = _tag(9, 0x01000010, b"video") + _tag(8, 20, b"") + _tag(18, 0, b"\x02\x00\x01x")
    tags = [(t.tag_type, t.timestamp_ms, bytes(t.data)) for t in flv.iter_tags(data)]
    assert tags == [(9, 0x01000010, b"video"), (8, 20, b""), (18, 0, b"\x02\x00\x01x")]


@pytest.mark.parametrize("data, match", [
    (_tag(9, 0, b"abc")[:10], "FLV tag header truncated at offset 0"),
    (_tag(9, 0, b"abc")[:-1], "FLV tag of 3 bytes at offset 0 runs past the end"),
])
def test_iter_tags_errors(data: bytes, match: str) -> None:
    with pytest.raises(FlvError, match=match):
        list(flv.iter_tags(data))
