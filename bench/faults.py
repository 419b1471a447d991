"""`mesh bench faults`: a cluster across real (namespaced) hosts, faults injected, what a viewer saw.

The lab (:mod:`._lab`) gives the database, two origins, two edges and nginx a host each, with
their own addresses; the runner publishes (ffmpeg through the balancer, reconnecting one second
after a failure, as OBS does) and watches as a player would (:class:`Player`: it polls the
playlist through the balancer, fetches every new segment, and plays them in real time after a
three-segment buffer). Scenarios, one after another on the same cluster:

* ``edge-kill``: SIGKILL of one edge behind the round-robin balancer;
* ``edge-partition``: one edge cut off the network for 10 s, then healed;
* ``origin-kill``: SIGKILL of the stream's origin; the publisher reconnects through the balancer;
* ``db-pause``: the database frozen (SIGSTOP) for 15 s;
* ``wan``: (its own cluster) 50 ms more round trip and 1 % loss between the origins and the edges.

Per scenario: the player's stall seconds, segments it never got (holes in the numbering),
discontinuities, segment names that came with different bytes (``reused``: must be 0), media
sequence regressions (must be 0), wrong registry states (the stream not broadcasting on a live
origin afterwards) and the recovery time (fault to the next new segment listed). The peers'
published behaviour is the comparison: the system we model detects a dead node in 20 s and
restarts HLS numbering; OvenMediaEngine fails over after 3 s without sequence continuity.

Run (as root): ``mesh bench faults [--scenario edge-kill ...] [--json]``
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import click

from ._lab import Host, Lab, node_args, python, unavailable
from .ingest import wait_for

SCENARIOS = ("edge-kill", "edge-partition", "origin-kill", "db-pause", "wan")
HTTP_PORT, RTMP_PORT, BUS_PORT = 5080, 1935, 5560


def say(msg: str) -> None:
    click.echo(f"faults: {msg}", err=True)


def http_get(url: str, timeout_s: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, b""
    except (urllib.error.URLError, OSError):
        return 0, b""


def wait(predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.2) -> Any:
    return wait_for(predicate, timeout_s, what, interval_s)


# --------------------------------------------------------------------------- the viewer
class Player(threading.Thread):
    """A live HLS viewer: polls the playlist, fetches new segments, plays them in real time."""

    def __init__(self, url: str, buffer_segments: int = 3, poll_s: float = 0.5):
        super().__init__(daemon=True, name="player")
        self.url, self.buffer_segments, self.poll_s = url, buffer_segments, poll_s
        self.base = url.rsplit("/", 1)[0]
        self._halt = threading.Event()
        self.lock = threading.Lock()
        self.hashes: dict[str, str] = {}
        self.last_seq: int | None = None
        self.last_msn: int | None = None
        self.last_dseq: int | None = None
        self.lost = self.reused = self.msn_regressions = self.errors = self.discontinuities = 0
        self.buffered_until = 0.0  # media seconds fetched
        self.started_at: float | None = None
        self.stall_s = 0.0
        self._stalled_since: float | None = None
        self.new_segment_at = 0.0  # wall time of the last new segment

    def run(self) -> None:
        while not self._halt.is_set():
            self._tick()
            self._halt.wait(self.poll_s)

    def stop(self) -> dict[str, Any]:
        self._halt.set()
        self.join(10)
        return self.report()

    def mark(self) -> dict[str, Any]:
        """The counters now, to subtract from a later report."""
        return self.report()

    def report(self) -> dict[str, Any]:
        with self.lock:
            stall = self.stall_s + (time.monotonic() - self._stalled_since if self._stalled_since else 0.0)
            return {"stall_s": round(stall, 2), "lost": self.lost, "reused": self.reused,
                    "msn_regressions": self.msn_regressions, "discontinuities": self.discontinuities,
                    "errors": self.errors, "segments": len(self.hashes)}

    def _tick(self) -> None:
        now = time.monotonic()
        self._account(now)
        status, body = http_get(self.url)
        if status != 200:
            with self.lock:
                self.errors += 1
            return
        text = body.decode(errors="replace")
        d = re.search(r"#EXT-X-DISCONTINUITY-SEQUENCE:(\d+)", text)
        dseq = int(d.group(1)) if d else 0
        m = re.search(r"#EXT-X-MEDIA-SEQUENCE:(\d+)", text)
        msn = int(m.group(1)) if m else 0
        with self.lock:
            if self.last_msn is not None and msn < self.last_msn:
                self.msn_regressions += 1
            self.last_msn = msn if self.last_msn is None else max(msn, self.last_msn)
        # A window that restarted at a higher discontinuity sequence (a takeover) starts with a
        # discontinuity too, without an inline tag
        discontinuity = self.last_dseq is not None and dseq > self.last_dseq
        self.last_dseq = dseq if self.last_dseq is None else max(dseq, self.last_dseq)
        for line in text.splitlines():
            if line == "#EXT-X-DISCONTINUITY":
                discontinuity = True
            elif line.startswith("#EXTINF:"):
                duration = float(line[8:].split(",")[0])
            elif line and not line.startswith("#"):
                self._segment(line, duration, discontinuity)
                discontinuity = False

    def _segment(self, name: str, duration: float, discontinuity: bool) -> None:
        seq_m = re.search(r"(\d{9})\.ts$", name)
        seq = int(seq_m.group(1)) if seq_m else -1
        if name in self.hashes:
            # the same name again, maybe from the other edge: it must be the same bytes
            status, body = http_get(f"{self.base}/{name}")
            if status == 200 and hashlib.sha1(body).hexdigest() != self.hashes[name]:
                with self.lock:
                    self.reused += 1
            return
        if self.last_seq is not None and seq <= self.last_seq:
            return  # older than what we play: a late window
        status, body = http_get(f"{self.base}/{name}", timeout_s=5)
        if status != 200:
            with self.lock:
                self.errors += 1
            return
        with self.lock:
            self.hashes[name] = hashlib.sha1(body).hexdigest()
            if self.last_seq is not None and seq > self.last_seq + 1 and not discontinuity:
                self.lost += seq - self.last_seq - 1  # across a discontinuity numbers may jump
            self.last_seq = seq
            self.discontinuities += discontinuity and len(self.hashes) > 1
            self.buffered_until += duration
            self.new_segment_at = time.monotonic()
            if self.started_at is None and len(self.hashes) >= self.buffer_segments:
                self.started_at = time.monotonic()

    def _account(self, now: float) -> None:
        if self.started_at is None:
            return
        with self.lock:
            playhead = now - self.started_at - self.stall_s
            if self._stalled_since is not None:
                playhead = self._stalled_since - self.started_at - self.stall_s
                if self.buffered_until - playhead >= 1.0:  # rebuffered: play on
                    self.stall_s += now - self._stalled_since
                    self._stalled_since = None
            elif playhead >= self.buffered_until:
                self._stalled_since = self.started_at + self.stall_s + self.buffered_until


# --------------------------------------------------------------------------- the cluster
class Publisher(threading.Thread):
    """ffmpeg publishing a test pattern through the balancer, reconnecting after a failure."""

    def __init__(self, url: str, log: Path, retry_s: float = 1.0):
        super().__init__(daemon=True, name="publisher")
        self.url, self.log, self.retry_s = url, log, retry_s
        self._halt = threading.Event()
        self.proc: subprocess.Popen[bytes] | None = None
        self.connects = 0

    def run(self) -> None:
        with open(self.log, "ab") as log:
            while not self._halt.is_set():
                self.connects += 1
                self.proc = subprocess.Popen(
                    ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-re", "-f", "lavfi",
                     "-i", "testsrc2=size=640x360:rate=30", "-f", "lavfi", "-i", "sine=frequency=440",
                     "-c:v", "libx264", "-preset", "ultrafast", "-g", "30", "-pix_fmt", "yuv420p",
                     "-c:a", "aac", "-f", "flv", self.url], stdout=subprocess.DEVNULL, stderr=log)
                self.proc.wait()
                self._halt.wait(self.retry_s)

    def stop(self) -> None:
        self._halt.set()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        self.join(10)


class LabCluster:
    def __init__(self, lab: Lab, workdir: Path, *, wan_delay_ms: float = 0.0, wan_loss: float = 0.0):
        from mesh.cluster import NodeProcess, node_env

        self._NodeProcess, self._node_env = NodeProcess, node_env
        self.lab, self.work = lab, workdir
        self.wan = (wan_delay_ms, wan_loss) if (wan_delay_ms or wan_loss) else None
        self.hosts: dict[str, Host] = {}
        self.nodes: dict[str, Any] = {}
        self.db_proc: subprocess.Popen[bytes] | None = None
        self.nginx: subprocess.Popen[bytes] | None = None

    @property
    def mongo(self) -> str:
        return f"mongodb://{self.hosts['db'].address}:27017/"

    def start(self) -> "LabCluster":
        for name in ("db", "origin-a", "origin-b", "edge-1", "edge-2", "lb"):
            self.hosts[name] = self.lab.add(name)
        db = self.hosts["db"]
        self.db_proc = db.popen(python("mesh", "db", "--host", db.address, "--port", "27017",
                                       "--data-dir", str(self.work / "db")),
                                stdout=open(self.work / "db.log", "ab"), stderr=subprocess.STDOUT)
        wait(lambda: _port_open(db.address, 27017), 60, "the database")
        for name in ("origin-a", "origin-b"):
            self.start_node("origin", name)
        for name in ("edge-1", "edge-2"):
            self.start_node("edge", name)
        self.start_balancer()
        return self

    def start_node(self, role: str, name: str) -> Any:
        host = self.hosts[name]
        args = node_args(role, host, self.mongo, self.work, node_id=name)
        env = {"MESH_MONGO": self.mongo, "MESH_EDGE_IDLE_UNSUBSCRIBE_S": "600"}
        if role == "origin" and self.wan:
            # edges reach this origin's bus only through a proxy with delay and loss
            wan = self.hosts.get(f"wan-{name}") or self.lab.add(f"wan-{name}")
            self.hosts[f"wan-{name}"] = wan
            delay, loss = self.wan
            mapping = [f"--map={p}:{host.address}:{p}" for p in (HTTP_PORT, RTMP_PORT, BUS_PORT, BUS_PORT + 1)]
            proxy = wan.popen(python("mesh_bench._lagproxy", "--bind", wan.address, *mapping,
                                     "--delay-ms", str(delay / 2), "--loss", str(loss)),
                              stdout=subprocess.PIPE, stderr=open(self.work / f"wan-{name}.log", "ab"))
            assert proxy.stdout is not None and proxy.stdout.readline().strip() == b"ready"
            args[args.index("--host") + 1] = wan.address  # advertised: the proxy
        proc = self._NodeProcess(host.command(args), self._node_env(**env), self.work / f"{name}.log")
        self.nodes[name] = proc.wait_ready(90)
        return proc

    def start_balancer(self) -> None:
        from mesh.lb import Backend, Backends, render_nginx, write_private_nginx

        lb = self.hosts["lb"]
        prefix = self.work / "nginx"
        origins = [Backend(n, self.hosts[n].address, RTMP_PORT) for n in ("origin-a", "origin-b")]
        http_origins = [Backend(n, self.hosts[n].address, HTTP_PORT) for n in ("origin-a", "origin-b")]
        edges = [Backend(n, self.hosts[n].address, HTTP_PORT) for n in ("edge-1", "edge-2")]
        conf = render_nginx(Backends(origins, edges, http_origins), listen=lb.address, http_port=HTTP_PORT,
                            rtmp_port=RTMP_PORT, prefix=str(prefix))
        path = write_private_nginx(prefix, conf)
        self.nginx = lb.popen(["nginx", "-p", str(prefix), "-c", str(path)],
                              stdout=subprocess.DEVNULL, stderr=open(prefix / "stderr.log", "ab"))
        wait(lambda: _port_open(lb.address, HTTP_PORT), 20, "nginx")

    @property
    def play_url(self) -> str:
        return f"http://{self.hosts['lb'].address}:{HTTP_PORT}/LiveApp/streams/cam1.m3u8"

    @property
    def publish_url(self) -> str:
        return f"rtmp://{self.hosts['lb'].address}:{RTMP_PORT}/LiveApp/cam1"

    def stream_doc(self) -> dict[str, Any]:
        for name in ("edge-1", "edge-2", "origin-a", "origin-b"):
            node = self.nodes.get(name)
            if node is None or node.proc.poll() is not None:
                continue
            status, body = http_get(f"http://{self.hosts[name].address}:{HTTP_PORT}/LiveApp/rest/v2/broadcasts/cam1")
            if status == 200:
                return json.loads(body)
        return {}

    def stop(self) -> None:
        for node in self.nodes.values():
            try:
                node.stop(5)
            except Exception:  # never leave a node running in a namespace about to vanish
                node.kill()
        for proc in (self.nginx, self.db_proc):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()


def _port_open(host: str, port: int) -> bool:
    import socket

    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------- the scenarios
def _delta(after: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    return {k: round(after[k] - before[k], 2) if isinstance(after[k], (int, float)) else after[k] for k in after}


def _recovery(player: Player, since: float, timeout_s: float = 60.0) -> float | None:
    try:
        wait(lambda: player.new_segment_at > since, timeout_s, "a new segment", 0.1)
    except RuntimeError:
        return None
    return round(player.new_segment_at - since, 2)


def _settle(player: Player, seconds: float) -> None:
    time.sleep(seconds)  # a benchmark watches the player for a while: nothing to wait on


def scenario(cl: LabCluster, player: Player, name: str) -> dict[str, Any]:
    before = player.mark()
    fault_at = time.monotonic()
    if name == "edge-kill":
        cl.nodes["edge-1"].kill()
        recovery = _recovery(player, fault_at)
        _settle(player, 8)
        cl.start_node("edge", "edge-1")
    elif name == "edge-partition":
        cl.hosts["edge-2"].cut()
        recovery = _recovery(player, fault_at)
        _settle(player, 10)
        cl.hosts["edge-2"].heal()
        _settle(player, 6)
    elif name == "origin-kill":
        owner = cl.stream_doc().get("originNode", "origin-a")
        cl.nodes[owner].kill()
        recovery = _recovery(player, fault_at)
        _settle(player, 8)
        cl.start_node("origin", owner)
    elif name == "db-pause":
        assert cl.db_proc is not None
        os.kill(cl.db_proc.pid, signal.SIGSTOP)
        _settle(player, 15)
        os.kill(cl.db_proc.pid, signal.SIGCONT)
        recovery = 0.0
        _settle(player, 6)
    elif name == "wan":
        recovery = 0.0
        _settle(player, 30)
    else:
        raise ValueError(name)
    result = _delta(player.mark(), before)
    doc = cl.stream_doc()
    alive_owner = doc.get("originNode") in cl.nodes and cl.nodes[doc["originNode"]].proc.poll() is None
    result.update({"scenario": name, "recovery_s": recovery,
                   "wrong_registry_states": int(not (doc.get("status") == "broadcasting" and alive_owner))})
    say(f"{name}: {result}")
    return result


@contextmanager
def watched_cluster(work: Path, **wan: float) -> Iterator[tuple[LabCluster, Player]]:
    """A lab cluster with a reconnecting publisher and a player that has started playing."""
    with Lab() as lab:
        cl = LabCluster(lab, work, **wan)
        publisher = player = None
        try:
            cl.start()
            publisher = Publisher(cl.publish_url, work / "publisher.log")
            publisher.start()
            player = Player(cl.play_url)
            player.start()
            wait(lambda: player.started_at is not None, 90, "the player to start")
            yield cl, player
        finally:
            try:
                if player is not None:
                    player.stop()
                if publisher is not None:
                    publisher.stop()
            finally:
                cl.stop()  # always: node processes outlive their namespace otherwise


def run(names: list[str], workdir: Path | None = None) -> dict[str, Any]:
    why = unavailable()
    if why:
        raise click.ClickException(f"the lab cannot run here: {why}")
    work = workdir or Path(tempfile.mkdtemp(prefix="mesh-bench-faults-"))
    results = []
    for group in ([n for n in names if n != "wan"], [n for n in names if n == "wan"]):
        if not group:
            continue
        wan = group == ["wan"]
        sub = work / ("wan" if wan else "main")
        sub.mkdir(parents=True, exist_ok=True)
        say(f"starting the lab ({'origins behind 50 ms and 1 % loss' if wan else '6 hosts'})")
        with watched_cluster(sub, **({"wan_delay_ms": 50, "wan_loss": 0.01} if wan else {})) as (cl, player):
            for name in group:
                results.append(scenario(cl, player, name))
    return {"benchmark": "faults", "results": results, "when": time.strftime("%Y-%m-%d %H:%M:%S"),
            "load_avg": [round(x, 2) for x in os.getloadavg()], "workdir": str(work)}


def format_table(r: dict[str, Any]) -> str:
    lines = [f"{'scenario':<16}{'stall s':>8}{'lost':>6}{'disc':>6}{'reused':>8}{'msn back':>10}"
             f"{'wrong reg':>10}{'recovery s':>11}"]
    for x in r["results"]:
        rec = "-" if x["recovery_s"] is None else f"{x['recovery_s']:.1f}"
        lines.append(f"{x['scenario']:<16}{x['stall_s']:>8.1f}{x['lost']:>6}{x['discontinuities']:>6}"
                     f"{x['reused']:>8}{x['msn_regressions']:>10}{x['wrong_registry_states']:>10}{rec:>11}")
    lines.append("peers (published): the system we model notices a dead node after 20 s and restarts HLS "
                 "numbering; OvenMediaEngine fails over after 3 s without sequence continuity")
    return "\n".join(lines)


@click.command("faults")
@click.option("--scenario", "names", multiple=True, type=click.Choice(SCENARIOS),
              help="scenarios to run (repeatable) [all]")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def command(names: tuple[str, ...], as_json: bool) -> None:
    """Faults on a cluster of namespaced hosts (root): what a viewer saw, per scenario."""
    report = run(list(names) or list(SCENARIOS))
    click.echo(json.dumps(report) if as_json else format_table(report))
