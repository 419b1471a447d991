"""`mesh bench soak`: does an origin with a transcoding ladder keep flat memory over a long run?

One 1280x720 30 fps clip (cached, 2 s GOP) is published in a loop in real time (ffmpeg
``-re -stream_loop -1 -c copy``) to an origin running a ladder (default
``720p2500k,480p1000k,360p600k``), with one edge and the embedded database, all real node
processes. A viewer on the edge fetches the master playlist and the newest segment of every
rendition every two seconds, so the edge holds every rendition's subscription and cuts its
segments. Every ``--interval`` seconds the origin's and the edge's resident memory (``VmRSS``
from ``/proc``) is sampled, with the ladder's lag (``mesh_abr_transcoder_lag_seconds``) and the
rungs dropped so far.

Reported per node: the median RSS of the first and of the last window (one minute, or a third
of a shorter run), the growth between them, the least-squares slope in MB/min over the samples
after the first window (warm-up: caches, JIT, the snapshot windows filling), and a verdict:
``flat`` when the growth is at most :data:`FLAT_MB` MB or :data:`FLAT_FRACTION` of the first
window's median, else ``growing``. The load average before and after is in the output: a loaded
machine makes the ladder lag, not the memory grow, but read the figures with it.

Run: ``mesh bench soak [--minutes 10] [--interval 10] [--abr 720p2500k,480p1000k,360p600k] [--json]``
"""
from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import click

DEFAULT_LADDER = "720p2500k,480p1000k,360p600k"
STREAM = "soak"
FLAT_MB = 16.0  # growth from the first to the last window that still counts as flat...
FLAT_FRACTION = 0.05  # ...or this fraction of the first window's median, whichever is larger
VIEW_INTERVAL_S = 2.0
_LAG_RE = re.compile(r'^mesh_abr_transcoder_lag_seconds\{stream="' + STREAM + r'"\} (\S+)$', re.M)


def say(msg: str) -> None:
    click.echo(f"soak: {msg}", err=True)


def rss_mb(pid: int, field: str = "VmRSS") -> float | None:
    """Resident memory of ``pid`` in MB (None once it is gone): ``VmRSS`` in all, or one of its
    parts, ``RssAnon`` (the heap: what a leak grows) or ``RssShmem`` (an edge's memory files
    of segments for sendfile, a cache bounded at 256 files and 128 MB)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _get(url: str, timeout_s: float = 5.0) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return resp.read()
    except (OSError, urllib.error.URLError):
        return None


class Viewer:
    """Keeps every rendition of the stream watched on the edge (a thread)."""

    def __init__(self, edge_http: str) -> None:
        self.base = f"{edge_http}/LiveApp/streams/"
        self.segments = 0
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-viewer", daemon=True)

    def start(self) -> "Viewer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(VIEW_INTERVAL_S):
            master = _get(self.base + f"{STREAM}_adaptive.m3u8")
            if master is None:
                self.errors += 1
                continue
            for line in master.decode("utf-8", "replace").splitlines():
                if not line.endswith(".m3u8"):
                    continue
                playlist = _get(self.base + line)
                names = [x for x in (playlist or b"").decode("utf-8", "replace").splitlines()
                         if x.endswith(".ts")]
                if not names or _get(self.base + names[-1], 10) is None:
                    self.errors += 1
                else:
                    self.segments += 1


def window_summary(samples: list[dict[str, Any]], key: str, window_s: float) -> dict[str, Any]:
    """First/last-window medians, growth, slope (MB/min, after the first window), the growth over
    the run's second half and the verdict on it: caches that fill as a stream starts (an edge's
    segment replies, 256 files or 128 MB) make the first minutes grow by design; what must not
    grow is the settled node."""
    points = [(s["t_s"], s[key]) for s in samples if s.get(key) is not None]
    if len(points) < 3:
        return {"verdict": "too few samples", "samples": len(points)}
    end = points[-1][0]
    first = [v for t, v in points if t <= points[0][0] + window_s] or [points[0][1]]
    last = [v for t, v in points if t >= end - window_s] or [points[-1][1]]
    first_mb, last_mb = statistics.median(first), statistics.median(last)
    later = [(t, v) for t, v in points if t > points[0][0] + window_s] or points
    slope = 0.0
    if len(later) >= 2:
        mean_t = statistics.fmean(t for t, _ in later)
        mean_v = statistics.fmean(v for _, v in later)
        var = sum((t - mean_t) ** 2 for t, _ in later)
        if var > 0:
            slope = sum((t - mean_t) * (v - mean_v) for t, v in later) / var * 60
    growth = last_mb - first_mb
    allowed = max(FLAT_MB, FLAT_FRACTION * first_mb)
    mid = points[0][0] + (end - points[0][0]) / 2
    middle = [v for t, v in points if mid - window_s <= t <= mid] or [v for t, v in points if t <= mid][-1:]
    settled = last_mb - statistics.median(middle)
    return {"samples": len(points), "first_window_mb": round(first_mb, 1), "last_window_mb": round(last_mb, 1),
            "growth_mb": round(growth, 1), "allowed_growth_mb": round(allowed, 1),
            "slope_mb_per_min": round(slope, 2), "max_mb": round(max(v for _, v in points), 1),
            "second_half_growth_mb": round(settled, 1),
            "verdict": "flat" if settled <= allowed else "growing"}


def run(minutes: float = 10.0, interval_s: float = 10.0, abr: str = DEFAULT_LADDER, preset: str = "veryfast",
        bitrate_kbps: int = 3000) -> dict[str, Any]:
    from mesh_bench.ingest import ffmpeg_publisher, make_clip, stop_all
    from mesh_bench.latency import MeshPair

    if shutil.which("ffmpeg") is None:
        raise click.ClickException("ffmpeg is not installed; run scripts/setup")
    work = Path(tempfile.mkdtemp(prefix="mesh-bench-soak-"))
    started = time.time()
    load_before = os.getloadavg()
    duration_s = minutes * 60
    window_s = min(60.0, duration_s / 3)
    samples: list[dict[str, Any]] = []
    try:
        clip = make_clip(work / "clip.flv", bitrate_kbps, size="1280x720")
        say(f"starting the embedded database, an origin with the ladder {abr} (preset {preset}) and an edge")
        pair = MeshPair(work / "mesh", origin_env={"MESH_ABR": abr, "MESH_ABR_PRESET": preset}).start()
        publisher = viewer = None
        try:
            publisher = ffmpeg_publisher(work / "clip.flv", pair.origin.rtmp_url(STREAM))
            viewer = Viewer(pair.edge.http).start()
            say(f"publishing 1280x720 for {minutes:g} min; RSS every {interval_s:g} s")
            t0 = time.monotonic()
            next_at = t0
            while True:
                now = time.monotonic()
                if now - t0 > duration_s:
                    break
                if publisher.poll() is not None:
                    raise click.ClickException(f"the publisher exited ({publisher.returncode})")
                if now >= next_at:
                    samples.append(sample(pair, now - t0))
                    next_at += interval_s
                time.sleep(max(0.05, min(next_at, t0 + duration_s) - time.monotonic()))
            samples.append(sample(pair, time.monotonic() - t0))
        finally:
            if viewer is not None:
                viewer.stop()
            if publisher is not None:
                stop_all([publisher])
            pair.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lags = [s["lag_s"] for s in samples if s.get("lag_s") is not None]
    return {"bench": "soak", "date": time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(started)),
            "nproc": os.cpu_count(), "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "params": {"minutes": minutes, "interval_s": interval_s, "abr": abr, "preset": preset,
                       "size": "1280x720", "clip_kbps": clip["kbps"], "window_s": window_s},
            "origin": window_summary(samples, "origin_mb", window_s),
            "edge": window_summary(samples, "edge_mb", window_s),
            "edge heap": window_summary(samples, "edge_anon_mb", window_s),
            "edge files": window_summary(samples, "edge_shmem_mb", window_s),
            "lag_s": {"median": round(statistics.median(lags), 3) if lags else None,
                      "max": round(max(lags), 3) if lags else None},
            "dropped": samples[-1].get("dropped") if samples else None,
            "viewer": {"segments": viewer.segments if viewer else 0, "errors": viewer.errors if viewer else 0},
            "samples": samples}


def sample(pair: Any, t_s: float) -> dict[str, Any]:
    row: dict[str, Any] = {"t_s": round(t_s, 1), "origin_mb": rss_mb(pair.origin.pid),
                           "edge_mb": rss_mb(pair.edge.pid),
                           "edge_anon_mb": rss_mb(pair.edge.pid, "RssAnon"),
                           "edge_shmem_mb": rss_mb(pair.edge.pid, "RssShmem")}
    metrics = _get(f"{pair.origin.http}/metrics")
    m = _LAG_RE.search(metrics.decode()) if metrics else None
    row["lag_s"] = float(m.group(1)) if m else None
    doc = _get(f"{pair.origin.http}/LiveApp/rest/v2/broadcasts/{STREAM}")
    try:
        row["dropped"] = [d.get("name") for d in json.loads(doc or b"{}").get("droppedRenditions") or []]
    except ValueError:
        row["dropped"] = None
    return row


def format_table(r: dict[str, Any]) -> str:
    p = r["params"]
    lines = [f"1280x720 publish looped in real time, ladder {p['abr']} (preset {p['preset']}), "
             f"{p['minutes']:g} min, RSS every {p['interval_s']:g} s, windows of {p['window_s']:g} s; "
             f"nproc {r['nproc']}, load average {r['loadavg_before']} -> {r['loadavg_after']}",
             f"{'node':<11}{'first MB':>10}{'last MB':>10}{'growth':>9}{'allowed':>9}{'MB/min':>9}{'max MB':>9}"
             f"{'samples':>9}{'2nd half':>9}  verdict"]
    for name in ("origin", "edge", "edge heap", "edge files"):
        x = r.get(name)
        if x is None:
            continue
        if "first_window_mb" not in x:
            lines.append(f"{name:<11}{x['verdict']}")
            continue
        lines.append(f"{name:<11}{x['first_window_mb']:>10.1f}{x['last_window_mb']:>10.1f}{x['growth_mb']:>9.1f}"
                     f"{x['allowed_growth_mb']:>9.1f}{x['slope_mb_per_min']:>9.2f}{x['max_mb']:>9.1f}"
                     f"{x['samples']:>9}{x['second_half_growth_mb']:>9.1f}  {x['verdict']}")
    lines.append("(edge = edge heap + edge files + code: the files are the segments it serves with sendfile, "
                 "a cache bounded at 256 files and 128 MB that fills as a viewer fetches every rendition)")
    lag = r["lag_s"]
    lines.append(f"ladder lag median {lag['median']} s, max {lag['max']} s; rungs dropped: "
                 f"{', '.join(r['dropped'] or []) or 'none'}; viewer fetched {r['viewer']['segments']} "
                 f"segments ({r['viewer']['errors']} errors)")
    return "\n".join(lines)


@click.command("soak")
@click.option("--minutes", type=float, default=10.0, show_default=True, help="How long to publish.")
@click.option("--interval", "interval_s", type=float, default=10.0, show_default=True,
              help="Seconds between RSS samples.")
@click.option("--abr", default=DEFAULT_LADDER, show_default=True, help="The origin's ladder.")
@click.option("--preset", default="veryfast", show_default=True, help="libx264 preset of the ladder.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (with every sample).")
def command(minutes: float, interval_s: float, abr: str, preset: str, as_json: bool) -> None:
    """Origin and edge memory over a long 720p publish with a ladder: flat or growing."""
    from mesh.config import X264_PRESETS
    from mesh.ladder import parse_ladder

    if not 0 < minutes <= 24 * 60:
        raise click.BadParameter("more than 0, at most a day", param_hint="--minutes")
    if not 0.5 <= interval_s <= 600:
        raise click.BadParameter("0.5 to 600 seconds", param_hint="--interval")
    if preset not in X264_PRESETS:
        raise click.BadParameter(f"one of {', '.join(X264_PRESETS)}", param_hint="--preset")
    try:
        parse_ladder(abr.split(","))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--abr") from None
    report = run(minutes, interval_s, abr, preset)
    click.echo(json.dumps(report, indent=2) if as_json else format_table(report))
