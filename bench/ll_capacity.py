"""Benchmark: LL-HLS blocking playlist reloads, many waiting players on one edge.

An origin and an edge run as real processes; a real-time RTMP feed (the bench clip, 2 s GOP, so
2 s segments of ten 200 ms parts) is published. N simulated players each loop on LL-HLS blocking
requests on one keep-alive HTTP/1.1 connection: ask ``cam1_ll.m3u8?_HLS_msn=M&_HLS_part=P`` for the
part named by the last answer's ``EXT-X-PRELOAD-HINT``, note when the answer's first byte arrived,
repeat. The players run in ONE separate worker process (so the bench process's own work does not
compete with them), as minimal clients on raw non-blocking sockets (no streams, no tasks: one
callback per answer; ~27 us of CPU per answer against the edge's ~50); an answer's arrival is the
kernel's receive timestamp of its first bytes (``SO_TIMESTAMPNS``), so 2,000 answers landing at
once are not charged the time this one process takes to read them all; their connections come
from 127.0.0.2, 127.0.0.3, ... (400 per address), as players from several addresses would, so the
edge's per-address connection cap (512) does not refuse them. Client and edge still share the
machine's cores. Each round also reports the CPU time the edge spent per answer (from /proc: a
figure that holds when other work on a shared machine leaves the edge only part of a core) and
the players' process's own, so a reader can tell which side ran out.

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
import multiprocessing
import os
import re
import resource
import shutil
import socket
import struct
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
from mesh_bench._rtmp_feed import read_flv
from mesh_bench._stats import percentile
from mesh_bench.ingest import make_clip
from mesh_bench.latency import STREAM, FeedThread, MeshPair

HINT = re.compile(rb'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="[^"]*_ll(\d{9})\.(\d+)\.m4s"')
PART = re.compile(rb'#EXT-X-PART:DURATION=([\d.]+),URI="[^"]*_ll(\d{9})\.(\d+)\.m4s"')
_LENGTH = re.compile(rb"\r\n[Cc]ontent-[Ll]ength: *(\d+)")
PLAYERS_PER_ADDRESS = 400  # client connections per loopback source address (the edge caps 512 per IP)
TARGET_P99_MS = 50.0
PLAYERS_NICE = int(os.environ.get("MESH_BENCH_PLAYERS_NICE", "10"))  # 0: the players compete as equals
TARGET_PLAYERS = 2000


def say(msg: str) -> None:
    click.echo(f"ll-capacity: {msg}", err=True)


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    return round(percentile(xs, q), 1)


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


SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux: kernel receive time on each recvmsg
_TS_SPACE = socket.CMSG_SPACE(16)


class _Player:
    """One simulated player on a raw non-blocking socket: one request outstanding at a time,
    parsed by hand. The arrival of an answer is the kernel's receive timestamp of its first
    bytes (``SO_TIMESTAMPNS``), not the moment this process got round to reading them, so a
    burst of 2,000 answers is not charged the players' own processing time."""

    def __init__(self, sock: socket.socket, host: str, path: str, until: float,
                 samples: list[tuple[int, int, float, float]], timeline: Timeline | None, errors: list[str],
                 done: asyncio.Future[None]):
        self.sock, self.host, self.path, self.until = sock, host, path, until
        self.samples, self.timeline, self.errors, self.done = samples, timeline, errors, done
        self.loop = asyncio.get_running_loop()
        self.buf = bytearray()
        self.query = ""
        self.want = (0, 0)
        self.sent = self.first = 0.0
        self.need = -1  # bytes of the whole answer, once its head is in
        self.start = 0  # where its body starts
        self.ok = False
        self.closed = False

    def begin(self) -> None:
        self.loop.add_reader(self.sock.fileno(), self.readable)
        self.send()

    def close(self, error: str | None = None) -> None:
        if error is not None:
            self.errors.append(error)
        if not self.closed:
            self.closed = True
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()
        if not self.done.done():
            self.done.set_result(None)

    def send(self) -> None:
        if self.closed:
            return
        if time.time() >= self.until:
            self.close()
            return
        self.sent = time.time()
        self.first = 0.0
        try:
            self.sock.send(f"GET {self.path}{self.query} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())
        except OSError as exc:  # a request of ~100 bytes into an empty socket buffer: all or nothing
            self.close(f"send: {exc}")

    def readable(self) -> None:
        try:
            data, ancillary, _flags, _addr = self.sock.recvmsg(1 << 16, _TS_SPACE)
        except BlockingIOError:
            return
        except OSError as exc:
            self.close(f"{type(exc).__name__}: {exc}")
            return
        if not data:
            self.close()
            return
        if not self.first:
            self.first = time.time()
            for level, kind, value in ancillary:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= 16:
                    sec, nsec = struct.unpack_from("qq", value)
                    self.first = sec + nsec * 1e-9
        self.received(data)

    def received(self, data: bytes) -> None:
        self.buf += data
        if self.need < 0:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            m = _LENGTH.search(self.buf, 0, end)
            self.start = end + 4
            self.need = self.start + (int(m.group(1)) if m else 0)
            self.ok = self.buf.startswith(b"HTTP/1.1 200")
            if not self.ok:
                self.errors.append(bytes(self.buf[:self.buf.find(b"\r\n")]).decode(errors="replace"))
        if len(self.buf) < self.need:
            return
        buf, start, need = self.buf, self.start, self.need
        self.need = -1
        if not self.ok:
            del buf[:need]
            self.query = ""
            self.loop.call_later(0.2, self.send)
            return
        if self.timeline is not None:
            self.timeline.learn(bytes(buf[start:need]))
        if self.query:
            self.samples.append((self.want[0], self.want[1], self.sent, self.first))
        at = buf.rfind(b"#EXT-X-PRELOAD-HINT:", start, need)
        m = HINT.match(buf, at, need) if at >= 0 else None
        hint = (int(m.group(1)), int(m.group(2))) if m is not None else None  # before the bytes go
        del buf[:need]
        if hint is None:
            self.close()  # the stream ended
            return
        self.want = hint
        self.query = f"?_HLS_msn={self.want[0]}&_HLS_part={self.want[1]}"
        self.send()


async def _round(url: str, players: int, seconds: float) -> dict[str, Any]:
    u = urlsplit(url)
    host, port = u.hostname or "127.0.0.1", u.port or 80
    loop = asyncio.get_running_loop()
    samples: list[list[tuple[int, int, float, float]]] = [[] for _ in range(players)]
    errors: list[str] = []
    timeline = Timeline()
    until = time.time() + 3600.0  # set for real once every player is connected
    made: list[_Player] = []
    dones: list[asyncio.Future[None]] = []
    for start in range(0, players, 200):
        batch = []
        for i in range(start, min(players, start + 200)):
            done = loop.create_future()
            dones.append(done)
            source = f"127.0.0.{2 + i // PLAYERS_PER_ADDRESS}" if host.startswith("127.") else None
            batch.append(_connect(host, port, source, u.path, until, samples[i], timeline if i == 0 else None,
                                  errors, done))
        for got, done in zip(await asyncio.gather(*batch, return_exceptions=True), dones[start:]):
            if isinstance(got, BaseException):
                errors.append(f"connect: {got}")
                done.set_result(None)
            else:
                made.append(got)
    began = time.time()
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    for player in made:
        player.until = began + seconds
    for player in made:
        player.begin()
    await asyncio.wait(dones, timeout=seconds + 30)
    elapsed = time.time() - began
    after = resource.getrusage(resource.RUSAGE_SELF)
    client_cpu_s = after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime
    delays, counted, skipped = [], 0, 0
    earliest: dict[tuple[int, int], float] = {}  # the first answer for each part, among the waiting
    waited: list[tuple[tuple[int, int], float]] = []
    for per in samples:
        for seq, part, sent, first in per:
            available = timeline.available_at(seq, part)
            if available is None or sent >= available:
                skipped += 1
                continue
            counted += 1
            delays.append((first - available) * 1000)
            earliest[(seq, part)] = min(first, earliest.get((seq, part), first))
            waited.append(((seq, part), first))
    # How long one part's answers take to go out, first to last: the fan-out itself, apart from
    # when the part reached the edge (origin read, bus hop, packetising).
    spread = [(first - earliest[key]) * 1000 for key, first in waited]
    answers = sum(len(s) for s in samples)
    return {"players": players, "answers": answers, "answers_per_s": round(answers / max(elapsed, 1e-3)),
            "seconds": round(elapsed, 2), "client_cpu_s": round(client_cpu_s, 2),
            "counted": counted, "skipped_not_waiting": skipped, "errors": len(errors),
            "error_examples": sorted(set(errors))[:5],
            "delay_ms_p50": _pct(delays, 0.5), "delay_ms_p90": _pct(delays, 0.9),
            "delay_ms_p99": _pct(delays, 0.99), "delay_ms_max": _pct(delays, 1.0),
            "spread_ms_p50": _pct(spread, 0.5), "spread_ms_p99": _pct(spread, 0.99)}


async def _connect(host: str, port: int, source: str | None, *args: Any) -> _Player:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        if source:
            sock.bind((source, 0))
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    return _Player(sock, host, *args)


def _worker(url: str, players: int, seconds: float, out: Any) -> None:
    """The players' process: raise the open-files limit, run one round, send back its summary.
    It runs at a lower priority (``nice``): real players are on other machines, and here the load
    generator must not take the edge's core while a part's answers go out (it reads its share
    between parts; the kernel timestamps keep its own lateness out of the figures)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if PLAYERS_NICE:
        os.nice(PLAYERS_NICE)
    try:
        out.send(asyncio.run(_round(url, players, seconds)))
    except BaseException as exc:
        out.send({"players": players, "errors": 1, "error_examples": [f"worker: {exc!r}"]})
        raise


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _round_in_worker(url: str, players: int, seconds: float) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    mine, theirs = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_worker, args=(url, players, seconds, theirs), name="ll-capacity-players")
    proc.start()
    theirs.close()
    try:
        if not mine.poll(seconds + 120):
            raise RuntimeError(f"the players' worker gave no result within {seconds + 120:g} s")
        result: dict[str, Any] = mine.recv()
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join()
    return result


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
                    load = os.getloadavg()[0]
                    edge_cpu = _cpu_s(pair.edge.proc.pid)
                    got = _round_in_worker(url, n, seconds)
                    edge_cpu = _cpu_s(pair.edge.proc.pid) - edge_cpu  # includes the worker's start/stop
                    answers = got.get("answers") or 0
                    per = (lambda cpu_s: round(cpu_s / answers * 1e6) if answers else None)
                    rounds.append({**got, "loadavg_1m_before": round(load, 2), "edge_cpu_s": round(edge_cpu, 2),
                                   "edge_cpu_us_per_answer": per(edge_cpu),
                                   "client_cpu_us_per_answer": per(got.get("client_cpu_s", 0.0))})
                    say(json.dumps(rounds[-1]))
            finally:
                feed.stop()
                feed.join(10)
        finally:
            pair.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = rounds[0] if len(rounds) > 1 else {}
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
                       "met": bool(top.get("players", 0) >= TARGET_PLAYERS and added is not None
                                   and added <= TARGET_P99_MS and not top.get("errors"))}}


def format_table(r: dict[str, Any]) -> str:
    lines = [f"one edge, 200 ms parts, nproc {r['nproc']}, load average {r['loadavg_before']} -> {r['loadavg_after']}",
             f"{'players':>8} {'answers':>8} {'ans/s':>6} {'counted':>8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} "
             f"{'max ms':>8} {'spread p50/p99':>14} {'errors':>7} {'load':>6} {'edge us/ans':>11} {'client us/ans':>13}"]
    for x in r["results"]:
        lines.append(f"{x['players']:>8} {x.get('answers')!s:>8} {x.get('answers_per_s')!s:>6} {x.get('counted')!s:>8} "
                     f"{x.get('delay_ms_p50')!s:>8} {x.get('delay_ms_p90')!s:>8} {x.get('delay_ms_p99')!s:>8} "
                     f"{x.get('delay_ms_max')!s:>8} {str(x.get('spread_ms_p50')) + '/' + str(x.get('spread_ms_p99')):>14} {x['errors']:>7} {x.get('loadavg_1m_before')!s:>6} "
                     f"{x.get('edge_cpu_us_per_answer')!s:>11} {x.get('client_cpu_us_per_answer')!s:>13}")
        if x.get("error_examples"):
            lines.append(f"         errors: {x['error_examples']}")
    t = r["target"]
    lines.append(f"p99 added vs one player: {r['ratios']['p99_added_ms_vs_one_player']} ms; target {t['players']} "
                 f"players with p99 <= {t['p99_ms']:g} ms added: {'met' if t['met'] else 'missed'}")
    lines.append("(delay: answer's first byte at the player, kernel timestamp, - the part complete on the origin; "
                 "spread: each answer - the part's first answer)")
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
