"""Benchmark: glass-to-glass style figures on loopback, for a mesh origin + edge.

The same machinery as `mesh bench latency` (:mod:`mesh_bench.latency`): we publish an
ffmpeg-written FLV clip in real time over RTMP ourselves, recording when every keyframe's last
byte was written, and poll the edge playlist every 5 ms. Reported:

* **access unit -> listed on the edge**, per segment, for its *first* access unit (the keyframe
  that opened it: the unit that waits longest, a whole segment plus the closing delay) and for its
  *last* one (about the closing keyframe's delay). "Entering the origin" is when its last byte was
  written to the origin's socket (loopback); the origin's own stamp of that moment, the segment's
  ``#EXT-X-PROGRAM-DATE-TIME``, gives the same figure from the origin's side.
  Target: the first access unit's delay <= one segment duration + 100 ms.
* **a player's distance from the live edge**: hls.js in headless Chromium, through the test
  harness in ``tests/browser.py`` (only from a source checkout; otherwise reported as
  unavailable), sampled every 0.5 s once it plays: ``hls.latency`` (seconds behind the playlist's
  live edge, hls.js's own estimate) and ``now - hls.playingDate`` (the wall-clock age of the
  frame on screen, via the program date-time the origin stamped), with the default 2 s segments
  and hls.js's default ``liveSyncDurationCount`` of 3.

With ``--ll``, the same command instead runs the LL-HLS comparison, in one run: an origin and two
edges behind a private nginx rendered by ``mesh lb nginx`` (round robin, as deployed), one
real-time feed (2 s GOP: 2 s segments of 200 ms parts), and hls.js in headless Chromium playing,
one after the other, classic HLS and LL-HLS (``lowLatencyMode: true``), each direct to an edge and
through the balancer (and once more with hls.js allowed to play at up to 1.5x to catch up,
``maxLiveSyncPlaybackRate``); plus classic HLS with 1 s segments (a second origin and edge configured with
``segment_target_s = 1`` and a 1 s GOP feed). Each reports the wall-clock age of the frame on
screen (``now - hls.playingDate``) and ``hls.latency``. Target: LL-HLS median age <= 2.0 s
through the balancer.

Run: ``mesh bench e2e [--duration 40] [--json]``; ``mesh bench e2e --ll [--player-seconds 10]``
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
from mesh_bench._rtmp_feed import read_flv
from mesh_bench.ingest import SEGMENT_S, make_clip
from mesh_bench.latency import STREAM, FeedThread, MeshPair, PlaylistPoller, match

TARGET_EXTRA_MS = 100.0  # first access unit -> listed <= segment duration + 100 ms
PLAYER_SAMPLE_S = 0.5


def say(msg: str) -> None:
    click.echo(f"e2e: {msg}", err=True)


def _median(xs: list[float]) -> float | None:
    return round(statistics.median(xs), 2) if xs else None


# --------------------------------------------------------------------------- the player


def browser_harness() -> Any | None:
    """``tests.browser`` from a source checkout (with hls.js and Chromium), or None."""
    root = Path(__file__).resolve().parent.parent
    if not (root / "tests" / "browser.py").is_file():
        return None
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        from tests import browser  # type: ignore[import-not-found]
    except ImportError:
        return None
    return browser if not browser.missing_browser_parts() else None


def player_distance(url: str, sample_s: float, start_timeout_s: float = 30.0,
                    low_latency: bool = False, catch_up: float = 1.0) -> dict[str, Any]:
    """Play ``url`` with hls.js in headless Chromium and sample how far behind live it plays."""
    browser = browser_harness()
    if browser is None:
        return {"available": False,
                "why": "needs a source checkout with tests/browser.py, hls.js (tests/js) and Chromium"}
    import urllib.parse

    from selenium.webdriver.chrome.service import Service

    samples: list[dict[str, float]] = []
    started = time.monotonic()
    with contextlib.ExitStack() as cleanup:
        page = cleanup.enter_context(browser.StaticServer({"/player.html": browser.PLAYER_HTML,
                                                            "/hls.min.js": browser.HLS_JS}))
        profile = Path(tempfile.mkdtemp(prefix="mesh-e2e-chromium-"))
        cleanup.callback(shutil.rmtree, profile, ignore_errors=True)
        service = Service(str(browser.CHROMEDRIVER), popen_kw={"start_new_session": True})
        driver = None
        try:
            driver = browser._start_driver(service, profile)
            query = {'src': url, 'mode': 'hlsjs', **({'lowLatency': '1'} if low_latency else {}),
                     **({'catchUp': f"{catch_up:g}"} if catch_up > 1 else {})}
            driver.get(f"{page.url}/player.html?{urllib.parse.urlencode(query)}")
            deadline = time.monotonic() + start_timeout_s
            state: dict[str, Any] = {}
            while time.monotonic() < deadline:
                state = driver.execute_script("return window.__state ? window.__state() : null;") or {}
                if state.get("fatalError") or state.get("startTime") is not None:
                    break
                time.sleep(0.1)
            if state.get("startTime") is None:
                return {"available": True, "played": False,
                        "why": state.get("fatalError") or f"did not start within {start_timeout_s:g} s"}
            time_to_play = time.monotonic() - started
            end = time.monotonic() + sample_s
            while time.monotonic() < end:
                s = driver.execute_script(
                    "const h = window.__hls, v = document.getElementById('video');"
                    "return {latency: h.latency, target: h.targetLatency,"
                    " date: h.playingDate ? h.playingDate.getTime() : null, now: Date.now(),"
                    " t: v.currentTime, paused: v.paused};")
                if s and s.get("latency") is not None and not s.get("paused"):
                    samples.append(s)
                time.sleep(PLAYER_SAMPLE_S)
        finally:
            browser._stop_driver(driver, service)
    lat = [float(s["latency"]) for s in samples if s.get("latency") is not None]
    age = [float(s["now"] - s["date"]) / 1000 for s in samples if s.get("date")]
    return {"available": True, "played": True, "samples": len(samples),
            "time_to_play_s": round(time_to_play, 2),
            "hls_latency_s_median": _median(lat), "hls_latency_s_max": round(max(lat), 2) if lat else None,
            "target_latency_s": samples[-1].get("target") if samples else None,
            "wallclock_age_s_median": _median(age), "wallclock_age_s_max": round(max(age), 2) if age else None}


# --------------------------------------------------------------------------- LL-HLS comparison

LL_TARGET_AGE_S = 2.0


def _clip_1s_gop(path: Path, bitrate_kbps: int, seconds: float = 10.0) -> None:
    """The bench clip's recipe with a 1 s GOP (for classic HLS with 1 s segments)."""
    import subprocess

    video_kbps = max(bitrate_kbps - 64, 50)
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
                    "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30,noise=alls=12:allf=t",
                    "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", str(seconds),
                    "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-b:v", f"{video_kbps}k",
                    "-g", "30", "-keyint_min", "30", "-sc_threshold", "0", "-c:a", "aac", "-b:a", "64k",
                    "-ac", "2", "-f", "flv", str(path)], check=True, timeout=180)


def run_ll(player_s: float = 10.0, bitrate_kbps: int = 600) -> dict[str, Any]:
    from mesh.cluster import Nginx, start_node, wait_for_port
    from mesh.embedded_db import EmbeddedDb, free_port
    from mesh.lb import Backend, Backends, render_nginx

    work = Path(tempfile.mkdtemp(prefix="mesh-bench-e2e-ll-"))
    started = time.time()
    load_before = os.getloadavg()
    players: dict[str, Any] = {}
    procs: list[Any] = []
    db = nginx = None
    feeds: list[FeedThread] = []
    try:
        say("encoding the clips (2 s and 1 s GOP)")
        make_clip(work / "clip.flv", bitrate_kbps)
        _clip_1s_gop(work / "clip1.flv", bitrate_kbps)
        db = EmbeddedDb(work / "db", port=0)
        uri = db.start()
        args = ["--log-level", "warning"]
        one_s = {"MESH_SEGMENT_TARGET_S": "1.0"}
        say("starting an origin and two edges (2 s segments), an origin and an edge (1 s segments)")
        origin = start_node("origin", work, node_id="e2e-origin", mongo=uri, wait=False, extra_args=args)
        edges = [start_node("edge", work, node_id=f"e2e-edge{i}", mongo=uri, wait=False, extra_args=args)
                 for i in (1, 2)]
        origin1 = start_node("origin", work, node_id="e2e-origin-1s", mongo=uri, wait=False, extra_args=args,
                             env=one_s)
        edge1 = start_node("edge", work, node_id="e2e-edge-1s", mongo=uri, wait=False, extra_args=args, env=one_s)
        procs = [origin, *edges, origin1, edge1]
        for p in procs:
            p.wait_ready()

        def port(url: str) -> int:
            return int(url.rsplit(":", 1)[1].split("/")[0])

        lb_port = free_port()
        backends = Backends([Backend("e2e-origin", "127.0.0.1", port(origin.rtmp))],
                            [Backend(f"e2e-edge{i}", "127.0.0.1", port(e.http)) for i, e in enumerate(edges, 1)],
                            [Backend("e2e-origin", "127.0.0.1", port(origin.http))])
        nginx = Nginx(work / "nginx", render_nginx(backends, http_port=lb_port, rtmp_port=free_port(),
                                                   prefix=str(work / "nginx")))
        wait_for_port("127.0.0.1", lb_port)
        balancer = f"http://127.0.0.1:{lb_port}"
        cases = [("classic HLS 2 s, direct", f"{edges[0].http}/LiveApp/streams/{STREAM}.m3u8", False),
                 ("classic HLS 2 s, balancer", f"{balancer}/LiveApp/streams/{STREAM}.m3u8", False),
                 ("LL-HLS, direct", f"{edges[0].http}/LiveApp/streams/{STREAM}_ll.m3u8", True),
                 ("LL-HLS, balancer", f"{balancer}/LiveApp/streams/{STREAM}_ll.m3u8", True),
                 ("LL-HLS, balancer, catch-up", f"{balancer}/LiveApp/streams/{STREAM}_ll.m3u8", True),
                 ("classic HLS 1 s, direct", f"{edge1.http}/LiveApp/streams/{STREAM}1s.m3u8", False)]
        total = 20 + len(cases) * (player_s + 25)
        feeds = [FeedThread(origin.rtmp_url(STREAM), read_flv(work / "clip.flv"), total).start(),
                 FeedThread(origin1.rtmp_url(STREAM + "1s"), read_flv(work / "clip1.flv"), total).start()]
        import urllib.request

        for url in (cases[2][1], cases[4][1]):
            deadline = time.monotonic() + 40
            while time.monotonic() < deadline:
                try:
                    with urllib.request.urlopen(url, timeout=10) as resp:
                        if resp.read().count(b"#EXTINF") >= 3:
                            break
                except OSError:
                    pass
                time.sleep(0.3)
        for name, url, low in cases:
            say(f"{name}: hls.js for {player_s:g} s of samples")
            # "catch-up": hls.js may play at up to 1.5x to reach its target latency (it starts on a
            # keyframe, up to a GOP behind, and by default never speeds up to close that gap)
            players[name] = player_distance(url, player_s, low_latency=low,
                                            catch_up=1.5 if name.endswith("catch-up") else 1.0)
            say(f"{name}: {json.dumps(players[name])}")
    finally:
        for f in feeds:
            f.stop()
        if nginx is not None:
            nginx.stop()
        for p in procs:
            p.stop()
        if db is not None:
            db.stop()
        shutil.rmtree(work, ignore_errors=True)
    ll_lb = players.get("LL-HLS, balancer", {}).get("wallclock_age_s_median")
    classic = players.get("classic HLS 2 s, balancer", {}).get("wallclock_age_s_median")
    return {"bench": "e2e-ll", "date": time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(started)),
            "nproc": os.cpu_count(), "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "params": {"player_sample_s": player_s, "bitrate_kbps": bitrate_kbps, "part_target_s": 0.2},
            "results": players,
            "ratios": {"ll_over_classic_2s_balancer": round(ll_lb / classic, 3) if ll_lb and classic else None},
            "target": {"ll_balancer_age_s": LL_TARGET_AGE_S,
                       "met": ll_lb is not None and ll_lb <= LL_TARGET_AGE_S}}


def format_ll_table(r: dict[str, Any]) -> str:
    lines = [f"glass to glass (wall-clock age of the frame on screen), hls.js in headless Chromium, nproc "
             f"{r['nproc']}, load average {r['loadavg_before']} -> {r['loadavg_after']}",
             f"{'case':<28} {'age median s':>12} {'age max s':>10} {'hls.latency s':>14} {'to play s':>10}"]
    for name, p in r["results"].items():
        if not p.get("played"):
            lines.append(f"{name:<28} did not play: {p.get('why')}")
            continue
        lines.append(f"{name:<28} {p['wallclock_age_s_median']!s:>12} {p['wallclock_age_s_max']!s:>10} "
                     f"{p['hls_latency_s_median']!s:>14} {p['time_to_play_s']!s:>10}")
    t = r["target"]
    lines.append(f"target: LL-HLS through the balancer, median age <= {t['ll_balancer_age_s']:g} s: "
                 f"{'met' if t['met'] else 'missed'}; LL / classic 2 s (balancer): {r['ratios']['ll_over_classic_2s_balancer']}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- run


def run(duration_s: float = 40.0, poll_ms: float = 5.0, player_s: float = 10.0, bitrate_kbps: int = 600,
        with_player: bool = True) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="mesh-bench-e2e-"))
    started = time.time()
    player: dict[str, Any] = {"available": False, "why": "not run (--no-player)"}
    try:
        say(f"encoding a 10 s clip ({bitrate_kbps} kbps, {SEGMENT_S:g} s GOP)")
        make_clip(work / "clip.flv", bitrate_kbps)
        tags = read_flv(work / "clip.flv")
        say("starting the embedded database, an origin and an edge")
        pair = MeshPair(work / "mesh").start()
        try:
            url = pair.playlist_url(STREAM)
            say(f"publishing for {duration_s:g} s; polling {url} every {poll_ms:g} ms")
            feed = FeedThread(pair.origin.rtmp_url(STREAM), tags, duration_s).start()
            poller = PlaylistPoller(url, poll_ms / 1000).start()
            try:
                if with_player:
                    deadline = time.monotonic() + 20
                    while len(poller.listed) < 3 and time.monotonic() < deadline:
                        time.sleep(0.1)
                    say(f"starting hls.js in headless Chromium for {player_s:g} s of samples")
                    player = player_distance(url, player_s)
                    if not player.get("available"):
                        say(f"player figure unavailable: {player['why']}")
                feed.join(duration_s + 60)
                time.sleep(0.5)
            finally:
                feed.stop()
                poller.stop()
        finally:
            pair.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    rows = match(poller.listed, feed.keyframes)
    kf_by_media = {k.media_ms: k for k in feed.keyframes}
    first_au, last_au, origin_side = [], [], []
    for r in rows[1:]:  # the first segment includes the cold start of the edge's subscription
        opener = kf_by_media.get(r["start_ms"])
        if opener is not None:
            first_au.append((r["listed_wall"] - opener.wall_s) * 1000)
        last_au.append(r["delay_ms"])
        stamp = poller.listed[r["seq"]].pdt_s
        if stamp is not None:
            origin_side.append((r["listed_wall"] - stamp) * 1000)
    limit = SEGMENT_S * 1000 + TARGET_EXTRA_MS
    au = {"segments": len(first_au),
          "first_au_ms_median": _median(first_au), "first_au_ms_max": round(max(first_au), 2) if first_au else None,
          "last_au_ms_median": _median(last_au), "last_au_ms_max": round(max(last_au), 2) if last_au else None,
          "origin_stamp_to_listed_ms_median": _median(origin_side),
          "origin_stamp_to_listed_ms_max": round(max(origin_side), 2) if origin_side else None}
    return {"bench": "e2e", "date": time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(started)),
            "nproc": os.cpu_count(),
            "params": {"duration_s": duration_s, "poll_ms": poll_ms, "segment_s": SEGMENT_S,
                       "bitrate_kbps": bitrate_kbps, "player_sample_s": player_s},
            "results": {"access_unit_to_listed": au, "player": player},
            "ratios": {"first_au_to_listed_over_segment": round(au["first_au_ms_median"] / (SEGMENT_S * 1000), 3)
                       if au["first_au_ms_median"] else None},
            "target": {"first_au_ms_limit": limit,
                       "met": au["first_au_ms_max"] is not None and au["first_au_ms_max"] <= limit}}


def format_table(r: dict[str, Any]) -> str:
    a, p = r["results"]["access_unit_to_listed"], r["results"]["player"]
    lines = [f"loopback, {r['params']['segment_s']:g} s segments, one origin + one edge, nproc {r['nproc']}",
             f"access unit written to the origin -> its segment listed on the edge ({a['segments']} segments):",
             f"  first AU of a segment (waits longest): median {a['first_au_ms_median']} ms, max {a['first_au_ms_max']} ms",
             f"  last AU (the closing keyframe's delay): median {a['last_au_ms_median']} ms, max {a['last_au_ms_max']} ms",
             f"  origin's own stamp (PROGRAM-DATE-TIME) -> listed: median {a['origin_stamp_to_listed_ms_median']} ms"]
    t = r["target"]
    lines.append(f"target: first AU -> listed <= {t['first_au_ms_limit']:g} ms: {'met' if t['met'] else 'missed'}")
    if not p.get("available"):
        lines.append(f"player: unavailable ({p['why']})")
    elif not p.get("played"):
        lines.append(f"player: did not play ({p['why']})")
    else:
        lines.append(f"player (hls.js, headless Chromium, {p['samples']} samples, playing after {p['time_to_play_s']} s): "
                     f"hls.latency median {p['hls_latency_s_median']} s (target {p['target_latency_s']}), "
                     f"wall-clock age of the frame on screen median {p['wallclock_age_s_median']} s, "
                     f"max {p['wallclock_age_s_max']} s")
    return "\n".join(lines)


@click.command("e2e")
@click.option("--duration", "duration_s", type=float, default=40.0, show_default=True,
              help="Seconds of publishing (the player runs inside this).")
@click.option("--poll-ms", type=float, default=5.0, show_default=True, help="Playlist poll interval.")
@click.option("--player-seconds", "player_s", type=float, default=10.0, show_default=True,
              help="Seconds of player samples once it plays.")
@click.option("--no-player", is_flag=True, help="Skip the hls.js player figure.")
@click.option("--ll", is_flag=True, help="Glass to glass for classic HLS and LL-HLS, direct and through nginx.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def command(duration_s: float, poll_ms: float, player_s: float, no_player: bool, ll: bool, as_json: bool) -> None:
    """Access unit at the origin to segment listed on an edge; a player's distance from live."""
    if ll:
        result = run_ll(player_s)
        click.echo(json.dumps(result, indent=2) if as_json else format_ll_table(result))
        return
    if poll_ms <= 0 or poll_ms > 5:
        raise click.BadParameter("poll at most every 5 ms (and more than 0)", param_hint="--poll-ms")
    result = run(duration_s, poll_ms, player_s, with_player=not no_player)
    click.echo(json.dumps(result, indent=2) if as_json else format_table(result))


def main(argv: Sequence[str] | None = None) -> None:
    command.main(args=list(argv) if argv is not None else None, prog_name="mesh bench e2e")


if __name__ == "__main__":
    main(sys.argv[1:])
