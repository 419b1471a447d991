"""Benchmark: the Numba frame scaler vs FFmpeg's swscale (through PyAV), frames/s per ladder size.

Input: ``frames`` decoded H.264 frames per source size (FFmpeg's ``testsrc2`` with temporal
noise, encoded with libx264 and decoded with PyAV, so the planes carry the decoder's real line
padding), the same frames for both scalers. Per size pair, every trial times one pass over all
frames for each contestant, in turn (so both see the same machine load), and reports the median
pass:

* ``numba``: :class:`mesh_codecs.scale_av.FrameScaler` with ``backend="numba"`` (area filter)
  -- reads the decoded planes in place, writes a new ``av.VideoFrame``;
* ``swscale``: the same class with ``backend="swscale"``: one kept ``VideoReformatter``,
  ``reformat(w, h, "yuv420p", interpolation="BILINEAR")`` -- also a new frame per call.

Both run single-threaded (``threads=1``: the calling thread only) and threaded (``threads`` =
the CPU count: Numba ``prange`` rows, swscale slices). Ratios are numba/swscale frames/s; the
per-trial paired ratios' median is printed beside the ratio of medians. ``auto`` is the backend
``FrameScaler`` picks for that size (see :mod:`mesh_codecs.scale_av`). Also timed: one
:class:`mesh_codecs.bitrate.BitrateMeter` add + peak + average query with a 5-segment window.

Run: ``mesh bench scale [--frames 10] [--trials 7] [--size 1920x1080:1280x720 ...] [--json]``
"""
from __future__ import annotations

import io
import json
import os
import statistics
import time
from collections.abc import Callable, Sequence

import av
import click
import numba

from mesh_codecs import scale
from mesh_codecs.bitrate import BitrateMeter
from mesh_codecs.scale_av import FrameScaler

DEFAULT_SIZES = ("1920x1080:1280x720", "1280x720:854x480", "1280x720:640x360")


def decoded_frames(width: int, height: int, count: int) -> list[av.VideoFrame]:
    """``count`` frames of noisy ``testsrc2``, through libx264 and back (decoder line padding)."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        vs = out.add_stream("libx264", rate=30)
        vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
        vs.codec_context.options = {"preset": "ultrafast", "crf": "18"}
        graph = f"testsrc2=s={width}x{height}:r=30:d={count / 30 + 0.1},noise=alls=10:allf=t"
        with av.open(graph, format="lavfi") as src:
            for frame in src.decode(video=0):
                out.mux(vs.encode(frame))
        out.mux(vs.encode(None))
    buf.seek(0)
    with av.open(buf) as c:
        frames = list(c.decode(video=0))[:count]
    if len(frames) < count:
        raise RuntimeError(f"decoded only {len(frames)} of {count} frames")
    return frames


def _parse_size(text: str) -> tuple[tuple[int, int], tuple[int, int]]:
    try:
        src, dst = text.lower().split(":")
        (sw, sh), (dw, dh) = (tuple(int(v) for v in part.split("x")) for part in (src, dst))
    except ValueError:
        raise click.BadParameter(f"{text!r}: use SRCWxSRCH:DSTWxDSTH, e.g. 1920x1080:1280x720",
                                 param_hint="--size") from None
    return (sw, sh), (dw, dh)


def _pass(fn: Callable[[av.VideoFrame], av.VideoFrame], frames: Sequence[av.VideoFrame]) -> float:
    t = time.perf_counter()
    for f in frames:
        fn(f)
    return time.perf_counter() - t


def bench_pair(frames: Sequence[av.VideoFrame], dst: tuple[int, int], trials: int, threads: int) -> dict:
    sw, sh = frames[0].width, frames[0].height
    contestants = {}
    for nthreads, suffix in ((1, "1t"), (threads, f"{threads}t")):
        for backend in ("numba", "swscale"):
            contestants[f"{backend}_{suffix}"] = FrameScaler(sw, sh, *dst, backend=backend, threads=nthreads)
    samples: dict[str, list[float]] = {name: [] for name in contestants}
    for fn in contestants.values():  # warm: plans, kernels, swscale's context
        fn(frames[0])
    for _ in range(trials):
        for name, fn in contestants.items():
            samples[name].append(_pass(fn, frames))
    n = len(frames)
    result: dict = {"src": f"{sw}x{sh}", "dst": f"{dst[0]}x{dst[1]}",
                    "auto": FrameScaler(sw, sh, *dst).backend,
                    "forms": [p.family for p in scale.make_plan(sw, sh, *dst).planes]}
    for name, times in samples.items():
        med = statistics.median(times)
        result[name] = {"fps": n / med, "ms_per_frame": med / n * 1e3}
    for suffix in ("1t", f"{threads}t"):
        ours, theirs = samples[f"numba_{suffix}"], samples[f"swscale_{suffix}"]
        result[f"ratio_{suffix}"] = result[f"numba_{suffix}"]["fps"] / result[f"swscale_{suffix}"]["fps"]
        result[f"paired_ratio_{suffix}"] = statistics.median(t / o for o, t in zip(ours, theirs))
    return result


def bench_meter(repeats: int = 2000) -> dict:
    meter = BitrateMeter(2.0, window=5)
    t = time.perf_counter()
    for seq in range(repeats):
        meter.add(seq, 500_000 + 37 * (seq % 11), 2.0)
        meter.peak_bps()
        meter.average_bps()
    return {"window": 5, "us_per_segment": (time.perf_counter() - t) / repeats * 1e6}


def run(sizes: Sequence[str] = DEFAULT_SIZES, frames: int = 10, trials: int = 7,
        threads: int | None = None) -> dict:
    threads = threads or os.cpu_count() or 1
    t0 = time.perf_counter()
    scale.warm_up()
    warm_s = time.perf_counter() - t0
    pairs = [_parse_size(s) for s in sizes]
    inputs = {src: decoded_frames(*src, frames) for src in dict.fromkeys(src for src, _ in pairs)}
    return {
        "load_avg_at_start": os.getloadavg(),
        "nproc": os.cpu_count(),
        "threads": threads,
        "numba_threading_layer": numba.threading_layer(),  # the one warm_up's parallel call chose
        "frames": frames,
        "trials": trials,
        "warm_up_s": warm_s,
        "linesize": {f"{w}x{h}": f[0].planes[0].line_size for (w, h), f in inputs.items()},
        "pairs": [bench_pair(inputs[src], dst, trials, threads) for src, dst in pairs],
        "bitrate_meter": bench_meter(),
    }


def format_table(r: dict) -> str:
    la = r["load_avg_at_start"]
    t = f"{r['threads']}t"
    lines = [f"scaler: {r['frames']} decoded frames per size, median of {r['trials']} trials; "
             f"nproc {r['nproc']}, load {la[0]:.2f} {la[1]:.2f} {la[2]:.2f} at start; "
             f"Numba layer {r['numba_threading_layer']}",
             f"{'size':<22}{'numba 1t':>10}{'sws 1t':>9}{'ratio':>7}{'paired':>8}"
             f"{'numba ' + t:>10}{'sws ' + t:>9}{'ratio':>7}{'paired':>8}  auto  (frames/s)"]
    for p in r["pairs"]:
        lines.append(f"{p['src'] + '->' + p['dst']:<22}{p['numba_1t']['fps']:>10.0f}"
                     f"{p['swscale_1t']['fps']:>9.0f}{p['ratio_1t']:>7.2f}{p['paired_ratio_1t']:>8.2f}"
                     f"{p['numba_' + t]['fps']:>10.0f}{p['swscale_' + t]['fps']:>9.0f}"
                     f"{p['ratio_' + t]:>7.2f}{p['paired_ratio_' + t]:>8.2f}  {p['auto']}")
    m = r["bitrate_meter"]
    lines.append(f"BitrateMeter add + peak + average, window {m['window']}: "
                 f"{m['us_per_segment']:.1f} us per segment")
    return "\n".join(lines)


@click.command("scale")
@click.option("--size", "sizes", multiple=True, default=DEFAULT_SIZES, show_default=True,
              help="SRCWxSRCH:DSTWxDSTH; repeat for several.")
@click.option("--frames", type=int, default=10, show_default=True, help="Decoded frames per source size.")
@click.option("--trials", type=int, default=7, show_default=True)
@click.option("--threads", type=int, default=None, help="Threads for the threaded figures [CPU count].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def command(sizes: tuple[str, ...], frames: int, trials: int, threads: int | None, as_json: bool) -> None:
    """Numba I420 scaler vs FFmpeg's swscale (bilinear, via PyAV) frames/s, same frames, same run."""
    if frames < 1 or trials < 1:
        raise click.BadParameter("--frames and --trials must be >= 1")
    for s in sizes:
        _parse_size(s)
    click.echo(f"scale: decoding {frames} frames per source size, then {trials} trials per size", err=True)
    result = run(sizes, frames, trials, threads)
    click.echo(json.dumps(result, indent=2) if as_json else format_table(result))


if __name__ == "__main__":
    command.main(prog_name="mesh bench scale")
