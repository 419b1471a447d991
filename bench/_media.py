"""Test media made with PyAV for the benchmarks (and the packetiser tests): one encode, one demux.

``encode_test_mp4`` writes FFmpeg's ``testsrc2`` pattern (libx264 veryfast, 2 s closed GOP with
B-frames) and a 440 Hz tone (AAC-LC 48 kHz stereo) into an in-memory MP4. ``demux_access_units``
turns an MP4's packets into bus-style access units: 90 kHz, DTS order, starting at DTS 0;
``cut_segments`` cuts them at video keyframes as the origin does.
"""
from __future__ import annotations

import io
from collections.abc import Sequence

import av
from mesh_codecs.media import AUDIO, CLOCK_HZ, VIDEO, AccessUnit


def encode_test_mp4(seconds: float, width: int, height: int, fps: int, video_bitrate: int, *,
                    noise: int = 0, cap_rate: bool = False) -> bytes:
    """``noise`` adds that much temporal noise so x264 spends its bitrate (0: none); ``cap_rate``
    holds x264 to the bitrate with a VBV of two seconds, as a live encoder is."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        vs = out.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt, vs.bit_rate = width, height, "yuv420p", video_bitrate
        vs.codec_context.gop_size = 2 * fps
        options = {"preset": "veryfast", "keyint_min": str(2 * fps), "sc_threshold": "0"}
        if cap_rate:
            kbps = video_bitrate // 1000
            options.update(maxrate=f"{kbps}k", bufsize=f"{kbps * 2}k")
        vs.codec_context.options = options
        aus = out.add_stream("aac", rate=48000)
        aus.layout, aus.bit_rate = "stereo", 128_000
        graph = f"testsrc2=s={width}x{height}:r={fps}:d={seconds}"
        if noise:
            graph += f",noise=alls={noise}:allf=t"
        with av.open(graph, format="lavfi") as src:
            for frame in src.decode(video=0):
                frame.pict_type = av.video.frame.PictureType.NONE
                out.mux(vs.encode(frame))
        out.mux(vs.encode(None))
        with av.open(f"sine=f=440:r=48000:d={seconds}", format="lavfi") as src:
            for frame in src.decode(audio=0):
                frame.pts = None
                out.mux(aus.encode(frame))
        out.mux(aus.encode(None))
    return buf.getvalue()


def demux_access_units(container: av.container.InputContainer) -> list[AccessUnit]:
    """The container's packets as access units: 90 kHz, DTS-ordered (video first on a tie),
    shifted so that the first DTS is 0."""
    aus = []
    for pkt in container.demux():
        if pkt.dts is None or pkt.size == 0:
            continue
        tb = pkt.time_base
        scale = tb.numerator * CLOCK_HZ
        track = VIDEO if pkt.stream.type == "video" else AUDIO
        aus.append(AccessUnit(track, pkt.pts * scale // tb.denominator,
                              pkt.dts * scale // tb.denominator, pkt.is_keyframe, bytes(pkt)))
    shift = -min(au.dts for au in aus)
    for au in aus:
        au.pts += shift
        au.dts += shift
    aus.sort(key=lambda au: (au.dts, au.track))
    return aus


def cut_segments(aus: Sequence[AccessUnit]) -> list[list[AccessUnit]]:
    """Cut at every video keyframe (the GOP is the 2 s target), as the origin does."""
    segments: list[list[AccessUnit]] = [[]]
    for au in aus:
        if au.track == VIDEO and au.key and any(a.track == VIDEO for a in segments[-1]):
            segments.append([])
        segments[-1].append(au)
    return segments
