"""H.264 bitstream helpers: avcC records, SPS fields, Annex B <-> AVCC.

RTMP/FLV and MP4 carry H.264 as AVCC (each NAL unit prefixed by its big-endian
length) with the parameter sets in an AVCDecoderConfigurationRecord ("avcC",
ISO/IEC 14496-15 5.3.3). RTSP, raw files and MPEG-TS carry it as Annex B (NAL
units separated by ``00 00 01`` / ``00 00 00 01`` start codes, ITU-T H.264
Annex B). The bus uses AVCC with 4-byte lengths; this module converts at the
edges of the system. Emulation-prevention bytes are never touched by the
conversions: both framings carry the escaped NAL payload as is.

The SPS parser reads just enough of the sequence parameter set (ITU-T H.264
7.3.2.1.1) to get the coded picture size after cropping, the chroma format and
bit depths (needed for the avcC high-profile extension) -- it is not a decoder.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .bits import BitReader
from .media import VideoConfig


class H264Error(ValueError):
    """The H.264 input (avcC, SPS, Annex B or AVCC bytes) is malformed."""


NAL_SLICE = 1
NAL_IDR = 5
NAL_SEI = 6
NAL_SPS = 7
NAL_PPS = 8
NAL_AUD = 9

START_CODE = b"\x00\x00\x00\x01"
_SPS_PARSE_LIMIT = 4096

# profile_idc values whose SPS carries chroma_format_idc, bit depths and
# scaling matrices (H.264 7.3.2.1.1).
_CHROMA_PROFILES = frozenset({100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135})
# profile_idc values whose avcC has *no* chroma/bit-depth extension (14496-15 5.3.3.1.2).
_NO_AVCC_EXT_PROFILES = frozenset({66, 77, 88})


def nal_type(nal: bytes) -> int:
    """nal_unit_type of one NAL unit (without start code or length prefix)."""
    if not nal:
        raise H264Error("empty NAL unit has no type")
    return nal[0] & 0x1F


# --------------------------------------------------------------------------- avcC


@dataclass(frozen=True, slots=True)
class AvcConfig:
    """The fields of an AVCDecoderConfigurationRecord that we use."""

    profile: int  # AVCProfileIndication (= SPS profile_idc)
    compat: int  # profile_compatibility (= SPS constraint_set flags byte)
    level: int  # AVCLevelIndication (= SPS level_idc)
    nal_length_size: int  # 1, 2 or 4
    sps: tuple[bytes, ...]
    pps: tuple[bytes, ...]


def parse_avcc(record: bytes) -> AvcConfig:
    """Parse an AVCDecoderConfigurationRecord.

    Trailing bytes after the PPS list (the high-profile extension, or padding
    some encoders add) are ignored.
    """
    data = bytes(record)
    if len(data) < 7:
        raise H264Error(f"avcC record is {len(data)} bytes; at least 7 are needed")
    if data[0] != 1:
        raise H264Error(f"avcC configurationVersion is {data[0]}, expected 1")
    length_size = (data[4] & 0x03) + 1
    if length_size == 3:
        raise H264Error("avcC declares a 3-byte NAL length size, which ISO 14496-15 forbids")
    sps, pos = _read_parameter_sets(data, 6, data[5] & 0x1F, "SPS")
    if pos >= len(data):
        raise H264Error("avcC record ends before the PPS count")
    pps, pos = _read_parameter_sets(data, pos + 1, data[pos], "PPS")
    return AvcConfig(data[1], data[2], data[3], length_size, tuple(sps), tuple(pps))


def _read_parameter_sets(data: bytes, pos: int, count: int, what: str) -> tuple[list[bytes], int]:
    """``count`` 16-bit-length-prefixed NAL units from ``pos``; returns them and the end."""
    sets = []
    for i in range(count):
        if pos + 2 > len(data):
            raise H264Error(f"avcC record truncated in the length of {what} #{i}")
        size = int.from_bytes(data[pos : pos + 2], "big")
        pos += 2
        if size == 0 or pos + size > len(data):
            raise H264Error(f"avcC {what} #{i} declares {size} bytes but {len(data) - pos} remain")
        sets.append(data[pos : pos + size])
        pos += size
    return sets, pos


def build_avcc(sps: Sequence[bytes], pps: Sequence[bytes], nal_length_size: int = 4) -> bytes:
    """Build an AVCDecoderConfigurationRecord from parameter-set NAL units.

    Profile, compatibility and level are copied from the first SPS. For
    profiles other than Baseline/Main/Extended the chroma-format/bit-depth
    extension is appended, as ISO 14496-15 requires, so the first SPS is parsed.
    """
    if not sps or not pps:
        raise H264Error("an avcC record needs at least one SPS and one PPS")
    if len(sps) > 31 or len(pps) > 255:
        raise H264Error(f"too many parameter sets ({len(sps)} SPS, {len(pps)} PPS)")
    if nal_length_size not in (1, 2, 4):
        raise H264Error(f"NAL length size must be 1, 2 or 4, not {nal_length_size}")
    first = bytes(sps[0])
    if len(first) < 4 or nal_type(first) != NAL_SPS:
        raise H264Error("the first SPS is not an SPS NAL unit of at least 4 bytes")
    out = bytearray([1, first[1], first[2], first[3], 0xFC | (nal_length_size - 1), 0xE0 | len(sps)])
    for i, nal in enumerate(sps):
        out += _length_prefixed(nal, f"SPS #{i}")
    out.append(len(pps))
    for i, nal in enumerate(pps):
        out += _length_prefixed(nal, f"PPS #{i}")
    if first[1] not in _NO_AVCC_EXT_PROFILES:
        info = parse_sps(first)
        out += bytes(
            [
                0xFC | info.chroma_format_idc,
                0xF8 | (info.bit_depth_luma - 8),
                0xF8 | (info.bit_depth_chroma - 8),
                0,  # numOfSequenceParameterSetExt
            ]
        )
    return bytes(out)


def _length_prefixed(nal: bytes, what: str) -> bytes:
    if not nal or len(nal) > 0xFFFF:
        raise H264Error(f"{what} is {len(nal)} bytes; avcC holds 1..65535")
    return len(nal).to_bytes(2, "big") + bytes(nal)


# --------------------------------------------------------------------------- SPS


@dataclass(frozen=True, slots=True)
class SpsInfo:
    """What the rest of the system needs from a sequence parameter set."""

    profile_idc: int
    constraint_flags: int
    level_idc: int
    sps_id: int
    chroma_format_idc: int
    bit_depth_luma: int
    bit_depth_chroma: int
    frame_mbs_only: bool
    width: int  # luma samples, after frame cropping
    height: int


def unescape_rbsp(nal: bytes) -> bytes:
    """Drop emulation-prevention bytes (the 03 of every ``00 00 03``)."""
    return bytes(nal).replace(b"\x00\x00\x03", b"\x00\x00")


def _skip_scaling_list(bits: BitReader, size: int) -> None:
    last = nxt = 8
    for _ in range(size):
        if nxt != 0:
            delta = bits.se()
            if not -128 <= delta <= 127:
                raise H264Error(f"SPS scaling list delta {delta} out of range")
            nxt = (last + delta + 256) % 256
        last = nxt if nxt != 0 else last


def _check(value: int, limit: int, name: str) -> int:
    if value > limit:
        raise H264Error(f"SPS {name} is {value}; at most {limit} is allowed")
    return value


def parse_sps(nal: bytes) -> SpsInfo:
    """Parse an SPS NAL unit (header byte included) up to the frame cropping."""
    if len(nal) < 4 or nal_type(nal) != NAL_SPS:
        raise H264Error("not an SPS NAL unit")
    # Everything up to the cropping fits in well under 2 KB even with all 12 scaling
    # lists; bounding the input keeps a hostile 64 KB "SPS" from costing big-int time.
    rbsp = unescape_rbsp(nal[1:_SPS_PARSE_LIMIT])
    bits = BitReader(rbsp, H264Error, "SPS is truncated")
    profile, constraints, level = bits.u(8), bits.u(8), bits.u(8)
    sps_id = _check(bits.ue(), 31, "seq_parameter_set_id")
    chroma, separate_planes, depth_luma, depth_chroma = 1, False, 8, 8
    if profile in _CHROMA_PROFILES:
        chroma = _check(bits.ue(), 3, "chroma_format_idc")
        if chroma == 3:
            separate_planes = bool(bits.u(1))
        depth_luma = 8 + _check(bits.ue(), 6, "bit_depth_luma_minus8")
        depth_chroma = 8 + _check(bits.ue(), 6, "bit_depth_chroma_minus8")
        bits.u(1)  # qpprime_y_zero_transform_bypass_flag
        if bits.u(1):  # seq_scaling_matrix_present_flag
            for i in range(8 if chroma != 3 else 12):
                if bits.u(1):
                    _skip_scaling_list(bits, 16 if i < 6 else 64)
    _check(bits.ue(), 12, "log2_max_frame_num_minus4")
    poc_type = _check(bits.ue(), 2, "pic_order_cnt_type")
    if poc_type == 0:
        _check(bits.ue(), 12, "log2_max_pic_order_cnt_lsb_minus4")
    elif poc_type == 1:
        bits.u(1)  # delta_pic_order_always_zero_flag
        bits.se()  # offset_for_non_ref_pic
        bits.se()  # offset_for_top_to_bottom_field
        for _ in range(_check(bits.ue(), 255, "num_ref_frames_in_pic_order_cnt_cycle")):
            bits.se()
    bits.ue()  # max_num_ref_frames
    bits.u(1)  # gaps_in_frame_num_value_allowed_flag
    width_mbs = _check(bits.ue(), 1023, "pic_width_in_mbs_minus1") + 1
    height_units = _check(bits.ue(), 1023, "pic_height_in_map_units_minus1") + 1
    frame_mbs_only = bool(bits.u(1))
    if not frame_mbs_only:
        bits.u(1)  # mb_adaptive_frame_field_flag
    bits.u(1)  # direct_8x8_inference_flag
    crop = (0, 0, 0, 0)
    if bits.u(1):  # frame_cropping_flag
        crop = (bits.ue(), bits.ue(), bits.ue(), bits.ue())
    # Crop units (H.264 7.4.2.1.1): chroma subsampling, doubled vertically for fields.
    field_factor = 1 if frame_mbs_only else 2
    if separate_planes or chroma == 0:
        unit_x, unit_y = 1, field_factor
    else:
        unit_x = 1 if chroma == 3 else 2
        unit_y = (2 if chroma == 1 else 1) * field_factor
    width = width_mbs * 16 - unit_x * (crop[0] + crop[1])
    height = height_units * 16 * field_factor - unit_y * (crop[2] + crop[3])
    if width <= 0 or height <= 0:
        raise H264Error(f"SPS frame cropping leaves a {width}x{height} picture")
    return SpsInfo(
        profile, constraints, level, sps_id, chroma, depth_luma, depth_chroma, frame_mbs_only, width, height
    )


def codec_string(profile: int, compat: int, level: int) -> str:
    """RFC 6381 codec parameter for H.264: ``avc1.PPCCLL`` in hex."""
    return f"avc1.{profile:02x}{compat:02x}{level:02x}"


# --------------------------------------------------------------------------- framing


def split_annexb(data: bytes) -> list[bytes]:
    """NAL units of an Annex B byte stream (3- or 4-byte start codes).

    Trailing zero bytes before a start code belong to the start code
    (trailing_zero_8bits / zero_byte) -- a NAL unit never ends in 0x00 -- so
    they are stripped. Empty NAL units are dropped.
    """
    data = bytes(data)
    start = data.find(b"\x00\x00\x01")
    if start < 0:
        raise H264Error("no Annex B start code found")
    if data[:start].strip(b"\x00"):
        raise H264Error(f"{start} bytes of garbage before the first Annex B start code")
    nals = []
    pos = start + 3
    while True:
        nxt = data.find(b"\x00\x00\x01", pos)
        nal = data[pos : len(data) if nxt < 0 else nxt].rstrip(b"\x00")
        if nal:
            nals.append(nal)
        if nxt < 0:
            return nals
        pos = nxt + 3


def split_avcc(data: bytes, nal_length_size: int = 4) -> list[bytes]:
    """NAL units of a length-prefixed (AVCC) access unit; empty NALs are dropped."""
    if nal_length_size not in (1, 2, 4):
        raise H264Error(f"NAL length size must be 1, 2 or 4, not {nal_length_size}")
    data = bytes(data)
    nals = []
    pos, end = 0, len(data)
    while pos < end:
        if pos + nal_length_size > end:
            raise H264Error(f"AVCC data ends inside a NAL length field at byte {pos}")
        size = int.from_bytes(data[pos : pos + nal_length_size], "big")
        pos += nal_length_size
        if size > end - pos:
            raise H264Error(f"AVCC NAL unit at byte {pos} declares {size} bytes but {end - pos} remain")
        if size:
            nals.append(data[pos : pos + size])
        pos += size
    return nals


def join_avcc(nals: Sequence[bytes], nal_length_size: int = 4) -> bytes:
    """Length-prefix NAL units (AVCC framing)."""
    limit = 1 << (8 * nal_length_size)
    out = bytearray()
    for nal in nals:
        if len(nal) >= limit:
            raise H264Error(f"NAL unit of {len(nal)} bytes does not fit a {nal_length_size}-byte length")
        out += len(nal).to_bytes(nal_length_size, "big")
        out += nal
    return bytes(out)


def join_annexb(nals: Sequence[bytes]) -> bytes:
    """NAL units with 4-byte start codes (Annex B framing)."""
    return b"".join(START_CODE + bytes(nal) for nal in nals)


def annexb_to_avcc(data: bytes, nal_length_size: int = 4) -> bytes:
    """Annex B byte stream -> AVCC access unit."""
    return join_avcc(split_annexb(data), nal_length_size)


def normalize_nal_length_size(data: bytes, nal_length_size: int) -> bytes:
    """Re-frame an AVCC access unit written with 1/2/4-byte lengths to 4-byte lengths.

    The bus always carries 4-byte lengths (see :mod:`mesh_codecs.media`), so
    ingest calls this when a publisher's avcC declares a shorter size.
    """
    if nal_length_size == 4:
        return bytes(data)
    return join_avcc(split_avcc(data, nal_length_size), 4)


# --------------------------------------------------------------------------- configs


def video_config_from_avcc(avcc: bytes) -> VideoConfig:
    """A :class:`VideoConfig` from an avcC record.

    The stored record always declares 4-byte NAL lengths (the bus framing); a
    record with another size is rewritten, and the caller must re-frame the
    access units with :func:`normalize_nal_length_size`.
    """
    cfg = parse_avcc(avcc)
    if not cfg.sps or not cfg.pps:
        raise H264Error(f"avcC record has {len(cfg.sps)} SPS and {len(cfg.pps)} PPS; one of each is needed")
    info = parse_sps(cfg.sps[0])
    record = bytearray(avcc)
    record[4] = 0xFF  # reserved '111111' + lengthSizeMinusOne = 3
    return VideoConfig(
        avcc=bytes(record),
        width=info.width,
        height=info.height,
        codec_string=codec_string(cfg.profile, cfg.compat, cfg.level),
    )


def video_config_from_annexb(sps_pps_bytes: bytes) -> VideoConfig:
    """A :class:`VideoConfig` from Annex B extradata holding SPS and PPS (pull sources)."""
    nals = split_annexb(sps_pps_bytes)
    sps = [n for n in nals if nal_type(n) == NAL_SPS]
    pps = [n for n in nals if nal_type(n) == NAL_PPS]
    if not sps or not pps:
        raise H264Error(f"Annex B extradata has {len(sps)} SPS and {len(pps)} PPS; one of each is needed")
    return video_config_from_avcc(build_avcc(sps, pps))
