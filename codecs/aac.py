"""AAC helpers: AudioSpecificConfig and ADTS.

RTMP/FLV and MP4 carry raw AAC frames with the decoder parameters in an
AudioSpecificConfig ("ASC", ISO/IEC 14496-3 1.6.2.1). MPEG-TS and HLS carry
ADTS instead: every frame gets a 7-byte header that repeats the essentials
(ISO/IEC 14496-3 1.A.2). This module converts between the two.

ADTS can only express what a 2-bit profile, a 4-bit sampling-frequency index
and a 3-bit channel configuration can: AAC Main/LC/SSR/LTP at one of the 13
table rates, channel configurations 1..7. HE-AAC (SBR, and PS) is carried in
ADTS as its AAC-LC core at the core rate ("implicit signalling"), which is what
:func:`build_adts_header` writes for such configs.
"""
from __future__ import annotations

from dataclasses import dataclass

from .bits import BitReader
from .media import AudioConfig


class AacError(ValueError):
    """The AAC input (AudioSpecificConfig or ADTS bytes) is malformed or unsupported."""


# Sampling frequency index -> Hz (ISO/IEC 14496-3 table 1.18); 13, 14 reserved, 15 explicit.
SAMPLE_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)
EXPLICIT_RATE = 15

AOT_AAC_LC = 2
AOT_SBR = 5
AOT_PS = 29

# channelConfiguration -> number of output channels (14496-3 table 1.19; 11..14 from 2009 amendments).
_CHANNELS = {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 6, 7: 8, 11: 7, 12: 8, 13: 24, 14: 8}

ADTS_HEADER_SIZE = 7
ADTS_MAX_FRAME = (1 << 13) - 1  # frame_length is 13 bits and includes the header


# --------------------------------------------------------------------------- AudioSpecificConfig


@dataclass(frozen=True, slots=True)
class Asc:
    """The parsed head of an AudioSpecificConfig."""

    object_type: int  # as signalled first: 2 = AAC-LC, 5 = SBR (HE-AAC), 29 = PS (HE-AACv2), ...
    sampling_index: int  # 0..12, or 15 when the rate is explicit
    sample_rate: int  # of the core decoder, Hz
    channel_config: int
    core_object_type: int  # the AAC core under SBR/PS; equals object_type otherwise
    ext_sample_rate: int | None = None  # SBR output rate, when SBR is signalled explicitly

    @property
    def output_sample_rate(self) -> int:
        """The rate a player outputs: the SBR rate for HE-AAC, else the core rate."""
        return self.ext_sample_rate or self.sample_rate

    @property
    def channels(self) -> int:
        """Output channels; parametric stereo turns a mono core into stereo."""
        count = _CHANNELS[self.channel_config]
        return 2 if self.object_type == AOT_PS and count == 1 else count


def _object_type(bits: BitReader) -> int:
    aot = bits.u(5)
    return 32 + bits.u(6) if aot == 31 else aot


def _sampling(bits: BitReader) -> tuple[int, int]:
    index = bits.u(4)
    if index == EXPLICIT_RATE:
        rate = bits.u(24)
        if rate == 0:
            raise AacError("AudioSpecificConfig has an explicit sampling rate of 0 Hz")
        return index, rate
    if index >= len(SAMPLE_RATES):
        raise AacError(f"AudioSpecificConfig uses reserved sampling frequency index {index}")
    return index, SAMPLE_RATES[index]


def parse_asc(asc: bytes) -> Asc:
    """Parse object type, sampling rate and channel configuration of an ASC.

    Explicit (hierarchical) SBR/PS signalling is understood; the
    GASpecificConfig and anything after it are not needed and not read.
    """
    bits = BitReader(bytes(asc[:16]), AacError, "AudioSpecificConfig is truncated")  # the fields read here take at most 82 bits
    aot = _object_type(bits)
    if aot == 0:
        raise AacError("AudioSpecificConfig has audio object type 0 (null)")
    index, rate = _sampling(bits)
    channel_config = bits.u(4)
    if channel_config not in _CHANNELS:
        what = "0 (program config element)" if channel_config == 0 else str(channel_config)
        raise AacError(f"AudioSpecificConfig channel configuration {what} is not supported")
    core, ext_rate = aot, None
    if aot in (AOT_SBR, AOT_PS):
        _, ext_rate = _sampling(bits)
        core = _object_type(bits)
    return Asc(aot, index, rate, channel_config, core, ext_rate)


def build_asc(object_type: int, sample_rate: int, channel_config: int) -> bytes:
    """A plain AudioSpecificConfig (no SBR/PS extension), 2 or 5 bytes."""
    if not 1 <= object_type <= 30:
        raise AacError(f"object type {object_type} needs escape coding; only 1..30 are built")
    if channel_config not in _CHANNELS:
        raise AacError(f"channel configuration {channel_config} is not supported")
    if sample_rate in SAMPLE_RATES:
        value, nbits = (object_type << 8) | (SAMPLE_RATES.index(sample_rate) << 4) | channel_config, 13
    else:
        if not 0 < sample_rate < (1 << 24):
            raise AacError(f"sampling rate {sample_rate} Hz does not fit 24 bits")
        value = (object_type << 32) | (EXPLICIT_RATE << 28) | (sample_rate << 4) | channel_config
        nbits = 37
    # frameLengthFlag, dependsOnCoreCoder, extensionFlag = 0, then byte padding.
    nbytes = (nbits + 3 + 7) // 8
    return (value << (nbytes * 8 - nbits)).to_bytes(nbytes, "big")


def codec_string(object_type: int) -> str:
    """RFC 6381 codec parameter for MPEG-4 audio: ``mp4a.40.<object type>``."""
    return f"mp4a.40.{object_type}"


def audio_config_from_asc(asc: bytes) -> AudioConfig:
    """An :class:`AudioConfig` from an AudioSpecificConfig."""
    info = parse_asc(asc)
    return AudioConfig(
        asc=bytes(asc),
        sample_rate=info.output_sample_rate,
        channels=info.channels,
        codec_string=codec_string(info.object_type),
    )


# --------------------------------------------------------------------------- ADTS


@dataclass(frozen=True, slots=True)
class AdtsHeader:
    """The fields of one ADTS frame header."""

    object_type: int  # profile + 1
    sampling_index: int
    channel_config: int
    frame_length: int  # header + payload, bytes
    header_length: int  # 7, or 9 with CRC
    raw_data_blocks: int  # number_of_raw_data_blocks_in_frame + 1

    @property
    def sample_rate(self) -> int:
        return SAMPLE_RATES[self.sampling_index]

    @property
    def payload_length(self) -> int:
        return self.frame_length - self.header_length


def adts_fields(asc: Asc) -> tuple[int, int, int]:
    """(profile, sampling index, channel configuration) for the ADTS header of ``asc``."""
    if not 1 <= asc.core_object_type <= 4:
        raise AacError(f"audio object type {asc.core_object_type} cannot be carried in ADTS (only 1..4)")
    rate = asc.sample_rate
    if rate not in SAMPLE_RATES:
        raise AacError(f"sampling rate {rate} Hz has no ADTS sampling frequency index")
    if not 1 <= asc.channel_config <= 7:
        raise AacError(f"channel configuration {asc.channel_config} cannot be carried in ADTS")
    return asc.core_object_type - 1, SAMPLE_RATES.index(rate), asc.channel_config


def build_adts_header(asc: Asc, payload_length: int) -> bytes:
    """The 7-byte ADTS header (no CRC) for one raw AAC frame of ``payload_length`` bytes."""
    profile, index, channels = adts_fields(asc)
    length = ADTS_HEADER_SIZE + payload_length
    if payload_length < 0 or length > ADTS_MAX_FRAME:
        raise AacError(f"an AAC frame of {payload_length} bytes does not fit one ADTS frame")
    return bytes(
        [
            0xFF,
            0xF1,  # syncword low nibble, MPEG-4, layer 0, protection_absent
            (profile << 6) | (index << 2) | (channels >> 2),
            ((channels & 3) << 6) | (length >> 11),
            (length >> 3) & 0xFF,
            ((length & 7) << 5) | 0x1F,  # buffer fullness 0x7FF (VBR) ...
            0xFC,  # ... and one raw data block
        ]
    )


def parse_adts_header(data: bytes, offset: int = 0) -> AdtsHeader:
    """Parse the ADTS header at ``data[offset:]``."""
    head = bytes(data[offset : offset + ADTS_HEADER_SIZE])
    if len(head) < ADTS_HEADER_SIZE:
        raise AacError(f"ADTS header at byte {offset} is truncated ({len(head)} of 7 bytes)")
    if head[0] != 0xFF or head[1] & 0xF0 != 0xF0:
        raise AacError(f"no ADTS syncword at byte {offset}")
    if head[1] & 0x06:
        raise AacError(f"ADTS layer at byte {offset} is not 0")
    header_length = 7 if head[1] & 0x01 else 9
    index = (head[2] >> 2) & 0x0F
    if index >= len(SAMPLE_RATES):
        raise AacError(f"ADTS header at byte {offset} uses reserved sampling frequency index {index}")
    length = ((head[3] & 0x03) << 11) | (head[4] << 3) | (head[5] >> 5)
    if length < header_length:
        raise AacError(f"ADTS frame_length {length} at byte {offset} is shorter than its header")
    return AdtsHeader(
        object_type=(head[2] >> 6) + 1,
        sampling_index=index,
        channel_config=((head[2] & 0x01) << 2) | (head[3] >> 6),
        frame_length=length,
        header_length=header_length,
        raw_data_blocks=(head[6] & 0x03) + 1,
    )


def split_adts(data: bytes) -> list[tuple[AdtsHeader, bytes]]:
    """Split an ADTS stream into (header, raw AAC frame) pairs.

    Frames holding several raw data blocks are refused: their blocks cannot be
    separated without decoding, and no live encoder we ingest from writes them.
    """
    data = bytes(data)
    frames = []
    pos = 0
    while pos < len(data):
        header = parse_adts_header(data, pos)
        if header.raw_data_blocks != 1:
            raise AacError(f"ADTS frame at byte {pos} holds {header.raw_data_blocks} raw data blocks")
        end = pos + header.frame_length
        if end > len(data):
            raise AacError(
                f"ADTS frame at byte {pos} declares {header.frame_length} bytes; {len(data) - pos} remain"
            )
        frames.append((header, data[pos + header.header_length : end]))
        pos = end
    return frames


def asc_from_adts(header: AdtsHeader) -> bytes:
    """The 2-byte AudioSpecificConfig an ADTS header implies."""
    if header.channel_config == 0:
        raise AacError("ADTS channel configuration 0 (in-band program config element) is not supported")
    return build_asc(header.object_type, header.sample_rate, header.channel_config)
