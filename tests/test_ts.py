"""MPEG-TS packetiser: structure, independent demuxers (PyAV/FFmpeg, ffprobe, a reference reader here)."""
from __future__ import annotations

import fractions
import io
import json
import random
import shutil
import subprocess
import threading
from dataclasses import dataclass, field

import av
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mesh_bench._media import cut_segments, demux_access_units, encode_test_mp4
from mesh_codecs import h264, ts
from mesh_codecs.aac import audio_config_from_asc, build_adts_header, parse_asc
from mesh_codecs.h264 import video_config_from_avcc
from mesh_codecs.media import AUDIO, VIDEO, AccessUnit, AudioConfig, VideoConfig
from mesh_codecs.ts import TsError, TsPacketiser

MASK33 = (1 << 33) - 1
AUD_NAL = b"\x09\xf0"

# --------------------------------------------------------------------------- media made at test time


@dataclass
class Media:
    video: VideoConfig
    audio: AudioConfig
    aus: list[AccessUnit]
    segments: list[list[AccessUnit]]


def encode_media(seconds: int = 6, width: int = 640, height: int = 360, fps: int = 30) -> Media:
    """libx264 (B-frames, 2 s closed GOP) + AAC in an MP4, demuxed into bus access units."""
    mp4 = encode_test_mp4(seconds, width, height, fps, 1_000_000)
    with av.open(io.BytesIO(mp4)) as inp:
        video = video_config_from_avcc(inp.streams.video[0].codec_context.extradata)
        audio = audio_config_from_asc(inp.streams.audio[0].codec_context.extradata)
        units = demux_access_units(inp)
    return Media(video, audio, units, cut_segments(units))


@pytest.fixture(scope="module")
def media() -> Media:
    m = encode_media()
    assert len(m.segments) == 3 and all(seg[0].key for seg in m.segments)
    assert any(au.pts != au.dts for au in m.aus)  # B-frames: DTS is written
    return m


# --------------------------------------------------------------------------- a reference reader


@dataclass
class TsPacket:
    pid: int
    pusi: bool
    cc: int
    discontinuity: bool
    random_access: bool
    pcr: int | None
    payload: bytes


@dataclass
class Pes:
    pid: int
    stream_id: int
    pts: int
    dts: int
    has_dts: bool
    packet_length: int
    random_access: bool
    discontinuity: bool
    pcr: int | None
    payload: bytes
    packets: list[TsPacket] = field(default_factory=list)


def read_packets(data: bytes) -> list[TsPacket]:
    assert len(data) % 188 == 0
    packets = []
    for i in range(0, len(data), 188):
        p = data[i : i + 188]
        assert p[0] == 0x47, f"packet {i // 188} lost sync"
        assert p[1] & 0x80 == 0 and p[3] & 0xC0 == 0  # no transport error, not scrambled
        afc = (p[3] >> 4) & 3
        assert afc in (1, 3), "every packet we write carries payload"
        pos, di, rai, pcr = 4, False, False, None
        if afc == 3:
            af_len = p[4]
            pos = 5 + af_len
            assert pos < 188
            if af_len:
                flags = p[5]
                assert flags & 0x2F == 0  # no OPCR, splicing, private data, extension
                di, rai = bool(flags & 0x80), bool(flags & 0x40)
                q = 6
                if flags & 0x10:
                    b = p[6:12]
                    assert b[4] & 0x7E == 0x7E  # reserved bits
                    base = (b[0] << 25) | (b[1] << 17) | (b[2] << 9) | (b[3] << 1) | (b[4] >> 7)
                    pcr = base * 300 + (((b[4] & 1) << 8) | b[5])
                    q = 12
                assert set(p[q:pos]) <= {0xFF}, "adaptation-field stuffing must be 0xFF"
        pid = (p[1] & 0x1F) << 8 | p[2]
        packets.append(TsPacket(pid, bool(p[1] & 0x40), p[3] & 0x0F, di, rai, pcr, p[pos:]))
    return packets


def read_timestamp(b: bytes, prefix: int) -> int:
    assert b[0] >> 4 == prefix and b[0] & 1 and b[2] & 1 and b[4] & 1  # marker bits
    return ((b[0] >> 1) & 7) << 30 | b[1] << 22 | (b[2] >> 1) << 15 | b[3] << 7 | b[4] >> 1


def read_segment(data: bytes) -> tuple[list[TsPacket], list[Pes]]:
    """Check continuity and PSI, reassemble PES per PID; returns packets and PES in stream order."""
    packets = read_packets(data)
    assert [p.pid for p in packets[:2]] == [0, ts.PMT_PID], "PAT and PMT come first"
    for p in packets[:2]:
        assert p.pusi and p.payload[0] == 0  # pointer_field
        section_len = ((p.payload[2] & 0x0F) << 8 | p.payload[3]) + 3
        assert ts.crc32_mpeg2(p.payload[1 : 1 + section_len]) == 0  # CRC residue of a valid section
    last_cc: dict[int, int] = {}
    pes_list: list[Pes] = []
    open_pes: dict[int, Pes] = {}
    for p in packets:
        if p.pid in last_cc:
            assert p.cc == (last_cc[p.pid] + 1) % 16, f"CC jump on PID {p.pid:#x}"
            assert not p.discontinuity
        else:
            assert p.cc == 0 and p.discontinuity, f"PID {p.pid:#x} must start at CC 0, discontinuity set"
        last_cc[p.pid] = p.cc
        if p.pid in (0, ts.PMT_PID):
            continue
        if p.pusi:
            pes = Pes(p.pid, 0, 0, 0, False, 0, p.random_access, p.discontinuity, p.pcr, p.payload, [p])
            pes_list.append(pes)
            open_pes[p.pid] = pes
        else:
            assert p.pid in open_pes and p.pcr is None and not p.random_access
            open_pes[p.pid].payload += p.payload
            open_pes[p.pid].packets.append(p)
    for pes in pes_list:
        d = pes.payload
        assert d[:3] == b"\x00\x00\x01" and d[6] & 0xC0 == 0x80
        pes.stream_id, pes.packet_length = d[3], int.from_bytes(d[4:6], "big")
        flags, header_len = d[7] >> 6, d[8]
        assert flags in (2, 3) and header_len == (5 if flags == 2 else 10)
        pes.pts = read_timestamp(d[9:14], flags)
        pes.has_dts = flags == 3
        pes.dts = read_timestamp(d[14:19], 1) if pes.has_dts else pes.pts
        assert pes.dts != pes.pts or not pes.has_dts
        if pes.packet_length:
            assert pes.packet_length == len(d) - 6
        pes.payload = d[9 + header_len :]
    return packets, pes_list


def expected_es(au: AccessUnit, video: VideoConfig | None, audio: AudioConfig | None) -> bytes:
    """What the packetiser must put in the PES of ``au``, built independently of the kernels."""
    if au.track == AUDIO:
        return build_adts_header(parse_asc(audio.asc), len(au.data)) + au.data
    cfg = h264.parse_avcc(video.avcc)
    nals = h264.split_avcc(au.data)
    types = {h264.nal_type(n) for n in nals}
    psets = list(cfg.sps + cfg.pps) if (au.key or h264.NAL_IDR in types) and h264.NAL_SPS not in types else []
    if nals and h264.nal_type(nals[0]) == h264.NAL_AUD:
        nals = [nals[0], *psets, *nals[1:]]
    else:
        nals = [AUD_NAL, *psets, *nals]
    return h264.join_annexb(nals)


def check_segment(
    data: bytes, aus: list[AccessUnit], video: VideoConfig | None, audio: AudioConfig | None
) -> None:
    """Everything the reference reader can check about one segment of ``aus``."""
    packets, pes_list = read_segment(data)
    assert len(pes_list) == len(aus)
    pcr_pid = ts.VIDEO_PID if video else ts.AUDIO_PID
    for au, pes in zip(aus, pes_list):
        is_video = au.track == VIDEO
        assert pes.pid == (ts.VIDEO_PID if is_video else ts.AUDIO_PID)
        assert pes.stream_id == (0xE0 if is_video else 0xC0)
        assert (pes.packet_length == 0) == is_video
        assert (pes.pts, pes.dts) == (au.pts & MASK33, au.dts & MASK33)
        assert pes.random_access == au.key
        assert pes.payload == expected_es(au, video, audio)
        if pes.pid == pcr_pid:
            assert pes.pcr == max(pes.dts - ts.PCR_DELAY_90K, 0) * 300 and pes.pcr <= pes.dts * 300
        else:
            assert pes.pcr is None
    assert all(p.pcr is None for p in packets if p.pid != pcr_pid)


# --------------------------------------------------------------------------- PSI


def test_crc32_mpeg2_check_value():
    assert ts.crc32_mpeg2(b"123456789") == 0x0376E6E7
    assert ts.crc32_mpeg2(b"") == 0xFFFFFFFF


def test_pat_and_pmt_exact():
    # The PAT every FFmpeg-muxed TS starts with (transport stream 1, program 1 at PID 0x1000).
    assert ts.pat_section().hex() == "00b00d0001c100000001f0002ab104b2"
    assert ts.pmt_section(True, True).hex() == "02b0170001c10000e100f0001be100f0000fe101f0002f44b99b"
    assert ts.pmt_section(False, True).hex()[16:22] == "e101f0"  # PCR on the audio PID
    assert ts.pmt_section(False, False).hex()[16:22] == "fffff0"  # no PCR PID


def test_psi_identical_to_ffmpeg():
    buf = io.BytesIO()
    with av.open(buf, "w", format="mpegts") as out:
        streams = [out.add_mux_stream("h264", rate=30), out.add_mux_stream("aac", rate=48000)]
        payloads = (h264.START_CODE + AUD_NAL, bytes.fromhex("fff15080021ffc") + bytes(9))
        for stream, payload in zip(streams, payloads):
            pkt = av.Packet(payload)
            pkt.stream, pkt.time_base, pkt.pts, pkt.dts = stream, fractions.Fraction(1, 90000), 0, 0
            out.mux(pkt)
    data = buf.getvalue()
    sections = {}
    for i in range(0, len(data), 188):
        p = data[i : i + 188]
        pid = (p[1] & 0x1F) << 8 | p[2]
        if pid in (0, ts.PMT_PID) and p[1] & 0x40 and p[3] & 0x30 == 0x10:
            length = ((p[6] & 0x0F) << 8 | p[7]) + 3  # p[4] is the pointer field
            sections[pid] = p[5 : 5 + length]
    assert sections == {0: ts.pat_section(), ts.PMT_PID: ts.pmt_section(True, True)}


# --------------------------------------------------------------------------- real media, independent demuxers


def test_segments_demux_with_pyav(media):
    packetiser = TsPacketiser(media.video, media.audio)
    for seg in media.segments:
        data = packetiser.segment(seg)
        check_segment(data, seg, media.video, media.audio)
        with av.open(io.BytesIO(data), format="mpegts") as c:
            got: dict[str, list] = {"video": [], "audio": []}
            for pkt in c.demux():
                if pkt.size:
                    assert pkt.time_base == fractions.Fraction(1, 90000)
                    got[pkt.stream.type].append((pkt.pts, pkt.dts, pkt.is_keyframe))
        for track, name in ((VIDEO, "video"), (AUDIO, "audio")):
            assert got[name] == [(au.pts, au.dts, au.key) for au in seg if au.track == track]
        with av.open(io.BytesIO(data), format="mpegts") as c:
            frames = [f for f in c.decode(video=0)]
        assert len(frames) == sum(au.track == VIDEO for au in seg)
        assert {(f.width, f.height) for f in frames} == {(640, 360)}
        assert not any(f.is_corrupt for f in frames)


@pytest.mark.skipif(shutil.which("ffprobe") is None, reason="needs Debian ffmpeg")
def test_ffprobe_reports_h264_and_aac(media, tmp_path):
    path = tmp_path / "000000001.ts"
    path.write_bytes(TsPacketiser(media.video, media.audio).segment(media.segments[1]))
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_streams", "-show_format", "-of", "json", str(path)],
        check=True, capture_output=True, text=True, timeout=60,
    )
    info = json.loads(out.stdout)
    assert info["format"]["format_name"] == "mpegts"
    streams = {s["codec_type"]: s for s in info["streams"]}
    assert streams["video"]["codec_name"] == "h264"
    assert (streams["video"]["width"], streams["video"]["height"]) == (640, 360)
    assert streams["audio"]["codec_name"] == "aac"
    assert (int(streams["audio"]["sample_rate"]), streams["audio"]["channels"]) == (48000, 2)
    assert [int(s["id"], 16) for s in (streams["video"], streams["audio"])] == [ts.VIDEO_PID, ts.AUDIO_PID]


def continuity_errors(data: bytes, tmp_path) -> list[str]:
    path = tmp_path / "joined.ts"
    path.write_bytes(data)
    out = subprocess.run(["ffmpeg", "-v", "debug", "-i", str(path), "-c", "copy", "-f", "null", "-"],
                         capture_output=True, text=True, timeout=60)
    return [line for line in out.stderr.splitlines() if "Continuity check failed" in line]


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs Debian ffmpeg")
def test_consecutive_segments_play_without_continuity_errors(media, tmp_path):
    packetiser = TsPacketiser(media.video, media.audio)
    joined = b"".join(packetiser.segment(seg) for seg in media.segments)
    assert continuity_errors(joined, tmp_path) == []
    # The check can fail: without the discontinuity indicators FFmpeg reports the CC restarts.
    stripped = bytearray(joined)
    for i in range(0, len(stripped), 188):
        if stripped[i + 3] & 0x20 and stripped[i + 4]:
            stripped[i + 5] &= 0x7F
    assert continuity_errors(bytes(stripped), tmp_path)


def test_edges_produce_identical_segments(media):
    """Segment bytes depend only on their own access units, not on what an edge saw before."""
    early, late = TsPacketiser(media.video, media.audio), TsPacketiser(media.video, media.audio)
    from_start = [early.segment(seg) for seg in media.segments]
    joined_late = [late.segment(seg) for seg in reversed(media.segments[1:])][::-1]
    assert from_start[1:] == joined_late


def test_segment_is_thread_safe(media):
    packetiser = TsPacketiser(media.video, media.audio)
    expected = [packetiser.segment(seg) for seg in media.segments]
    results: dict[int, list[bytes]] = {}

    def work(k: int) -> None:
        results[k] = [packetiser.segment(seg) for _ in range(5) for seg in media.segments]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert all(r == expected * 5 for r in results.values()) and len(results) == 3


# --------------------------------------------------------------------------- exact cases


SPS = bytes.fromhex("6764001eacd940a02ff9610000030001000003003c0f162d96")
PPS = bytes.fromhex("68efbcb0")
VIDEO_CFG = video_config_from_avcc(h264.build_avcc([SPS], [PPS]))
AUDIO_CFG = audio_config_from_asc(b"\x11\x90")


def avcc(*nals: bytes) -> bytes:
    return h264.join_avcc(nals)


def test_empty_segment_is_pat_and_pmt():
    data = TsPacketiser(VIDEO_CFG, AUDIO_CFG).segment([])
    assert len(data) == 376
    packets, pes = read_segment(data)
    assert pes == [] and [p.pid for p in packets] == [0, ts.PMT_PID]
    bare, _ = read_segment(TsPacketiser(None, None).segment([]))
    assert bare[1].payload[1:].startswith(ts.pmt_section(False, False))


def test_single_small_keyframe_layout():
    """One IDR of 10 bytes: one TS packet, PCR + RAI + discontinuity, SPS/PPS after the AUD."""
    au = AccessUnit(VIDEO, 3000, 0, True, avcc(b"\x65" + bytes(9)))
    data = TsPacketiser(VIDEO_CFG, None).segment([au])
    assert len(data) == 3 * 188
    pkt = data[376:]
    assert pkt[:4] == bytes([0x47, 0x41, 0x00, 0x30])  # PUSI, PID 0x100, AF + payload, CC 0
    assert pkt[5] == 0x80 | 0x40 | 0x10
    es = h264.join_annexb([AUD_NAL, SPS, PPS, b"\x65" + bytes(9)])
    pes = bytes.fromhex("000001e0000084c00a") + bytes.fromhex("3100011771") + bytes.fromhex("1100010001") + es
    assert pkt.endswith(pes)
    assert set(pkt[12 : 188 - len(pes)]) == {0xFF}
    check_segment(data, [au], VIDEO_CFG, None)


def test_existing_aud_and_sps_are_not_duplicated():
    aud_first = AccessUnit(VIDEO, 0, 0, True, avcc(AUD_NAL, b"\x06\x05", b"\x65\x88"))
    with_sps = AccessUnit(VIDEO, 3000, 3000, True, avcc(SPS, PPS, b"\x65\x88"))
    non_key = AccessUnit(VIDEO, 6000, 6000, False, avcc(b"\x41\x9a"))
    idr_unflagged = AccessUnit(VIDEO, 9000, 9000, False, avcc(b"\x65\x88"))
    aus = [aud_first, with_sps, non_key, idr_unflagged]
    data = TsPacketiser(VIDEO_CFG, None).segment(aus)
    _, pes = read_segment(data)
    sc = h264.START_CODE
    assert pes[0].payload == sc + AUD_NAL + sc + SPS + sc + PPS + sc + b"\x06\x05" + sc + b"\x65\x88"
    assert pes[1].payload == sc + AUD_NAL + sc + SPS + sc + PPS + sc + b"\x65\x88"
    assert pes[2].payload == sc + AUD_NAL + sc + b"\x41\x9a"
    assert pes[3].payload == sc + AUD_NAL + sc + SPS + sc + PPS + sc + b"\x65\x88"
    check_segment(data, aus, VIDEO_CFG, None)


def test_audio_only_uses_audio_pid_for_pcr():
    aus = [AccessUnit(AUDIO, 1920 * i, 1920 * i, True, bytes([0x21, i]) * 150) for i in range(4)]
    data = TsPacketiser(None, AUDIO_CFG).segment(aus)
    _, pes = read_segment(data)
    assert [p.pcr for p in pes] == [0, 0, 0, max(0, 5760 - ts.PCR_DELAY_90K) * 300]
    check_segment(data, aus, None, AUDIO_CFG)


def test_timestamps_wrap_at_33_bits():
    aus = [AccessUnit(VIDEO, (1 << 33) + 5, (1 << 33) - 3000, True, avcc(b"\x65\x00"))]
    _, pes = read_segment(TsPacketiser(VIDEO_CFG, None).segment(aus))
    assert (pes[0].pts, pes[0].dts) == (5, (1 << 33) - 3000)


@pytest.mark.parametrize(
    ("aus", "message"),
    [
        (
            [
                AccessUnit(VIDEO, 0, 0, True, avcc(b"\x65\x88")),
                AccessUnit(VIDEO, 0, 0, False, b"\x00\x00\x00\x09\x41"),  # declares 9, holds 1
            ],
            "#1 is not AVCC",
        ),
        ([AccessUnit(VIDEO, 0, 0, True, avcc(b"\x65\x88") + b"\x00\x00")], "#0 is not AVCC"),
        ([AccessUnit(AUDIO, 0, 0, True, bytes(8185))], "#0 is larger than one ADTS frame"),
        ([AccessUnit(AUDIO, 0, 0, True, b""), AccessUnit(7, 0, 0, True, b"")], "#1 belongs to a track"),
        ([AccessUnit(VIDEO, 1 << 64, 0, True, b"")], "out of range"),
    ],
)
def test_bad_access_units_raise(aus, message):
    with pytest.raises(TsError, match=message):
        TsPacketiser(VIDEO_CFG, AUDIO_CFG).segment(aus)


def test_unconfigured_track_raises():
    with pytest.raises(TsError, match="#0 belongs to a track"):
        TsPacketiser(None, AUDIO_CFG).segment([AccessUnit(VIDEO, 0, 0, True, b"")])


def test_bad_configs_raise():
    with pytest.raises(TsError, match="video config"):
        TsPacketiser(VideoConfig(b"\x01\x64", 1, 1, "avc1.640000"), None)
    with pytest.raises(TsError, match="audio config"):
        TsPacketiser(None, AudioConfig(bytes.fromhex("f94640"), 48000, 2, "mp4a.40.42"))


def test_warm_up_runs():
    ts.warm_up()


# --------------------------------------------------------------------------- properties


@st.composite
def access_units(draw) -> tuple[VideoConfig | None, AudioConfig | None, list[AccessUnit]]:
    with_video, with_audio = draw(st.sampled_from([(True, True), (True, False), (False, True)]))
    tracks = [t for t, on in ((VIDEO, with_video), (AUDIO, with_audio)) if on]
    n = draw(st.integers(0, 10))
    dts = draw(st.one_of(st.integers(0, 1 << 34), st.integers((1 << 33) - 20_000, (1 << 33) + 20_000)))
    rng = random.Random(draw(st.integers(0, 2**32)))
    aus = []
    for _ in range(n):
        track = draw(st.sampled_from(tracks))
        dts += draw(st.integers(0, 6000))
        pts = dts + (draw(st.sampled_from([0, 0, 3000, 9000])) if track == VIDEO else 0)
        key = draw(st.booleans())
        if track == VIDEO:
            nals = []
            for _ in range(draw(st.integers(0, 4))):
                size = draw(st.one_of(st.integers(0, 400), st.integers(0, 200_000)))
                kind = draw(st.sampled_from([1, 5, 6, 7, 8, 9]))
                nals.append(bytes([0x60 | kind]) + rng.randbytes(size - 1) if size else b"")
            data = b"".join(len(nal).to_bytes(4, "big") + nal for nal in nals)
        else:
            size = draw(st.one_of(st.integers(0, 800), st.integers(0, 8184)))
            data = rng.randbytes(size)
        aus.append(AccessUnit(track, pts, dts, key, data))
    return (VIDEO_CFG if with_video else None), (AUDIO_CFG if with_audio else None), aus


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(access_units())
@example((VIDEO_CFG, AUDIO_CFG, []))
@example((VIDEO_CFG, None, [AccessUnit(VIDEO, 0, 0, True, b"")]))
def test_packetiser_properties(case):
    video, audio, aus = case
    packetiser = TsPacketiser(video, audio)
    data = packetiser.segment(aus)
    check_segment(data, aus, video, audio)
    assert packetiser.segment(aus) == data
    assert TsPacketiser(video, audio).segment(list(aus)) == data
