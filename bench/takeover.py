"""Origin takeover time: SIGKILL of the origin to the first new segment listed on an edge, with the
publisher reconnecting to the other origin after a delay (1 s by default).

Baseline, in the same run and on the same processes: the publisher stops cleanly and republishes
on the same origin after the same delay (no failure to detect, no new origin to follow), which
is the floor a takeover can approach. Reports the paired medians and their ratio.

    .venv/bin/python -m mesh_bench.takeover --kills 3
"""
from __future__ import annotations

import statistics
import subprocess
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import click

from mesh.cluster import NodeProcess, start_node
from mesh.embedded_db import EmbeddedDb

FFMPEG = "ffmpeg"  # Debian's, as the tests use


def _publish(url: str) -> subprocess.Popen:
    return subprocess.Popen(
        [FFMPEG, "-hide_banner", "-loglevel", "error", "-nostdin", "-re",
         "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30", "-f", "lavfi", "-i", "sine=frequency=440",
         "-t", "600", "-c:v", "libx264", "-preset", "veryfast", "-g", "30", "-pix_fmt", "yuv420p",
         "-c:a", "aac", "-f", "flv", url], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _last_listed(playlist_url: str) -> int:
    try:
        with urllib.request.urlopen(playlist_url, timeout=5) as resp:
            lines = [ln for ln in resp.read().decode().splitlines() if ln.endswith(".ts")]
    except OSError:
        return -1
    return int(lines[-1][-12:-3]) if lines else -1


def _wait_new(playlist_url: str, after: int, timeout_s: float = 60) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _last_listed(playlist_url) > after:
            return time.monotonic()
        time.sleep(0.02)
    raise click.ClickException(f"no segment above {after} on {playlist_url} within {timeout_s} s")


def _wait_ended(playlist_url: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(playlist_url, timeout=5) as resp:
                if b"#EXT-X-ENDLIST" in resp.read():
                    return
        except OSError:
            pass
        time.sleep(0.02)
    raise click.ClickException(f"{playlist_url} never ended")


def _node(role: str, work: Path, mongo: str, wait: bool = True) -> NodeProcess:
    return start_node(role, work, node_id=f"{role}-{uuid.uuid4().hex[:6]}", mongo=mongo,
                      db_name="bench", wait=wait)


@click.command("takeover")
@click.option("--kills", default=3, show_default=True, help="takeovers (and clean republishes) to time")
@click.option("--reconnect-after", "delay_s", default=1.0, show_default=True,
              help="seconds the publisher waits before reconnecting")
def command(kills: int, delay_s: float) -> None:
    """SIGKILL of an origin to a new segment on the edge, vs a clean republish."""
    work = Path(tempfile.mkdtemp(prefix="mesh-takeover-"))
    db = EmbeddedDb(work / "db", port=0)
    mongo = db.start()
    nodes: list[NodeProcess] = []
    pub = None
    takeover, clean, claims = [], [], []
    try:
        origins = [_node("origin", work, mongo), _node("origin", work, mongo)]
        edge = _node("edge", work, mongo)
        nodes += [*origins, edge]
        playlist = f"{edge.http}/LiveApp/streams/tk.m3u8"
        pub = _publish(origins[0].rtmp_url("tk"))
        _wait_new(playlist, 1)
        for _ in range(kills):
            # baseline: a clean stop and republish on the same origin
            _wait_new(playlist, _last_listed(playlist))
            last = _last_listed(playlist)
            pub.terminate()
            pub.wait()
            stopped = time.monotonic()
            _wait_ended(playlist)  # the end of stream lists the last segment
            last = _last_listed(playlist)
            time.sleep(max(0.0, delay_s - (time.monotonic() - stopped)))
            pub = _publish(origins[0].rtmp_url("tk"))
            clean.append(_wait_new(playlist, last) - stopped)
            click.echo(f"  clean republish: {clean[-1]:.2f} s", err=True)
            # a takeover: SIGKILL the origin, the publisher goes to the other one
            _wait_new(playlist, _last_listed(playlist))
            last = _last_listed(playlist)
            origins[0].kill()
            killed = time.monotonic()
            pub.kill()
            pub.wait()
            time.sleep(delay_s)
            pub = _publish(origins[1].rtmp_url("tk"))
            replacement = _node("origin", work, mongo, wait=False)  # the next kill's spare
            nodes.append(replacement)
            origins[1].wait_for_line(r"stream LiveApp/tk live on .*taking over", timeout_s=60)
            claims.append(time.monotonic() - killed)
            takeover.append(_wait_new(playlist, last) - killed)
            replacement.wait_ready()
            click.echo(f"  takeover: {takeover[-1]:.2f} s", err=True)
            origins = [origins[1], replacement]
    finally:
        if pub is not None:
            pub.kill()
        for node in nodes:
            node.stop()
        db.stop()
    t, c = statistics.median(takeover), statistics.median(clean)
    click.echo(f"publisher reconnects after {delay_s:.1f} s; {kills} runs each")
    click.echo(f"takeover (SIGKILL -> new segment listed on the edge): median {t:.2f} s  "
               f"{[round(x, 2) for x in takeover]}")
    click.echo(f"baseline (clean stop -> republished segment listed):  median {c:.2f} s  "
               f"{[round(x, 2) for x in clean]}")
    click.echo(f"of which SIGKILL -> stream claimed on the new origin: median {statistics.median(claims):.2f} s  "
               f"{[round(x, 2) for x in claims]}")
    click.echo(f"ratio takeover/baseline: {t / c:.2f}")


if __name__ == "__main__":
    command()
