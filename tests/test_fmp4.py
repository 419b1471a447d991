"""fMP4 packetiser: box structure (a reference box walker here), ffprobe/ffmpeg/PyAV decoding,
determinism, segments = parts, odd cases, errors, properties."""
from __future__ import annotations

import io
import itertools
import json
import random
import shutil
import struct
import subprocess
import threading
from dataclasses import dataclass, field

import av
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from mesh_bench._media import cut_segments, demux_access_units, encode_test_mp4
from mesh_bench.fmp4 import cut_parts
from mesh_codecs import fmp4, h264
from mesh_codecs.aac import audio_config_from_asc, build_asc
from mesh_codecs.fmp4 import Fmp4Error, Fmp4Packetiser
from mesh_codecs.h264 import video_config_from_avcc
from mesh_codecs.media import AUDIO, VIDEO, AccessUnit, AudioConfig, VideoConfig

needs_ffmpeg = pytest.mark.skipif(shutil.which("ffprobe") is None, reason="needs Debian ffmpeg")

# --------------------------------------------------------------------------- a reference box walker

# Where a box's children start inside its body (None: a leaf). stsd/dref: version+flags and an
# entry count; avc1: SampleEntry + VisualSampleEntry fields; mp4a: SampleEntry + AudioSampleEntry.
CHILDREN_AT = {b"moov": 0, b"trak": 0, b"mdia": 0, b"minf": 0, b"stbl": 0, b"mvex": 0, b"moof": 0,
               b"traf": 0, b"dinf": 0, b"stsd": 8, b"dref": 8, b"avc1": 78, b"mp4a": 28}


@dataclass
class Box:
    kind: bytes
    start: int  # offset of the box header in the buffer walked
    body: bytes
    children: list[Box] = field(default_factory=list)

    def find(self, path: str) -> Box:
        return find(self.children, path)

    def all(self, kind: str) -> list[Box]:
        return [c for c in self.children if c.kind == kind.encode()]

    def full(self) -> tuple[int, int, bytes]:
        """(version, flags, rest) of a full box."""
        head = int.from_bytes(self.body[:4], "big")
        return head >> 24, head & 0xFFFFFF, self.body[4:]


def walk(data: bytes, start: int = 0, end: int | None = None) -> list[Box]:
    end = len(data) if end is None else end
    boxes, pos = [], start
    while pos < end:
        assert pos + 8 <= end, f"box header at {pos} runs past {end}"
        size, kind = struct.unpack_from(">I4s", data, pos)
        assert 8 <= size <= end - pos, f"{kind!r} at {pos} declares {size} bytes; {end - pos} remain"
        b = Box(kind, pos, data[pos + 8 : pos + size])
        skip = CHILDREN_AT.get(kind)
        if skip is not None:
            b.children = walk(data, pos + 8 + skip, pos + size)
        boxes.append(b)
        pos += size
    return boxes


def find(boxes: list[Box], path: str) -> Box:
    head, _, rest = path.partition("/")
    matches = [b for b in boxes if b.kind == head.encode()]
    assert len(matches) == 1, f"expected one {head!r}, found {len(matches)}"
    return matches[0].find(rest) if rest else matches[0]


def descriptors(data: bytes) -> dict[int, bytes]:
    """Flatten nested MPEG-4 descriptors (ES 3 > DecoderConfig 4 > DecSpecificInfo 5, SL 6)."""
    out, pos = {}, 0
    while pos < len(data):
        tag, size, pos = data[pos], 0, pos + 1
        while True:
            size, more, pos = (size << 7) | (data[pos] & 0x7F), data[pos] & 0x80, pos + 1
            if not more:
                break
        body = data[pos : pos + size]
        out[tag] = body
        if tag == 3:
            out.update(descriptors(body[3:]))
        elif tag == 4:
            out.update(descriptors(body[13:]))
        pos += size
    return out


@dataclass
class Sample:
    track_id: int
    dts: int  # in the track's timescale
    duration: int
    flags: int
    cto: int
    data: bytes


def read_fragment(data: bytes) -> tuple[int, list[Sample]]:
    """Check one moof + mdat and return its sequence number and samples (track by track)."""
    top = walk(data)
    assert [b.kind for b in top] == [b"moof", b"mdat"]
    moof, mdat = top
    assert [c.kind for c in moof.children[:1]] == [b"mfhd"]
    version, flags, rest = moof.children[0].full()
    assert (version, flags) == (0, 0)
    (sequence,) = struct.unpack(">I", rest)
    samples, covered = [], []
    for traf in moof.children[1:]:
        assert traf.kind == b"traf" and [c.kind for c in traf.children] == [b"tfhd", b"tfdt", b"trun"]
        _, tf, rest = traf.children[0].full()
        assert tf & 0x020000 and not tf & 0x01, "default-base-is-moof, no base data offset"
        track_id, rest = struct.unpack(">I", rest[:4])[0], rest[4:]
        defaults = {}
        for bit, name in ((0x02, "index"), (0x08, "duration"), (0x10, "size"), (0x20, "flags")):
            if tf & bit:
                defaults[name], rest = struct.unpack(">I", rest[:4])[0], rest[4:]
        assert rest == b""
        v, _, rest = traf.children[1].full()
        (dts,) = struct.unpack(">Q" if v == 1 else ">I", rest)
        v, rf, rest = traf.children[2].full()
        count, rest = struct.unpack(">I", rest[:4])[0], rest[4:]
        assert rf & 0x01
        offset, rest = struct.unpack(">i", rest[:4])[0], rest[4:]
        assert not rf & 0x04
        pos = moof.start + offset
        for _ in range(count):
            row = {}
            for bit, name, fmt in ((0x100, "duration", ">I"), (0x200, "size", ">I"), (0x400, "flags", ">I"),
                                   (0x800, "cto", ">i" if v == 1 else ">I")):
                if rf & bit:
                    row[name], rest = struct.unpack(fmt, rest[:4])[0], rest[4:]
            size = row.get("size", defaults.get("size"))
            assert mdat.start + 8 <= pos and pos + size <= mdat.start + 8 + len(mdat.body)
            covered.append((pos, size))
            samples.append(Sample(track_id, dts, row.get("duration", defaults.get("duration")),
                                  row.get("flags", defaults.get("flags")), row.get("cto", 0),
                                  data[pos : pos + size]))
            dts += samples[-1].duration
            pos += size
        assert rest == b""
    # The samples tile the mdat exactly: no gap, no overlap, nothing after.
    at = mdat.start + 8
    for pos, size in covered:
        assert pos == at
        at += size
    assert at == len(data)
    return sequence, samples


def audio_ticks(dts_90k: int, rate: int) -> int:
    return (dts_90k * rate + 45_000) // 90_000


def check_fragment(data: bytes, aus: list[AccessUnit], packetiser: Fmp4Packetiser, sequence: int,
                   next_dts: int | None) -> None:
    """Everything the reference reader can check about the fragment of ``aus``."""
    got_sequence, samples = read_fragment(data)
    assert got_sequence == sequence
    video = [au for au in aus if au.track == VIDEO]
    audio = [au for au in aus if au.track == AUDIO]
    tracks = [fmp4.VIDEO_TRACK_ID] * len(video) + [fmp4.AUDIO_TRACK_ID] * len(audio)
    assert [s.track_id for s in samples] == tracks
    durations = [b.dts - a.dts for a, b in itertools.pairwise(video)]
    if video:
        durations.append(next_dts - video[-1].dts if next_dts is not None
                         else durations[-1] if durations else fmp4.DEFAULT_VIDEO_DURATION_90K)
    for au, s, d in zip(video, samples, durations):
        assert (s.dts, s.cto, s.duration, s.data) == (au.dts, au.pts - au.dts, d, au.data)
        assert s.flags == (0x02000000 if au.key else 0x01010000)
    rate = packetiser.audio_timescale
    for k, (au, s) in enumerate(zip(audio, samples[len(video):])):
        first = audio_ticks(audio[0].dts, rate)
        assert (s.dts, s.cto, s.duration, s.data) == (first + 1024 * k, 0, 1024, au.data)
        assert s.flags == 0x02000000


# --------------------------------------------------------------------------- media made at test time


@dataclass
class Media:
    video: VideoConfig
    audio: AudioConfig
    aus: list[AccessUnit]
    segments: list[list[list[AccessUnit]]]  # segments of parts

    def next_dts(self, i: int) -> int | None:
        """The first video DTS after segment ``i``."""
        return fmp4.next_video_dts(self.segments[i + 1][0]) if i + 1 < len(self.segments) else None

    def stream(self, packetiser: Fmp4Packetiser, first: int = 0) -> bytes:
        """The init segment and the segments from ``first``, sequence numbers counting parts."""
        out = [packetiser.init]
        seq = 1 + sum(len(s) for s in self.segments[:first])
        for i in range(first, len(self.segments)):
            out.append(packetiser.segment(self.segments[i], seq, self.next_dts(i)))
            seq += len(self.segments[i])
        return b"".join(out)


@pytest.fixture(scope="module")
def media() -> Media:
    mp4 = encode_test_mp4(6, 640, 360, 30, 1_000_000)
    with av.open(io.BytesIO(mp4)) as inp:
        video = video_config_from_avcc(inp.streams.video[0].codec_context.extradata)
        audio = audio_config_from_asc(inp.streams.audio[0].codec_context.extradata)
        units = demux_access_units(inp)
    m = Media(video, audio, units, [cut_parts(seg) for seg in cut_segments(units)])
    assert len(m.segments) == 3 and all(len(seg) >= 8 for seg in m.segments)
    assert any(au.pts != au.dts for au in m.aus), "B-frames: composition offsets are exercised"
    return m


def ffprobe_frames(path, *extra: str) -> dict[str, list[int]]:
    out = subprocess.run(["ffprobe", "-v", "error", *extra, "-show_entries", "frame=media_type,pts",
                          "-of", "json", str(path)], check=False, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    frames: dict[str, list[int]] = {"video": [], "audio": []}
    for f in json.loads(out.stdout)["frames"]:
        frames[f["media_type"]].append(f["pts"])
    return frames


def ffmpeg_errors(path) -> str:
    out = subprocess.run(["ffmpeg", "-hide_banner", "-nostdin", "-v", "error", "-i", str(path), "-f", "null",
                          "-"], check=False, capture_output=True, text=True, timeout=120)
    return out.stderr.strip() + ("" if out.returncode == 0 else f" (exit {out.returncode})")


# --------------------------------------------------------------------------- init segment


def test_init_segment_structure(media):
    p = Fmp4Packetiser(media.video, media.audio)
    top = walk(p.init)
    assert [b.kind for b in top] == [b"ftyp", b"moov"]
    assert top[0].body[:4] == b"iso6" and b"cmfc" not in top[0].body  # two tracks: not a CMAF header
    moov = top[1]
    assert [c.kind for c in moov.children] == [b"mvhd", b"trak", b"trak", b"mvex"]
    v, _, mvhd = moov.find("mvhd").full()
    assert v == 0 and mvhd[:8] == bytes(8), "creation and modification times are 0"
    assert struct.unpack(">I", mvhd[-4:])[0] == 3  # next_track_ID
    traks = moov.all("trak")
    for trak, track_id, handler, timescale in ((traks[0], 1, b"vide", 90000), (traks[1], 2, b"soun", 48000)):
        _, flags, tkhd = trak.find("tkhd").full()
        assert flags == 3 and tkhd[:8] == bytes(8) and struct.unpack(">I", tkhd[8:12])[0] == track_id
        _, _, mdhd = trak.find("mdia/mdhd").full()
        assert struct.unpack(">IIII", mdhd[:16]) == (0, 0, timescale, 0)
        assert trak.find("mdia/hdlr").full()[2][4:8] == handler
        for table in ("stts", "stsc", "stco"):
            assert trak.find(f"mdia/minf/stbl/{table}").full()[2] == bytes(4)
        assert trak.find("mdia/minf/stbl/stsz").full()[2] == bytes(8)
    avc1 = traks[0].find("mdia/minf/stbl/stsd/avc1")
    assert struct.unpack(">HH", avc1.body[24:28]) == (640, 360)
    assert avc1.find("avcC").body == media.video.avcc
    mp4a = traks[1].find("mdia/minf/stbl/stsd/mp4a")
    assert struct.unpack(">HH", mp4a.body[16:20]) == (2, 16)
    assert struct.unpack(">I", mp4a.body[24:28])[0] == 48000 << 16
    _, _, esds = mp4a.find("esds").full()
    desc = descriptors(esds)
    assert desc[5] == media.audio.asc and desc[4][:2] == b"\x40\x15" and desc[6] == b"\x02"
    trex = [struct.unpack(">5I", b.full()[2]) for b in moov.find("mvex").all("trex")]
    assert trex == [(1, 1, 0, 0, 0), (2, 1, 0, 0, 0)]


def test_single_track_inits_are_cmaf_headers(media):
    for video, audio, kinds in ((media.video, None, [b"vide"]), (None, media.audio, [b"soun"])):
        top = walk(Fmp4Packetiser(video, audio).init)
        assert b"cmfc" in top[0].body
        traks = top[1].all("trak")
        assert [t.find("mdia/hdlr").full()[2][4:8] for t in traks] == kinds
        assert len(top[1].find("mvex").all("trex")) == 1


# --------------------------------------------------------------------------- real media, independent decoders


def test_fragments_match_their_access_units(media):
    p = Fmp4Packetiser(media.video, media.audio)
    seq = 1
    for i, parts in enumerate(media.segments):
        for j, part in enumerate(parts):
            nxt = fmp4.next_video_dts(parts[j + 1]) if j + 1 < len(parts) else media.next_dts(i)
            check_fragment(p.fragment(part, seq, nxt), part, p, seq, nxt)
            seq += 1


def test_segment_is_its_parts_concatenated(media):
    p = Fmp4Packetiser(media.video, media.audio)
    for i, parts in enumerate(media.segments):
        nexts = [fmp4.next_video_dts(parts[j + 1]) for j in range(len(parts) - 1)] + [media.next_dts(i)]
        fragments = [p.fragment(part, 100 + j, nexts[j]) for j, part in enumerate(parts)]
        segment = p.segment(parts, 100, media.next_dts(i))
        assert segment == b"".join(fragments)
        kinds = [b.kind for b in walk(segment)]
        assert kinds == [b"moof", b"mdat"] * len(parts) and len(parts) >= 8


@needs_ffmpeg
def test_ffprobe_decodes_every_frame_at_the_source_timestamps(media, tmp_path):
    path = tmp_path / "stream.mp4"
    path.write_bytes(media.stream(Fmp4Packetiser(media.video, media.audio)))
    frames = ffprobe_frames(path)
    video = [au for au in media.aus if au.track == VIDEO]
    audio = [au for au in media.aus if au.track == AUDIO]
    assert sorted(frames["video"]) == sorted(au.pts for au in video)
    assert frames["audio"] == [au.pts * 48000 // 90000 for au in audio]  # 1920 ticks = 1024 samples
    assert len(frames["video"]) == 180 and len(frames["audio"]) == len(audio) > 250
    assert ffmpeg_errors(path) == ""


@needs_ffmpeg
def test_a_player_joining_later_decodes_init_plus_a_later_segment(media, tmp_path):
    p = Fmp4Packetiser(media.video, media.audio)
    path = tmp_path / "late.mp4"
    path.write_bytes(media.stream(p, first=2))
    tail = [au for parts in media.segments[2:] for part in parts for au in part]
    frames = ffprobe_frames(path)
    assert sorted(frames["video"]) == sorted(au.pts for au in tail if au.track == VIDEO)
    assert frames["audio"] == [au.pts * 48000 // 90000 for au in tail if au.track == AUDIO]
    assert ffmpeg_errors(path) == ""
    # PyAV (libavformat as a library) sees the same packets, with the bus DTS and key flags.
    with av.open(str(path)) as c:
        got = [(pkt.stream.type, pkt.pts, pkt.dts, pkt.is_keyframe) for pkt in c.demux() if pkt.size]
    video = [(t, pts, dts, key) for t, pts, dts, key in got if t == "video"]
    assert video == [("video", au.pts, au.dts, au.key) for au in tail if au.track == VIDEO]


@needs_ffmpeg
@pytest.mark.parametrize("track", ["video", "audio"])
def test_single_track_streams_decode(media, tmp_path, track):
    keep = VIDEO if track == "video" else AUDIO
    only = Media(media.video, media.audio, [au for au in media.aus if au.track == keep],
                 [[[au for au in part if au.track == keep] for part in parts] for parts in media.segments])
    for parts in only.segments:
        assert all(parts), "every 200 ms part holds access units of either track"
    p = Fmp4Packetiser(media.video if keep == VIDEO else None, media.audio if keep == AUDIO else None)
    path = tmp_path / f"{track}.mp4"
    path.write_bytes(only.stream(p))
    frames = ffprobe_frames(path)
    if keep == VIDEO:
        assert sorted(frames["video"]) == sorted(au.pts for au in only.aus) and frames["audio"] == []
    else:
        assert frames["audio"] == [au.pts * 48000 // 90000 for au in only.aus] and frames["video"] == []
    assert ffmpeg_errors(path) == ""


def write_vod(media: Media, packetiser: Fmp4Packetiser, out) -> None:
    """An fMP4 HLS VOD playlist (EXT-X-MAP) over the packetiser's init and segments."""
    (out / "init.mp4").write_bytes(packetiser.init)
    lines = ["#EXTM3U", "#EXT-X-VERSION:7", "#EXT-X-TARGETDURATION:2", "#EXT-X-PLAYLIST-TYPE:VOD",
             "#EXT-X-INDEPENDENT-SEGMENTS", '#EXT-X-MAP:URI="init.mp4"']
    seq = 1
    for i, parts in enumerate(media.segments):
        (out / f"seg{i}.m4s").write_bytes(packetiser.segment(parts, seq, media.next_dts(i)))
        seq += len(parts)
        start = fmp4.next_video_dts(parts[0])
        end = media.next_dts(i) or start + 180_000
        lines += [f"#EXTINF:{(end - start) / 90_000:.3f},", f"seg{i}.m4s"]
    (out / "vod.m3u8").write_text("\n".join([*lines, "#EXT-X-ENDLIST", ""]))


@pytest.mark.integration
@pytest.mark.browser
@pytest.mark.parametrize("mode", ["hlsjs", "native"])
def test_chromium_plays_the_fmp4_stream(media, tmp_path, monkeypatch, mode):
    """An independent player: hls.js (MediaSource) and Chromium's own HLS play init + segments."""
    from tests import browser

    monkeypatch.setattr(browser, "PROFILE_PARENT", tmp_path)
    root = tmp_path / "vod"
    root.mkdir()
    write_vod(media, Fmp4Packetiser(media.video, media.audio), root)
    with browser.StaticServer(root=root) as server:
        report = browser.play_hls(f"{server.url}/vod.m3u8", mode=mode, min_advance_s=3.0)
    assert report.fatal_error is None, "\n".join(report.log)
    assert report.advanced_s >= 3.0 and report.playing, report
    assert (report.video_width, report.video_height) == (640, 360)
    assert not [e for e in report.errors if "fatal=true" in e]
    assert "GET /init.mp4 200" in server.requests and "GET /seg1.m4s 200" in server.requests


def test_edges_produce_identical_bytes(media):
    """Bytes depend only on the inputs: a second packetiser, fed later parts first, agrees."""
    early, late = Fmp4Packetiser(media.video, media.audio), Fmp4Packetiser(media.video, media.audio)
    assert early.init == late.init
    first = [early.segment(parts, 7, media.next_dts(i)) for i, parts in enumerate(media.segments)]
    again = [late.segment(media.segments[i], 7, media.next_dts(i)) for i in (2, 1, 0)][::-1]
    assert first == again
    assert [early.segment(parts, 7, media.next_dts(i)) for i, parts in enumerate(media.segments)] == first


def test_fragment_is_thread_safe(media):
    p = Fmp4Packetiser(media.video, media.audio)
    parts = [part for parts in media.segments for part in parts]
    expected = [p.fragment(part, 1) for part in parts]
    results: dict[int, list[bytes]] = {}

    def work(k: int) -> None:
        results[k] = [p.fragment(part, 1) for _ in range(3) for part in parts]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(results) == 3 and all(r == expected * 3 for r in results.values())


# --------------------------------------------------------------------------- exact and odd cases


SPS = bytes.fromhex("6764001eacd940a02ff9610000030001000003003c0f162d96")
PPS = bytes.fromhex("68efbcb0")
VIDEO_CFG = video_config_from_avcc(h264.build_avcc([SPS], [PPS]))
AUDIO_CFG = audio_config_from_asc(b"\x11\x90")


def avcc(*nals: bytes) -> bytes:
    return h264.join_avcc(nals)


def test_single_video_access_unit_part():
    p = Fmp4Packetiser(VIDEO_CFG, None)
    au = AccessUnit(VIDEO, 9000, 3000, True, avcc(b"\x65\x88\x84"))
    for next_dts in (6003, None):
        data = p.fragment([au], 5, next_dts)
        check_fragment(data, [au], p, 5, next_dts)
    _, samples = read_fragment(p.fragment([au], 5, None))
    assert samples[0].duration == 3000  # the default: nothing before or after it
    shorter = Fmp4Packetiser(VIDEO_CFG, None, default_video_duration_90k=1500)
    _, samples = read_fragment(shorter.fragment([au], 5))
    assert samples[0].duration == 1500


def test_exact_fragment_layout():
    p = Fmp4Packetiser(VIDEO_CFG, AUDIO_CFG)
    aus = [AccessUnit(VIDEO, 6000, 3000, True, avcc(b"\x65\x88")),
           AccessUnit(AUDIO, 3000, 3000, True, b"\x21\x10")]
    moof_size = 8 + 16 + 80 + 76
    data = p.fragment(aus, 0x01020304, 6000)
    video_traf = (b"\x00\x00\x00\x50" b"traf" b"\x00\x00\x00\x10tfhd\x00\x02\x00\x00\x00\x00\x00\x01"
                  b"\x00\x00\x00\x14tfdt\x01\x00\x00\x00" + (3000).to_bytes(8, "big")
                  + b"\x00\x00\x00\x24trun\x01\x00\x0f\x01\x00\x00\x00\x01"
                  + (moof_size + 8).to_bytes(4, "big")
                  + struct.pack(">IIIi", 3000, 6, 0x02000000, 3000))
    audio_traf = (b"\x00\x00\x00\x4c" b"traf" b"\x00\x00\x00\x18tfhd\x00\x02\x00\x28\x00\x00\x00\x02"
                  + struct.pack(">II", 1024, 0x02000000)
                  + b"\x00\x00\x00\x14tfdt\x01\x00\x00\x00" + (1600).to_bytes(8, "big")
                  + b"\x00\x00\x00\x18trun\x00\x00\x02\x01\x00\x00\x00\x01"
                  + (moof_size + 8 + 6).to_bytes(4, "big")
                  + struct.pack(">I", 2))
    moof = struct.pack(">I4s", moof_size, b"moof") + b"\x00\x00\x00\x10mfhd\x00\x00\x00\x00\x01\x02\x03\x04"
    mdat = struct.pack(">I4s", 16, b"mdat") + aus[0].data + aus[1].data
    assert data == moof + video_traf + audio_traf + mdat


def test_large_access_units(media):
    """A 3 MB keyframe with several NAL units and a 6 KB AAC frame go through unchanged."""
    rng = random.Random(7)
    big = avcc(b"\x06\x05" + rng.randbytes(300), b"\x65" + rng.randbytes(2_000_000),
               b"\x65" + rng.randbytes(1_000_000))
    aus = [AccessUnit(VIDEO, 3000, 0, True, big), AccessUnit(AUDIO, 0, 0, True, rng.randbytes(6000)),
           AccessUnit(VIDEO, 6000, 3000, False, avcc(b"\x41" + rng.randbytes(70_000)))]
    p = Fmp4Packetiser(VIDEO_CFG, AUDIO_CFG)
    check_fragment(p.fragment(aus, 1, 6000), aus, p, 1, 6000)


def test_composition_offsets_may_be_negative():
    p = Fmp4Packetiser(VIDEO_CFG, None)
    aus = [AccessUnit(VIDEO, 0, 3000, True, avcc(b"\x65\x88")),
           AccessUnit(VIDEO, 9000, 6000, False, avcc(b"\x41"))]
    _, samples = read_fragment(p.fragment(aus, 1))
    assert [s.cto for s in samples] == [-3000, 3000]


@pytest.mark.parametrize("rate", [44100, 22050, 48000, 8000])
def test_audio_timestamps_round_trip_through_90khz(rate):
    """A DTS rounded to 90 kHz from a sample count converts back to exactly that count."""
    cfg = audio_config_from_asc(build_asc(2, rate, 2))
    p = Fmp4Packetiser(None, cfg)
    assert p.audio_timescale == rate
    for k in (0, 1, 3, 1000, 123_457, 10**7):
        dts = round(k * 1024 * 90000 / rate)
        _, samples = read_fragment(p.fragment([AccessUnit(AUDIO, dts, dts, True, b"\x21")], 1))
        assert samples[0].dts == k * 1024


def test_he_aac_samples_last_2048_output_samples():
    asc = bytes.fromhex("2b118800")  # SBR (explicit): 24 kHz core, 48 kHz output, stereo
    cfg = audio_config_from_asc(asc)
    p = Fmp4Packetiser(None, cfg)
    assert p.audio_timescale == 48000
    _, samples = read_fragment(p.fragment([AccessUnit(AUDIO, 0, 0, True, b"\x21")], 1))
    assert samples[0].duration == 2048


@pytest.mark.parametrize(
    ("aus", "next_dts", "message"),
    [
        ([AccessUnit(VIDEO, 0, 0, True, avcc(b"\x65")),
          AccessUnit(VIDEO, 0, 0, False, b"\x00\x00\x00\x09\x41")],
         None, "#1 is not AVCC"),
        ([AccessUnit(VIDEO, 0, 0, True, avcc(b"\x65\x88") + b"\x00\x00")], None, "#0 is not AVCC"),
        ([AccessUnit(AUDIO, 0, 0, True, b""), AccessUnit(7, 0, 0, True, b"")], None, "#1 belongs to a track"),
        ([AccessUnit(VIDEO, 0, 3000, True, b""), AccessUnit(VIDEO, 0, 2999, False, b"")], None,
         "#1 has a DTS below"),
        ([AccessUnit(AUDIO, 0, 3000, True, b""), AccessUnit(AUDIO, 0, 0, True, b"")], None,
         "#1 has a DTS below"),
        ([AccessUnit(VIDEO, 0, -1, True, b"")], None, "#0 has a DTS"),
        ([AccessUnit(VIDEO, 1 << 40, 0, True, b"")], None, "#0 has a DTS, DTS step or PTS-DTS"),
        ([AccessUnit(VIDEO, 0, 0, True, b""), AccessUnit(VIDEO, 1 << 33, 1 << 33, True, b"")], None,
         "#1 has a DTS"),
        ([AccessUnit(VIDEO, 0, 3000, True, b"")], 2999, "next video DTS .* below the part's last video DTS"),
        ([AccessUnit(VIDEO, 1 << 64, 0, True, b"")], None, "out of range"),
        ([], None, "at least one access unit"),
    ],
)
def test_bad_access_units_raise(aus, next_dts, message):
    with pytest.raises(Fmp4Error, match=message):
        Fmp4Packetiser(VIDEO_CFG, AUDIO_CFG).fragment(aus, 1, next_dts)


def test_unconfigured_track_and_bad_arguments_raise():
    with pytest.raises(Fmp4Error, match="#0 belongs to a track"):
        Fmp4Packetiser(None, AUDIO_CFG).fragment([AccessUnit(VIDEO, 0, 0, True, b"")], 1)
    p = Fmp4Packetiser(VIDEO_CFG, None)
    au = AccessUnit(VIDEO, 0, 0, True, b"")
    for seq in (-1, 1 << 32):
        with pytest.raises(Fmp4Error, match="sequence number"):
            p.fragment([au], seq)
    with pytest.raises(Fmp4Error, match="next_dts"):
        p.fragment([au], 1, -5)


def test_bad_configs_raise():
    with pytest.raises(Fmp4Error, match="video config"):
        Fmp4Packetiser(VideoConfig(b"\x01\x64", 1, 1, "avc1.640000"), None)
    two_byte_lengths = bytearray(VIDEO_CFG.avcc)
    two_byte_lengths[4] = 0xFD
    with pytest.raises(Fmp4Error, match="2-byte NAL lengths"):
        Fmp4Packetiser(VideoConfig(bytes(two_byte_lengths), 640, 360, "avc1.64001e"), None)
    with pytest.raises(Fmp4Error, match="audio config"):
        Fmp4Packetiser(None, AudioConfig(bytes.fromhex("f94640"), 48000, 2, "mp4a.40.42"))
    with pytest.raises(Fmp4Error, match="does not fit"):
        Fmp4Packetiser(None, AudioConfig(b"\x11\x90", 44100, 2, "mp4a.40.2"))
    with pytest.raises(Fmp4Error, match="needs a video or an audio config"):
        Fmp4Packetiser(None, None)


def test_segment_errors_name_the_part():
    p = Fmp4Packetiser(VIDEO_CFG, AUDIO_CFG)
    ok = [AccessUnit(VIDEO, 0, 0, True, avcc(b"\x65")), AccessUnit(AUDIO, 0, 0, True, b"\x21")]
    later = [AccessUnit(VIDEO, 3000, 3000, False, avcc(b"\x41")),
             AccessUnit(VIDEO, 6000, 6000, False, b"\x01")]
    with pytest.raises(Fmp4Error, match=r"^part #1: video access unit #1 is not AVCC"):
        p.segment([ok, later], 1)
    with pytest.raises(Fmp4Error, match=r"^part #1: a fragment needs at least one"):
        p.segment([ok, [], ok], 1)
    # Parts out of DTS order: part #0's last video sample would get a negative duration.
    with pytest.raises(Fmp4Error, match=r"^part #0: the next video DTS"):
        p.segment([later[:1], ok], 1)
    with pytest.raises(Fmp4Error, match="sequence numbers"):
        p.segment([ok, ok], (1 << 32) - 1)
    assert p.segment([], 1) == b""
    last = (1 << 32) - 1
    expected = p.fragment(ok, last - 1, 3000) + p.fragment(ok[1:], last)
    assert p.segment([ok, ok[1:]], last - 1, 3000) == expected


def test_warm_up_runs():
    fmp4.warm_up()


# --------------------------------------------------------------------------- properties


@st.composite
def access_units(draw) -> tuple[VideoConfig | None, AudioConfig | None, list[AccessUnit], int | None]:
    with_video, with_audio = draw(st.sampled_from([(True, True), (True, False), (False, True)]))
    tracks = [t for t, on in ((VIDEO, with_video), (AUDIO, with_audio)) if on]
    n = draw(st.integers(1, 12))
    dts = draw(st.one_of(st.integers(0, 1 << 34), st.integers((1 << 33) - 20_000, (1 << 33) + 20_000)))
    rng = random.Random(draw(st.integers(0, 2**32)))
    aus = []
    for _ in range(n):
        track = draw(st.sampled_from(tracks))
        dts += draw(st.integers(0, 6000))
        pts = dts + (draw(st.sampled_from([0, 0, 3000, 9000, -3000])) if track == VIDEO else 0)
        if track == VIDEO:
            nals = [rng.randbytes(draw(st.one_of(st.integers(0, 400), st.integers(0, 200_000))))
                    for _ in range(draw(st.integers(0, 4)))]
            data = b"".join(len(nal).to_bytes(4, "big") + nal for nal in nals)
        else:
            data = rng.randbytes(draw(st.integers(0, 2000)))
        aus.append(AccessUnit(track, pts, dts, draw(st.booleans()), data))
    next_dts = draw(st.one_of(st.none(), st.integers(dts, dts + 6000)))
    return (VIDEO_CFG if with_video else None), (AUDIO_CFG if with_audio else None), aus, next_dts


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(access_units(), st.integers(0, (1 << 32) - 20), st.randoms(use_true_random=False))
@example((VIDEO_CFG, None, [AccessUnit(VIDEO, 0, 0, True, b"")], None), 0, random.Random(0))
def test_packetiser_properties(case, sequence, rnd):
    video, audio, aus, next_dts = case
    p = Fmp4Packetiser(video, audio)
    data = p.fragment(aus, sequence, next_dts)
    check_fragment(data, aus, p, sequence, next_dts)
    assert p.fragment(aus, sequence, next_dts) == data
    assert Fmp4Packetiser(video, audio).fragment(list(aus), sequence, next_dts) == data
    # Any split into parts: the segment is the parts' fragments, each told the next video DTS.
    cuts = sorted(rnd.sample(range(1, len(aus)), rnd.randint(0, len(aus) - 1)))
    parts = [aus[a:b] for a, b in zip([0, *cuts], [*cuts, len(aus)])]
    follow = [fmp4.next_video_dts([au for later in parts[j + 1:] for au in later]) for j in range(len(parts))]
    follow = [next_dts if f is None else f for f in follow]
    fragments = [p.fragment(part, sequence + j, follow[j]) for j, part in enumerate(parts)]
    for j, part in enumerate(parts):
        check_fragment(fragments[j], part, p, sequence + j, follow[j])
    assert p.segment(parts, sequence, next_dts) == b"".join(fragments)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(-1, 9), st.integers(-(1 << 63), (1 << 63) - 1),
                          st.integers(-(1 << 63), (1 << 63) - 1), st.booleans(), st.binary(max_size=64)),
                max_size=12),
       st.one_of(st.none(), st.integers(-(1 << 50), 1 << 50)), st.integers(-5, (1 << 32) + 5))
def test_garbage_is_rejected_with_fmp4_error(rows, next_dts, sequence):
    """Whatever the access units hold, the packetiser returns fragments or raises Fmp4Error."""
    aus = [AccessUnit(*row) for row in rows]
    p = Fmp4Packetiser(VIDEO_CFG, AUDIO_CFG)
    for parts in ([aus], [aus[:3], aus[3:]]):
        try:
            data = p.segment(parts, sequence, next_dts)
        except Fmp4Error:
            continue
        boxes = walk(data)
        assert [b.kind for b in boxes] == [b"moof", b"mdat"] * len(parts)
        for j in range(len(parts)):
            moof, mdat = boxes[2 * j : 2 * j + 2]
            assert read_fragment(data[moof.start : mdat.start + 8 + len(mdat.body)])[0] == sequence + j
