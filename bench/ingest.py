"""Benchmark: RTMP ingest cost, a mesh origin vs nginx-rtmp, in the same run.

One short H.264/AAC FLV clip is encoded once at ``--bitrate-kbps`` (Debian ffmpeg, 640x360@30,
2 s GOP, AAC 64 kbps). For each stream count N, N ``ffmpeg -re -stream_loop -1 -i clip.flv -c copy
-f flv rtmp://...`` publishers push it, first to a real ``mesh node --role origin`` process (with
the embedded database in its own process), then to a private nginx-rtmp with ``hls on``
(:mod:`mesh_bench._nginx_rtmp`). After every stream is live and a short settle, both are
measured over ``--duration`` seconds:

* server CPU (% of one core) from ``/proc/<pid>/stat`` utime+stime: the mesh node process alone,
  the embedded database process separately (a cost of mesh's design: one registry write per
  closed segment per stream), nginx master + workers;
* ingest achieved: wire bytes the *server* received (mesh: ``mesh_rtmp_received_bytes_total`` from
  its /metrics; nginx-rtmp: ``bytes_in`` from its ``rtmp_stat``) against N x the clip's bitrate;
* CPU-seconds per ingested Mbit (the figure the ratio is about);
* streams that kept producing segments (mesh: the stream's ``media_sequence`` in the registry
  advanced by at least duration / 2 s - 1; nginx-rtmp: its ``.ts`` files advanced as much);
* the publishers' own CPU (ffmpeg, for scale: they share the machine).

CPU is the scheduler's nanosecond runtime of every thread (``/proc/PID/task/*/schedstat``) where
the kernel provides it, else utime+stime from ``/proc/PID/stat`` in 10 ms clock ticks; a trial
whose server CPU was below :data:`MIN_TICKS` ticks there (one nginx-rtmp publisher for 3 s can be
0) is marked ``below_resolution``, and the ratio for that N says "below resolution" instead of
disappearing. Ratios are paired: the median over repeats of mesh / nginx-rtmp of the same repeat.

Run: ``mesh bench ingest [--streams 10 50] [--bitrate-kbps 600] [--duration 15] [--json]``
"""
from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

GOP_S = 2.0
FPS = 30
AUDIO_KBPS = 64
CLIP_S = 10.0
TARGET_RATIO = 1.0  # mesh origin CPU per ingested Mbit <= 1.0 x nginx-rtmp's
SEGMENT_S = 2.0
RETRY_S = 2.0  # a refused publisher starts again after this long (OBS's reconnect delay is 2-10 s)
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def say(msg: str) -> None:
    click.echo(f"ingest: {msg}", err=True)


# --------------------------------------------------------------------------- helpers (shared)


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process, in seconds (0 when it is gone): whole clock ticks."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def sched_seconds(pid: int) -> float | None:
    """CPU time of one process from the scheduler's own accounting (``/proc/PID/task/*/schedstat``,
    nanoseconds, summed over its threads); None where the kernel does not provide it."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as fh:
                total += int(fh.read().split()[0])
        except (OSError, IndexError, ValueError):
            continue  # the thread ended between the listing and the read
    return total / 1e9 if tids else None


MIN_TICKS = 20  # a /proc/PID/stat figure below this many clock ticks is noise (+-1 tick is 5 %)


class CpuMeter:
    """CPU of a set of processes over an interval: ``start()``, then ``stop()``.

    Two readings are taken of every process: the scheduler's nanosecond runtime
    (``schedstat``, used when the kernel has it) and utime+stime from ``/proc/PID/stat``, which
    only moves in clock ticks (10 ms at the usual USER_HZ = 100): a quiet process (nginx-rtmp with
    one publisher uses ~0.3 % of a core) can show 0 ticks over a few seconds. ``stop()`` says
    which one it used and how many ticks the coarse one saw, so a report can say "below
    resolution" instead of dividing by 0."""

    def __init__(self, pids: Callable[[], Sequence[int]]) -> None:
        self._pids = pids
        self._t0 = 0.0
        self._c0: dict[int, float] = {}
        self._s0: dict[int, float | None] = {}

    def start(self) -> None:
        pids = list(self._pids())
        self._c0 = {pid: cpu_seconds(pid) for pid in pids}
        self._s0 = {pid: sched_seconds(pid) for pid in pids}
        self._t0 = time.monotonic()

    def stop(self) -> tuple[float, float]:
        """(CPU seconds used, wall seconds) since start(); processes that appeared count from 0."""
        used, wall, _source, _ticks = self.stop_detail()
        return used, wall

    def stop_detail(self) -> tuple[float, float, str, int]:
        """(CPU seconds, wall seconds, source "schedstat" or "stat", clock ticks seen by stat)."""
        wall = time.monotonic() - self._t0
        ticks_used = sched_used = 0.0
        precise = True
        for pid in set(self._pids()) | set(self._c0):
            now = cpu_seconds(pid)
            if now:
                ticks_used += now - self._c0.get(pid, 0.0)
            s_now, s_then = sched_seconds(pid), self._s0.get(pid, 0.0)
            if s_now is None or s_then is None:
                precise = precise and not now  # a process we cannot read precisely
            else:
                sched_used += s_now - s_then
        ticks = round(ticks_used * _CLK_TCK)
        if precise:
            return sched_used, wall, "schedstat", ticks
        return ticks_used, wall, "stat", ticks


CLIP_CACHE = Path(tempfile.gettempdir()) / "mesh-bench-media"


def make_clip(path: Path, bitrate_kbps: int, seconds: float = CLIP_S, size: str = "640x360") -> dict[str, Any]:
    """Encode the test clip (ffmpeg lavfi testsrc2 + temporal noise so x264 spends its bitrate,
    and a tone) as FLV at ``path``; returns its measured bitrate. Encoded clips are cached in
    the system temp dir by their parameters."""
    cached = CLIP_CACHE / f"clip-{size}-{FPS}fps-{bitrate_kbps}k-{seconds:g}s-gop{GOP_S:g}.flv"
    if not cached.exists():
        CLIP_CACHE.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".{os.getpid()}.tmp.flv")
        _encode_clip(tmp, bitrate_kbps, seconds, size)
        os.replace(tmp, cached)
    shutil.copyfile(cached, path)
    size_bytes = path.stat().st_size
    return {"path": str(path), "seconds": seconds, "bytes": size_bytes,
            "kbps": round(size_bytes * 8 / seconds / 1000, 1), "nominal_kbps": bitrate_kbps,
            "size": size, "fps": FPS, "gop_s": GOP_S}


def _encode_clip(path: Path, bitrate_kbps: int, seconds: float, size: str) -> None:
    if shutil.which("ffmpeg") is None:
        raise click.ClickException("ffmpeg is not installed; run scripts/setup (Debian: apt-get install ffmpeg)")
    video_kbps = max(bitrate_kbps - AUDIO_KBPS, 50)
    gop = int(GOP_S * FPS)
    args = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
            "-f", "lavfi", "-i", f"testsrc2=size={size}:rate={FPS},noise=alls=12:allf=t",
            "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
            "-t", str(seconds), "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p",
            "-b:v", f"{video_kbps}k", "-maxrate", f"{video_kbps}k", "-bufsize", f"{video_kbps}k",
            "-g", str(gop), "-keyint_min", str(gop), "-sc_threshold", "0", "-x264-params", "nal-hrd=cbr",
            "-c:a", "aac", "-b:a", f"{AUDIO_KBPS}k", "-ac", "2", "-f", "flv", str(path)]
    subprocess.run(args, check=True, timeout=180)


def ffmpeg_publisher(clip: Path, url: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-re",
                             "-stream_loop", "-1", "-i", str(clip), "-c", "copy", "-f", "flv", url],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def publish_until_live(server: Any, clip: Path, names: list[str], pubs: list[subprocess.Popen[bytes]],
                       timeout_s: float, retry_s: float = RETRY_S) -> int:
    """Start one ffmpeg publisher per name into ``pubs`` and wait until every stream is live.
    A publisher that exits first (its publish refused: a mesh origin answers "the cluster
    registry is unavailable; try again in 2 s" when its database cannot keep up with a burst
    of claims) is started again ``retry_s`` later, as OBS reconnects. Returns the restarts."""
    pubs.extend(ffmpeg_publisher(clip, server.rtmp_url(name)) for name in names)
    deadline = time.monotonic() + timeout_s
    exited: dict[int, float] = {}
    restarts = 0
    while server.live_streams(names) < len(names):
        now = time.monotonic()
        if now > deadline:
            raise click.ClickException(f"timed out after {timeout_s:g} s waiting for {len(names)} streams "
                                       f"live on {server.name} ({restarts} publishers restarted)")
        for i, p in enumerate(pubs):
            if p.poll() is None:
                continue
            if now - exited.setdefault(i, now) >= retry_s:
                del exited[i]
                pubs[i] = ffmpeg_publisher(clip, server.rtmp_url(names[i]))
                restarts += 1
        time.sleep(0.2)
    return restarts


def stop_all(procs: Sequence[subprocess.Popen[Any]], timeout_s: float = 5.0) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + timeout_s
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise click.ClickException(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(interval_s)


def http_get(url: str, timeout_s: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:
        return resp.read()


# --------------------------------------------------------------------------- the two servers


class MeshOrigin:
    """A real origin node process with the embedded database in its own process."""

    name = "mesh"

    def __init__(self, workdir: Path) -> None:
        from mesh.cluster import start_node
        from mesh.embedded_db import EmbeddedDb

        self.db = EmbeddedDb(workdir / "db", port=0)
        self.uri = self.db.start()
        self.node = start_node("origin", workdir, node_id="bench-origin", mongo=self.uri,
                               db_name="mesh", extra_args=["--log-level", "warning"])
        import pymongo

        self._client = pymongo.MongoClient(self.uri, serverSelectionTimeoutMS=3000)
        self._streams = self._client["mesh"]["streams"]

    def rtmp_url(self, stream: str) -> str:
        return self.node.rtmp_url(stream)

    def pids(self) -> list[int]:
        return [self.node.pid]

    def db_pids(self) -> list[int]:
        return [self.db.pid] if self.db.pid else []

    def live_streams(self, names: list[str]) -> int:
        return self._streams.count_documents({"_id": {"$in": names}, "status": "broadcasting"})

    def segments(self, names: list[str]) -> dict[str, int]:
        docs = self._streams.find({"_id": {"$in": names}}, {"media_sequence": 1})
        return {d["_id"]: int(d.get("media_sequence", 0)) for d in docs}

    def bytes_in(self, names: list[str]) -> int:
        text = http_get(self.node.http + "/metrics").decode()
        m = re.search(r"^mesh_rtmp_received_bytes_total (\S+)$", text, re.MULTILINE)
        if m is None:
            raise click.ClickException("the origin's /metrics has no mesh_rtmp_received_bytes_total")
        return int(float(m.group(1)))

    def stop(self) -> None:
        self._client.close()
        self.node.stop()
        self.db.stop()


class NginxRtmpServer:
    name = "nginx_rtmp"

    def __init__(self, workdir: Path) -> None:
        from mesh_bench._nginx_rtmp import NginxRtmp, NginxRtmpError

        try:
            self.ng = NginxRtmp(workdir / "nginx-rtmp", fragment_s=SEGMENT_S).start()
        except NginxRtmpError as exc:
            raise click.ClickException(str(exc)) from None

    def rtmp_url(self, stream: str) -> str:
        return self.ng.rtmp_url(stream)

    def pids(self) -> list[int]:
        return self.ng.pids()

    def db_pids(self) -> list[int]:
        return []

    def live_streams(self, names: list[str]) -> int:
        have = self.ng.stat_bytes_in()
        return sum(1 for n in names if have.get(n, 0) > 0)

    def segments(self, names: list[str]) -> dict[str, int]:
        out = {}
        for n in names:
            paths = self.ng.segment_paths(n)
            out[n] = int(paths[-1].stem.rsplit("-", 1)[1]) + 1 if paths else 0
        return out

    def bytes_in(self, names: list[str]) -> int:
        have = self.ng.stat_bytes_in()
        return sum(have.get(n, 0) for n in names)

    def stop(self) -> None:
        self.ng.stop()


# --------------------------------------------------------------------------- one trial


@dataclass
class Trial:
    server: str
    streams: int
    duration_s: float
    cpu_pct: float
    db_cpu_pct: float
    publishers_cpu_pct: float
    ingest_mbps: float
    nominal_mbps: float
    cpu_s_per_mbit: float
    cpu_s_per_mbit_with_db: float
    producing: int
    segments_advanced: int
    publishers_alive: int
    start_s: float
    loadavg: float  # the machine's 1-minute load average at the end of the measurement (noise)
    cpu_source: str = "schedstat"  # how the server's CPU was read (see CpuMeter)
    cpu_ticks: int = 0  # clock ticks /proc/PID/stat saw over the trial (the coarse cross-check)
    below_resolution: bool = False  # the server's CPU was too small to read over this trial
    restarts: int = 0  # publishers started again after their publish was refused (see publish_until_live)

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["achieved_pct"] = round(100 * self.ingest_mbps / self.nominal_mbps, 1) if self.nominal_mbps else 0.0
        for k, v in d.items():
            if isinstance(v, float):
                d[k] = round(v, 6 if "per_mbit" in k else 2)
        return d


def run_trial(server: Any, clip: Path, clip_kbps: float, n: int, duration_s: float, settle_s: float,
              tag: str) -> Trial:
    names = [f"{tag}n{n}s{i}" for i in range(n)]
    t0 = time.monotonic()
    pubs: list[subprocess.Popen[bytes]] = []
    try:
        restarts = publish_until_live(server, clip, names, pubs, 30 + n * 1.0)  # slow on a loaded machine
        start_s = time.monotonic() - t0
        time.sleep(settle_s)
        srv_cpu = CpuMeter(server.pids)
        db_cpu = CpuMeter(server.db_pids)
        pub_cpu = CpuMeter(lambda: [p.pid for p in pubs])
        seg0 = server.segments(names)
        b0 = server.bytes_in(names)
        for m in (srv_cpu, db_cpu, pub_cpu):
            m.start()
        time.sleep(duration_s)
        used, wall, source, ticks = srv_cpu.stop_detail()
        db_used, _ = db_cpu.stop()
        pub_used, _ = pub_cpu.stop()
        b1 = server.bytes_in(names)
        seg1 = server.segments(names)
        alive = sum(1 for p in pubs if p.poll() is None)
        load = os.getloadavg()[0]
    finally:
        stop_all(pubs)
    mbit = (b1 - b0) * 8 / 1e6
    expected = int(wall // SEGMENT_S)
    advanced = {k: seg1.get(k, 0) - seg0.get(k, 0) for k in names}
    return Trial(
        server=server.name, streams=n, duration_s=wall, cpu_pct=100 * used / wall,
        db_cpu_pct=100 * db_used / wall, publishers_cpu_pct=100 * pub_used / wall,
        ingest_mbps=mbit / wall, nominal_mbps=n * clip_kbps / 1000,
        cpu_s_per_mbit=used / mbit if mbit else float("nan"),
        cpu_s_per_mbit_with_db=(used + db_used) / mbit if mbit else float("nan"),
        producing=sum(1 for v in advanced.values() if v >= max(expected - 1, 1)),
        segments_advanced=sum(advanced.values()), publishers_alive=alive, start_s=start_s, loadavg=load,
        restarts=restarts,
        cpu_source=source, cpu_ticks=ticks,
        below_resolution=used <= 0 or (source == "stat" and ticks < MIN_TICKS))


def _after_trial(server: Any, names_tag: str) -> None:
    """Let the server settle after its publishers went away (mesh ends streams asynchronously)."""
    time.sleep(1.0)


def run(streams: Sequence[int] = (10, 50), bitrate_kbps: int = 600, duration_s: float = 15.0,
        settle_s: float = 3.0, repeats: int = 1, servers: Sequence[str] = ("mesh", "nginx_rtmp"),
        workdir: Path | None = None) -> dict[str, Any]:
    own = workdir is None
    work = Path(tempfile.mkdtemp(prefix="mesh-bench-ingest-")) if own else Path(workdir)  # type: ignore[arg-type]
    started = time.time()
    servers_up: dict[str, Any] = {}
    try:
        say(f"encoding a {CLIP_S:g} s clip at {bitrate_kbps} kbps")
        clip_path = work / "clip.flv"
        clip = make_clip(clip_path, bitrate_kbps)
        if "mesh" in servers:
            say("starting the embedded database and a mesh origin")
            servers_up["mesh"] = MeshOrigin(work / "mesh")
        if "nginx_rtmp" in servers:
            say("starting nginx-rtmp (hls on)")
            servers_up["nginx_rtmp"] = NginxRtmpServer(work)
        trials: dict[str, dict[str, list[Trial]]] = {s: {} for s in servers_up}
        for rep in range(repeats):
            for n in streams:
                for name, server in servers_up.items():
                    say(f"{name}: {n} publishers, {duration_s:g} s"
                        + (f" (repeat {rep + 1}/{repeats})" if repeats > 1 else ""))
                    t = run_trial(server, clip_path, clip["kbps"], n, duration_s, settle_s, f"r{rep}")
                    trials[name].setdefault(str(n), []).append(t)
                    say(f"{name}: {n} streams: cpu {t.cpu_pct:.1f}% "
                        + (f"(+db {t.db_cpu_pct:.1f}%) " if name == "mesh" else "")
                        + f"{t.cpu_s_per_mbit:.5f} cpu-s/Mbit, ingest {t.ingest_mbps:.1f}/"
                        f"{t.nominal_mbps:.1f} Mbit/s, {t.producing}/{n} producing"
                        + (f", {t.restarts} publishers restarted after a refusal" if t.restarts else ""))
                    _after_trial(server, f"r{rep}")
    finally:
        for server in servers_up.values():
            try:
                server.stop()
            except Exception as exc:  # best effort: the numbers are already taken
                say(f"stopping {server.name}: {exc}")
        if own:
            shutil.rmtree(work, ignore_errors=True)
    results: dict[str, Any] = {}
    for name, per_n in trials.items():
        results[name] = {}
        for n, ts in per_n.items():
            med = _median_trial(ts)
            results[name][n] = med
    ratios: dict[str, Any] = {}
    if "mesh" in results and "nginx_rtmp" in results:
        for n in results["mesh"]:
            if n in results["nginx_rtmp"]:
                ratios[n] = _ratio(trials["mesh"][n], trials["nginx_rtmp"][n])
    return {
        "bench": "ingest", "date": time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(started)),
        "nproc": os.cpu_count(),
        "params": {"streams": list(streams), "bitrate_kbps": bitrate_kbps, "duration_s": duration_s,
                   "settle_s": settle_s, "repeats": repeats},
        "clip": {k: v for k, v in clip.items() if k != "path"},
        "target": f"mesh origin cpu-s per ingested Mbit <= {TARGET_RATIO:g} x nginx-rtmp's",
        "results": results, "ratios": ratios,
    }


def _ratio(mesh: list[Trial], nginx: list[Trial]) -> dict[str, Any]:
    """mesh / nginx-rtmp CPU per ingested Mbit for one N: the median of the per-repeat ratios
    (repeat i of both ran back to back). Repeats where either side's CPU was below what could be
    read are left out; when none is left, every figure is None and ``below_resolution`` names
    the side(s), so a report says so instead of dropping the row."""
    low = sorted({t.server for t in mesh + nginx if t.below_resolution or not t.cpu_s_per_mbit > 0})
    pairs = [(a, b) for a, b in zip(mesh, nginx)
             if not (a.below_resolution or b.below_resolution) and a.cpu_s_per_mbit > 0 and b.cpu_s_per_mbit > 0]
    if not pairs:
        return {"cpu_s_per_mbit": None, "cpu_s_per_mbit_paired_median": None, "cpu_s_per_mbit_with_db": None,
                "cpu_pct": None, "target_met": None, "below_resolution": low, "pairs": 0}
    paired = statistics.median(a.cpu_s_per_mbit / b.cpu_s_per_mbit for a, b in pairs)
    return {
        "cpu_s_per_mbit": round(paired, 3),  # paired medians (the figure the target is about)
        "cpu_s_per_mbit_paired_median": round(paired, 3),
        "cpu_s_per_mbit_of_medians": round(statistics.median(a.cpu_s_per_mbit for a, _ in pairs)
                                           / statistics.median(b.cpu_s_per_mbit for _, b in pairs), 3),
        "cpu_s_per_mbit_with_db": round(statistics.median(a.cpu_s_per_mbit_with_db / b.cpu_s_per_mbit
                                                          for a, b in pairs), 3),
        "cpu_pct": round(statistics.median(a.cpu_pct / b.cpu_pct for a, b in pairs), 3),
        "target_met": paired <= TARGET_RATIO,
        "below_resolution": low, "pairs": len(pairs),
    }


def _median_trial(ts: list[Trial]) -> dict[str, Any]:
    dicts = [t.as_dict() for t in ts]
    if len(dicts) == 1:
        return dicts[0]
    out = {}
    for k in dicts[0]:
        vals = [d[k] for d in dicts]
        if all(type(v) is int for v in vals):
            out[k] = round(statistics.median(vals))
        elif all(type(v) is bool for v in vals):
            out[k] = any(vals)
        elif all(type(v) in (int, float) for v in vals):
            out[k] = round(statistics.median(vals), 6)
        else:
            out[k] = vals[0]
        if len(vals) > 1 and k in ("cpu_pct", "cpu_s_per_mbit", "cpu_s_per_mbit_with_db", "db_cpu_pct"):
            out[f"{k}_all"] = vals
    out["repeats"] = len(dicts)
    return out


def format_table(r: dict[str, Any]) -> str:
    c = r["clip"]
    lines = [(f"clip {c['size']}@{c['fps']} H.264 + AAC, {c['kbps']:g} kbps measured ({c['nominal_kbps']} "
              f"nominal), {c['gop_s']:g} s GOP; {r['params']['duration_s']:g} s per trial; nproc {r['nproc']}; "
              f"CPU from {_sources(r)}"),
             (f"{'server':<11}{'N':>5}{'cpu %':>8}{'db %':>7}{'cpu-s/Mbit':>12}{'+db':>10}"
              f"{'ingest Mbit/s':>15}{'achieved':>10}{'producing':>11}{'pub cpu %':>11}{'load':>7}")]
    for name, per_n in r["results"].items():
        for n, x in per_n.items():
            db = f"{x['db_cpu_pct']:.1f}" if name == "mesh" else "-"
            withdb = f"{x['cpu_s_per_mbit_with_db']:.5f}" if name == "mesh" else "-"
            lines.append(f"{name:<11}{n:>5}{x['cpu_pct']:>8.1f}{db:>7}{x['cpu_s_per_mbit']:>12.5f}{withdb:>10}"
                         f"{x['ingest_mbps']:>8.1f}/{x['nominal_mbps']:<6.1f}{x['achieved_pct']:>9.1f}%"
                         f"{x['producing']:>7}/{x['streams']:<3}{x['publishers_cpu_pct']:>11.1f}{x['loadavg']:>7.1f}")
    for n, q in r["ratios"].items():
        if q["cpu_s_per_mbit"] is None:
            lines.append(f"N={n}: below resolution: {' and '.join(q['below_resolution'])} used less CPU than "
                         f"/proc could resolve over {r['params']['duration_s']:g} s; no ratio (measure longer)")
            continue
        lines.append(f"N={n}: mesh/nginx-rtmp cpu-s per Mbit {q['cpu_s_per_mbit']:.2f}x "
                     f"({q['cpu_s_per_mbit_with_db']:.2f}x counting the database; paired median of "
                     f"{q['pairs']}); target <= {TARGET_RATIO:g}x {'met' if q['target_met'] else 'missed'}")
    return "\n".join(lines)


def _sources(r: dict[str, Any]) -> str:
    used = {x.get("cpu_source", "stat") for per_n in r["results"].values() for x in per_n.values()}
    names = {"schedstat": "/proc/PID/task/*/schedstat (ns)", "stat": "/proc/PID/stat (10 ms ticks)"}
    return " and ".join(names.get(u, u) for u in sorted(used)) or "/proc"


def _counts(values: Sequence[str]) -> list[int]:
    out = []
    for v in values:
        for part in str(v).replace(",", " ").split():
            n = int(part)
            if n < 1:
                raise click.BadParameter("stream counts are positive integers", param_hint="--streams")
            out.append(n)
    return out


@click.command("ingest", context_settings={"ignore_unknown_options": False})
@click.option("--streams", "streams_opt", multiple=True, metavar="N",
              help="Publisher counts to measure (repeatable, or comma-separated; more counts may "
                   "follow as arguments: --streams 10 50). Default: 10 and 50.")
@click.argument("more_streams", nargs=-1, type=int)
@click.option("--bitrate-kbps", type=int, default=600, show_default=True, help="Clip bitrate (video + audio).")
@click.option("--duration", "duration_s", type=float, default=15.0, show_default=True,
              help="Measured seconds per trial (after every stream is live).")
@click.option("--settle", "settle_s", type=float, default=3.0, show_default=True,
              help="Seconds between all streams being live and the measurement.")
@click.option("--repeats", type=int, default=1, show_default=True, help="Trials per (server, N); medians.")
@click.option("--only", type=click.Choice(["mesh", "nginx_rtmp"]), default=None, help="Run one server only.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def command(streams_opt: tuple[str, ...], more_streams: tuple[int, ...], bitrate_kbps: int, duration_s: float,
            settle_s: float, repeats: int, only: str | None, as_json: bool) -> None:
    """Origin CPU per ingested Mbit: a mesh origin vs nginx-rtmp (hls on), N ffmpeg publishers each."""
    streams = _counts(streams_opt) + list(more_streams) or [10, 50]
    servers = [only] if only else ["mesh", "nginx_rtmp"]
    result = run(streams, bitrate_kbps, duration_s, settle_s, repeats, servers)
    click.echo(json.dumps(result, indent=2) if as_json else format_table(result))


def main(argv: Sequence[str] | None = None) -> None:
    command.main(args=list(argv) if argv is not None else None, prog_name="mesh bench ingest")


if __name__ == "__main__":
    main(sys.argv[1:])
