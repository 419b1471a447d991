"""Benchmark: HLS serving, a mesh edge vs nginx serving the same bytes from files (and nginx-rtmp).

Starts an embedded database, one origin and one edge (real ``mesh node`` processes, as
:class:`mesh.cluster.LocalCluster` runs them), publishes Debian ffmpeg's ``-re`` test pattern over
RTMP, waits until the edge lists segments, then fetches one segment and the playlist from the
edge and writes those bytes as files into a private nginx's root. ``wrk`` then drives, with the
same connections, threads and duration each:

* ``edge``: the edge's segment URL and its playlist URL;
* ``nginx``: nginx (one worker, ``sendfile``, the same Cache-Control/CORS headers) serving the
  copies: the baseline of the ratio (the playlist is copied again before each round, as the
  edge's grows and slides);
* ``nginx-rtmp``: nginx-rtmp's own HLS output (the same publish, teed by ffmpeg), a segment of
  similar size and its playlist, when ``bench/_nginx_rtmp.py`` is present.

Targets are interleaved and the rounds repeated; each figure is the median over repeats of wrk's
own numbers (requests/s, transfer MB/s with headers, latency p50/p99, non-2xx and socket errors).

    mesh bench hls [--connections 32] [--duration 3] [--repeats 4] [--threads 1] [--json]
"""
from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import click

from mesh.cluster import ClusterError, LocalCluster, Nginx, wait_for_port
from mesh.embedded_db import free_port

STREAM = "bench1"
SEGMENT_RE = re.compile(r"^(\S+\d{9}\.ts)$", re.M)  # mesh's segment names
SEGMENT_LIKE_RE = re.compile(r"^([^#\s]\S*\.ts)$", re.M)  # nginx-rtmp's
PLAYLIST_TYPE = "application/vnd.apple.mpegurl"

# wrk's Lua done() hook prints its summary as one JSON line (latency figures are in microseconds).
WRK_LUA = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"bytes":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"mean_us":%.1f,"max_us":%d}\n',
    summary.requests, summary.bytes, summary.duration, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.mean, latency.max))
end
"""


@dataclass
class Target:
    name: str  # edge | nginx | nginx-rtmp
    kind: str  # segment | playlist
    url: str
    bytes: int  # body size of one response
    # Called before each run for a fresh (url, bytes): nginx-rtmp deletes its old fragments.
    refresh: Callable[[], tuple[str, int]] | None = None


class Progress:
    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.t0 = time.monotonic()

    def __call__(self, msg: str) -> None:
        if self.enabled:
            click.echo(f"hls [{time.monotonic() - self.t0:5.1f} s] {msg}", err=True)


# --------------------------------------------------------------------------- wrk


def run_wrk(url: str, *, connections: int, duration_s: float, threads: int, script: Path) -> dict[str, Any]:
    """One wrk run; returns its summary with rates derived from wrk's own duration."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise click.ClickException("wrk is not installed; run scripts/setup (Debian: apt-get install wrk)")
    args = [wrk, "-t", str(min(threads, connections)), "-c", str(connections),
            "-d", f"{max(duration_s, 1):g}s", "--timeout", "5s", "-s", str(script), url]
    out = subprocess.run(args, capture_output=True, text=True, timeout=duration_s + 30)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("WRK_JSON ")), None)
    if out.returncode != 0 or line is None:
        raise click.ClickException(f"wrk {url} failed (exit {out.returncode}): {out.stderr.strip()}"
                                   f"{out.stdout.strip()}")
    s = json.loads(line[len("WRK_JSON "):])
    seconds = max(s["duration_us"], 1) / 1e6
    return {
        "requests": s["requests"],
        "requests_per_s": s["requests"] / seconds,
        "mb_per_s": s["bytes"] / seconds / 1e6,
        "bytes_per_response": s["bytes"] / s["requests"] if s["requests"] else 0.0,
        "p50_ms": s["p50_us"] / 1e3,
        "p99_ms": s["p99_us"] / 1e3,
        "non_2xx": s["status"],
        "socket_errors": s["connect"] + s["read"] + s["write"] + s["timeout"],
    }


# --------------------------------------------------------------------------- setup


def fetch(url: str, timeout_s: float = 10.0) -> tuple[int, bytes, dict[str, str]]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read(), dict(err.headers)
    except OSError as err:
        return 0, str(err).encode(), {}


def ffmpeg_publisher(urls: list[str], size: str, fps: int, log_path: Path) -> subprocess.Popen[bytes]:
    """Debian ffmpeg: ``-re`` test pattern + tone, H.264 (2 s GOP) + AAC, to one or more RTMP URLs."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise click.ClickException("ffmpeg is not installed; run scripts/setup "
                                   "(Debian: apt-get install ffmpeg)")
    args = [ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin", "-re",
            "-f", "lavfi", "-i", f"testsrc2=size={size}:rate={fps}",
            "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
            "-c:v", "libx264", "-preset", "veryfast", "-g", str(2 * fps), "-keyint_min", str(2 * fps),
            "-sc_threshold", "0", "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "96k"]
    if len(urls) == 1:
        args += ["-f", "flv", urls[0]]
    else:  # one encode, several RTMP servers
        # tee cannot tell the encoders that FLV wants the codec config out of band (avcC, ASC)
        args += ["-flags:v", "+global_header", "-flags:a", "+global_header",
                 "-map", "0:v", "-map", "1:a", "-f", "tee",
                 "|".join(f"[f=flv:onfail=ignore]{u}" for u in urls)]
    with open(log_path, "wb") as log:
        return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log, stdin=subprocess.DEVNULL)


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str,
             check: Callable[[], str] = lambda: "") -> Any:
    """Poll ``predicate`` until it returns something truthy; ``check`` names a reason to give up."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        problem = check()
        if problem or time.monotonic() > deadline:
            raise click.ClickException(f"timed out after {timeout_s:.0f} s waiting for {what}"
                                       + (f": {problem}" if problem else ""))
        time.sleep(0.2)


def nginx_static_conf(prefix: Path, root: Path, port: int) -> str:
    """nginx serving ``root`` as the edge serves HLS: same headers, one worker, sendfile."""
    user = "user root root;\n" if os.geteuid() == 0 else ""
    temp = "".join(f"    {k}_temp_path {prefix}/tmp/{k};\n"
                   for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
{user}worker_processes 1;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 65;
    keepalive_requests 1000000;
    open_file_cache max=64 inactive=60s;
{temp}    types {{ video/mp2t ts; {PLAYLIST_TYPE} m3u8; }}
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location ~ \\.ts$ {{
            add_header Cache-Control "public, max-age=86400, immutable";
            add_header Access-Control-Allow-Origin *;
        }}
        location ~ \\.m3u8$ {{
            add_header Cache-Control "max-age=1";
            add_header Access-Control-Allow-Origin *;
        }}
    }}
}}
"""


def nginx_rtmp_class() -> tuple[Any, type[Exception]] | None:
    """``NginxRtmp`` and its error from bench/_nginx_rtmp.py, or None without that module."""
    try:
        from mesh_bench._nginx_rtmp import NginxRtmp, NginxRtmpError
    except ImportError:
        return None
    return NginxRtmp, NginxRtmpError


# --------------------------------------------------------------------------- the run


def run(connections: int = 32, duration_s: float = 3.0, repeats: int = 4, *, threads: int = 1,
        size: str = "640x360", fps: int = 30, with_rtmp: bool = True,
        say: Callable[[str], None] = lambda _m: None) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="mesh-bench-hls-"))
    script = workdir / "report.lua"
    script.write_text(WRK_LUA)
    cluster = LocalCluster(workdir / "cluster", origins=1, edges=1, lb=False, say=say,
                           # keep the benchmarked segment fetchable for the whole run; wrk's
                           # connections all come from 127.0.0.1, so the per-address cap (a
                           # stranger's budget) must not be what the benchmark measures
                           node_env={"MESH_RETIRED_SEGMENTS_KEPT": "500",
                                     "MESH_HTTP_MAX_CONNECTIONS_PER_IP": str(max(512, connections + 64))})
    nginx: Nginx | None = None
    rtmp: Any = None
    publisher: subprocess.Popen[bytes] | None = None
    try:
        cluster.start()
        edge = cluster.edge_nodes[0]
        urls = [cluster.publish_url(STREAM)]
        found = nginx_rtmp_class() if with_rtmp else None
        if found is not None:
            say("starting nginx-rtmp")
            nginx_rtmp, nginx_rtmp_error = found
            try:
                rtmp = nginx_rtmp(workdir / "nginx-rtmp").start()
                urls.append(rtmp.rtmp_url(STREAM))
            except nginx_rtmp_error as exc:
                say(f"no nginx-rtmp column: {exc}")
                rtmp = None
        elif with_rtmp:
            say("no nginx-rtmp column: bench/_nginx_rtmp.py is not there")
        say(f"publishing a {size}@{fps} test pattern to {', '.join(urls)}")
        publisher = ffmpeg_publisher(urls, size, fps, workdir / "ffmpeg.log")

        def publisher_died() -> str:
            if publisher is not None and publisher.poll() is not None:
                log = (workdir / "ffmpeg.log").read_text()[-2000:]
                return f"ffmpeg exited {publisher.returncode}: {log}"
            return ""

        # The edge: wait until it lists two segments; take the newest (a whole GOP).
        edge_playlist_url = f"{edge.http}/{cluster.app}/streams/{STREAM}.m3u8"

        def two_segments() -> list[str] | None:
            status, body, _ = fetch(edge_playlist_url)
            names = SEGMENT_RE.findall(body.decode(errors="replace")) if status == 200 else []
            return names if len(names) >= 2 else None

        names = wait_for(two_segments, 40, "the edge to list 2 segments", publisher_died)
        seg_name = names[-1]
        seg_url = f"{edge.http}/{cluster.app}/streams/{seg_name}"
        status, seg_bytes, headers = fetch(seg_url)
        if status != 200 or headers.get("Content-Type") != "video/mp2t":
            raise click.ClickException(f"edge answered {status} {headers.get('Content-Type')} for {seg_url}")
        status, pl_bytes, _ = fetch(edge_playlist_url)
        if status != 200:
            raise click.ClickException(f"edge answered {status} for {edge_playlist_url}")
        say(f"edge segment {seg_name}: {len(seg_bytes)} bytes; playlist {len(pl_bytes)} bytes")

        # nginx serving the same bytes from files.
        prefix = workdir / "nginx"
        root = prefix / "html"
        (root / "streams").mkdir(parents=True)
        (root / "streams" / seg_name).write_bytes(seg_bytes)
        (root / "streams" / f"{STREAM}.m3u8").write_bytes(pl_bytes)
        port = free_port()
        nginx = Nginx(prefix, nginx_static_conf(prefix, root, port))
        wait_for_port("127.0.0.1", port)
        static = f"http://127.0.0.1:{port}/streams"
        if fetch(f"{static}/{seg_name}")[1] != seg_bytes:
            raise click.ClickException("nginx does not serve the segment bytes it was given")

        # The edge's playlist grows and slides during the run: before each round nginx gets the
        # bytes the edge serves now, under a new name (so nginx's open_file_cache cannot be stale).
        copies = iter(range(1, 1 << 30))

        def edge_playlist_now() -> tuple[str, int]:
            status, body, _ = fetch(edge_playlist_url)
            if status != 200:
                raise click.ClickException(f"edge answered {status} for {edge_playlist_url}")
            return edge_playlist_url, len(body)

        def nginx_playlist_now() -> tuple[str, int]:
            body = fetch(edge_playlist_url)[1]
            name = f"{STREAM}-{next(copies)}.m3u8"
            (root / "streams" / name).write_bytes(body)
            return f"{static}/{name}", len(body)

        targets = [Target("edge", "segment", seg_url, len(seg_bytes)),
                   Target("nginx", "segment", f"{static}/{seg_name}", len(seg_bytes)),
                   Target("edge", "playlist", edge_playlist_url, len(pl_bytes), edge_playlist_now),
                   Target("nginx", "playlist", f"{static}/{STREAM}.m3u8", len(pl_bytes),
                          nginx_playlist_now)]
        if rtmp is not None:
            targets += _rtmp_targets(rtmp, len(seg_bytes), publisher_died, say)
        targets.sort(key=lambda t: (t.kind != "segment", ["edge", "nginx", "nginx-rtmp"].index(t.name)))

        runs = measure(targets, repeats, say, connections=connections, duration_s=duration_s,
                       threads=threads, script=script)
        results = [summarise(t, runs[(t.name, t.kind)]) for t in targets]
        return {
            "connections": connections, "threads": threads, "duration_s": duration_s, "repeats": repeats,
            "nproc": os.cpu_count(), "size": size, "fps": fps, "nginx_rtmp": rtmp is not None,
            "results": results, "ratios": ratios_of(results),
        }
    finally:
        if publisher is not None and publisher.poll() is None:
            publisher.terminate()
            try:
                publisher.wait(5)
            except subprocess.TimeoutExpired:
                publisher.kill()
                publisher.wait(5)
        if nginx is not None:
            nginx.stop()
        if rtmp is not None:
            rtmp.stop()
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def measure(targets: list[Target], repeats: int, say: Callable[[str], None],
            **wrk: Any) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """``repeats`` rounds of one wrk run per target, interleaved so noise hits all alike."""
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {(t.name, t.kind): [] for t in targets}
    total = repeats * len(targets)
    for r in range(repeats):
        for i, t in enumerate(targets):
            if t.refresh is not None:
                t.url, t.bytes = t.refresh()
            res = run_wrk(t.url, **wrk)
            res["bytes"] = t.bytes
            runs[(t.name, t.kind)].append(res)
            say(f"[{r * len(targets) + i + 1}/{total}] {t.name:<10} {t.kind:<8} "
                f"{res['requests_per_s']:9.0f} req/s {res['mb_per_s']:8.1f} MB/s  "
                f"p99 {res['p99_ms']:6.2f} ms  non-2xx {res['non_2xx']}  "
                f"socket errors {res['socket_errors']}")
    return runs


def summarise(t: Target, samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the runs (errors and requests summed)."""
    medians = {k: statistics.median(s[k] for s in samples)
               for k in ("requests_per_s", "mb_per_s", "p50_ms", "p99_ms", "bytes_per_response")}
    return {
        "target": t.name, "kind": t.kind, "url": t.url,
        "bytes": int(statistics.median(s["bytes"] for s in samples)),
        **medians,
        "requests": sum(s["requests"] for s in samples),
        "errors": sum(s["non_2xx"] + s["socket_errors"] for s in samples),
        "non_2xx": sum(s["non_2xx"] for s in samples),
        "socket_errors": sum(s["socket_errors"] for s in samples),
        "requests_per_s_runs": [s["requests_per_s"] for s in samples],
    }


def ratios_of(results: list[dict[str, Any]]) -> dict[str, float]:
    """Edge requests/s over each baseline's (medians), per kind: ``segment_edge_vs_nginx``, ..."""
    by = {(x["target"], x["kind"]): x for x in results}
    ratios = {}
    for kind in ("segment", "playlist"):
        for base in ("nginx", "nginx-rtmp"):
            if ("edge", kind) in by and by.get((base, kind), {}).get("requests_per_s", 0) > 0:
                ratios[f"{kind}_edge_vs_{base}"] = (by[("edge", kind)]["requests_per_s"]
                                                    / by[(base, kind)]["requests_per_s"])
    return ratios


def _rtmp_targets(rtmp: Any, want_bytes: int, publisher_died: Callable[[], str],
                  say: Callable[[str], None]) -> list[Target]:
    """nginx-rtmp's playlist and, of the segments it lists, the one closest in size to ours
    (picked again before each run: nginx-rtmp deletes fragments that left its playlist)."""
    pl_url = rtmp.hls_url(STREAM)

    def listed() -> list[str]:
        status, body, _ = fetch(pl_url)
        return SEGMENT_LIKE_RE.findall(body.decode(errors="replace")) if status == 200 else []

    def pick_segment() -> tuple[str, int]:
        names = listed()
        sizes = {p.name: p.stat().st_size for p in rtmp.segment_paths(STREAM) if p.name in names}
        if not sizes:
            raise click.ClickException(f"nginx-rtmp lists {names} but none is among its segment files")
        name = min(sizes, key=lambda n: abs(sizes[n] - want_bytes))
        url = pl_url.rsplit("/", 1)[0] + "/" + name
        status, body, _ = fetch(url)
        if status != 200:
            raise click.ClickException(f"nginx-rtmp answered {status} for {url}")
        return url, len(body)

    def pick_playlist() -> tuple[str, int]:
        status, body, _ = fetch(pl_url)
        if status != 200:
            raise click.ClickException(f"nginx-rtmp answered {status} for {pl_url}")
        return pl_url, len(body)

    wait_for(lambda: len(listed()) >= 2, 40, "nginx-rtmp to list 2 segments", publisher_died)
    seg_url, seg_bytes = pick_segment()
    _, pl_bytes = pick_playlist()
    say(f"nginx-rtmp segment {seg_url.rsplit('/', 1)[1]}: {seg_bytes} bytes; playlist {pl_bytes} bytes")
    return [Target("nginx-rtmp", "segment", seg_url, seg_bytes, pick_segment),
            Target("nginx-rtmp", "playlist", pl_url, pl_bytes, pick_playlist)]


# --------------------------------------------------------------------------- output


def format_table(r: dict[str, Any]) -> str:
    lines = [f"wrk -t{r['threads']} -c{r['connections']} -d{r['duration_s']:g}s, median of "
             f"{r['repeats']} repeats, nproc {r['nproc']}, {r['size']}@{r['fps']} test pattern",
             f"{'target':<11}{'kind':<9}{'bytes':>8}{'req/s':>10}{'MB/s':>9}{'p50 ms':>8}{'p99 ms':>8}"
             f"{'non-2xx':>9}{'sock err':>9}"]
    for x in r["results"]:
        lines.append(f"{x['target']:<11}{x['kind']:<9}{x['bytes']:>8}{x['requests_per_s']:>10.0f}"
                     f"{x['mb_per_s']:>9.1f}{x['p50_ms']:>8.2f}{x['p99_ms']:>8.2f}{x['non_2xx']:>9}"
                     f"{x['socket_errors']:>9}")
    for key, value in r["ratios"].items():
        kind, _, base = key.partition("_edge_vs_")
        lines.append(f"ratio edge/{base} requests/s, {kind}: {value:.2f}")
    if not r["nginx_rtmp"]:
        lines.append("(no nginx-rtmp column: bench/_nginx_rtmp.py or nginx-rtmp is not available)")
    return "\n".join(lines)


@click.command("hls")
@click.option("--connections", type=click.IntRange(1, 10000), default=32, show_default=True,
              help="wrk connections, the same for every target.")
@click.option("--duration", "duration_s", type=click.FloatRange(1, 600), default=3.0, show_default=True,
              help="Seconds per wrk run.")
@click.option("--repeats", type=click.IntRange(1, 50), default=4, show_default=True,
              help="Rounds over all targets; figures are medians.")
@click.option("--threads", type=click.IntRange(1, 64), default=1, show_default=True, help="wrk threads.")
@click.option("--size", default="640x360", show_default=True, help="WxH of the published test pattern.")
@click.option("--no-rtmp", is_flag=True, help="Skip the nginx-rtmp column.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def command(connections: int, duration_s: float, repeats: int, threads: int, size: str, no_rtmp: bool,
            as_json: bool) -> None:
    """Edge HLS requests/s and MB/s vs nginx serving the same bytes from files (wrk)."""
    if not re.fullmatch(r"\d{2,4}x\d{2,4}", size):
        raise click.BadParameter("use WIDTHxHEIGHT, e.g. 640x360", param_hint="--size")
    try:
        result = run(connections, duration_s, repeats, threads=threads, size=size,
                     with_rtmp=not no_rtmp, say=Progress())
    except ClusterError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(result, indent=2) if as_json else format_table(result))


if __name__ == "__main__":
    command.main(prog_name="mesh bench hls")
