"""Benchmark: fMP4 packetisation, mesh's Numba kernel vs FFmpeg's mp4 muxer.

Encodes a test pattern once with PyAV (libx264 + AAC, 2 s GOP, as ``mesh bench packetise``
does), demuxes it into bus-style access units, cuts them into 2 s segments at keyframes and each
segment into ~200 ms LL-HLS parts (:func:`cut_parts`), then times, on the same access units:

* ``numba``: :meth:`mesh_codecs.fmp4.Fmp4Packetiser.segment` per segment -- one ``moof`` +
  ``mdat`` per part (the init segment is built once per stream configuration, at construction);
* ``ffmpeg_mux``: FFmpeg's ``mp4`` muxer through PyAV, a new muxer per segment (our segments are
  independent) with ``movflags=cmaf+frag_keyframe+empty_moov+default_base_moof`` and
  ``frag_duration`` = the part target, so it also writes an init segment and one fragment per
  ~200 ms, muxing pre-built ``av.Packet``s (the baseline of the ratio);
* ``ffmpeg_full``: the same including building the packets from the access units' bytes (what an
  edge using FFmpeg would pay);
* ``ffmpeg_stream``: pre-built packets of all segments through one muxer (``frag_duration`` = the
  part target), its setup and init segment paid once per stream -- the kindest FFmpeg baseline;
* ``ffmpeg_gop``: pre-built packets, a muxer per segment without ``frag_duration``: one fragment per
  segment, FFmpeg's cheapest fragmented output (no parts, so not a substitute; shown for scale);
* ``numba_parts``: :meth:`~mesh_codecs.fmp4.Fmp4Packetiser.fragment` once per part, as an edge
  builds parts while they arrive (more calls, same bytes).

Figures are medians over ``repeats``; each repeat runs every packetiser in turn over all segments,
enough times to last at least ``min_repeat_s``, and the ratios are medians of the per-repeat
(paired) ratios, with their range. Kernel compile time is excluded (``warm_up()`` first).

Run: ``mesh bench fmp4 [--seconds 6] [--repeats 5] [--size 1280x720] [--json]``
"""
from __future__ import annotations

import io
import json
import os
import statistics
import time
from collections.abc import Sequence

import av
import click
from mesh_codecs.fmp4 import Fmp4Packetiser, next_video_dts, warm_up
from mesh_codecs.media import VIDEO, AccessUnit

from .packetise import Media, ffmpeg_packets

PART_TARGET_90K = 18_000  # 200 ms
MOVFLAGS = "cmaf+frag_keyframe+empty_moov+default_base_moof"


def cut_parts(segment: Sequence[AccessUnit], target_90k: int = PART_TARGET_90K) -> list[list[AccessUnit]]:
    """Cut a segment into LL-HLS parts of about ``target_90k``: a part ends before the video access
    unit whose DTS is ``target_90k`` or more after the part's first video DTS (audio goes with the
    part it arrives in)."""
    parts: list[list[AccessUnit]] = [[]]
    start = None
    for au in segment:
        if au.track == VIDEO:
            if start is None:
                start = au.dts
            elif au.dts - start >= target_90k:
                parts.append([])
                start = au.dts
        parts[-1].append(au)
    return parts


def ffmpeg_mux(media: Media, segment: Sequence[AccessUnit], packets: list[av.Packet],
               frag_duration_us: int | None) -> bytes:
    """One segment through FFmpeg's fragmenting mp4 muxer: init segment, fragments, ``mfra``."""
    options = {"movflags": MOVFLAGS}
    if frag_duration_us:
        options["frag_duration"] = str(frag_duration_us)
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4", options=options) as out:
        streams = (out.add_stream_from_template(media.video_template),
                   out.add_stream_from_template(media.audio_template))
        for au, pkt in zip(segment, packets):
            pkt.stream = streams[au.track]
            out.mux(pkt)
    return buf.getvalue()


def run(seconds: float = 6.0, repeats: int = 5, *, width: int = 1280, height: int = 720, fps: int = 30,
        video_bitrate: int = 3_000_000, min_repeat_s: float = 0.3, part_ms: int = 200) -> dict:
    """Encode ``seconds`` of test media once and time both packetisers on its segments' parts."""
    t0 = time.perf_counter()
    warm_up()
    warm_s = time.perf_counter() - t0
    media = Media(seconds, width, height, fps, video_bitrate)
    segs = media.segments
    parts = [cut_parts(seg, part_ms * 90) for seg in segs]
    nexts = [next_video_dts(segs[i + 1]) if i + 1 < len(segs) else None for i in range(len(segs))]
    packetiser = Fmp4Packetiser(media.video, media.audio)
    frag_us = part_ms * 1000
    in_bytes = sum(len(au.data) for seg in segs for au in seg)
    ours_bytes = sum(len(packetiser.init) + len(packetiser.segment(p, 1, n)) for p, n in zip(parts, nexts))
    ffmpeg_bytes = sum(len(ffmpeg_mux(media, seg, ffmpeg_packets(seg), frag_us)) for seg in segs)
    stream_bytes = len(ffmpeg_mux(media, [au for seg in segs for au in seg],
                                  ffmpeg_packets([au for seg in segs for au in seg]), frag_us))
    gop_bytes = sum(len(ffmpeg_mux(media, seg, ffmpeg_packets(seg), None)) for seg in segs)

    def numba_pass() -> float:
        t = time.perf_counter()
        seq = 1
        for p, n in zip(parts, nexts):
            packetiser.segment(p, seq, n)
            seq += len(p)
        return time.perf_counter() - t

    def mux_pass(frag: int | None) -> float:
        total = 0.0
        for seg in segs:
            packets = ffmpeg_packets(seg)
            t = time.perf_counter()
            ffmpeg_mux(media, seg, packets, frag)
            total += time.perf_counter() - t
        return total

    def numba_parts_pass() -> float:
        t = time.perf_counter()
        seq = 1
        for p, n in zip(parts, nexts):
            follow = [next_video_dts(part) for part in p[1:]] + [n]
            for part, nxt in zip(p, follow):
                packetiser.fragment(part, seq, nxt)
                seq += 1
        return time.perf_counter() - t

    all_aus = [au for seg in segs for au in seg]

    def ffmpeg_stream_pass() -> float:
        packets = ffmpeg_packets(all_aus)
        t = time.perf_counter()
        ffmpeg_mux(media, all_aus, packets, frag_us)
        return time.perf_counter() - t

    def ffmpeg_full_pass() -> float:
        t = time.perf_counter()
        for seg in segs:
            ffmpeg_mux(media, seg, ffmpeg_packets(seg), frag_us)
        return time.perf_counter() - t

    results: dict = {
        "media": {"width": width, "height": height, "fps": fps, "seconds": seconds,
                  "video_bitrate": video_bitrate, "segments": len(segs), "part_ms": part_ms,
                  "parts": sum(map(len, parts)), "access_units": sum(map(len, segs)),
                  "input_bytes": in_bytes},
        "repeats": repeats,
        "nproc": os.cpu_count(),
        "loadavg_1m": os.getloadavg()[0],
        "warm_up_s": warm_s,
    }
    runs = (("numba", numba_pass, ours_bytes), ("numba_parts", numba_parts_pass, ours_bytes),
            ("ffmpeg_mux", lambda: mux_pass(frag_us), ffmpeg_bytes),
            ("ffmpeg_full", ffmpeg_full_pass, ffmpeg_bytes),
            ("ffmpeg_stream", ffmpeg_stream_pass, stream_bytes),
            ("ffmpeg_gop", lambda: mux_pass(None), gop_bytes))
    # Paired repeats: every repeat times each packetiser in turn, so a change of machine load
    # falls on all of them; ratios are medians of the per-repeat ratios.
    inner = {name: max(1, int(min_repeat_s / max(fn(), 1e-9))) for name, fn, _ in runs}
    samples: dict[str, list[float]] = {name: [] for name, _, _ in runs}
    for _ in range(repeats):
        for name, fn, _ in runs:
            samples[name].append(sum(fn() for _ in range(inner[name])) / inner[name])
    for name, _, out_bytes in runs:
        median = statistics.median(samples[name])
        results[name] = {
            "seconds_per_pass": median,
            "segments_per_s": len(segs) / median,
            "ms_per_segment": median / len(segs) * 1e3,
            "input_MB_per_s": in_bytes / median / 1e6,
            "out_bytes": out_bytes,
            "inner_loops": inner[name],
        }

    def paired(base: str, ours: str = "numba") -> float:
        return statistics.median(b / o for b, o in zip(samples[base], samples[ours]))

    for name in ("ffmpeg_mux", "ffmpeg_full", "ffmpeg_stream", "ffmpeg_gop"):
        results[f"ratio_vs_{name}"] = paired(name)
        results[f"ratio_vs_{name}_range"] = [min(b / o for b, o in zip(samples[name], samples["numba"])),
                                             max(b / o for b, o in zip(samples[name], samples["numba"]))]
    results["ratio_parts_vs_ffmpeg_mux"] = paired("ffmpeg_mux", "numba_parts")
    return results


def format_table(r: dict) -> str:
    m = r["media"]
    lines = [
        (f"media: {m['seconds']:g} s of {m['width']}x{m['height']}@{m['fps']} x264 "
        f"{m['video_bitrate'] / 1e6:g} Mbps + AAC 128 kbps in {m['segments']} segments (2 s GOP) of "
        f"{m['parts']} parts ({m['part_ms']} ms), {m['access_units']} access units, "
        f"{m['input_bytes'] / 1e6:.2f} MB; median of {r['repeats']} repeats, nproc {r['nproc']}, "
        f"load {r['loadavg_1m']:.2f}"),
        f"{'packetiser':<13}{'ms/segment':>11}{'segments/s':>12}{'input MB/s':>12}{'out bytes':>12}",
    ]
    for name in ("numba", "numba_parts", "ffmpeg_mux", "ffmpeg_full", "ffmpeg_stream", "ffmpeg_gop"):
        x = r[name]
        lines.append(f"{name:<13}{x['ms_per_segment']:>11.3f}{x['segments_per_s']:>12.1f}"
                     f"{x['input_MB_per_s']:>12.1f}{x['out_bytes']:>12}")
    lo, hi = r["ratio_vs_ffmpeg_mux_range"]
    lines.append(f"ratio numba/ffmpeg (median of paired repeats): {r['ratio_vs_ffmpeg_mux']:.1f}x "
                 f"[{lo:.1f}-{hi:.1f}] (vs mux only, a muxer per segment, "
                 f"fragment per part), {r['ratio_vs_ffmpeg_full']:.1f}x (incl. av.Packet creation), "
                 f"{r['ratio_vs_ffmpeg_stream']:.1f}x (vs one muxer for the stream), "
                 f"{r['ratio_vs_ffmpeg_gop']:.1f}x (vs one fragment per segment); "
                 f"numba_parts/ffmpeg_mux {r['ratio_parts_vs_ffmpeg_mux']:.1f}x")
    return "\n".join(lines)


@click.command("fmp4")
@click.option("--seconds", type=float, default=6.0, show_default=True,
              help="Length of the encoded test media.")
@click.option("--repeats", type=int, default=5, show_default=True)
@click.option("--size", default="1280x720", show_default=True, help="WxH of the test pattern.")
@click.option("--bitrate", type=int, default=3_000_000, show_default=True, help="Video bits/s.")
@click.option("--part-ms", type=click.IntRange(20, 2000), default=200, show_default=True,
              help="LL-HLS part target (and FFmpeg's frag_duration).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def command(seconds: float, repeats: int, size: str, bitrate: int, part_ms: int, as_json: bool) -> None:
    """Numba fMP4 packetiser vs FFmpeg's fragmenting mp4 muxer (via PyAV) on the same access units."""
    try:
        width, height = (int(v) for v in size.lower().split("x"))
    except ValueError:
        raise click.BadParameter("use WIDTHxHEIGHT, e.g. 1280x720", param_hint="--size") from None
    click.echo(f"fmp4: encoding {seconds:g} s of {width}x{height} test pattern, then {repeats} "
               f"repeats of each packetiser", err=True)
    result = run(seconds, repeats, width=width, height=height, video_bitrate=bitrate, part_ms=part_ms)
    click.echo(json.dumps(result, indent=2) if as_json else format_table(result))


def main(argv: Sequence[str] | None = None) -> None:
    command.main(args=list(argv) if argv is not None else None, prog_name="mesh bench fmp4")


if __name__ == "__main__":
    main()
