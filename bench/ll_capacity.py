"""Benchmark: LL-HLS blocking playlist reloads, many waiting players on one edge.

An origin and an edge run as real processes; a real-time RTMP feed (the bench clip, 2 s GOP, so
2 s segments of ten 200 ms parts) is published. In this process, N simulated players (asyncio,
one keep-alive HTTP/1.1 connection each, a minimal client so the client side costs little) each
loop on LL-HLS blocking requests: ask ``cam1_ll.m3u8?_HLS_msn=M&_HLS_part=P`` for the part named
by the last answer's ``EXT-X-PRELOAD-HINT``, note when the answer's first byte arrived, repeat.

**Part-delivery delay** = answer's first byte at the player - the moment the part became
available on the origin. The part is complete on the origin when the frame that starts the next
part arrives there; with a real-time feed that moment is the segment's ``PROGRAM-DATE-TIME`` (the
origin's wall clock when the segment's first frame arrived) plus the durations of the part and
the parts before it. Only requests sent before that moment count (a player that fell behind asks
for a part that already exists; its answer says nothing about waiting). It includes the bus hop,
packetising, waking the waiters and sending N answers, as a player sees it. The same run measures
N = 1 first: the paired baseline, so the added cost of N waiting players is the difference.

Run: ``mesh bench ll-capacity [--players 1,2000] [--seconds 15] [--json]``
"""
from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
from mesh_bench._rtmp_feed import read_flv
from mesh_bench.ingest import make_clip
from mesh_bench.latency import STREAM, FeedThread, MeshPair

HINT = re.compile(rb'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="[^"]*_ll(\d{9})\.(\d+)\.m4s"')
PART = re.compile(rb'#EXT-X-PART:DURATION=([\d.]+),URI="[^"]*_ll(\d{9})\.(\d+)\.m4s"')
TARGET_P99_MS = 50.0
TARGET_PLAYERS = 2000


def say(msg: str) -> None:
    click.echo(f"ll-capacity: {msg}", err=True)


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(q * len(xs)))], 1)


class Timeline:
    """What one observing player learned: each segment's PDT and each part's duration."""

    def __init__(self) -> None:
        self.pdt_s: dict[int, float] = {}
        self.durations: dict[tuple[int, int], float] = {}

    def learn(self, body: bytes) -> None:
        for m in re.finditer(rb"#EXT-X-PROGRAM-DATE-TIME:([^\n]+)\n((?:#EXT-X-PART:[^\n]*\n)*)", body):
            when = dt.datetime.fromisoformat(m.group(1).decode().replace("Z", "+00:00")).timestamp()
            parts = PART.findall(m.group(2))
            if parts:
                self.pdt_s[int(parts[0][1])] = when
        for duration, seq, index in PART.findall(body):
            self.durations[(int(seq), int(index))] = float(duration)

    def available_at(self, seq: int, part: int) -> float | None:
        start = self.pdt_s.get(seq)
        durations = [self.durations.get((seq, i)) for i in range(part + 1)]
        if start is None or any(d is None for d in durations):
            return None
        return start + sum(durations)  # type: ignore[arg-type]


async def _player(host: str, port: int, path: str, until: float, samples: list[tuple[int, int, float, float]],
                  timeline: Timeline | None, errors: list[str]) -> None:
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError as exc:
        errors.append(f"connect: {exc}")
        return
    query = ""
    want = (0, 0)  # the part the pending blocking request asks for (set with query)
    try:
        while time.time() < until:
            sent = time.time()
            writer.write(f"GET {path}{query} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            status = await reader.readline()
            first = time.time()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            body = await reader.readexactly(length)
            if not status.startswith(b"HTTP/1.1 200"):
                errors.append(status.decode(errors="replace").strip())
                await asyncio.sleep(0.2)
                query = ""
                continue
            if timeline is not None:
                timeline.learn(body)
            if query:
                samples.append((want[0], want[1], sent, first))
            m = HINT.search(body)
            if m is None:
                break  # the stream ended
            want = (int(m.group(1)), int(m.group(2)))
            query = f"?_HLS_msn={want[0]}&_HLS_part={want[1]}"
    except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        writer.close()


async def _round(url: str, players: int, seconds: float) -> dict[str, Any]:
    u = urlsplit(url)
    until = time.time() + seconds
    samples: list[list[tuple[int, int, float, float]]] = [[] for _ in range(players)]
    errors: list[str] = []
    timeline = Timeline()
    tasks = [asyncio.create_task(_player(u.hostname or "127.0.0.1", u.port or 80, u.path, until, samples[i],
                                         timeline if i == 0 else None, errors)) for i in range(players)]
    await asyncio.gather(*tasks)
    delays, counted, skipped = [], 0, 0
    for per in samples:
        for seq, part, sent, first in per:
            available = timeline.available_at(seq, part)
            if available is None or sent >= available:
                skipped += 1
                continue
            counted += 1
            delays.append((first - available) * 1000)
    return {"players": players, "answers": sum(len(s) for s in samples), "counted": counted,
            "skipped_not_waiting": skipped, "errors": len(errors), "error_examples": sorted(set(errors))[:5],
            "delay_ms_p50": _pct(delays, 0.5), "delay_ms_p90": _pct(delays, 0.9),
            "delay_ms_p99": _pct(delays, 0.99), "delay_ms_max": _pct(delays, 1.0)}


def run(players: Sequence[int] = (1, TARGET_PLAYERS), seconds: float = 15.0, bitrate_kbps: int = 600) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="mesh-bench-llcap-"))
    started = time.time()
    rounds: list[dict[str, Any]] = []
    load_before = os.getloadavg()
    try:
        make_clip(work / "clip.flv", bitrate_kbps)
        tags = read_flv(work / "clip.flv")
        say("starting the embedded database, an origin and an edge")
        pair = MeshPair(work / "mesh").start()
        try:
            url = pair.playlist_url(STREAM).replace(".m3u8", "_ll.m3u8")
            total = 12 + len(players) * (seconds + 6)
            feed = FeedThread(pair.origin.rtmp_url(STREAM), tags, total).start()
            try:
                import urllib.request

                deadline = time.monotonic() + 40
                while time.monotonic() < deadline:
                    try:
                        with urllib.request.urlopen(url, timeout=10) as resp:
                            if resp.read().count(b"#EXTINF") >= 2:
                                break
                    except OSError:
                        pass
                    time.sleep(0.3)
                for n in players:
                    say(f"{n} waiting players for {seconds:g} s")
                    rounds.append(asyncio.run(_round(url, n, seconds)))
                    say(json.dumps(rounds[-1]))
            finally:
                feed.stop()
                feed.join(10)
        finally:
            pair.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = rounds[0] if rounds else {}
    top = rounds[-1] if rounds else {}
    added = (round(top["delay_ms_p99"] - base["delay_ms_p99"], 1)
             if top.get("delay_ms_p99") is not None and base.get("delay_ms_p99") is not None else None)
    return {"bench": "ll-capacity", "date": time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(started)),
            "nproc": os.cpu_count(), "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "params": {"players": list(players), "seconds": seconds, "part_target_s": 0.2, "segment_s": 2.0},
            "results": rounds,
            "ratios": {"p99_added_ms_vs_one_player": added},
            "target": {"players": TARGET_PLAYERS, "p99_ms": TARGET_P99_MS,
                       "met": bool(top.get("players", 0) >= TARGET_PLAYERS and top.get("delay_ms_p99") is not None
                                   and top["delay_ms_p99"] <= TARGET_P99_MS)}}


def format_table(r: dict[str, Any]) -> str:
    lines = [f"one edge, 200 ms parts, nproc {r['nproc']}, load average {r['loadavg_before']} -> {r['loadavg_after']}",
             f"{'players':>8} {'answers':>8} {'counted':>8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8} {'errors':>7}"]
    for x in r["results"]:
        lines.append(f"{x['players']:>8} {x['answers']:>8} {x['counted']:>8} {x['delay_ms_p50']!s:>8} "
                     f"{x['delay_ms_p90']!s:>8} {x['delay_ms_p99']!s:>8} {x['delay_ms_max']!s:>8} {x['errors']:>7}")
    t = r["target"]
    lines.append(f"p99 added vs one player: {r['ratios']['p99_added_ms_vs_one_player']} ms; target {t['players']} "
                 f"players with p99 <= {t['p99_ms']:g} ms: {'met' if t['met'] else 'missed'}")
    return "\n".join(lines)


@click.command("ll-capacity")
@click.option("--players", default=f"1,{TARGET_PLAYERS}", show_default=True,
              help="Comma-separated counts of waiting players, one round each (the first is the baseline).")
@click.option("--seconds", type=float, default=15.0, show_default=True, help="Seconds per round.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def command(players: str, seconds: float, as_json: bool) -> None:
    """LL-HLS blocking reloads: part-delivery delay with N waiting players on one edge."""
    try:
        counts = [int(x) for x in players.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter("use counts like 1,500,2000", param_hint="--players") from None
    if not counts or any(not 1 <= n <= 10_000 for n in counts):
        raise click.BadParameter("use 1 to 10000 players per round", param_hint="--players")
    result = run(counts, seconds)
    click.echo(json.dumps(result, indent=2) if as_json else format_table(result))


def main(argv: Sequence[str] | None = None) -> None:
    command.main(args=list(argv) if argv is not None else None, prog_name="mesh bench ll-capacity")


if __name__ == "__main__":
    main(sys.argv[1:])
