"""Benchmark: how soon a closed segment is listed, a mesh edge vs nginx-rtmp, in the same run.

We are the publisher (:mod:`mesh_bench._rtmp_feed`): an ffmpeg-written FLV clip (2 s GOP) is sent
over RTMP in real time, and the wall time at which the last byte of every video keyframe was
written is recorded. A keyframe 2 s after the open segment's start closes that segment, on both
servers. A poller fetches the playlist every ``--poll-ms`` (5 ms by default, HTTP keep-alive) and
records when each segment name first appears. The delay per segment is

    first seen in the playlist  -  closing keyframe written

* mesh: publisher -> origin (segmenter decides) -> bus -> **edge** (packetises, lists); the
  edge's playlist at ``/LiveApp/streams/{id}.m3u8``; one origin and one edge process, embedded DB.
* nginx-rtmp (``hls on``, ``hls_fragment 2s``): its playlist from its own http{} server.

Matching a listed segment to its closing keyframe is done by position, not by timestamps inside the
segments: nginx-rtmp's MPEG-TS writer shifts every PTS/DTS by 0.7 s (``NGX_RTMP_HLS_DELAY``), so
absolute timestamps in its files do not equal the RTMP ones. Playlist durations (``#EXTINF``)
are differences and carry no such offset: a segment's end, in publisher media time, is the first
segment's start (the first keyframe, 0 ms) plus the durations of every segment up to it, and its
closing keyframe is the one sent at that media time (within half a GOP). This also checks that
both servers cut where expected.

With ``--abr RUNGS`` the run is paired instead: the same mesh measurement twice in one run, the
origin without a ladder and then with ``RUNGS`` (a 1280x720 clip by default, so every rung is
made), and the report gives both medians and the ratio ladder-on / ladder-off for ``src``, the
promise being that a ladder does not make ``src`` later (ratio <= 1.10, noise included); with
``--repeats N`` each side runs N times in alternating order and the delays are pooled. It also
says which rungs were live at the end of the ladder run and which were dropped, and the load
average before and after.

Run: ``mesh bench latency [--duration 20] [--poll-ms 5] [--abr 720p2500k,480p1000k,360p600k [--repeats 3]] [--json]``
"""
from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
from mesh_bench._rtmp_feed import KeyframeSent, RtmpPublisher, Tag, read_flv
from mesh_bench._stats import percentile
from mesh_bench.ingest import SEGMENT_S, make_clip

TARGET_MS = 50.0  # segment listed on an edge <= 50 ms after its closing keyframe (median)
ABR_RATIO_TARGET = 1.10  # src median with the ladder on / off (the ladder must not delay src)
STREAM = "lat"
_SEG_RE = re.compile(r"(\d+)\.ts$")


def say(msg: str) -> None:
    click.echo(f"latency: {msg}", err=True)


# --------------------------------------------------------------------------- playlist poller


@dataclass
class Listed:
    seq: int
    duration_s: float
    wall_s: float  # time.time() when the response listing it arrived
    name: str
    pdt_s: float | None = None  # its #EXT-X-PROGRAM-DATE-TIME (epoch seconds), if any


def parse_playlist(text: str) -> list[tuple[int, float, str, float | None]]:
    """(sequence number from the segment name, #EXTINF duration, name, program date-time) for
    each listed segment."""
    out = []
    duration = pdt = None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("#EXTINF:"):
            duration = float(line[8:].split(",", 1)[0])
        elif line.startswith("#EXT-X-PROGRAM-DATE-TIME:"):
            stamp = line.split(":", 1)[1].replace("Z", "+00:00")
            pdt = datetime.fromisoformat(stamp).timestamp()
        elif line and not line.startswith("#"):
            m = _SEG_RE.search(line)
            if m and duration is not None:
                out.append((int(m.group(1)), duration, line, pdt))
            duration = pdt = None
    return out


class PlaylistPoller:
    """Fetches one playlist URL every ``interval_s`` on a keep-alive connection (a thread) and
    records when each segment first appears."""

    def __init__(self, url: str, interval_s: float = 0.005) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.path = parts.path + (f"?{parts.query}" if parts.query else "")
        self.interval_s = interval_s
        self.listed: dict[int, Listed] = {}
        self.polls = 0
        self.errors = 0
        self.fetch_ms: list[float] = []
        self.on_listed: Callable[[Listed], None] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="playlist-poller", daemon=True)

    def start(self) -> PlaylistPoller:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        conn: http.client.HTTPConnection | None = None
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
                conn.request("GET", self.path)
                resp = conn.getresponse()
                body = resp.read()
                now = time.time()
                self.polls += 1
                self.fetch_ms.append((time.monotonic() - t0) * 1000)
                if resp.status == 200:
                    for seq, duration, name, pdt in parse_playlist(body.decode("utf-8", "replace")):
                        if seq not in self.listed:
                            item = self.listed[seq] = Listed(seq, duration, now, name, pdt)
                            if self.on_listed is not None:
                                self.on_listed(item)
                else:
                    self.errors += 1
            except (OSError, http.client.HTTPException):
                self.errors += 1
                if conn is not None:
                    conn.close()
                conn = None
            delay = self.interval_s - (time.monotonic() - t0)
            if delay > 0:
                self._stop.wait(delay)
        if conn is not None:
            conn.close()


# --------------------------------------------------------------------------- publishing thread


class FeedThread:
    """Runs :meth:`RtmpPublisher.feed` in a thread, keeping every keyframe's send time."""

    def __init__(self, url: str, tags: list[Tag], duration_s: float) -> None:
        self.url = url
        self.tags = tags
        self.duration_s = duration_s
        self.keyframes: list[KeyframeSent] = []
        self.error: BaseException | None = None
        self.started_wall = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rtmp-feed", daemon=True)

    def start(self) -> FeedThread:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            with RtmpPublisher(self.url) as pub:
                self.started_wall = time.time()
                pub.feed(self.tags, self.duration_s, on_keyframe=self.keyframes.append,
                         stop=self._stop.is_set)
        except BaseException as exc:  # reported by join()
            self.error = exc

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout_s: float) -> None:
        self._thread.join(timeout_s)
        if self.error is not None:
            raise click.ClickException(f"the RTMP publisher to {self.url} failed: {self.error!r}")


# --------------------------------------------------------------------------- matching


def match(listed: dict[int, Listed], keyframes: list[KeyframeSent], first_start_ms: int = 0
          ) -> list[dict[str, Any]]:
    """For each listed segment (by sequence), its closing keyframe by position (cumulative
    #EXTINF durations from the first segment's start) and the delay between the two."""
    rows = []
    end_ms = float(first_start_ms)
    by_media = sorted(keyframes, key=lambda k: k.media_ms)
    used: set[int] = set()
    gop_ms = GOP_MS
    for seq in sorted(listed):
        seg = listed[seq]
        start_ms = end_ms
        end_ms += seg.duration_s * 1000
        if not by_media:
            break
        kf = min(by_media, key=lambda k: abs(k.media_ms - end_ms))
        if abs(kf.media_ms - end_ms) > gop_ms / 2 or seg.duration_s * 1000 < gop_ms / 2 or kf.media_ms in used:
            continue  # closed by the end of the stream, not by a keyframe we sent
        used.add(kf.media_ms)
        rows.append({"seq": seq, "start_ms": round(start_ms), "end_ms": round(end_ms),
                     "closing_keyframe_ms": kf.media_ms, "delay_ms": round((seg.wall_s - kf.wall_s) * 1000, 2),
                     "listed_wall": seg.wall_s, "keyframe_wall": kf.wall_s})
    return rows


GOP_MS = int(SEGMENT_S * 1000)


def summarize(rows: list[dict[str, Any]], skip_first: int = 1) -> dict[str, Any]:
    """Median/max of the delays, leaving out the first segment(s): a cold start (first request,
    subscription, snapshot) is not the steady state this measures; they are reported apart."""
    delays = [r["delay_ms"] for r in rows[skip_first:]]
    first = [r["delay_ms"] for r in rows[:skip_first]]
    if not delays:
        return {"segments": 0, "median_ms": None, "max_ms": None, "first_ms": first}
    return {"segments": len(delays), "median_ms": round(statistics.median(delays), 2),
            "max_ms": round(max(delays), 2), "min_ms": round(min(delays), 2),
            "p90_ms": round(percentile(delays, 0.9), 2), "first_ms": first}


# --------------------------------------------------------------------------- the two sides


@dataclass
class MeshPair:
    """Embedded database + one origin + one edge, as real node processes."""

    workdir: Path
    db: Any = None
    origin: Any = None
    edge: Any = None
    extra_args: list[str] = field(default_factory=list)
    origin_env: dict[str, str] = field(default_factory=dict)

    def start(self) -> MeshPair:
        from mesh.cluster import start_node
        from mesh.embedded_db import EmbeddedDb

        self.db = EmbeddedDb(self.workdir / "db", port=0)
        uri = self.db.start()
        args = ["--log-level", "warning", *self.extra_args]
        self.origin = start_node("origin", self.workdir, node_id="bench-origin", mongo=uri, wait=False,
                                 extra_args=args, env=self.origin_env)
        self.edge = start_node("edge", self.workdir, node_id="bench-edge", mongo=uri, wait=False,
                               extra_args=args)
        self.origin.wait_ready()
        self.edge.wait_ready()
        return self

    def playlist_url(self, stream: str) -> str:
        return f"{self.edge.http}/LiveApp/streams/{stream}.m3u8"

    def stop(self) -> None:
        for proc in (self.edge, self.origin):
            if proc is not None:
                proc.stop()
        if self.db is not None:
            self.db.stop()


def stream_renditions(http: str, stream: str) -> dict[str, Any]:
    """The stream's live and dropped renditions, from the origin's REST API (ladder runs)."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"{http}/LiveApp/rest/v2/broadcasts/{stream}", timeout=5) as resp:
            doc = json.loads(resp.read())
    except (OSError, ValueError) as exc:
        return {"error": str(exc)}
    return {"renditions": [r.get("name") for r in doc.get("renditions") or []],
            "dropped": [d.get("name") for d in doc.get("droppedRenditions") or []]}


def measure(name: str, rtmp_url: str, playlist_url: str, tags: list[Tag], duration_s: float,
            poll_s: float, background: Callable[[str], str] | None = None, background_n: int = 0,
            clip: Path | None = None, before_stop: Callable[[], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Publish ``tags`` to ``rtmp_url`` while polling ``playlist_url``; ``background_n`` ffmpeg
    publishers of ``clip`` (to ``background(name)``) load the same server meanwhile."""
    loaders = []
    if background_n and background is not None and clip is not None:
        from mesh_bench.ingest import ffmpeg_publisher

        loaders = [ffmpeg_publisher(clip, background(f"bg{i}")) for i in range(background_n)]
        time.sleep(3 + background_n * 0.05)  # let them connect and start publishing
    feed = FeedThread(rtmp_url, tags, duration_s).start()
    poller = PlaylistPoller(playlist_url, poll_s).start()
    try:
        feed.join(duration_s + 30)
        # the last closing keyframe was just sent: give its segment a moment to be listed
        time.sleep(0.5)
        extra = before_stop() if before_stop is not None else {}
    finally:
        feed.stop()
        poller.stop()
        if loaders:
            from mesh_bench.ingest import stop_all

            stop_all(loaders)
    rows = match(poller.listed, feed.keyframes)
    out = summarize(rows)
    fetch = sorted(poller.fetch_ms)
    out.update({"server": name, "polls": poller.polls, "poll_errors": poller.errors,
                "poll_interval_ms": poll_s * 1000,
                "fetch_ms_median": round(fetch[len(fetch) // 2], 2) if fetch else None,
                "keyframes_sent": len(feed.keyframes), "rows": rows, **extra})
    return out


def pool(outs: list[dict[str, Any]]) -> dict[str, Any]:
    """One side's figures over several runs: the steady-state delays of every run together
    (each run's first segment left out, as in :func:`summarize`)."""
    rows = [dict(r, run=i) for i, out in enumerate(outs) for r in out["rows"]]
    firsts = {i: min((r["seq"] for r in rows if r["run"] == i), default=None) for i in range(len(outs))}
    steady = [r for r in rows if r["seq"] != firsts[r["run"]]]
    out = summarize([{"delay_ms": 0.0}] + steady)  # the placeholder is the one summarize leaves out
    out["first_ms"] = [r["delay_ms"] for r in rows if r["seq"] == firsts[r["run"]]]
    fetch = [o["fetch_ms_median"] for o in outs if o["fetch_ms_median"] is not None]
    last = outs[-1]
    out.update({"server": last["server"], "runs": len(outs), "polls": sum(o["polls"] for o in outs),
                "poll_errors": sum(o["poll_errors"] for o in outs), "poll_interval_ms": last["poll_interval_ms"],
                "fetch_ms_median": round(statistics.median(fetch), 2) if fetch else None,
                "keyframes_sent": sum(o["keyframes_sent"] for o in outs), "rows": rows,
                "run_medians_ms": [o["median_ms"] for o in outs]})
    if "renditions" in last or "dropped" in last:
        out["renditions"] = last.get("renditions")
        out["dropped"] = sorted({d for o in outs for d in o.get("dropped") or []})
    return out


def run(duration_s: float = 20.0, poll_ms: float = 5.0, bitrate_kbps: int = 600,
        servers: Sequence[str] = ("mesh", "nginx_rtmp"), background: int = 0, abr: str = "",
        abr_preset: str = "veryfast", size: str = "640x360", repeats: int = 1) -> dict[str, Any]:
    """``servers`` names the sides: ``mesh``, ``nginx_rtmp`` and ``mesh_abr`` (mesh with the
    ``abr`` ladder on its origin). The mesh sides run ``repeats`` times each, alternating their
    order (off, on, on, off, ...), their delays pooled."""
    work = Path(tempfile.mkdtemp(prefix="mesh-bench-latency-"))
    started = time.time()
    load_before = os.getloadavg()
    results: dict[str, Any] = {}
    try:
        say(f"encoding a 10 s {size} clip ({bitrate_kbps} kbps, {SEGMENT_S:g} s GOP)")
        clip = make_clip(work / "clip.flv", bitrate_kbps, size=size)
        tags = read_flv(work / "clip.flv")
        mesh_sides = [s for s in servers if s in ("mesh", "mesh_abr")]
        order = [side for r in range(repeats) for side in (mesh_sides if r % 2 == 0 else mesh_sides[::-1])]
        runs: dict[str, list[dict[str, Any]]] = {}
        for i, side in enumerate(order):
            ladder = side == "mesh_abr"
            env = {"MESH_ABR": abr, "MESH_ABR_PRESET": abr_preset} if ladder else {}
            say(f"starting the embedded database, an origin{' with the ladder ' + abr if ladder else ''} and an edge")
            pair = MeshPair(work / f"{side}-{i}", origin_env=env).start()
            try:
                say(f"{side}: publishing for {duration_s:g} s, polling the edge playlist every {poll_ms:g} ms")
                runs.setdefault(side, []).append(measure(
                    side, pair.origin.rtmp_url(STREAM), pair.playlist_url(STREAM), tags, duration_s,
                    poll_ms / 1000, pair.origin.rtmp_url, background, work / "clip.flv",
                    (lambda p=pair: stream_renditions(p.origin.http, STREAM)) if ladder else None))
            finally:
                pair.stop()
        for side, outs in runs.items():
            results[side] = outs[0] if len(outs) == 1 else pool(outs)
        if "nginx_rtmp" in servers:
            from mesh_bench._nginx_rtmp import NginxRtmp, NginxRtmpError

            say("starting nginx-rtmp (hls on)")
            try:
                ng = NginxRtmp(work / "nginx-rtmp", fragment_s=SEGMENT_S).start()
            except NginxRtmpError as exc:
                raise click.ClickException(str(exc)) from None
            try:
                say(f"nginx-rtmp: publishing for {duration_s:g} s, polling its playlist every {poll_ms:g} ms")
                results["nginx_rtmp"] = measure("nginx_rtmp", ng.rtmp_url(STREAM), ng.hls_url(STREAM),
                                                tags, duration_s, poll_ms / 1000, ng.rtmp_url, background,
                                                work / "clip.flv")
            finally:
                ng.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ratios: dict[str, Any] = {}
    m, g, a = results.get("mesh"), results.get("nginx_rtmp"), results.get("mesh_abr")
    if m and g and m["median_ms"] is not None and g["median_ms"]:
        ratios = {"median": round(m["median_ms"] / g["median_ms"], 3),
                  "max": round(m["max_ms"] / g["max_ms"], 3) if g["max_ms"] else None}
    abr_ratio: dict[str, Any] | None = None
    if m and a and m["median_ms"] and a["median_ms"] is not None:
        r = round(a["median_ms"] / m["median_ms"], 3)
        abr_ratio = {"median": r, "p90": round(a["p90_ms"] / m["p90_ms"], 3) if m["p90_ms"] else None,
                     "target": ABR_RATIO_TARGET, "met": r <= ABR_RATIO_TARGET}
    target = None
    if m and m["median_ms"] is not None:
        target = {"median_ms": TARGET_MS, "met": m["median_ms"] <= TARGET_MS}
    return {"bench": "latency", "date": time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(started)),
            "nproc": os.cpu_count(), "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "params": {"duration_s": duration_s, "poll_ms": poll_ms, "bitrate_kbps": bitrate_kbps,
                       "segment_s": SEGMENT_S, "background_publishers": background, "size": size,
                       "abr": abr or None, "abr_preset": abr_preset if abr else None, "repeats": repeats},
            "clip_kbps": clip["kbps"], "results": results, "ratios": ratios, "abr_ratio": abr_ratio,
            "target": target}


def format_table(r: dict[str, Any]) -> str:
    p = r["params"]
    lines = [(f"closing keyframe written -> segment listed; {p['segment_s']:g} s segments, playlist polled "
              f"every {p['poll_ms']:g} ms (HTTP keep-alive), first segment left out; "
              f"{p['background_publishers']} other publishers on the same server; {p['size']} clip; "
              f"{p.get('repeats', 1)} run(s) per mesh side, alternating, delays pooled; "
              f"nproc {r['nproc']}, load average {r['loadavg_before']} -> {r['loadavg_after']}"),
             (f"{'where':<22}{'segments':>9}{'median ms':>11}{'p90 ms':>9}{'max ms':>9}{'min ms':>9}"
              f"{'first ms':>10}{'fetch ms':>10}")]
    label = {"mesh": "mesh edge", "nginx_rtmp": "nginx-rtmp playlist", "mesh_abr": "mesh edge, ladder on"}
    if p.get("abr"):
        label["mesh"] = "mesh edge, ladder off"
    for name, x in r["results"].items():
        if x["median_ms"] is None:
            lines.append(f"{label[name]:<22}{'no segments matched':>30}")
            continue
        first = ",".join(f"{v:.0f}" for v in x["first_ms"]) or "-"
        lines.append(f"{label[name]:<22}{x['segments']:>9}{x['median_ms']:>11.1f}{x['p90_ms']:>9.1f}"
                     f"{x['max_ms']:>9.1f}{x['min_ms']:>9.1f}{first:>10}{x['fetch_ms_median']:>10.2f}")
    if r["ratios"]:
        lines.append(f"ratio mesh/nginx-rtmp: median {r['ratios']['median']:.2f}x, max {r['ratios']['max']:.2f}x")
    a = r.get("results", {}).get("mesh_abr")
    if a is not None:
        lines.append(f"ladder {p['abr']} (preset {p['abr_preset']}): renditions live at the end "
                     f"{', '.join(a.get('renditions') or []) or '?'}; dropped {', '.join(a.get('dropped') or []) or 'none'}"
                     + (f"; could not ask the origin: {a['error']}" if a.get("error") else ""))
    if r.get("abr_ratio"):
        x = r["abr_ratio"]
        lines.append(f"src with the ladder on / off: median {x['median']:.2f}x"
                     + (f", p90 {x['p90']:.2f}x" if x["p90"] is not None else "")
                     + f"; target <= {x['target']:.2f}x: {'met' if x['met'] else 'missed'}")
    if r["target"]:
        t = r["target"]
        lines.append(f"target: median <= {t['median_ms']:g} ms on the edge: {'met' if t['met'] else 'missed'}")
    return "\n".join(lines)


@click.command("latency")
@click.option("--duration", "duration_s", type=float, default=20.0, show_default=True,
              help="Seconds of publishing per server.")
@click.option("--poll-ms", type=float, default=5.0, show_default=True, help="Playlist poll interval.")
@click.option("--bitrate-kbps", type=int, default=None, help="Clip bitrate [600; 3000 with --abr].")
@click.option("--background", type=int, default=0, show_default=True,
              help="Other ffmpeg publishers loading the same server meanwhile (latency under load).")
@click.option("--only", type=click.Choice(["mesh", "nginx_rtmp"]), default=None, help="Run one server only.")
@click.option("--abr", default="", metavar="RUNGS",
              help="Paired run instead: mesh with no ladder, then with this ladder on its origin (e.g. "
                   "720p2500k,480p1000k,360p600k); reports both src medians and the ratio.")
@click.option("--abr-preset", default="veryfast", show_default=True, help="libx264 preset of the ladder.")
@click.option("--size", default=None, help="Clip size [640x360; 1280x720 with --abr].")
@click.option("--repeats", type=int, default=1, show_default=True,
              help="Runs per mesh side (with --abr: off, on, on, off, ...), delays pooled.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def command(duration_s: float, poll_ms: float, bitrate_kbps: int | None, background: int, only: str | None,
            abr: str, abr_preset: str, size: str | None, repeats: int, as_json: bool) -> None:
    """Closing keyframe to segment listed: a mesh edge vs nginx-rtmp's playlist (or, with --abr,
    mesh's src with the ladder off vs on)."""
    if poll_ms <= 0 or poll_ms > 5:
        raise click.BadParameter("poll at most every 5 ms (and more than 0)", param_hint="--poll-ms")
    if background < 0:
        raise click.BadParameter("a count of publishers", param_hint="--background")
    if size is not None and not re.fullmatch(r"\d{2,4}x\d{2,4}", size):
        raise click.BadParameter("WIDTHxHEIGHT, e.g. 1280x720", param_hint="--size")
    if abr:
        from mesh.ladder import parse_ladder

        try:
            parse_ladder(abr.split(","))
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--abr") from None
        if only:
            raise click.BadParameter("--abr runs mesh twice (ladder off, on); leave out --only",
                                     param_hint="--only")
        servers = ["mesh", "mesh_abr"]
    else:
        servers = [only] if only else ["mesh", "nginx_rtmp"]
    size = size or ("1280x720" if abr else "640x360")
    bitrate = bitrate_kbps or (3000 if abr else 600)
    if not 1 <= repeats <= 20:
        raise click.BadParameter("1 to 20", param_hint="--repeats")
    result = run(duration_s, poll_ms, bitrate, servers, background, abr, abr_preset, size, repeats)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(format_table(result))


def main(argv: Sequence[str] | None = None) -> None:
    command.main(args=list(argv) if argv is not None else None, prog_name="mesh bench latency")


if __name__ == "__main__":
    main(sys.argv[1:])
