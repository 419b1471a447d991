"""`mesh bench ladder --capacity`: how many 720p30 streams with a ladder one machine keeps in real time.

Both sides get the same input, one cached 1280x720 30 fps FLV clip (2 s GOP, H.264 + AAC), sent
in real time, and the same work per stream (one decode, a scale and a libx264 encode per rung,
the origin's settings). The count goes up, N = 1, 2, 3, ..., one side after the other at each N,
until each side has failed a step (or ``--max-streams``):

* **mesh**: one origin (the ladder on, ``MESH_ABR``) and one edge, real node processes. N-1
  streams are ffmpeg ``-re -stream_loop -1 -c copy`` publishers; the N-th is our own RTMP
  publisher (:mod:`mesh_bench._rtmp_feed`), which records when each closing keyframe was written,
  while a poller on the edge's playlist records when each segment is listed: the ``src`` latency
  of :mod:`mesh_bench.latency`, measured beside the load. Every two seconds the origin's
  ``mesh_abr_transcoder_lag_seconds`` of each stream is read. The step **keeps up** when no
  stream dropped a rung and no stream's median lag over the step's second half is above
  :data:`LAG_OK_S`.
* **ffmpeg**: N ffmpeg CLI processes, each ``-re -stream_loop -1 -t HOLD -i clip`` doing
  ``split``/``scale``/libx264 per rung exactly as :func:`mesh_bench.ladder.ffmpeg_args` (the same
  settings and thread count; handed in by the ``ladder`` command), to ``-f null``. Each reports its output time (``-progress``); its
  speed is output time over wall time across the step's second half. The step **keeps up** when
  every process's speed is at least :data:`SPEED_OK` (1.0x within the sampling's resolution).

The count of a side is the largest N it kept up with. The report shows every step (the lag, the
dropped rungs, the ``src`` latency median, the ffmpeg speeds, the 1-minute load average when the
step ended), the two counts, and the load average before and after: run it on a quiet machine.
"""
from __future__ import annotations

import os
import re
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

import click

LAG_OK_S = 1.0  # median ladder lag over a step's second half, at most (a rung drops at one segment)
SPEED_OK = 0.98  # an ffmpeg process keeps real time at this speed or more
SAMPLE_S = 2.0
SETTLE_S = 4.0  # between steps: the previous streams end and the CPU goes quiet
_LAG_RE = re.compile(r'^mesh_abr_transcoder_lag_seconds\{stream="([^"]+)"\} (\S+)$', re.M)


def say(msg: str) -> None:
    click.echo(f"ladder capacity: {msg}", err=True)


def _json(url: str) -> Any:
    import json

    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return json.loads(resp.read())
    except (OSError, ValueError):
        return None


def _lags(origin_http: str) -> dict[str, float]:
    try:
        with urllib.request.urlopen(f"{origin_http}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    return {m.group(1): float(m.group(2)) for m in _LAG_RE.finditer(text)}


# --------------------------------------------------------------------------- mesh


def mesh_step(pair: Any, n: int, clip: Path, tags: list[Any], hold_s: float) -> dict[str, Any]:
    from mesh_bench.ingest import ffmpeg_publisher, stop_all
    from mesh_bench.latency import FeedThread, PlaylistPoller, match, summarize

    ids = [f"cap{n}x{i}" for i in range(n)]
    loaders = [ffmpeg_publisher(clip, pair.origin.rtmp_url(sid)) for sid in ids[1:]]
    lag_rows: list[tuple[float, dict[str, float]]] = []
    try:
        feed = FeedThread(pair.origin.rtmp_url(ids[0]), tags, hold_s).start()
        poller = PlaylistPoller(pair.playlist_url(ids[0]), 0.005).start()
        t0 = time.monotonic()
        try:
            while time.monotonic() - t0 < hold_s:
                time.sleep(SAMPLE_S)
                lag_rows.append((time.monotonic() - t0, _lags(pair.origin.http)))
            feed.join(30)
            time.sleep(0.5)
        finally:
            feed.stop()
            poller.stop()
        dropped = {}
        for sid in ids:
            doc = _json(f"{pair.origin.http}/LiveApp/rest/v2/broadcasts/{sid}") or {}
            names = [d.get("name") for d in doc.get("droppedRenditions") or []]
            if names:
                dropped[sid] = names
        exited = [sid for sid, p in zip(ids[1:], loaders) if p.poll() is not None]
    finally:
        stop_all(loaders)
    latency = summarize(match(poller.listed, feed.keyframes))
    second_half = [row for t, row in lag_rows if t >= hold_s / 2]
    medians = {sid: statistics.median(vals) for sid in ids
               if (vals := [row[sid] for row in second_half if sid in row])}
    worst = max(medians.values()) if medians else None
    missing = [sid for sid in ids if sid not in medians]
    keeps_up = not dropped and not exited and not missing and worst is not None and worst <= LAG_OK_S
    return {"n": n, "keeps_up": keeps_up, "dropped": dropped, "publishers_exited": exited,
            "no_lag_figure": missing, "lag_median_worst_s": None if worst is None else round(worst, 3),
            "lag_max_s": round(max((v for _, row in lag_rows for v in row.values()), default=0.0), 3),
            "src_latency_median_ms": latency["median_ms"], "src_latency_p90_ms": latency.get("p90_ms"),
            "src_segments": latency["segments"], "loadavg_1m": round(os.getloadavg()[0], 2)}


# --------------------------------------------------------------------------- ffmpeg


def ffmpeg_live_args(args: list[str], hold_s: float) -> list[str]:
    """The ladder's ffmpeg CLI baseline (``args``, from :func:`mesh_bench.ladder.ffmpeg_args`),
    its input read in real time for ``hold_s`` seconds, reporting progress on stdout."""
    at = args.index("-i")
    return [*args[:at], "-re", "-stream_loop", "-1", "-t", f"{hold_s:g}", *args[at:at + 2],
            "-progress", "pipe:1", "-nostats", *args[at + 2:]]


class _Progress:
    """Reads one ffmpeg's ``-progress`` output: (wall time, output seconds) pairs."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.points: list[tuple[float, float]] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("out_time_us="):
                try:
                    self.points.append((time.monotonic(), int(line.split("=", 1)[1]) / 1e6))
                except ValueError:
                    pass

    def speed(self, since: float) -> float | None:
        pts = [p for p in self.points if p[0] >= since]
        if len(pts) < 2 or pts[-1][0] <= pts[0][0]:
            return None
        return (pts[-1][1] - pts[0][1]) / (pts[-1][0] - pts[0][0])

    def join(self) -> None:
        self._thread.join(5)


def ffmpeg_step(n: int, baseline: list[str], hold_s: float) -> dict[str, Any]:
    args = ffmpeg_live_args(baseline, hold_s)
    t0 = time.monotonic()
    procs = [subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(n)]
    readers = [_Progress(p) for p in procs]
    codes = []
    for p in procs:
        try:
            p.wait(timeout=hold_s * 3 + 30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        codes.append(p.returncode)
    for r in readers:
        r.join()
    errors = [(p.stderr.read() if p.stderr else "")[-300:] for p, c in zip(procs, codes) if c != 0]
    speeds = [r.speed(t0 + hold_s / 2) for r in readers]
    known = [s for s in speeds if s is not None]
    keeps_up = not errors and len(known) == n and min(known) >= SPEED_OK
    return {"n": n, "keeps_up": keeps_up, "speeds": [None if s is None else round(s, 3) for s in speeds],
            "speed_min": round(min(known), 3) if known else None, "errors": errors,
            "loadavg_1m": round(os.getloadavg()[0], 2)}


# --------------------------------------------------------------------------- the count


def run(ladder: str, baseline: Callable[[Path], list[str]], preset: str = "veryfast", threads: int = 1,
        max_streams: int = 8, hold_s: float = 30.0) -> dict[str, Any]:
    """``baseline(clip)``: the ffmpeg CLI arguments doing the ladder's work on ``clip``."""
    from mesh_bench._rtmp_feed import read_flv
    from mesh_bench.ingest import make_clip
    from mesh_bench.latency import MeshPair

    work = Path(tempfile.mkdtemp(prefix="mesh-bench-capacity-"))
    started = time.time()
    load_before = os.getloadavg()
    steps: dict[str, list[dict[str, Any]]] = {"mesh": [], "ffmpeg": []}
    try:
        make_clip(work / "clip.flv", 3000, size="1280x720")
        tags = read_flv(work / "clip.flv")
        say(f"ladder {ladder}, preset {preset}, {threads} thread(s) per encoder, {hold_s:g} s per step")
        pair = MeshPair(work / "mesh", origin_env={"MESH_ABR": ladder, "MESH_ABR_PRESET": preset,
                                                   "MESH_ABR_ENCODER_THREADS": str(threads)}).start()
        try:
            going = {"mesh": True, "ffmpeg": True}
            for n in range(1, max_streams + 1):
                if not any(going.values()):
                    break
                for side in ("mesh", "ffmpeg") if n % 2 else ("ffmpeg", "mesh"):
                    if not going[side]:
                        continue
                    say(f"{side}: {n} stream(s)")
                    step = mesh_step(pair, n, work / "clip.flv", tags, hold_s) if side == "mesh" else \
                        ffmpeg_step(n, baseline(work / "clip.flv"), hold_s)
                    steps[side].append(step)
                    going[side] = step["keeps_up"]
                    say(f"{side}: {n} stream(s): {'keeps up' if step['keeps_up'] else 'falls behind'}")
                    time.sleep(SETTLE_S)
        finally:
            pair.stop()
    finally:
        import shutil

        shutil.rmtree(work, ignore_errors=True)

    def count(rows: list[dict[str, Any]]) -> int:
        kept = 0
        for row in rows:
            if not row["keeps_up"]:
                break
            kept = row["n"]
        return kept

    counts = {side: count(rows) for side, rows in steps.items()}
    capped = {side: bool(rows) and rows[-1]["keeps_up"] and rows[-1]["n"] == max_streams
              for side, rows in steps.items()}
    at_count = next((s for s in steps["mesh"] if s["n"] == counts["mesh"]), None)
    return {"benchmark": "ladder-capacity", "ladder": ladder, "preset": preset, "threads": threads,
            "hold_s": hold_s, "max_streams": max_streams, "input": "1280x720 30 fps FLV clip, 2 s GOP, real time",
            "cores": os.cpu_count(), "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()], "counts": counts, "capped": capped,
            "ratio": round(counts["mesh"] / counts["ffmpeg"], 3) if counts["ffmpeg"] else None,
            "src_latency_ms_at_count": at_count["src_latency_median_ms"] if at_count else None,
            "steps": steps, "when": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started))}


def format_table(r: dict[str, Any]) -> str:
    lines = [f"720p30 streams with the ladder {r['ladder']} kept in real time (preset {r['preset']}, "
             f"{r['threads']} thread(s) per encoder, {r['hold_s']:g} s per step); {r['cores']} cores, "
             f"load average {r['loadavg_before']} -> {r['loadavg_after']}",
             f"mesh keeps up: no rung dropped and every stream's median ladder lag <= {LAG_OK_S:g} s over the "
             f"step's second half; ffmpeg keeps up: every process's speed >= {SPEED_OK:g}x",
             f"{'side':<8}{'N':>3}  {'keeps up':<9}{'lag p50 worst s':>16}{'lag max s':>10}{'src ms p50':>11}"
             f"{'speed min':>10}{'load 1m':>8}  notes"]
    mesh, ff = {s["n"]: s for s in r["steps"]["mesh"]}, {s["n"]: s for s in r["steps"]["ffmpeg"]}
    for n in sorted(set(mesh) | set(ff)):
        if n in mesh:
            s = mesh[n]
            notes = "; ".join(x for x in (
                "dropped " + ", ".join(f"{k}: {'/'.join(v)}" for k, v in s["dropped"].items()) if s["dropped"] else "",
                "publishers exited: " + ", ".join(s["publishers_exited"]) if s["publishers_exited"] else "",
                "no lag figure: " + ", ".join(s["no_lag_figure"]) if s["no_lag_figure"] else "") if x)
            lag = "-" if s["lag_median_worst_s"] is None else f"{s['lag_median_worst_s']:.3f}"
            src = "-" if s["src_latency_median_ms"] is None else f"{s['src_latency_median_ms']:.1f}"
            lines.append(f"{'mesh':<8}{n:>3}  {'yes' if s['keeps_up'] else 'no':<9}{lag:>16}{s['lag_max_s']:>10.3f}"
                         f"{src:>11}{'':>10}{s['loadavg_1m']:>8.2f}  {notes}")
        if n in ff:
            s = ff[n]
            speed = "-" if s["speed_min"] is None else f"{s['speed_min']:.3f}"
            notes = f"{len(s['errors'])} failed" if s["errors"] else ""
            lines.append(f"{'ffmpeg':<8}{n:>3}  {'yes' if s['keeps_up'] else 'no':<9}{'':>16}{'':>10}{'':>11}"
                         f"{speed:>10}{s['loadavg_1m']:>8.2f}  {notes}")
    c = r["counts"]

    def shown(side: str) -> str:
        return f"{c[side]}{'+' if r['capped'][side] else ''}"

    lines.append(f"streams kept in real time: mesh {shown('mesh')}, ffmpeg processes {shown('ffmpeg')}"
                 + (f" (ratio {r['ratio']:.2f})" if r["ratio"] is not None else "")
                 + (f"; src latency at mesh's count: {r['src_latency_ms_at_count']} ms median"
                    if r["src_latency_ms_at_count"] is not None else "")
                 + ("  (+: still keeping up at --max-streams)" if any(r["capped"].values()) else ""))
    return "\n".join(lines)
