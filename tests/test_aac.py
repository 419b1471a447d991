"""AAC helpers: AudioSpecificConfig, ADTS headers and splitting, checked against FFmpeg."""
from __future__ import annotations

import io

import av
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from mesh_codecs import aac
from mesh_codecs.aac import AacError


def ffmpeg_aac(sample_rate: int, layout: str, frames: int = 8) -> tuple[bytes, list[bytes], bytes]:
    """(ASC, raw frames, FFmpeg's ADTS stream) for the same AAC-LC encoding."""
    buf = io.BytesIO()
    raw = []
    with av.open(buf, "w", format="adts") as out:
        stream = out.add_stream("aac", rate=sample_rate)
        stream.layout = layout
        with av.open(f"sine=f=440:r={sample_rate}:d={frames * 1024 / sample_rate}", format="lavfi") as src:
            for frame in src.decode(audio=0):
                frame.pts = None
                for pkt in stream.encode(frame):
                    raw.append(bytes(pkt))
                    out.mux(pkt)
        for pkt in stream.encode(None):
            raw.append(bytes(pkt))
            out.mux(pkt)
        asc = bytes(stream.codec_context.extradata or b"")
    return asc, raw, buf.getvalue()


# --------------------------------------------------------------------------- AudioSpecificConfig


@pytest.mark.parametrize(
    ("asc", "expected", "rate", "channels", "codec"),
    [
        (b"\x12\x10", aac.Asc(2, 4, 44100, 2, 2), 44100, 2, "mp4a.40.2"),
        (b"\x11\x90", aac.Asc(2, 3, 48000, 2, 2), 48000, 2, "mp4a.40.2"),
        (b"\x11\x88", aac.Asc(2, 3, 48000, 1, 2), 48000, 1, "mp4a.40.2"),
        (b"\x11\xb0", aac.Asc(2, 3, 48000, 6, 2), 48000, 6, "mp4a.40.2"),
        # HE-AAC, explicit: SBR at 48 kHz over an AAC-LC core at 24 kHz.
        (b"\x2b\x11\x88\x00", aac.Asc(5, 6, 24000, 2, 2, 48000), 48000, 2, "mp4a.40.5"),
        # HE-AACv2: PS turns the mono core into stereo.
        (b"\xeb\x09\x88\x00", aac.Asc(29, 6, 24000, 1, 2, 48000), 48000, 2, "mp4a.40.29"),
        # Explicit 24-bit rate (not one of the 13 table rates).
        (bytes.fromhex("17801f4010"), aac.Asc(2, 15, 16000, 2, 2), 16000, 2, "mp4a.40.2"),
        # Escaped object type 42 (USAC) at 48 kHz stereo.
        (bytes.fromhex("f94640"), aac.Asc(42, 3, 48000, 2, 42), 48000, 2, "mp4a.40.42"),
    ],
)
def test_parse_asc_exact(asc, expected, rate, channels, codec):
    assert aac.parse_asc(asc) == expected
    cfg = aac.audio_config_from_asc(asc)
    assert (cfg.asc, cfg.sample_rate, cfg.channels) == (asc, rate, channels)
    assert (cfg.codec_string, cfg.codec) == (codec, "aac")


@pytest.mark.parametrize(
    ("rate", "layout", "channels"), [(48000, "stereo", 2), (44100, "mono", 1), (22050, "5.1", 6)]
)
def test_ffmpeg_asc(rate, layout, channels):
    asc, _, _ = ffmpeg_aac(rate, layout, frames=2)
    info = aac.parse_asc(asc)
    assert (info.object_type, info.sample_rate, info.channels) == (2, rate, channels)
    assert aac.build_asc(2, rate, info.channel_config) == asc[:2]


def test_build_asc_explicit_rate_round_trip():
    asc = aac.build_asc(2, 16001, 2)
    assert len(asc) == 5 and aac.parse_asc(asc) == aac.Asc(2, 15, 16001, 2, 2)


@pytest.mark.parametrize(
    ("asc", "message"),
    [
        (b"", "truncated"),
        (b"\x12", "truncated"),
        (b"\x00\x10", "object type 0"),
        (b"\x16\x90", "reserved sampling frequency index 13"),
        (b"\x12\x00", "channel configuration 0"),
        (b"\x17\x80\x00\x00\x10", "0 Hz"),
        (b"\x2b\x11", "truncated"),  # SBR: extension fields missing
    ],
)
def test_asc_errors(asc, message):
    with pytest.raises(AacError, match=message):
        aac.parse_asc(asc)


@given(st.binary(max_size=8))
def test_asc_fuzz_raises_only_aacerror(data):
    try:
        info = aac.parse_asc(data)
    except AacError:
        return
    assert info.sample_rate > 0 and info.channels > 0


# --------------------------------------------------------------------------- ADTS


def test_adts_header_exact():
    header = aac.build_adts_header(aac.parse_asc(b"\x11\x90"), 100)
    assert header == bytes.fromhex("fff14c800d7ffc")
    parsed = aac.parse_adts_header(header)
    assert parsed == aac.AdtsHeader(2, 3, 2, 107, 7, 1)
    assert (parsed.sample_rate, parsed.payload_length) == (48000, 100)


@pytest.mark.parametrize(("rate", "layout"), [(48000, "stereo"), (44100, "mono"), (22050, "5.1")])
def test_adts_matches_ffmpeg_adts_muxer(rate, layout):
    asc, raw, adts_stream = ffmpeg_aac(rate, layout)
    info = aac.parse_asc(asc)
    ours = b"".join(aac.build_adts_header(info, len(frame)) + frame for frame in raw)
    assert ours == adts_stream
    frames = aac.split_adts(adts_stream)
    assert [payload for _, payload in frames] == raw
    assert all(aac.asc_from_adts(header) == asc[:2] for header, _ in frames)


@given(
    st.integers(1, 4),
    st.sampled_from(aac.SAMPLE_RATES),
    st.integers(1, 7),
    st.integers(0, aac.ADTS_MAX_FRAME - 7),
)
def test_asc_adts_round_trip(object_type, rate, channel_config, size):
    asc = aac.build_asc(object_type, rate, channel_config)
    header = aac.build_adts_header(aac.parse_asc(asc), size)
    parsed = aac.parse_adts_header(header)
    assert (parsed.object_type, parsed.sample_rate) == (object_type, rate)
    assert parsed.channel_config == channel_config
    assert parsed.payload_length == size
    assert aac.asc_from_adts(parsed) == asc


def test_he_aac_is_written_as_its_lc_core():
    header = aac.build_adts_header(aac.parse_asc(b"\x2b\x11\x88\x00"), 10)
    parsed = aac.parse_adts_header(header)
    assert (parsed.object_type, parsed.sample_rate, parsed.channel_config) == (2, 24000, 2)


@pytest.mark.parametrize(
    ("asc", "size", "message"),
    [
        (bytes.fromhex("f94640"), 10, "object type 42"),
        (bytes.fromhex("17801f4090"), 10, "16001 Hz has no ADTS"),
        (b"\x11\xe0", 10, "channel configuration 12"),
        (b"\x11\x90", aac.ADTS_MAX_FRAME - 6, "does not fit"),
    ],
)
def test_adts_build_errors(asc, size, message):
    with pytest.raises(AacError, match=message):
        aac.build_adts_header(aac.parse_asc(asc), size)


def test_adts_parse_errors():
    good = bytes.fromhex("fff14c800d7ffc")
    with pytest.raises(AacError, match="truncated"):
        aac.parse_adts_header(good[:6])
    with pytest.raises(AacError, match="syncword"):
        aac.parse_adts_header(b"\xfe" + good[1:])
    with pytest.raises(AacError, match="layer"):
        aac.parse_adts_header(b"\xff\xf3" + good[2:])
    with pytest.raises(AacError, match="shorter than its header"):
        aac.parse_adts_header(good[:3] + b"\x80\x00\x1f\xfc")
    with pytest.raises(AacError, match="declares 107 bytes"):
        aac.split_adts(good + bytes(50))
    with pytest.raises(AacError, match="2 raw data blocks"):
        aac.split_adts(good[:6] + b"\xfd" + bytes(100))
    with pytest.raises(AacError, match="channel configuration 0"):
        aac.asc_from_adts(aac.AdtsHeader(2, 3, 0, 10, 7, 1))


@given(st.binary(max_size=64))
@example(bytes.fromhex("fff14c800d7ffc") + bytes(100))
def test_split_adts_fuzz_raises_only_aacerror(data):
    try:
        frames = aac.split_adts(data)
    except AacError:
        return
    assert sum(h.frame_length for h, _ in frames) == len(data)
