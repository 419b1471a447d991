"""`mesh bench takeover`: SIGKILL of an origin to the first new segment listed on an edge, with the
publisher reconnecting to the other origin after a delay (1 s by default, as OBS does).

Baseline, in the same run and on the same processes: the publisher stops cleanly and republishes
on the same origin after the same delay (no failure to detect, no new origin to follow), which
is the floor a takeover can approach. Runs alternate (baseline, takeover, baseline, ...) so both
see the same machine load; the report gives the paired medians and their ratio.

Each takeover is also broken down from the nodes' own log lines (wall-clock milliseconds, one
machine): the publish asked on the new origin, the claim written, the first segment start on the
bus, the edge following the new origin, and that segment listed on the edge. The first segment
after a takeover closes at the publisher's next keyframe, so the publisher's keyframe interval
(``--gop``) is a floor under the figure that no origin or edge can shave.

    mesh bench takeover --kills 5
"""
from __future__ import annotations

import datetime as dt
import json
import re
import statistics
import subprocess
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import click

from mesh.cluster import NodeProcess, start_node
from mesh.embedded_db import EmbeddedDb

FFMPEG = "ffmpeg"  # Debian's, as the tests use
STREAM = "tk"
FPS = 30
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")

# The nodes' log lines a takeover is broken down by: (name, node, pattern)
STEPS = (
    ("publish asked", "origin", r"stream LiveApp/tk live on \S+ \(epoch \d+, from segment \d+, taking over; "
                                r"claimed in (\d+) ms\)"),
    ("claim written", "origin", r"stream LiveApp/tk live on \S+ \(epoch \d+, from segment \d+, taking over"),
    ("first segment on the bus", "origin", r"stream tk: first segment \d+ on the bus"),
    ("edge follows", "edge", r"stream tk moved to \S+ \(epoch \d+\); following it"),
    ("edge lists it", "edge", r"tk: first segment \d+ of epoch \d+ listed"),
)


def say(msg: str) -> None:
    click.echo(f"takeover: {msg}", err=True)


def _publish(url: str, gop: int) -> subprocess.Popen:
    return subprocess.Popen(
        [FFMPEG, "-hide_banner", "-loglevel", "error", "-nostdin", "-re",
         "-f", "lavfi", "-i", f"testsrc2=size=640x360:rate={FPS}", "-f", "lavfi", "-i", "sine=frequency=440",
         "-t", "600", "-c:v", "libx264", "-preset", "veryfast", "-g", str(gop), "-pix_fmt", "yuv420p",
         "-c:a", "aac", "-f", "flv", url], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _last_listed(playlist_url: str) -> int:
    try:
        with urllib.request.urlopen(playlist_url, timeout=5) as resp:
            lines = [ln for ln in resp.read().decode().splitlines() if ln.endswith(".ts")]
    except OSError:
        return -1
    return int(lines[-1][-12:-3]) if lines else -1


def _wait_new(playlist_url: str, after: int, timeout_s: float = 60) -> float:
    """Poll (every 20 ms) until a segment numbered above ``after`` is listed; when (monotonic)."""
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


def _logged_at(line: str) -> float | None:
    m = LOG_TIME.match(line)
    if m is None:
        return None
    # logging's asctime is local time, as time.time() is read here: the same clock
    return dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def breakdown(origin_log: str, edge_log: str, killed_wall: float) -> dict[str, float | None]:
    """Seconds from the kill to each step of :data:`STEPS`, read from the nodes' logs (the first
    matching line after the kill); None for a step not logged."""
    logs = {"origin": origin_log.splitlines(), "edge": edge_log.splitlines()}
    out: dict[str, float | None] = {}
    for name, node, pattern in STEPS:
        rx, found = re.compile(pattern), None
        for line in logs[node]:
            at = _logged_at(line)
            if at is None or at < killed_wall - 0.001:
                continue
            m = rx.search(line)
            if m:
                found = at - killed_wall
                if m.groups():  # "claimed in N ms": the publish was asked N ms before that line
                    found -= int(m.group(1)) / 1000
                break
        out[name] = None if found is None else round(found, 3)
    return out


def run(kills: int, delay_s: float, gop: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="mesh-takeover-"))
    db = EmbeddedDb(work / "db", port=0)
    mongo = db.start()
    nodes: list[NodeProcess] = []
    pub = None
    takeover: list[float] = []
    clean: list[float] = []
    steps: list[dict[str, float | None]] = []
    try:
        say("starting the database, two origins and an edge")
        origins = [_node("origin", work, mongo), _node("origin", work, mongo)]
        edge = _node("edge", work, mongo)
        nodes += [*origins, edge]
        playlist = f"{edge.http}/LiveApp/streams/{STREAM}.m3u8"
        pub = _publish(origins[0].rtmp_url(STREAM), gop)
        _wait_new(playlist, 1)
        for i in range(kills):
            # baseline: a clean stop and republish on the same origin
            _wait_new(playlist, _last_listed(playlist))
            pub.terminate()
            pub.wait()
            stopped = time.monotonic()
            _wait_ended(playlist)  # the end of stream lists the last segment
            last = _last_listed(playlist)
            time.sleep(max(0.0, delay_s - (time.monotonic() - stopped)))
            pub = _publish(origins[0].rtmp_url(STREAM), gop)
            clean.append(_wait_new(playlist, last) - stopped)
            # a takeover: SIGKILL the origin, the publisher goes to the other one
            _wait_new(playlist, _last_listed(playlist))
            last = _last_listed(playlist)
            origins[0].kill()
            killed, killed_wall = time.monotonic(), time.time()
            pub.kill()
            pub.wait()
            time.sleep(max(0.0, delay_s - (time.monotonic() - killed)))
            pub = _publish(origins[1].rtmp_url(STREAM), gop)
            replacement = _node("origin", work, mongo, wait=False)  # the next kill's spare
            nodes.append(replacement)
            takeover.append(_wait_new(playlist, last) - killed)
            origins[1].wait_for_line(rf"stream {STREAM}: first segment \d+ on the bus", timeout_s=30)
            edge.wait_for_line(rf"{STREAM}: first segment \d+ of epoch {i * 2 + 3} listed", timeout_s=30)
            steps.append(breakdown(origins[1].log_path.read_text(), edge.log_path.read_text(), killed_wall))
            replacement.wait_ready()
            say(f"run {i + 1}/{kills}: clean republish {clean[-1]:.2f} s, takeover {takeover[-1]:.2f} s "
                f"({', '.join(f'{k} {v}' for k, v in steps[-1].items())})")
            origins = [origins[1], replacement]
    finally:
        if pub is not None:
            pub.kill()
        for node in nodes:
            node.stop()
        db.stop()
    t, c = statistics.median(takeover), statistics.median(clean)
    medians = {}
    for name, _, _ in STEPS:
        seen = [s[name] for s in steps if s[name] is not None]
        medians[name] = round(statistics.median(seen), 3) if seen else None
    return {"kills": kills, "reconnect_after_s": delay_s, "gop_s": round(gop / FPS, 3),
            "takeover_s": [round(x, 3) for x in takeover], "baseline_s": [round(x, 3) for x in clean],
            "takeover_median_s": round(t, 3), "baseline_median_s": round(c, 3),
            "ratio": round(t / c, 3), "paired_ratio": round(statistics.median(
                a / b for a, b in zip(takeover, clean)), 3),
            "steps_median_s": medians, "steps": steps, "target_s": 3.0, "met": t <= 3.0}


@click.command("takeover", context_settings={"show_default": True})
@click.option("--kills", default=5, type=click.IntRange(1, 50),
              help="takeovers to time (and as many clean republishes, interleaved)")
@click.option("--reconnect-after", "delay_s", default=1.0, type=click.FloatRange(0, 30),
              help="seconds the publisher waits before reconnecting (after the kill, or its clean stop)")
@click.option("--gop", default=30, type=click.IntRange(1, 600),
              help=f"the publisher's keyframe interval in frames at {FPS} fps: the first segment "
                   "after a takeover closes at the next keyframe, so this is a floor under the figure")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object instead of the table")
def command(kills: int, delay_s: float, gop: int, as_json: bool) -> None:
    """Origin takeover: SIGKILL of the stream's origin to a new segment listed on an edge.

    Starts an embedded database, two origins and an edge, publishes a 640x360 test pattern with
    ffmpeg, then repeats KILLS times: (baseline) stop the publisher cleanly and republish on the
    same origin after --reconnect-after seconds, timing the stop to the first new segment listed;
    (takeover) SIGKILL the origin and republish on the other origin after the same delay, timing
    the kill to the first new segment listed (a spare origin is started for the next round).
    Prints the paired medians, their ratio and where a takeover's time goes (from the nodes'
    logs). Target (issue 12): a takeover median of at most 3 s with a 1 s reconnect.
    Progress goes to stderr; the result to stdout.
    """
    result = run(kills, delay_s, gop)
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(f"publisher reconnects after {delay_s:.1f} s; keyframe every {result['gop_s']} s; "
               f"{kills} runs each")
    click.echo(f"takeover (SIGKILL -> new segment listed on the edge): median {result['takeover_median_s']:.2f} s  "
               f"{[round(x, 2) for x in result['takeover_s']]}")
    click.echo(f"baseline (clean stop -> republished segment listed):  median {result['baseline_median_s']:.2f} s  "
               f"{[round(x, 2) for x in result['baseline_s']]}")
    click.echo(f"ratio takeover/baseline: {result['ratio']:.2f} (paired: {result['paired_ratio']:.2f}); "
               f"target <= 3 s {'met' if result['met'] else 'NOT met'}")
    click.echo("a takeover, step by step (median seconds after the kill):")
    for name, value in result["steps_median_s"].items():
        click.echo(f"  {name:<26} {'-' if value is None else f'{value:.2f}'}")


if __name__ == "__main__":
    command()
