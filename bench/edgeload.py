"""`mesh bench edge-load`: can one edge cut many streams and keep answering HTTP?

One real origin (``mesh node --role origin``, embedded database in its own process) ingests
``--streams`` ffmpeg publishers (the ingest benchmark's clip, 640x360@30, ``--bitrate-kbps``). Two
real edge processes follow every stream at once; they differ only in where closed segments are
packetised:

* ``loop``: ``edge_packetise_workers = 0``, the MPEG-TS kernel runs on the event loop;
* ``workers``: ``edge_packetise_workers = 2`` (the default), on worker threads (the kernel is
  ``nogil``), while the loop keeps serving.

While both edges cut segments, ``wrk`` hammers one playlist of one edge at a time, alternating
(loop, workers, workers, loop, ...) so the machine's noise falls on both alike. Reported per
edge: the median over trials of wrk's p50 and p99 latency and requests/s, the edge's CPU, and
the ratio of the p99s (loop / workers: above 1 means the workers help).

Run: ``mesh bench edge-load [--streams 50] [--bitrate-kbps 600] [--duration 8] [--repeats 3] [--json]``
"""
from __future__ import annotations

import json
import statistics
import tempfile
import time
import urllib.error
from pathlib import Path
from typing import Any

import click

from .hls import WRK_LUA, run_wrk
from .ingest import CpuMeter, ffmpeg_publisher, http_get, make_clip, stop_all, wait_for

EDGES = {"loop": "0", "workers": "2"}


def say(msg: str) -> None:
    click.echo(f"edge-load: {msg}", err=True)


def _listed(edge_http: str, stream: str) -> int:
    try:
        return http_get(f"{edge_http}/LiveApp/streams/{stream}.m3u8").count(b".ts\n")
    except (urllib.error.URLError, OSError):
        return 0


def run(streams: int = 50, bitrate_kbps: int = 600, duration_s: float = 8.0, repeats: int = 3,
        connections: int = 32) -> dict[str, Any]:
    from mesh.cluster import start_node
    from mesh.embedded_db import EmbeddedDb

    work = Path(tempfile.mkdtemp(prefix="mesh-bench-edgeload-"))
    script = work / "report.lua"
    script.write_text(WRK_LUA)
    clip = make_clip(work / "clip.flv", bitrate_kbps)
    say(f"clip {clip['kbps']} kbps; starting the database, one origin and two edges")
    db = EmbeddedDb(work / "db", port=0)
    uri = db.start()
    nodes: list[Any] = []
    publishers: list[Any] = []
    try:
        quiet = ["--log-level", "warning"]
        origin = start_node("origin", work, node_id="bench-origin", mongo=uri, extra_args=quiet)
        nodes.append(origin)
        edges = {}
        for name, workers in EDGES.items():
            edges[name] = start_node("edge", work, node_id=f"bench-edge-{name}", mongo=uri, extra_args=quiet,
                                     env={"MESH_EDGE_PACKETISE_WORKERS": workers,
                                          "MESH_EDGE_IDLE_UNSUBSCRIBE_S": "3600"})
            nodes.append(edges[name])
        names = [f"load{i}" for i in range(streams)]
        say(f"{streams} publishers at {bitrate_kbps} kbps")
        publishers = [ffmpeg_publisher(Path(clip["path"]), origin.rtmp_url(n)) for n in names]
        for edge in edges.values():
            for n in names:  # a viewer's first request opens the stream on the edge
                wait_for(lambda: _listed(edge.http, n) >= 1, 60, f"{n} listed on {edge.node_id}", 0.3)
        say("every stream is listed on both edges; measuring")
        trials: dict[str, list[dict[str, Any]]] = {name: [] for name in edges}
        order = list(edges)
        for r in range(repeats):
            for name in order if r % 2 == 0 else reversed(order):
                edge = edges[name]
                meter = CpuMeter(lambda e=edge: [e.pid])
                meter.start()
                result = run_wrk(f"{edge.http}/LiveApp/streams/{names[0]}.m3u8", connections=connections,
                                 duration_s=duration_s, threads=1, script=script)
                used, wall = meter.stop()
                result["edge_cpu_pct"] = round(100 * used / wall, 1)
                result["segments_cut"] = sum(_listed(edge.http, n) > 0 for n in names)
                trials[name].append(result)
                say(f"{name:8s} trial {r + 1}: p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms, "
                    f"{result['requests_per_s']:.0f} req/s, edge CPU {result['edge_cpu_pct']:.0f}%")
        summary = {name: _median(ts) for name, ts in trials.items()}
        return {
            "benchmark": "edge-load", "streams": streams, "bitrate_kbps": bitrate_kbps,
            "clip_kbps": clip["kbps"], "duration_s": duration_s, "repeats": repeats,
            "connections": connections, "edges": summary, "trials": trials,
            "p99_ratio_loop_over_workers": round(summary["loop"]["p99_ms"] / max(summary["workers"]["p99_ms"], 1e-6), 2),
            "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
    finally:
        stop_all(publishers)
        for node in reversed(nodes):
            node.stop()
        db.stop()


def _median(ts: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("p50_ms", "p99_ms", "requests_per_s", "edge_cpu_pct")
    out = {k: round(statistics.median(t[k] for t in ts), 2) for k in keys}
    out["non_2xx"] = sum(t["non_2xx"] for t in ts)
    out["socket_errors"] = sum(t["socket_errors"] for t in ts)
    return out


def format_table(r: dict[str, Any]) -> str:
    lines = [f"one edge following {r['streams']} streams at {r['clip_kbps']} kbps, wrk -c{r['connections']} "
             f"on one playlist, {r['repeats']} x {r['duration_s']:g} s per edge (medians)",
             f"{'packetising':<12}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>10}{'edge CPU':>10}{'errors':>8}"]
    for name, s in r["edges"].items():
        label = "on the loop" if name == "loop" else "on workers"
        lines.append(f"{label:<12}{s['p50_ms']:>9.2f}{s['p99_ms']:>9.2f}{s['requests_per_s']:>10.0f}"
                     f"{s['edge_cpu_pct']:>9.0f}%{s['non_2xx'] + s['socket_errors']:>8}")
    lines.append(f"p99 on the loop / on workers: {r['p99_ratio_loop_over_workers']:.2f}x")
    return "\n".join(lines)


@click.command("edge-load")
@click.option("--streams", default=50, show_default=True, help="publishers, all followed by both edges")
@click.option("--bitrate-kbps", default=600, show_default=True, help="each publisher's bitrate")
@click.option("--duration", "duration_s", default=8.0, show_default=True, help="seconds of wrk per trial")
@click.option("--repeats", default=3, show_default=True, help="trials per edge, alternating")
@click.option("--connections", default=32, show_default=True, help="wrk connections")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def command(streams: int, bitrate_kbps: int, duration_s: float, repeats: int, connections: int,
            as_json: bool) -> None:
    """Playlist latency on an edge cutting many streams: packetising on the loop vs on workers."""
    if streams < 1 or repeats < 1:
        raise click.BadParameter("streams and repeats must be at least 1")
    report = run(streams, bitrate_kbps, duration_s, repeats, connections)
    click.echo(json.dumps(report) if as_json else format_table(report))
