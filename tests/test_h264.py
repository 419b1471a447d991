"""H.264 helpers: SPS fields from real x264 streams, avcC records, Annex B <-> AVCC."""
from __future__ import annotations

import fractions
import io

import av
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh_codecs import h264
from mesh_codecs.h264 import H264Error

# --------------------------------------------------------------------------- media made at test time


def escape_rbsp(rbsp: bytes) -> bytes:
    """Insert emulation-prevention bytes so no ``00 00 0x`` (x <= 3) remains (the encoder's
    side of ``h264.unescape_rbsp``, for building SPS test vectors)."""
    out = bytearray()
    zeros = 0
    for b in rbsp:
        if zeros >= 2 and b <= 3:
            out.append(3)
            zeros = 0
        out.append(b)
        zeros = zeros + 1 if b == 0 else 0
    return bytes(out)


def x264_access_unit(width: int, height: int, pix_fmt: str = "yuv420p", **options: str) -> list[bytes]:
    """NAL units of the first access unit libx264 produces (SPS, PPS, SEI, IDR slices)."""
    ctx = av.CodecContext.create("libx264", "w")
    ctx.width, ctx.height, ctx.pix_fmt = width, height, pix_fmt
    ctx.time_base = fractions.Fraction(1, 30)
    ctx.options = {"preset": "ultrafast", **options}
    frame = av.VideoFrame(width, height, pix_fmt)
    for plane in frame.planes:
        plane.update(bytes(plane.buffer_size))
    frame.pts = 0
    packets = ctx.encode(frame) + ctx.encode(None)
    return h264.split_annexb(bytes(packets[0]))


def parameter_sets(nals: list[bytes]) -> tuple[bytes, bytes]:
    sps = [n for n in nals if h264.nal_type(n) == h264.NAL_SPS]
    pps = [n for n in nals if h264.nal_type(n) == h264.NAL_PPS]
    assert len(sps) == 1 and len(pps) == 1
    return sps[0], pps[0]


def ffmpeg_avcc(width: int, height: int) -> bytes:
    """The avcC FFmpeg's MP4 muxer writes for an x264 stream: an independent reference."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.options = {"preset": "veryfast"}
        frame = av.VideoFrame(width, height, "yuv420p")
        for plane in frame.planes:
            plane.update(bytes(plane.buffer_size))
        frame.pts = 0
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    buf.seek(0)
    with av.open(buf) as inp:
        return bytes(inp.streams.video[0].codec_context.extradata)


# A 640x360 High-profile SPS/PPS written by x264 (the avcC of a PyAV-encoded MP4).
KNOWN_AVCC = bytes.fromhex(
    "0164001effe100196764001eacd940a02ff9610000030001000003003c0f162d9601000468efbcb0fdf8f800"
)
KNOWN_SPS = bytes.fromhex("6764001eacd940a02ff9610000030001000003003c0f162d96")
KNOWN_PPS = bytes.fromhex("68efbcb0")


# --------------------------------------------------------------------------- SPS


@pytest.mark.parametrize(
    ("width", "height", "pix_fmt", "options", "profile", "chroma", "depth", "progressive"),
    [
        (640, 360, "yuv420p", {}, 66, 1, 8, True),  # 360 = 22.5 MBs: bottom crop
        (1280, 720, "yuv420p", {}, 66, 1, 8, True),  # no crop
        (1920, 1080, "yuv420p", {}, 66, 1, 8, True),
        (640, 360, "yuv420p", {"preset": "veryfast"}, 100, 1, 8, True),  # CABAC, 8x8 transform
        (642, 362, "yuv444p", {}, 244, 3, 8, True),  # 4:4:4 crop units are 1 sample
        (640, 360, "yuv422p", {}, 122, 2, 8, True),
        (640, 360, "yuv420p10le", {}, 110, 1, 10, True),
        (640, 360, "gray", {}, 100, 0, 8, True),  # chroma_format_idc 0
        (640, 360, "yuv420p", {"x264-params": "interlaced=1"}, 77, 1, 8, False),  # field MB pairs
    ],
)
def test_sps_dimensions_from_x264(width, height, pix_fmt, options, profile, chroma, depth, progressive):
    sps, _ = parameter_sets(x264_access_unit(width, height, pix_fmt, **options))
    info = h264.parse_sps(sps)
    assert (info.width, info.height) == (width, height)
    assert info.profile_idc == profile == sps[1]
    assert info.constraint_flags == sps[2] and info.level_idc == sps[3]
    assert info.chroma_format_idc == chroma
    assert info.bit_depth_luma == info.bit_depth_chroma == depth
    assert info.frame_mbs_only is progressive


def test_known_sps_exact_values():
    info = h264.parse_sps(KNOWN_SPS)
    assert info == h264.SpsInfo(100, 0, 30, 0, 1, 8, 8, True, 640, 360)


class BitWriter:
    def __init__(self) -> None:
        self.bits = ""

    def u(self, n: int, value: int) -> None:
        self.bits += format(value, f"0{n}b") if n else ""

    def ue(self, value: int) -> None:
        code = format(value + 1, "b")
        self.bits += "0" * (len(code) - 1) + code

    def se(self, value: int) -> None:
        self.ue(2 * value - 1 if value > 0 else -2 * value)

    def rbsp(self) -> bytes:
        bits = self.bits + "1"
        bits += "0" * (-len(bits) % 8)
        return int(bits, 2).to_bytes(len(bits) // 8, "big")


def handmade_sps(poc_type: int) -> bytes:
    """A High-profile SPS with explicit scaling lists and 4:2:0 cropping: 1280x712."""
    w = BitWriter()
    w.u(8, 100), w.u(8, 0), w.u(8, 40)
    w.ue(3)  # seq_parameter_set_id
    w.ue(1), w.ue(0), w.ue(0), w.u(1, 0)  # chroma 4:2:0, 8-bit, no bypass
    w.u(1, 1)  # seq_scaling_matrix_present_flag
    w.u(1, 1)  # list 0 present, 16 explicit deltas (none reaching 0)
    for delta in [1, -2, 3, 5, -7, 11, 2, 0, -1, 4, 6, -3, 8, -9, 1, 2]:
        w.se(delta)
    w.u(1, 1), w.se(-8)  # list 1 present: nextScale 0 at once -> "use default", one code only
    w.u(1, 0), w.u(1, 0), w.u(1, 0), w.u(1, 0)  # lists 2..5 absent
    w.u(1, 1)  # list 6 (8x8): 64 entries
    for i in range(64):
        w.se((-1) ** i * (i % 5))
    w.u(1, 0)  # list 7 absent
    w.ue(0)  # log2_max_frame_num_minus4
    w.ue(poc_type)
    if poc_type == 0:
        w.ue(2)
    elif poc_type == 1:
        w.u(1, 0), w.se(-1), w.se(2), w.ue(2), w.se(3), w.se(-4)
    w.ue(4), w.u(1, 0)  # max_num_ref_frames, gaps
    w.ue(79), w.ue(44)  # 80 x 45 macroblocks
    w.u(1, 1), w.u(1, 1)  # frame_mbs_only, direct_8x8_inference
    w.u(1, 1), w.ue(0), w.ue(0), w.ue(0), w.ue(4)  # crop 4 units (8 lines) at the bottom
    w.u(1, 0)  # no VUI
    return b"\x67" + escape_rbsp(w.rbsp())


@pytest.mark.parametrize("poc_type", [0, 1, 2])
def test_sps_with_scaling_lists_and_poc_types(poc_type):
    info = h264.parse_sps(handmade_sps(poc_type))
    assert (info.sps_id, info.width, info.height, info.level_idc) == (3, 1280, 712, 40)


def test_emulation_prevention():
    escaped = bytes.fromhex("000003 01 000003 0000 03 00 04")
    assert escape_rbsp(bytes.fromhex("000001 0000 0000 00 04")) == escaped
    assert h264.unescape_rbsp(b"\x00\x00\x03\x01\x00\x00\x03\x00") == b"\x00\x00\x01\x00\x00\x00"


@given(st.binary(max_size=64))
def test_escape_round_trip(rbsp):
    escaped = escape_rbsp(rbsp)
    assert h264.unescape_rbsp(escaped) == rbsp
    for marker in (b"\x00\x00\x00", b"\x00\x00\x01", b"\x00\x00\x02"):
        assert marker not in escaped


@pytest.mark.parametrize("cut", range(1, 11))  # byte 11 on is VUI, which is not read
def test_truncated_sps_raises(cut):
    with pytest.raises(H264Error):
        h264.parse_sps(KNOWN_SPS[:cut])


def test_sps_garbage_raises():
    with pytest.raises(H264Error, match="not an SPS"):
        h264.parse_sps(KNOWN_PPS)
    with pytest.raises(H264Error, match="exp-Golomb"):
        h264.parse_sps(b"\x67\x64\x00\x1e" + bytes(8))
    with pytest.raises(H264Error, match="chroma_format_idc"):
        w = BitWriter()
        w.u(8, 100), w.u(8, 0), w.u(8, 30), w.ue(0), w.ue(9)
        h264.parse_sps(b"\x67" + w.rbsp())


@given(st.binary(min_size=0, max_size=40))
def test_sps_fuzz_raises_only_h264error(tail):
    try:
        info = h264.parse_sps(b"\x67" + tail)
    except H264Error:
        return
    assert info.width > 0 and info.height > 0


# --------------------------------------------------------------------------- avcC


@pytest.mark.parametrize(("width", "height"), [(640, 360), (1280, 720)])
def test_build_avcc_matches_ffmpeg_mp4_muxer(width, height):
    reference = ffmpeg_avcc(width, height)
    cfg = h264.parse_avcc(reference)
    assert cfg.nal_length_size == 4 and len(cfg.sps) == len(cfg.pps) == 1
    assert (cfg.profile, cfg.compat, cfg.level) == tuple(cfg.sps[0][1:4])
    assert h264.build_avcc(cfg.sps, cfg.pps) == reference


def test_parse_known_avcc():
    cfg = h264.parse_avcc(KNOWN_AVCC)
    assert cfg == h264.AvcConfig(100, 0, 30, 4, (KNOWN_SPS,), (KNOWN_PPS,))


def test_baseline_avcc_has_no_extension():
    sps, pps = parameter_sets(x264_access_unit(320, 240))
    record = h264.build_avcc([sps], [pps], nal_length_size=2)
    head = bytes([1, 66, 0xC0, sps[3], 0xFD, 0xE1])
    assert record == head + len(sps).to_bytes(2, "big") + sps + b"\x01" + len(pps).to_bytes(2, "big") + pps
    assert h264.parse_avcc(record).nal_length_size == 2


@pytest.mark.parametrize("cut", range(0, len(KNOWN_AVCC) - 4))  # the last 4 bytes are the optional extension
def test_truncated_avcc_raises(cut):
    with pytest.raises(H264Error):
        h264.parse_avcc(KNOWN_AVCC[:cut])


def test_avcc_errors():
    with pytest.raises(H264Error, match="configurationVersion"):
        h264.parse_avcc(b"\x02" + KNOWN_AVCC[1:])
    with pytest.raises(H264Error, match="3-byte"):
        h264.parse_avcc(KNOWN_AVCC[:4] + b"\xfe" + KNOWN_AVCC[5:])
    with pytest.raises(H264Error, match="at least one SPS"):
        h264.build_avcc([], [KNOWN_PPS])
    with pytest.raises(H264Error, match="first SPS"):
        h264.build_avcc([KNOWN_PPS], [KNOWN_PPS])


@given(st.binary(max_size=80))
def test_avcc_fuzz_raises_only_h264error(data):
    try:
        h264.parse_avcc(data)
    except H264Error:
        pass


# --------------------------------------------------------------------------- codec strings and configs


def test_codec_strings():
    assert h264.codec_string(100, 0, 31) == "avc1.64001f"
    assert h264.codec_string(66, 0xC0, 30) == "avc1.42c01e"
    assert h264.codec_string(77, 0x40, 40) == "avc1.4d4028"


def test_video_config_from_avcc():
    cfg = h264.video_config_from_avcc(KNOWN_AVCC)
    assert (cfg.width, cfg.height, cfg.codec_string, cfg.codec) == (640, 360, "avc1.64001e", "h264")
    assert cfg.avcc == KNOWN_AVCC


def test_video_config_from_avcc_rewrites_length_size_to_4():
    record = h264.build_avcc([KNOWN_SPS], [KNOWN_PPS], nal_length_size=2)
    cfg = h264.video_config_from_avcc(record)
    assert cfg.avcc[4] == 0xFF and h264.parse_avcc(cfg.avcc).nal_length_size == 4
    assert cfg.avcc[5:] == record[5:]


@pytest.mark.parametrize(("width", "height"), [(640, 360), (1280, 720)])
def test_video_config_from_annexb_x264(width, height):
    nals = x264_access_unit(width, height, profile="main")
    sps, pps = parameter_sets(nals)
    cfg = h264.video_config_from_annexb(b"\x00\x00\x01" + sps + b"\x00\x00\x00\x01" + pps)
    assert (cfg.width, cfg.height) == (width, height)
    assert cfg.codec_string == "avc1." + sps[1:4].hex()
    assert h264.parse_avcc(cfg.avcc).sps == (sps,)


def test_video_config_from_annexb_needs_sps_and_pps():
    with pytest.raises(H264Error, match="0 PPS"):
        h264.video_config_from_annexb(h264.START_CODE + KNOWN_SPS)
    with pytest.raises(H264Error, match="no Annex B start code"):
        h264.video_config_from_annexb(KNOWN_SPS)


# --------------------------------------------------------------------------- framing


def test_annexb_avcc_real_access_unit():
    nals = x264_access_unit(640, 360)
    annexb = b"".join((b"\x00\x00\x01" if i % 2 else b"\x00\x00\x00\x01") + n for i, n in enumerate(nals))
    avcc = h264.annexb_to_avcc(annexb)
    assert h264.split_avcc(avcc) == nals
    assert h264.join_annexb(h264.split_avcc(avcc, 4)) == b"".join(h264.START_CODE + n for n in nals)


def test_split_annexb_exact():
    data = b"\x00\x00\x00\x01\x09\xf0\x00\x00\x01\x67\x00\x00\x03\x01\x00\x00\x00\x00\x01\x68\xce"
    assert h264.split_annexb(data) == [b"\x09\xf0", b"\x67\x00\x00\x03\x01", b"\x68\xce"]


def test_framing_errors():
    with pytest.raises(H264Error, match="garbage"):
        h264.split_annexb(b"\x12\x00\x00\x01\x09\xf0")
    with pytest.raises(H264Error, match="declares 9 bytes"):
        h264.split_avcc(b"\x00\x00\x00\x09\x65\x88")
    with pytest.raises(H264Error, match="inside a NAL length"):
        h264.split_avcc(b"\x00\x00\x00\x01\x65\x00\x00")
    with pytest.raises(H264Error, match="does not fit"):
        h264.annexb_to_avcc(b"\x00\x00\x01" + b"\x65" * 300, nal_length_size=1)


# A NAL unit as an encoder writes it: escaped payload, a non-zero last byte.
nal_units = st.binary(min_size=1, max_size=300).map(
    lambda b: bytes([b[0] & 0x7F or 1]) + escape_rbsp(b[1:] + b"\x80")
)


@given(
    st.lists(st.tuples(nal_units, st.booleans()), min_size=1, max_size=8),
    st.integers(0, 3),
    st.integers(0, 2),
)
def test_annexb_avcc_round_trip(nals_and_codes, leading_zeros, trailing_zeros):
    nals = [n for n, _ in nals_and_codes]
    annexb = b"\x00" * leading_zeros + b"".join(
        (b"\x00\x00\x00\x01" if four else b"\x00\x00\x01") + n for n, four in nals_and_codes
    ) + b"\x00" * trailing_zeros
    assert h264.split_annexb(annexb) == nals  # emulation prevention bytes untouched
    for size in (1, 2, 4):
        if max(map(len, nals)) < 1 << (8 * size):
            avcc = h264.annexb_to_avcc(annexb, size)
            assert h264.split_avcc(avcc, size) == nals
            assert h264.join_annexb(h264.split_avcc(avcc, size)) == b"".join(h264.START_CODE + n for n in nals)
            assert h264.normalize_nal_length_size(avcc, size) == h264.join_avcc(nals, 4)


@settings(max_examples=200)
@given(st.binary(max_size=64), st.sampled_from([1, 2, 4]))
def test_split_avcc_fuzz_raises_only_h264error(data, size):
    try:
        nals = h264.split_avcc(data, size)
    except H264Error:
        return
    assert sum(len(n) for n in nals) <= len(data)
