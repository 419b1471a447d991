"""`mesh bench`: benchmarks that run their baseline in the same run and report the ratio.

Each benchmark lives in ``bench/`` (installed as ``mesh_bench``) and exports a click command named
``command``; this group only collects them, importing each lazily so `mesh --help` stays fast.
"""
from __future__ import annotations

import importlib

import click

BENCHMARKS = {
    # subcommand: (module, one-line help)
    "throughput": ("mesh_bench.throughput", "bus messages/s and MB/s vs raw pyzmq PUB/SUB"),
    "fanout": ("mesh_bench.fanout", "one stream to N edges: largest N / Gbit/s without loss vs raw pyzmq"),
    "packetise": ("mesh_bench.packetise", "Numba TS packetiser vs FFmpeg's mpegts muxer via PyAV"),
    "fmp4": ("mesh_bench.fmp4", "Numba fMP4 (LL-HLS parts) packetiser vs FFmpeg's mp4 muxer via PyAV"),
    "scale": ("mesh_bench.scale", "Numba I420 frame scaler vs FFmpeg's swscale via PyAV, frames/s"),
    "hls": ("mesh_bench.hls", "edge HLS requests/s vs nginx serving the same bytes (wrk)"),
    "e2e": ("mesh_bench.e2e", "access unit at the origin to segment listed on an edge; player distance"),
    "ingest": ("mesh_bench.ingest", "origin CPU per ingested Mbit vs nginx-rtmp"),
    "latency": ("mesh_bench.latency", "closing keyframe to segment listed: mesh edge vs nginx-rtmp"),
    "ladder": ("mesh_bench.ladder", "transcoding ladder CPU per second of 720p30 input vs the ffmpeg CLI"),
    "soak": ("mesh_bench.soak", "origin and edge memory over a long 720p publish with a ladder: flat or not"),
    "takeover": ("mesh_bench.takeover", "origin SIGKILL to a new segment listed on an edge vs a clean republish"),
    "faults": ("mesh_bench.faults", "faults on namespaced hosts (root): a viewer's stalls, losses, recovery"),
    "fuzz": ("mesh_bench.fuzz", "every parser a stranger reaches, fed generated inputs; fails on a crash"),
    "ll-capacity": ("mesh_bench.ll_capacity", "LL-HLS blocking reloads: part-delivery delay with N waiting players"),
    "edge-load": ("mesh_bench.edgeload", "playlist latency on an edge cutting many streams: loop vs workers"),
}


class BenchGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(BENCHMARKS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in BENCHMARKS:
            return None
        module, _ = BENCHMARKS[name]
        try:
            return importlib.import_module(module).command
        except (ImportError, AttributeError) as exc:
            raise click.ClickException(f"benchmark {name} is not available: {exc}") from None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Benchmarks"):
            formatter.write_dl([(name, text) for name, (_, text) in BENCHMARKS.items()])


@click.group(cls=BenchGroup)
def bench() -> None:
    """Measure the mesh against the best alternative on this machine, in the same run.

    Every benchmark prints its baseline beside mesh's figure and the ratio; --json prints one JSON
    object for scripts. Record results with their command in bench/RESULTS.md.
    """
