"""`mesh bench throughput`: bus messages/s and MB/s against raw pyzmq PUB/SUB, in the same run.

One publisher process and N subscriber processes on 127.0.0.1 move fixed-size payloads as fast as
the publisher can push them, first through the real bus (``mesh``: Channel -> XPUB ->
BusSubscriber/TopicTracker), then through raw pyzmq (``raw``: one ``topic+payload`` frame per
send, a blocking recv loop); the two alternate within each repeat. Rates are measured at the
receivers (what was delivered, per second of receiving); loss is what was sent and not delivered.
Every payload starts with its send time, so latency is publish-to-receive under saturation:
mostly the time spent queued, not the wire.

The mesh publisher yields to its event loop every ``--burst`` access units, as a busy origin
does between socket reads; the bus sends what one tick pushed as one ZeroMQ message per topic.
``--burst 1`` measures the unbatched path (one message per access unit).

Run: ``mesh bench throughput [--payload 1500 --payload 16384] [--subscribers 1] [--json]``
"""
from __future__ import annotations

import json
import os
import time
from typing import Any

import click

from . import _bus

DEFAULT_PAYLOADS = (188, 1500, 16384, 65536)


def run(payloads: tuple[int, ...], subscribers: int, duration_s: float, repeats: int, burst: int,
        progress: Any = None, curve: bool = False) -> dict[str, Any]:
    results = []
    impls = ("mesh", "curve", "raw", "rawcurve") if curve else ("mesh", "raw")
    for size in payloads:
        runs: dict[str, list[dict[str, Any]]] = {impl: [] for impl in impls}
        for r in range(repeats):
            order = impls if r % 2 == 0 else impls[::-1]  # none always goes first
            for impl in order:
                trial = _bus.run_trial(impl, subscribers, duration_s=duration_s, size=size,
                                       hwm=_bus.hwm_for(impl, size, burst), burst=burst)
                runs[impl].append(trial)
                if progress:
                    progress(f"throughput {size} B x{subscribers} repeat {r + 1}/{repeats} {impl}: "
                             f"{trial['msgs_per_s']:,.0f} msg/s, {trial['mb_per_s']:,.1f} MB/s, "
                             f"lost {trial['lost']}")
        results.append(summarise(size, subscribers, runs))
    return {"benchmark": "throughput", "nproc": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "duration_s": duration_s, "repeats": repeats, "burst": burst, "results": results}


def summarise(size: int, subscribers: int, runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    out: dict[str, Any] = {"payload_bytes": size, "subscribers": subscribers}
    for impl, trials in runs.items():
        def med(key: str, trials: list[dict[str, Any]] = trials) -> float:
            return _bus.median_of(trials, key)
        delivered = sum(t["delivered"] for t in trials)
        expected = sum(t["expected"] for t in trials)
        out.update({
            f"{impl}_msgs_per_s": med("msgs_per_s"),
            f"{impl}_mb_per_s": med("mb_per_s"),
            f"{impl}_aggregate_msgs_per_s": med("aggregate_msgs_per_s"),
            f"{impl}_sender_msgs_per_s": med("pub_msgs_per_s"),
            f"{impl}_p50_ms": med("p50_ms"),
            f"{impl}_p99_ms": med("p99_ms"),
            f"{impl}_delivered_ratio": delivered / expected if expected else 0.0,
            f"{impl}_sent": sum(t["sent"] for t in trials),
            f"{impl}_lost": expected - delivered,
            f"{impl}_runs_msgs_per_s": [t["msgs_per_s"] for t in trials],
            f"{impl}_pub_cpu_us_per_msg": med("pub_cpu_us_per_msg"),
            f"{impl}_sub_cpu_us_per_msg": med("sub_cpu_us_per_msg"),
            f"{impl}_hwm": trials[0]["hwm"] if trials and "hwm" in trials[0] else None,
        })
    out["mesh_units_per_zmq_message"] = _bus.median_of(runs["mesh"], "entries_per_message")
    out["mesh_gaps"] = sum(t["gaps"] for t in runs["mesh"])
    out["mesh_recovered"] = sum(t["recovered"] for t in runs["mesh"])
    out["lost"] = out["mesh_lost"]
    out["paired_ratios"] = [m["msgs_per_s"] / r["msgs_per_s"] if r["msgs_per_s"] else 0.0
                            for m, r in zip(runs["mesh"], runs["raw"])]
    out["background_cpu"] = _bus.median_of(runs["mesh"] + runs["raw"], "background_cpu") \
        if all(t["background_cpu"] is not None for t in runs["mesh"] + runs["raw"]) else None
    raw = out["raw_msgs_per_s"]
    out["ratio"] = out["mesh_msgs_per_s"] / raw if raw else 0.0
    if runs.get("curve"):  # the cost of CURVE: paired ratios against plaintext mesh and raw
        out["curve_ratio"] = out["curve_msgs_per_s"] / raw if raw else 0.0
        out["curve_vs_mesh"] = out["curve_msgs_per_s"] / out["mesh_msgs_per_s"] if out["mesh_msgs_per_s"] else 0.0
        out["rawcurve_ratio"] = out["rawcurve_msgs_per_s"] / raw if raw else 0.0
        out["curve_paired_vs_mesh"] = [c["msgs_per_s"] / m["msgs_per_s"] if m["msgs_per_s"] else 0.0
                                       for c, m in zip(runs["curve"], runs["mesh"])]
    return out


def format_table(report: dict[str, Any]) -> str:
    rows = report["results"]
    subs = rows[0]["subscribers"] if rows else 0
    lines = [
        (f"bus throughput: 1 publisher -> {subs} subscriber process(es) on 127.0.0.1; "
         f"{report['duration_s']:g} s per trial, median of {report['repeats']}; nproc {report['nproc']}; "
         f"mesh pushes {report['burst']} units per loop tick"),
        (f"{'payload B':>9} {'impl':<9}{'msgs/s':>11}{'MB/s':>9}{'delivered':>11}{'lost':>10}"
         f"{'p50 ms':>9}{'p99 ms':>9}{'sender msgs/s':>15}"),
    ]
    for r in rows:
        for impl in ("mesh", "curve", "raw", "rawcurve") if "curve_ratio" in r else ("mesh", "raw"):
            lines.append(
                f"{r['payload_bytes']:>9} {impl:<9}{r[f'{impl}_msgs_per_s']:>11,.0f}"
                f"{r[f'{impl}_mb_per_s']:>9,.1f}{r[f'{impl}_delivered_ratio'] * 100:>10.2f}%"
                f"{r[f'{impl}_lost']:>10,}{r[f'{impl}_p50_ms']:>9.1f}{r[f'{impl}_p99_ms']:>9.1f}"
                f"{r[f'{impl}_sender_msgs_per_s']:>15,.0f}")
        lines.append(f"{'':>9} ratio mesh/raw {r['ratio']:.2f}  "
                     f"(mesh: {r['mesh_units_per_zmq_message']:.1f} units per ZeroMQ message)")
        if "curve_ratio" in r:
            lines.append(f"{'':>9} ratio curve/raw {r['curve_ratio']:.2f}, curve/mesh {r['curve_vs_mesh']:.2f} "
                         f"(CURVE encryption costs {(1 - r['curve_vs_mesh']) * 100:.0f} %; "
                         f"libzmq alone: rawcurve/raw {r['rawcurve_ratio']:.2f})")
    lines.append("msgs/s and MB/s: delivered per subscriber per second of receiving; p50/p99: "
                 "publish-to-receive latency under saturation (queueing included)")
    return "\n".join(lines)


def _sizes(values: tuple[str, ...]) -> tuple[int, ...]:
    out = []
    for v in values:
        for part in str(v).split(","):
            if part.strip():
                size = int(part)
                if size < _bus.STAMP.size:
                    raise click.BadParameter(f"payloads must be at least {_bus.STAMP.size} bytes "
                                             "(they carry their send time)", param_hint="--payload")
                out.append(size)
    return tuple(out) or DEFAULT_PAYLOADS


@click.command("throughput")
@click.option("--payload", "payloads", multiple=True, metavar="BYTES",
              help="payload size; repeat or comma-separate for several [188, 1500, 16384, 65536]")
@click.option("--subscribers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="subscriber processes")
@click.option("--duration", type=click.FloatRange(0.1, 120), default=2.0, show_default=True,
              help="seconds each trial publishes")
@click.option("--repeats", type=click.IntRange(1, 50), default=3, show_default=True,
              help="trials per payload and implementation (medians are reported)")
@click.option("--burst", type=click.IntRange(1, 100_000), default=64, show_default=True,
              help="access units the mesh publisher pushes per event-loop tick")
@click.option("--curve", is_flag=True,
              help="also run the bus with CURVE on (bus_security = \"curve\") in the same run")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def command(payloads: tuple[str, ...], subscribers: int, duration: float, repeats: int, burst: int,
            curve: bool, as_json: bool) -> None:
    """Bus messages/s and MB/s vs raw pyzmq PUB/SUB, with loss and latency."""
    sizes = _sizes(payloads)
    try:
        report = run(sizes, subscribers, duration, repeats, burst,
                     progress=lambda line: click.echo(line, err=True), curve=curve)
    except _bus.WorkerError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(report) if as_json else format_table(report))
