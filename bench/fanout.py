"""`mesh bench fanout`: one origin stream to N edge processes, mesh bus vs raw pyzmq.

A test pattern is encoded once with PyAV (libx264 at the given bitrate, 2 s GOP, plus AAC-LC
128 kbps) and demuxed into bus access units (AVCC video, raw AAC, 90 kHz timestamps); the result
is cached under the system temp directory. For each N, one publisher replays those access units
in a loop and N subscriber processes receive them:

- ``mesh``: the publisher pushes each unit through a bus Channel as a live origin does (segment
  starts at keyframes, the snapshot window, tick batching); each edge is a BusSubscriber with a
  TopicTracker (late join, decode, seq tracking and gap repair).
- ``raw``: XPUB to SUB with the same payloads, one ``topic+payload`` frame per unit.

To reach aggregate rates far above one stream's bitrate, the units are replayed ``--speed``
times faster than real time (``--speed 0``: as fast as the publisher can). What counts is what
the edges got: aggregate Gbit/s delivered (payload bytes) and units lost. The largest N without
loss at the given speed is reported for both.

Run: ``mesh bench fanout [--edges 1 --edges 4 ...] [--bitrate-kbps 8000] [--speed 40] [--json]``
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import time
from typing import Any

import click

from . import _bus

DEFAULT_EDGES = (1, 2, 4, 8, 12, 16)
HWM_BUDGET_BYTES = 64 << 20  # per pipe and side


# --------------------------------------------------------------------------- the media
def _access_units(mp4: bytes) -> dict[str, Any]:
    """The MP4's packets as bus access units, plus the codec config an origin would publish."""
    import av
    from mesh_codecs.aac import audio_config_from_asc
    from mesh_codecs.h264 import video_config_from_avcc
    from mesh_codecs.media import VIDEO, audio_to_dict, video_to_dict

    from mesh.broker.wire import FLAG_KEY, FLAG_SEG_START

    from ._media import demux_access_units

    with av.open(io.BytesIO(mp4)) as container:
        video = video_config_from_avcc(container.streams.video[0].codec_context.extradata)
        audio = audio_config_from_asc(container.streams.audio[0].codec_context.extradata)
        aus = demux_access_units(container)
    while aus and not (aus[0].track == VIDEO and aus[0].key):  # start at the first keyframe,
        aus.pop(0)                                              # as a segmenter would
    base = aus[0].dts
    rows = []
    for au in aus:
        if au.track == VIDEO:
            flags = (FLAG_KEY | FLAG_SEG_START) if au.key else 0
        else:
            flags = FLAG_KEY
        rows.append([au.track, au.pts - base, au.dts - base, flags, au.track == VIDEO and au.key, au.data])
    frame_ticks = 90000 // 30
    return {"config": {"video": video_to_dict(video), "audio": audio_to_dict(audio), "disc": 0, "epoch": 1},
            "aus": rows, "lap_ticks": max(r[2] for r in rows) + frame_ticks}


def prepare_media(seconds: float, width: int, height: int, fps: int, bitrate_kbps: int,
                  progress: Any = None) -> tuple[str, dict[str, Any]]:
    """Encode once (cached by parameters); returns the access-unit file and its description."""
    import msgpack

    key = hashlib.sha1(f"v2 {seconds} {width} {height} {fps} {bitrate_kbps}".encode()).hexdigest()[:12]
    folder = os.path.join(tempfile.gettempdir(), "mesh-bench-media")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{width}x{height}-{fps}-{bitrate_kbps}k-{seconds:g}s-{key}.msgpack")
    encode_s = None
    if not os.path.exists(path):
        if progress:
            progress(f"fanout: encoding {seconds:g} s of {width}x{height}@{fps} at {bitrate_kbps} kbps "
                     "(libx264 veryfast + AAC), once")
        from ._media import encode_test_mp4

        t = time.perf_counter()
        media = _access_units(encode_test_mp4(seconds, width, height, fps, bitrate_kbps * 1000,
                                                   noise=12, cap_rate=True))
        encode_s = time.perf_counter() - t
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            f.write(msgpack.packb(media, use_bin_type=True))
        os.replace(tmp, path)
    with open(path, "rb") as f:
        media = msgpack.unpackb(f.read(), raw=False)
    aus = media["aus"]
    total = sum(len(a[5]) for a in aus)
    lap_s = media["lap_ticks"] / 90000
    video = [a for a in aus if a[0] == 0]
    info = {
        "width": width, "height": height, "fps": fps, "bitrate_kbps": bitrate_kbps, "seconds": lap_s,
        "access_units": len(aus), "video_units": len(video), "audio_units": len(aus) - len(video),
        "bytes": total, "measured_kbps": total * 8 / lap_s / 1000,
        "mean_video_unit_bytes": sum(len(a[5]) for a in video) / max(1, len(video)),
        "max_unit_bytes": max(len(a[5]) for a in aus), "segments": sum(1 for a in aus if a[4]),
        "file": path, "encode_s": encode_s,
    }
    return path, info


# --------------------------------------------------------------------------- the sweep
def run(edges: tuple[int, ...], seconds: float, width: int, height: int, fps: int, bitrate_kbps: int,
        speed: float, duration_s: float, repeats: int, tick_ms: float = 2.0,
        progress: Any = None, curve: bool = False, io_threads: int = 1) -> dict[str, Any]:
    path, media = prepare_media(seconds, width, height, fps, bitrate_kbps, progress)
    mean_unit = media["bytes"] / media["access_units"]
    hwm = int(max(1000, HWM_BUDGET_BYTES // mean_unit))
    target = media["access_units"] / media["seconds"] * speed  # units/s the replay should reach
    results = []
    impls = ("mesh", "curve", "raw", "rawcurve") if curve else ("mesh", "raw")
    for n in edges:
        runs: dict[str, list[dict[str, Any]]] = {impl: [] for impl in impls}
        for r in range(repeats):
            for impl in (impls if r % 2 == 0 else impls[::-1]):
                trial = _bus.run_trial(impl, n, duration_s=duration_s, hwm=hwm, aus=path, speed=speed,
                                       burst=64, tick_ms=tick_ms, io_threads=io_threads)
                runs[impl].append(trial)
                if progress:
                    progress(f"fanout {n} edge(s) repeat {r + 1}/{repeats} {impl}: "
                             f"{trial['aggregate_mb_per_s'] * 8 / 1000:.2f} Gbit/s delivered, "
                             f"lost {trial['lost']} of {trial['expected']}")
        results.append(summarise(n, runs, target))
    out = {"benchmark": "fanout", "nproc": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
           "media": media, "speed": speed, "tick_ms": tick_ms, "duration_s": duration_s,
           "io_threads": io_threads,
           "repeats": repeats, "hwm": hwm,
           "results": results}
    for impl in impls:
        clean = [r for r in results if r[f"{impl}_clean"]]
        best = max(clean, key=lambda r: r["edges"]) if clean else None
        out[f"{impl}_max_edges_without_loss"] = best["edges"] if best else 0
        out[f"{impl}_gbit_s_at_max_edges"] = best[f"{impl}_gbit_s"] if best else 0.0
        out[f"{impl}_best_gbit_s"] = max((r[f"{impl}_gbit_s"] for r in results), default=0.0)
    return out


def summarise(n: int, runs: dict[str, list[dict[str, Any]]], target: float = 0.0) -> dict[str, Any]:
    """Medians over the repeats. An N is *clean* for an implementation when nothing was lost, the
    publisher held the replay speed (95 %) and the edges kept up with it (95 % of what was sent,
    per second): queues that only grow would turn into loss in a longer run."""
    out: dict[str, Any] = {"edges": n, "subscribers": n, "target_units_per_s": target}
    for impl, trials in runs.items():
        delivered = sum(t["delivered"] for t in trials)
        expected = sum(t["expected"] for t in trials)
        sender = _bus.median_of(trials, "pub_msgs_per_s")
        per_edge = _bus.median_of(trials, "aggregate_msgs_per_s") / n
        paced = not target or sender >= 0.95 * target
        kept_up = per_edge >= 0.95 * sender
        out.update({
            f"{impl}_paced": paced,
            f"{impl}_kept_up": kept_up,
            f"{impl}_clean": delivered == expected and paced and kept_up,
            f"{impl}_gbit_s": _bus.median_of(trials, "aggregate_mb_per_s") * 8 / 1000,
            f"{impl}_per_edge_mbit_s": _bus.median_of(trials, "mb_per_s") * 8,
            f"{impl}_msgs_per_s": _bus.median_of(trials, "aggregate_msgs_per_s"),
            f"{impl}_sender_msgs_per_s": _bus.median_of(trials, "pub_msgs_per_s"),
            f"{impl}_lost": expected - delivered,
            f"{impl}_delivered_ratio": delivered / expected if expected else 0.0,
            f"{impl}_runs_gbit_s": [t["aggregate_mb_per_s"] * 8 / 1000 for t in trials],
            f"{impl}_edge_cpu_us_per_unit": _bus.median_of(trials, "sub_cpu_us_per_msg"),
            f"{impl}_origin_cpu_us_per_unit": _bus.median_of(trials, "pub_cpu_us_per_msg"),
        })
    out["mesh_gaps"] = sum(t["gaps"] for t in runs["mesh"])
    out["mesh_recovered"] = sum(t["recovered"] for t in runs["mesh"])
    out["mesh_units_per_zmq_message"] = _bus.median_of(runs["mesh"], "entries_per_message")
    out["lost"] = out["mesh_lost"]
    raw = out["raw_gbit_s"]
    out["ratio"] = out["mesh_gbit_s"] / raw if raw else 0.0
    if runs.get("curve"):  # the cost of CURVE against plaintext mesh and raw, same run
        out["curve_ratio"] = out["curve_gbit_s"] / raw if raw else 0.0
        out["curve_vs_mesh"] = out["curve_gbit_s"] / out["mesh_gbit_s"] if out["mesh_gbit_s"] else 0.0
        out["rawcurve_ratio"] = out["rawcurve_gbit_s"] / raw if raw else 0.0
        out["curve_edge_cpu_vs_mesh"] = (out["curve_edge_cpu_us_per_unit"] / out["mesh_edge_cpu_us_per_unit"]
                                         if out["mesh_edge_cpu_us_per_unit"] else 0.0)
    return out


def format_table(report: dict[str, Any]) -> str:
    m = report["media"]
    speed = report["speed"]
    pace = f"replayed {speed:g}x faster than real time" if speed else "replayed as fast as the publisher can"
    lines = [
        (f"fan-out: {m['width']}x{m['height']}@{m['fps']} H.264 {m['measured_kbps'] / 1000:.2f} Mbit/s + AAC "
         f"({m['access_units']} units in {m['seconds']:.1f} s, mean video unit "
         f"{m['mean_video_unit_bytes'] / 1000:.1f} kB), {pace} on a {report['tick_ms']:g} ms tick; "
         f"{report['duration_s']:g} s per trial, median of {report['repeats']}; nproc {report['nproc']}; "
         f"publisher ZeroMQ I/O threads {report.get('io_threads', 1)}"),
        (f"{'edges':>5} {'impl':<9}{'Gbit/s':>8}{'per edge Mbit/s':>17}{'units/s':>10}{'delivered':>11}"
         f"{'lost':>9}{'kept up':>9}"),
    ]
    impls = (("mesh", "curve", "raw", "rawcurve") if "curve_max_edges_without_loss" in report
             else ("mesh", "raw"))
    for r in report["results"]:
        for impl in impls:
            kept_up = "yes" if r[f"{impl}_kept_up"] and r[f"{impl}_paced"] else "no"
            lines.append(f"{r['edges']:>5} {impl:<9}{r[f'{impl}_gbit_s']:>8.2f}"
                         f"{r[f'{impl}_per_edge_mbit_s']:>17.1f}{r[f'{impl}_msgs_per_s']:>10,.0f}"
                         f"{r[f'{impl}_delivered_ratio'] * 100:>10.2f}%{r[f'{impl}_lost']:>9,}{kept_up:>9}")
        lines.append(f"{'':>5} ratio mesh/raw {r['ratio']:.2f}  (mesh: {r['mesh_units_per_zmq_message']:.1f} "
                     f"units per ZeroMQ message, {r['mesh_recovered']} repaired from the window)")
        if "curve_ratio" in r:
            lines.append(f"{'':>5} ratio curve/raw {r['curve_ratio']:.2f}, curve/mesh {r['curve_vs_mesh']:.2f}, "
                         f"edge CPU per unit curve/mesh {r['curve_edge_cpu_vs_mesh']:.2f}; "
                         f"libzmq alone: rawcurve/raw {r['rawcurve_ratio']:.2f}")
    for impl in impls:
        lines.append(f"{impl}: largest N without loss (and keeping up) "
                     f"{report[f'{impl}_max_edges_without_loss']} "
                     f"({report[f'{impl}_gbit_s_at_max_edges']:.2f} Gbit/s delivered); "
                     f"best aggregate {report[f'{impl}_best_gbit_s']:.2f} Gbit/s")
    return "\n".join(lines)


def _ints(values: tuple[str, ...], default: tuple[int, ...]) -> tuple[int, ...]:
    out = [int(p) for v in values for p in str(v).split(",") if p.strip()]
    if any(n < 1 for n in out):
        raise click.BadParameter("edge counts must be at least 1", param_hint="--edges")
    return tuple(out) or default


@click.command("fanout")
@click.option("--edges", "edges", multiple=True, metavar="N",
              help="edge processes; repeat or comma-separate for a sweep [1, 2, 4, 8, 12, 16]")
@click.option("--bitrate-kbps", type=click.IntRange(100, 100_000), default=7000, show_default=True,
              help="x264 target bitrate of the test pattern (it lands ~10 % above; the measured "
                   "rate is reported)")
@click.option("--size", default="1920x1080", show_default=True, help="WxH of the test pattern")
@click.option("--fps", type=click.IntRange(1, 120), default=30, show_default=True)
@click.option("--seconds", type=click.FloatRange(1, 60), default=4.0, show_default=True,
              help="length of the encoded media (replayed in a loop)")
@click.option("--speed", type=click.FloatRange(0, 10_000), default=40.0, show_default=True,
              help="replay speed relative to real time (0: as fast as the publisher can)")
@click.option("--tick-ms", type=click.FloatRange(0.1, 1000), default=2.0, show_default=True,
              help="the paced publisher wakes this often and sends what is due (both impls)")
@click.option("--duration", type=click.FloatRange(0.1, 120), default=3.0, show_default=True,
              help="seconds each trial publishes")
@click.option("--repeats", type=click.IntRange(1, 50), default=1, show_default=True)
@click.option("--curve", is_flag=True,
              help="also run the bus with CURVE on (bus_security = \"curve\") in the same run")
@click.option("--io-threads", type=click.IntRange(1, 16), default=1, show_default=True,
              help="the publisher's ZeroMQ I/O threads (a node's bus_io_threads): with CURVE each "
                   "edge's copy is encrypted on one of them")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def command(edges: tuple[str, ...], bitrate_kbps: int, size: str, fps: int, seconds: float, speed: float,
            tick_ms: float, duration: float, repeats: int, curve: bool, io_threads: int, as_json: bool) -> None:
    """One stream to N edge processes: Gbit/s delivered and largest N without loss, vs raw pyzmq."""
    try:
        width, height = (int(v) for v in size.lower().split("x"))
    except ValueError:
        raise click.BadParameter("expected WxH, e.g. 1920x1080", param_hint="--size") from None
    try:
        report = run(_ints(edges, DEFAULT_EDGES), seconds, width, height, fps, bitrate_kbps, speed,
                     duration, repeats, tick_ms, progress=lambda line: click.echo(line, err=True),
                     curve=curve, io_threads=io_threads)
    except _bus.WorkerError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(report) if as_json else format_table(report))
