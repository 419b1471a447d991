"""Benchmark: MPEG-TS packetisation, mesh's Numba kernels vs FFmpeg's muxer.

Encodes a test pattern once with PyAV (libx264 + AAC, 2 s GOP), demuxes it
into bus-style access units (AVCC video, raw AAC, 90 kHz timestamps), cuts
them into 2-second segments at keyframes, then times, on the same segments:

* ``numba``: :meth:`mesh_codecs.ts.TsPacketiser.segment`, one call per segment;
* ``ffmpeg``: FFmpeg's ``mpegts`` muxer through PyAV, a new muxer per segment
  with the streams added from the source's templates (so it gets the avcC
  and inserts ``h264_mp4toannexb`` itself), the same payloads and timestamps.
  Timed twice: muxing pre-built ``av.Packet``s (``ffmpeg_mux``, the
  baseline of the ratio) and including building the packets from the access
  units' bytes (``ffmpeg_full``, what an edge using FFmpeg would pay).

Figures are medians over ``repeats``; each repeat runs all segments enough
times to last at least ``min_repeat_s``. Kernel compile time is excluded but
measured separately in fresh processes (cold cache, then warm cache).

Run: ``python -m mesh_bench.packetise [--seconds 10] [--repeats 5] [--size 1280x720] [--json]``
"""
from __future__ import annotations

import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from fractions import Fraction

import av
import click

from mesh_codecs.aac import audio_config_from_asc
from mesh_codecs.h264 import video_config_from_avcc
from mesh_codecs.media import CLOCK_HZ, AccessUnit, AudioConfig, VideoConfig
from mesh_codecs.ts import TsPacketiser, warm_up

from ._media import cut_segments, demux_access_units, encode_test_mp4

TB_90K = Fraction(1, CLOCK_HZ)


class Media:
    """Encoded test media: configs, access units, 2 s segments and PyAV stream templates."""

    def __init__(self, seconds: float, width: int, height: int, fps: int, video_bitrate: int) -> None:
        self._mp4 = encode_test_mp4(seconds, width, height, fps, video_bitrate, noise=10)
        self.container = av.open(io.BytesIO(self._mp4))  # kept open: its streams are the templates
        self.video_template = self.container.streams.video[0]
        self.audio_template = self.container.streams.audio[0]
        self.video: VideoConfig = video_config_from_avcc(self.video_template.codec_context.extradata)
        self.audio: AudioConfig = audio_config_from_asc(self.audio_template.codec_context.extradata)
        self.aus = demux_access_units(self.container)
        self.segments = cut_segments(self.aus)


# --------------------------------------------------------------------------- the two packetisers


def ffmpeg_packets(segment: Sequence[AccessUnit]) -> list[av.Packet]:
    packets = []
    for au in segment:
        pkt = av.Packet(au.data)
        pkt.time_base = TB_90K
        pkt.pts, pkt.dts, pkt.is_keyframe = au.pts, au.dts, au.key
        packets.append(pkt)
    return packets


def ffmpeg_mux(media: Media, segment: Sequence[AccessUnit], packets: list[av.Packet]) -> bytes:
    """One segment through FFmpeg's mpegts muxer (a new muxer, as our segments are independent)."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mpegts") as out:
        streams = (out.add_stream_from_template(media.video_template),
                   out.add_stream_from_template(media.audio_template))
        for au, pkt in zip(segment, packets):
            pkt.stream = streams[au.track]
            out.mux(pkt)
    return buf.getvalue()


# --------------------------------------------------------------------------- timing


def _timed_repeats(run_once: Callable[[], float], repeats: int, min_repeat_s: float) -> tuple[float, int]:
    """Median seconds for one pass over all segments; ``run_once`` returns its own timed part."""
    first = run_once()
    inner = max(1, int(min_repeat_s / max(first, 1e-9)))
    samples = []
    for _ in range(repeats):
        samples.append(sum(run_once() for _ in range(inner)) / inner)
    return statistics.median(samples), inner


def _compile_times() -> dict[str, float]:
    """warm_up() in fresh processes: with an empty Numba cache, then with that cache."""
    code = (
        "import time; t0 = time.perf_counter(); import mesh_codecs.ts as ts; t1 = time.perf_counter(); "
        "ts.warm_up(); print(t1 - t0, time.perf_counter() - t1)"
    )
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        runs = [subprocess.check_output([sys.executable, "-c", code], env=env, text=True).split()
                for _ in range(2)]
    return {"import_s": float(runs[1][0]), "cold_compile_s": float(runs[0][1]),
            "cached_load_s": float(runs[1][1])}


def run(seconds: float = 5.0, repeats: int = 5, *, width: int = 1280, height: int = 720, fps: int = 30,
        video_bitrate: int = 3_000_000, min_repeat_s: float = 0.3, compile_times: bool = True) -> dict:
    """Encode ``seconds`` of test media once and time both packetisers on its 2 s segments."""
    t0 = time.perf_counter()
    warm_up()
    warm_s = time.perf_counter() - t0
    media = Media(seconds, width, height, fps, video_bitrate)
    segs = media.segments
    packetiser = TsPacketiser(media.video, media.audio)
    in_bytes = sum(len(au.data) for seg in segs for au in seg)
    ours_bytes = sum(len(packetiser.segment(seg)) for seg in segs)
    ffmpeg_bytes = sum(len(ffmpeg_mux(media, seg, ffmpeg_packets(seg))) for seg in segs)

    def numba_pass() -> float:
        t = time.perf_counter()
        for seg in segs:
            packetiser.segment(seg)
        return time.perf_counter() - t

    def ffmpeg_mux_pass() -> float:
        total = 0.0
        for seg in segs:
            packets = ffmpeg_packets(seg)
            t = time.perf_counter()
            ffmpeg_mux(media, seg, packets)
            total += time.perf_counter() - t
        return total

    def ffmpeg_full_pass() -> float:
        t = time.perf_counter()
        for seg in segs:
            ffmpeg_mux(media, seg, ffmpeg_packets(seg))
        return time.perf_counter() - t

    results: dict = {
        "media": {"width": width, "height": height, "fps": fps, "seconds": seconds,
                  "video_bitrate": video_bitrate, "segments": len(segs),
                  "access_units": sum(map(len, segs)), "input_bytes": in_bytes},
        "repeats": repeats,
        "nproc": os.cpu_count(),
        "warm_up_s": warm_s,
    }
    for name, fn, out_bytes in (("numba", numba_pass, ours_bytes),
                                ("ffmpeg_mux", ffmpeg_mux_pass, ffmpeg_bytes),
                                ("ffmpeg_full", ffmpeg_full_pass, ffmpeg_bytes)):
        median, inner = _timed_repeats(fn, repeats, min_repeat_s)
        results[name] = {
            "seconds_per_pass": median,
            "segments_per_s": len(segs) / median,
            "ms_per_segment": median / len(segs) * 1e3,
            "input_MB_per_s": in_bytes / median / 1e6,
            "ts_MB_per_s": out_bytes / median / 1e6,
            "ts_bytes": out_bytes,
            "inner_loops": inner,
        }
    ours = results["numba"]["seconds_per_pass"]
    results["ratio_vs_ffmpeg_mux"] = results["ffmpeg_mux"]["seconds_per_pass"] / ours
    results["ratio_vs_ffmpeg_full"] = results["ffmpeg_full"]["seconds_per_pass"] / ours
    if compile_times:
        results.update(_compile_times())
    return results


def format_table(r: dict) -> str:
    m = r["media"]
    lines = [
        f"media: {m['seconds']:g} s of {m['width']}x{m['height']}@{m['fps']} "
        f"x264 {m['video_bitrate'] / 1e6:g} Mbps "
        f"+ AAC 128 kbps in {m['segments']} segments (2 s GOP), {m['access_units']} access units, "
        f"{m['input_bytes'] / 1e6:.2f} MB; median of {r['repeats']} repeats, nproc {r['nproc']}",
        f"{'packetiser':<13}{'ms/segment':>11}{'segments/s':>12}{'input MB/s':>12}"
        f"{'TS MB/s':>10}{'TS bytes':>12}",
    ]
    for name in ("numba", "ffmpeg_mux", "ffmpeg_full"):
        x = r[name]
        lines.append(f"{name:<13}{x['ms_per_segment']:>11.3f}{x['segments_per_s']:>12.1f}"
                     f"{x['input_MB_per_s']:>12.1f}{x['ts_MB_per_s']:>10.1f}{x['ts_bytes']:>12}")
    lines.append(f"ratio numba/ffmpeg: {r['ratio_vs_ffmpeg_mux']:.1f}x (vs mux only), "
                 f"{r['ratio_vs_ffmpeg_full']:.1f}x (incl. av.Packet creation)")
    if "cold_compile_s" in r:
        lines.append(f"warm_up() in a fresh process (excluded above): "
                     f"cold cache {r['cold_compile_s']:.1f} s, warm cache {r['cached_load_s']:.2f} s; "
                     f"importing mesh_codecs.ts {r['import_s']:.2f} s")
    return "\n".join(lines)


@click.command("packetise")
@click.option("--seconds", type=float, default=5.0, show_default=True, help="Length of the encoded test media.")
@click.option("--repeats", type=int, default=5, show_default=True)
@click.option("--size", default="1280x720", show_default=True, help="WxH of the test pattern.")
@click.option("--bitrate", type=int, default=3_000_000, show_default=True, help="Video bits/s.")
@click.option("--no-compile-times", is_flag=True, help="Skip timing warm_up() in fresh processes.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def command(seconds: float, repeats: int, size: str, bitrate: int, no_compile_times: bool,
            as_json: bool) -> None:
    """Numba TS packetiser vs FFmpeg's mpegts muxer (via PyAV) on the same access units."""
    try:
        width, height = (int(v) for v in size.lower().split("x"))
    except ValueError:
        raise click.BadParameter("use WIDTHxHEIGHT, e.g. 1280x720", param_hint="--size") from None
    click.echo(f"packetise: encoding {seconds:g} s of {width}x{height} test pattern, then {repeats} "
               f"repeats of each packetiser", err=True)
    result = run(seconds, repeats, width=width, height=height, video_bitrate=bitrate,
                 compile_times=not no_compile_times)
    click.echo(json.dumps(result, indent=2) if as_json else format_table(result))


def main(argv: Sequence[str] | None = None) -> None:
    command.main(args=list(argv) if argv is not None else None, prog_name="mesh bench packetise")


if __name__ == "__main__":
    main()
