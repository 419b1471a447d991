"""`mesh bench ladder`: the CPU an origin's transcoding ladder costs, mesh vs the ffmpeg CLI.

One 720p30 H.264 clip (ffmpeg's testsrc2 with temporal noise so x264 has real work, 2 s GOP) is
encoded once and cached. For each ladder (default: 720p/480p/360p and 480p/360p), in alternating
trials:

* ``mesh``: :class:`mesh.ingest.transcode.Transcoder`, fed the clip's access units as fast as it
  takes them (decode once, scale per rung, libx264 per rung with the origin's settings: preset,
  ``tune=zerolatency``, no B-frames, scenecut off, keyframes forced at the source's); the
  process's CPU time (all threads) is measured;
* ``ffmpeg``: the ffmpeg CLI doing the same work in one process: one decode, ``split``, ``scale``
  per rung (bilinear), libx264 per rung with the same settings and thread count, to ``-f null``;
  its CPU time comes from the child's rusage.

Reported per ladder: CPU-seconds per second of input (median of the trials) for both, the ratio
mesh / ffmpeg (target <= 1.10), and what the figures imply for one machine: ladders per core in
real time, and streams a 2-core origin could carry (CPU-bound estimates: cores / CPU per second).

With ``--capacity`` it counts instead how many 720p30 streams with the (first) ladder one
machine keeps in real time, see :mod:`mesh_bench.ladder_capacity`.

Run: ``mesh bench ladder [--ladder 720p2500k,480p1000k,360p600k] [--preset veryfast] [--seconds 10] [--repeats 3] [--json]``
or ``mesh bench ladder --capacity [--max-streams 8] [--hold 30]``
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import click

DEFAULT_LADDERS = ("720p2500k,480p1000k,360p600k", "480p1000k,360p600k")
CLIP_CACHE = Path(tempfile.gettempdir()) / "mesh-bench-media"


def say(msg: str) -> None:
    click.echo(f"ladder: {msg}", err=True)


def make_clip(seconds: float) -> Path:
    path = CLIP_CACHE / f"ladder-720p30-{seconds:g}s.mp4"
    if not path.exists():
        CLIP_CACHE.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.mp4")
        subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-f", "lavfi",
                        "-i", "testsrc2=size=1280x720:rate=30,noise=alls=10:allf=t", "-t", str(seconds),
                        "-c:v", "libx264", "-preset", "veryfast", "-b:v", "4000k", "-g", "60", "-bf", "2",
                        "-pix_fmt", "yuv420p", str(tmp)], check=True)
        os.replace(tmp, path)
    return path


def _packets(clip: Path) -> tuple[Any, list[tuple[int, int, bool, bytes]]]:
    import av
    from mesh_codecs.h264 import video_config_from_avcc

    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        cfg = video_config_from_avcc(bytes(stream.codec_context.extradata))
        tb = stream.time_base
        rows = [(int(p.pts * tb * 90000), int(p.dts * tb * 90000), bool(p.is_keyframe), bytes(p))
                for p in container.demux(stream) if p.size]
    return cfg, rows


def run_mesh(cfg: Any, rows: list[tuple[int, int, bool, bytes]], ladder: str, preset: str, threads: int) -> float:
    """CPU seconds the Transcoder spent on the whole clip."""
    from mesh.broker.wire import FLAG_KEY, FLAG_SEG_START
    from mesh.ingest.transcode import MEDIA, Transcoder
    from mesh.ladder import parse_ladder

    out = {"n": 0}

    def emit(kind: str, rung: str, payload: Any) -> None:
        if kind == MEDIA:
            out["n"] += len(payload)

    t = Transcoder("bench", cfg, parse_ladder(ladder.split(",")), emit, fps=30.0, preset=preset,
                   threads=threads, drop_after_s=1e9)
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t.start()
    seg = -1
    for pts, dts, key, data in rows:
        if key:
            seg += 1
        while not t.submit(0, pts, dts, (FLAG_KEY | FLAG_SEG_START) if key else 0, max(seg, 0), data, None):
            time.sleep(0.005)  # the queue is full: wait for the worker
    t.finish()
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    if out["n"] < len(rows):
        raise click.ClickException(f"mesh encoded {out['n']} pictures for {len(rows)} frames x rungs")
    return (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def ffmpeg_args(clip: Path, ladder: str, preset: str, threads: int) -> list[str]:
    from mesh.ladder import parse_ladder

    rungs = parse_ladder(ladder.split(","))
    n = len(rungs)
    split = f"[0:v]split={n}" + "".join(f"[s{i}]" for i in range(n)) + ";"
    scales = ";".join(f"[s{i}]scale={r.width_for(1280, 720)}:{r.height}:flags=bilinear[o{i}]"
                      for i, r in enumerate(rungs))
    args = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-threads", "1", "-i", str(clip),
            "-filter_threads", "1", "-filter_complex", split + scales]
    for i, r in enumerate(rungs):
        kbps = r.video_kbps
        args += ["-map", f"[o{i}]", "-c:v", "libx264", "-preset", preset, "-tune", "zerolatency",
                 "-threads", str(threads), "-b:v", f"{kbps}k",
                 "-x264-params", f"keyint=100000:min-keyint=1:scenecut=0:bframes=0:vbv-maxrate={int(kbps * 1.1)}:"
                                 f"vbv-bufsize={kbps * 2}",
                 "-force_key_frames", "source", "-f", "null", "-"]
    return args


def run_ffmpeg(clip: Path, ladder: str, preset: str, threads: int) -> float:
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(ffmpeg_args(clip, ladder, preset, threads), check=True, timeout=600)
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def run(ladders: list[str], preset: str = "veryfast", seconds: float = 10.0, repeats: int = 3,
        threads: int = 1) -> dict[str, Any]:
    if shutil.which("ffmpeg") is None:
        raise click.ClickException("ffmpeg is not installed; run scripts/setup")
    clip = make_clip(seconds)
    cfg, rows = _packets(clip)
    input_s = len(rows) / 30
    say(f"clip: {len(rows)} frames of 1280x720 ({input_s:g} s); preset {preset}, {threads} thread(s) per encoder")
    results = []
    for ladder in ladders:
        trials: dict[str, list[float]] = {"mesh": [], "ffmpeg": []}
        for r in range(repeats):
            for name in (("mesh", "ffmpeg") if r % 2 == 0 else ("ffmpeg", "mesh")):
                cpu = run_mesh(cfg, rows, ladder, preset, threads) if name == "mesh" else \
                    run_ffmpeg(clip, ladder, preset, threads)
                trials[name].append(cpu / input_s)
                say(f"{ladder} {name:6s} trial {r + 1}: {cpu / input_s:.3f} CPU-s per s of input")
        mesh_cpu, ff_cpu = statistics.median(trials["mesh"]), statistics.median(trials["ffmpeg"])
        results.append({"ladder": ladder, "mesh_cpu_per_s": round(mesh_cpu, 3), "ffmpeg_cpu_per_s": round(ff_cpu, 3),
                        "ratio": round(mesh_cpu / ff_cpu, 3),
                        "mesh_ladders_per_core": round(1 / mesh_cpu, 2), "ffmpeg_ladders_per_core": round(1 / ff_cpu, 2),
                        "trials": trials})
    load = os.getloadavg()
    return {"benchmark": "ladder", "preset": preset, "threads": threads, "input_s": input_s, "repeats": repeats,
            "cores": os.cpu_count(), "load_avg": [round(x, 2) for x in load], "results": results,
            "when": time.strftime("%Y-%m-%d %H:%M:%S")}


def format_table(r: dict[str, Any]) -> str:
    cores = r["cores"] or 1
    lines = [f"720p30 input, preset {r['preset']}, {r['threads']} thread(s) per encoder, median of {r['repeats']} "
             f"(load average {r['load_avg'][0]})",
             f"{'ladder':<32}{'mesh CPU/s':>11}{'ffmpeg CPU/s':>13}{'ratio':>7}{'mesh per core':>14}"
             f"{'streams on ' + str(cores) + ' cores':>20}"]
    for x in r["results"]:
        lines.append(f"{x['ladder']:<32}{x['mesh_cpu_per_s']:>11.3f}{x['ffmpeg_cpu_per_s']:>13.3f}{x['ratio']:>7.2f}"
                     f"{x['mesh_ladders_per_core']:>14.2f}{cores / x['mesh_cpu_per_s']:>12.1f} (ffmpeg {cores / x['ffmpeg_cpu_per_s']:.1f})")
    return "\n".join(lines)


@click.command("ladder")
@click.option("--ladder", "ladders", multiple=True, help=f"a ladder to measure (repeatable) [{'; '.join(DEFAULT_LADDERS)}]")
@click.option("--preset", default="veryfast", show_default=True, help="libx264 preset for both")
@click.option("--seconds", default=10.0, show_default=True, help="length of the 720p30 clip")
@click.option("--repeats", default=3, show_default=True, help="trials per side, alternating")
@click.option("--threads", default=1, show_default=True, help="threads per encoder, both sides")
@click.option("--capacity", is_flag=True,
              help="count the 720p30 streams with the ladder kept in real time (mesh origin vs ffmpeg processes)")
@click.option("--max-streams", default=8, show_default=True, help="--capacity: stop counting here")
@click.option("--hold", "hold_s", default=30.0, show_default=True, help="--capacity: seconds per step")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def command(ladders: tuple[str, ...], preset: str, seconds: float, repeats: int, threads: int, capacity: bool,
            max_streams: int, hold_s: float, as_json: bool) -> None:
    """CPU per second of 720p30 input for a transcoding ladder: mesh vs the ffmpeg CLI (or, with
    --capacity, how many such streams keep real time)."""
    if capacity:
        from mesh_bench import ladder_capacity

        if len(ladders) > 1:
            raise click.BadParameter("--capacity counts one ladder", param_hint="--ladder")
        if not 1 <= max_streams <= 64:
            raise click.BadParameter("1 to 64", param_hint="--max-streams")
        if not 6 <= hold_s <= 3600:
            raise click.BadParameter("6 to 3600 seconds", param_hint="--hold")
        ladder = ladders[0] if ladders else DEFAULT_LADDERS[0]
        report = ladder_capacity.run(ladder, lambda clip: ffmpeg_args(clip, ladder, preset, threads), preset,
                                     threads, max_streams, hold_s)
        click.echo(json.dumps(report, indent=2) if as_json else ladder_capacity.format_table(report))
        return
    report = run(list(ladders) or list(DEFAULT_LADDERS), preset, seconds, repeats, threads)
    click.echo(json.dumps(report) if as_json else format_table(report))
