"""Shared machinery of the bus benchmarks (`mesh bench throughput`, `mesh bench fanout`).

A *trial* is one publisher process and N subscriber processes on 127.0.0.1 moving one workload
through either

- ``mesh``: the real bus. The publisher pushes every access unit through
  :class:`mesh.broker.publisher.Channel` (seq numbering, snapshot window, tick batching, wire
  encode, XPUB send); each subscriber is a :class:`mesh.broker.subscriber.BusSubscriber` (late join
  with a snapshot, wire decode, :class:`~mesh.broker.tracker.TopicTracker` seq tracking) whose sink
  counts what it is given. That is the per-packet work of a live origin and edge, minus ingest
  parsing and TS packetising.
- ``curve``: the same real bus with ``bus_security = "curve"``: both sockets CURVE-encrypted, the
  publisher's ZAP handler admitting the subscribers' key (key files made per trial in a private
  temp directory, never on the command line).
- ``rawcurve``: the raw baseline with libzmq's CURVE on, to tell libzmq's encryption cost from ours.
- ``raw``: the fair baseline. Plain pyzmq, XPUB (the bus's socket type) to SUB, one frame
  ``topic + payload`` per access unit, a blocking ``send``/``recv`` loop without asyncio.

Workers run as ``python -m mesh_bench._bus pub|sub CONFIG_JSON``; they print JSON lines on stdout
and take ``go``/``stop`` lines on stdin. Times are ``time.monotonic_ns()``, which every process on
the machine shares, so latency is receive time minus the send time stamped into the payload.
"""
from __future__ import annotations

import asyncio
import json
import os
import queue
import resource
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from typing import Any

from mesh_bench._stats import percentile

TOPIC_STREAM = "bench"
TOPIC = b"s/bench/src/"
END = TOPIC + b"END"  # the raw baseline's end marker (the bus sends an end-of-stream entry)
STAMP = struct.Struct("<q")  # send time, first 8 bytes of a synthetic payload
LAT_STRIDE = 16  # sample the latency of every 16th message (both sides)
MAX_UNITS_PER_TICK = 4096  # a paced publisher that fell behind sends at most this many per tick
IDLE_END_S = 0.6  # a subscriber ends this long after its last message if the end marker was lost


# =========================================================================== workers
def _ready(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _load_aus(path: str) -> dict[str, Any]:
    import msgpack

    with open(path, "rb") as f:
        return msgpack.unpackb(f.read(), raw=False)


class _Workload:
    """What the publisher sends: synthetic payloads of one size (each starting with its send
    time, a segment start every ``seg_len`` units), or recorded access units replayed in a loop
    at ``speed`` times real time on a ``tick_ms`` schedule (unpaced at speed 0)."""

    def __init__(self, cfg: dict[str, Any]):
        self.speed = float(cfg.get("speed", 0) or 0)
        if cfg.get("aus"):
            media = _load_aus(cfg["aus"])
            self.config = media["config"]
            self.aus = media["aus"]  # [track, pts, dts, flags, seg_start, data]
            self.lap_ticks = media["lap_ticks"]
            self.stamp = False
            self.tick_ns = int(float(cfg.get("tick_ms", 2.0)) * 1e6)
        else:
            size = int(cfg["size"])
            if size < STAMP.size:
                raise SystemExit(f"payload must be at least {STAMP.size} bytes")
            self.config = {"bench": "synthetic", "size": size}
            self.filler = bytes(size - STAMP.size)
            self.seg_len = int(cfg.get("seg_len", 60))
            self.stamp = True


def _now_ns() -> int:
    return time.monotonic_ns()


def _next_tick(next_tick: int, tick_ns: int) -> tuple[int, float]:
    """The publisher's schedule when replaying recorded units: wake every ``tick_ns`` and send
    what is due. Returns the next tick and the seconds to sleep until it (0 when unpaced, and a
    publisher that fell behind does not try to catch up missed ticks)."""
    if not tick_ns:
        return next_tick, 0.0
    now = _now_ns()
    next_tick = max(next_tick + tick_ns, now - tick_ns)
    return next_tick, max(0.0, (next_tick - now) / 1e9)


def _cpu_s() -> float:
    """User + system CPU seconds of this process, all threads (ZeroMQ's I/O thread included)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class _Cpu:
    """CPU seconds used since creation: the whole process and its Python (main) thread."""

    def __init__(self) -> None:
        self.proc0, self.py0 = _cpu_s(), time.thread_time()

    def report(self) -> dict[str, float]:
        return {"cpu_s": _cpu_s() - self.proc0, "py_cpu_s": time.thread_time() - self.py0}


async def _mesh_pub(cfg: dict[str, Any]) -> None:
    import zmq.asyncio

    from mesh.broker.publisher import BusPublisher
    from mesh.broker.wire import FLAG_KEY, FLAG_SEG_START

    work = _Workload(cfg)
    ctx = zmq.asyncio.Context(io_threads=int(cfg.get("io_threads", 1)))  # bus_io_threads
    server, client = _curve_keys(cfg)

    async def admitted() -> list[bytes]:
        return [client.public] if client else []

    pub = BusPublisher(ctx, hwm=int(cfg["hwm"]), window_segments=int(cfg.get("window_segments", 6)),
                       curve=server, allowed_keys=admitted if server else None)
    await pub.start()
    ch = pub.open_channel(TOPIC_STREAM, "src", epoch=1)
    ch.config(work.config)
    pub.flush()
    loop = asyncio.get_running_loop()
    _ready({"endpoint": pub.endpoint, "snapshot": pub.snapshot_endpoint})
    line = await loop.run_in_executor(None, sys.stdin.readline)
    if line.strip() != "go":
        return
    duration_ns = int(float(cfg["duration_s"]) * 1e9)
    burst = int(cfg.get("burst", 64))
    media = ch.media
    sent = nbytes = 0
    cpu = _Cpu()
    t0 = _now_ns()
    end = t0 + duration_ns
    if work.stamp:  # synthetic: as fast as the loop goes, yielding every `burst` units
        pack, filler, seg_len = STAMP.pack, work.filler, work.seg_len
        seg = k = 0
        size = len(filler) + STAMP.size
        while True:
            for _ in range(burst):
                if k == seg_len:
                    k = 0
                    seg += 1
                flags = FLAG_KEY | FLAG_SEG_START if k == 0 else 0
                k += 1
                media(0, sent, sent, flags, seg, pack(_now_ns()) + filler)
                sent += 1
            nbytes += burst * size
            await asyncio.sleep(0)
            if _now_ns() >= end:
                break
    else:  # recorded access units, looped, paced at `speed` x real time (unpaced at 0)
        aus, n = work.aus, len(work.aus)
        lap_ticks = work.lap_ticks
        scale = 1e9 / 90000 / work.speed if work.speed else 0.0
        tick = work.tick_ns
        seg = -1
        i = lap = 0
        next_tick = t0
        while True:
            now = _now_ns()
            if now >= end:
                break
            # One tick: every unit that is due (paced) or one burst (unpaced).
            for _ in range(MAX_UNITS_PER_TICK if scale else burst):
                track, pts, dts, flags, seg_start, data = aus[i]
                off = lap * lap_ticks
                if scale and t0 + (dts + off) * scale > now:
                    break  # not due yet
                if seg_start:  # a live origin stamps segment starts with its wall clock
                    seg += 1
                    media(track, pts + off, dts + off, flags, seg, data, {"t": int(time.time() * 1000)})
                else:
                    media(track, pts + off, dts + off, flags, seg, data)
                sent += 1
                nbytes += len(data)
                i += 1
                if i == n:
                    i = 0
                    lap += 1
            next_tick, delay = _next_tick(next_tick, tick if scale else 0)
            await asyncio.sleep(delay)
    t1 = _now_ns()
    ch.eos()
    pub.flush()
    _ready({"sent": sent, "bytes": nbytes, "t0": t0, "t1": t1, "messages": pub.messages_sent,
            "entries": pub.entries_sent, **cpu.report()})
    await loop.run_in_executor(None, sys.stdin.readline)  # serve snapshots until told to stop
    _ready({"snapshots": pub.snapshots_served})
    await pub.stop()
    ctx.term()


async def _mesh_sub(cfg: dict[str, Any]) -> None:
    from operator import attrgetter

    import zmq.asyncio

    from mesh.broker.subscriber import BusSubscriber
    from mesh.broker.tracker import Gap
    from mesh.broker.wire import EOS, MEDIA, Entry

    kind_of, payload_of = attrgetter("kind"), attrgetter("payload")

    ctx = zmq.asyncio.Context()
    server, client = _curve_keys(cfg)
    bus = BusSubscriber(ctx, rcvhwm=int(cfg["hwm"]), curve=client)
    stamped = not cfg.get("aus")
    unpack_from = STAMP.unpack_from
    st = {"n": 0, "bytes": 0, "t_first": 0, "t_last": 0, "next": 0, "gaps": 0}
    lat: list[int] = []
    done = asyncio.Event()
    live = [False]

    def sink(deliveries: list[Any]) -> None:
        # Count what arrived and sample latency, touching each entry only in C where possible
        # (the raw baseline's receiver likewise does a few operations per message).
        if not live[0]:
            return  # the snapshot's config before the run
        t = _now_ns()
        n, nxt = st["n"], st["next"]
        if Gap not in map(type, deliveries) and set(map(kind_of, deliveries)) == {MEDIA}:
            st["bytes"] += sum(map(len, map(payload_of, deliveries)))
            end = n + len(deliveries)
            while nxt < end:
                if stamped:
                    lat.append(t - unpack_from(deliveries[nxt - n].payload)[0])
                nxt += LAT_STRIDE
            n = end
        else:
            for d in deliveries:
                if type(d) is not Entry:
                    st["gaps"] += 1
                    continue
                if d.kind != MEDIA:
                    if d.kind == EOS:
                        done.set()
                    continue
                st["bytes"] += len(d.payload)
                if n == nxt:
                    if stamped:
                        lat.append(t - unpack_from(d.payload)[0])
                    nxt += LAT_STRIDE
                n += 1
        if not st["t_first"]:
            st["t_first"] = t
        st["n"], st["next"], st["t_last"] = n, nxt, t

    sub = bus.subscribe(cfg["endpoint"], cfg["snapshot"], TOPIC_STREAM, "src", sink,
                        server.public if server else None)
    await asyncio.wait_for(sub.snapshot_ready.wait(), 30)
    live[0] = True
    cpu = _Cpu()
    _ready({"ready": True})
    deadline = time.monotonic() + float(cfg.get("timeout_s", 120))
    while not done.is_set() and time.monotonic() < deadline:
        try:
            await asyncio.wait_for(done.wait(), 0.1)
        except TimeoutError:
            pass
        if st["t_last"] and _now_ns() - st["t_last"] > IDLE_END_S * 1e9:
            break
    used = cpu.report()  # includes the idle wait: a 0.1 s poll, negligible
    t = sub.tracker
    _ready({"delivered": st["n"], "bytes": st["bytes"], "t_first": st["t_first"], "t_last": st["t_last"],
            "lat_ns": _percentiles(lat), "lost": t.lost, "recovered": t.recovered, "gaps": t.gaps,
            "discarded": t.discarded, "eos": done.is_set(), **used})
    await bus.stop()
    ctx.term()


def _raw_pub(cfg: dict[str, Any]) -> None:
    import zmq

    work = _Workload(cfg)
    ctx = zmq.Context(io_threads=int(cfg.get("io_threads", 1)))
    sock = ctx.socket(zmq.XPUB)
    server, _ = _curve_keys(cfg)
    if server is not None:  # rawcurve: libzmq's CURVE alone (no ZAP handler: any key is let in)
        sock.curve_server, sock.curve_secretkey = True, server.secret
    sock.setsockopt(zmq.SNDHWM, int(cfg["hwm"]))
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.XPUB_VERBOSE, 1)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    _ready({"endpoint": f"tcp://127.0.0.1:{port}", "snapshot": ""})
    if sys.stdin.readline().strip() != "go":
        return
    subs = 0
    while subs < int(cfg["subscribers"]):  # every subscription is active before the clock starts
        if sock.recv()[:1] == b"\x01":
            subs += 1
    send = sock.send
    duration_ns = int(float(cfg["duration_s"]) * 1e9)
    sent = nbytes = 0
    cpu = _Cpu()
    t0 = _now_ns()
    end = t0 + duration_ns
    if work.stamp:
        pack, filler = STAMP.pack, work.filler
        size = len(filler) + STAMP.size
        join = b"".join
        while True:
            for _ in range(1024):
                send(join((TOPIC, pack(_now_ns()), filler)))
            sent += 1024
            if _now_ns() >= end:
                break
        nbytes = sent * size
    else:
        aus, n = work.aus, len(work.aus)
        lap_ticks = work.lap_ticks
        scale = 1e9 / 90000 / work.speed if work.speed else 0.0
        frames = [TOPIC + a[5] for a in aus]  # topic + payload, built once like the bus's input
        tick = work.tick_ns
        i = lap = 0
        next_tick = t0
        while True:
            now = _now_ns()
            if now >= end:
                break
            for _ in range(MAX_UNITS_PER_TICK if scale else 1024):  # the same schedule as mesh
                if scale and t0 + (aus[i][2] + lap * lap_ticks) * scale > now:
                    break
                send(frames[i])
                sent += 1
                nbytes += len(frames[i]) - len(TOPIC)
                i += 1
                if i == n:
                    i = 0
                    lap += 1
            next_tick, delay = _next_tick(next_tick, tick if scale else 0)
            if delay:
                time.sleep(delay)
    t1 = _now_ns()
    used = cpu.report()
    for _ in range(3):
        send(END)
        time.sleep(0.05)
    _ready({"sent": sent, "bytes": nbytes, "t0": t0, "t1": t1, "messages": sent, "entries": sent,
            **used})
    sys.stdin.readline()
    _ready({"snapshots": 0})
    sock.close(0)
    ctx.term()


def _raw_sub(cfg: dict[str, Any]) -> None:
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    server, client = _curve_keys(cfg)
    if server is not None:
        sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = server.public, client.public, client.secret
    sock.setsockopt(zmq.RCVHWM, int(cfg["hwm"]))
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 100)
    sock.connect(cfg["endpoint"])
    sock.setsockopt(zmq.SUBSCRIBE, TOPIC)
    cpu = _Cpu()
    _ready({"ready": True})
    stamped = not cfg.get("aus")
    recv, unpack_from, off = sock.recv, STAMP.unpack_from, len(TOPIC)
    n = nbytes = nxt = t_first = t_mark = 0
    lat: list[int] = []
    ended = False
    deadline = time.monotonic() + float(cfg.get("timeout_s", 120))
    while True:
        try:
            msg = recv()
        except zmq.Again:
            if (t_mark and _now_ns() - t_mark > IDLE_END_S * 1e9) or time.monotonic() > deadline:
                break
            continue
        if msg == END:
            t_mark = _now_ns() if n else 0
            ended = True
            break
        nbytes += len(msg)
        if n == nxt:
            t_mark = _now_ns()
            if stamped:
                lat.append(t_mark - unpack_from(msg, off)[0])
            if not n:
                t_first = t_mark
            nxt += LAT_STRIDE
        n += 1
    _ready({"delivered": n, "bytes": nbytes - n * off, "t_first": t_first, "t_last": t_mark,
            "lat_ns": _percentiles(lat), "lost": 0, "recovered": 0, "gaps": 0, "discarded": 0,
            "eos": ended, **cpu.report()})
    sock.close(0)
    ctx.term()


def _percentiles(samples: list[int]) -> list[float]:
    if not samples:
        return [0.0, 0.0]
    samples.sort()  # in place, once: percentile's own sort of sorted samples is then linear
    return [float(percentile(samples, 0.5)), float(percentile(samples, 0.99))]


def _curve_keys(cfg: dict[str, Any]) -> tuple[Any, Any]:
    """(publisher's, subscribers') key pairs for the ``curve`` impl, else (None, None)."""
    if not cfg.get("curve_dir"):
        return None, None
    from mesh.broker.keys import load_or_create

    return (load_or_create(os.path.join(cfg["curve_dir"], "server.key")),
            load_or_create(os.path.join(cfg["curve_dir"], "client.key")))


def _worker_main(argv: list[str]) -> None:
    role, cfg = argv[0], json.loads(argv[1])
    impl = cfg["impl"]
    if impl in ("mesh", "curve"):
        asyncio.run(_mesh_pub(cfg) if role == "pub" else _mesh_sub(cfg))
    elif role == "pub":
        _raw_pub(cfg)
    else:
        _raw_sub(cfg)


# =========================================================================== coordinator
class WorkerError(RuntimeError):
    pass


class Worker:
    """A worker process; its stdout lines are read by a thread so waits can time out."""

    def __init__(self, role: str, cfg: dict[str, Any]):
        self.role = role
        self.proc = subprocess.Popen([sys.executable, "-m", "mesh_bench._bus", role, json.dumps(cfg)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.err: deque[str] = deque(maxlen=20)
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.lines.put), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, self.err.append), daemon=True).start()

    @staticmethod
    def _pump(stream: Any, put: Any) -> None:
        for line in stream:
            put(line)
        put(None)

    def expect(self, timeout: float) -> dict[str, Any]:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise WorkerError(f"{self.role} worker gave no answer in {timeout:.0f} s") from None
        if line is None:
            self.proc.wait(5)
            tail = "".join(x for x in self.err if x).strip()[-1500:]
            raise WorkerError(f"{self.role} worker exited ({self.proc.returncode}): {tail}")
        return json.loads(line)

    def tell(self, text: str) -> None:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(text + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def close(self) -> None:
        if self.proc.poll() is None:
            self.tell("stop")
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _cpu_ticks() -> tuple[int, int] | None:
    """(busy, total) jiffies of the whole machine from /proc/stat, or None off Linux."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def run_trial(impl: str, subscribers: int, *, duration_s: float, hwm: int, size: int = 0,
              aus: str = "", speed: float = 0.0, burst: int = 64, tick_ms: float = 2.0,
              io_threads: int = 1) -> dict[str, Any]:
    """One publisher and ``subscribers`` subscribers; returns the publisher's and each
    subscriber's figures plus the derived per-subscriber and aggregate rates."""
    base = {"impl": impl, "hwm": hwm, "size": size, "aus": aus, "speed": speed, "burst": burst,
            "tick_ms": tick_ms, "io_threads": io_threads,
            "duration_s": duration_s, "subscribers": subscribers,
            "timeout_s": duration_s * 4 + 30}
    keydir = None
    if impl in ("curve", "rawcurve"):
        import tempfile

        from mesh.broker.keys import load_or_create

        keydir = tempfile.TemporaryDirectory(prefix="mesh-bench-keys-")
        for name in ("server.key", "client.key"):
            load_or_create(os.path.join(keydir.name, name))
        base["curve_dir"] = keydir.name
    pub = Worker("pub", base)
    subs: list[Worker] = []
    try:
        where = pub.expect(60)
        subs = [Worker("sub", {**base, **where}) for _ in range(subscribers)]
        for s in subs:
            s.expect(60)
        ticks0 = _cpu_ticks()
        pub.tell("go")
        sent = pub.expect(duration_s + 60)
        got = [s.expect(duration_s * 4 + 60) for s in subs]
        ticks1 = _cpu_ticks()
        pub.tell("stop")
        snaps = pub.expect(10)
    finally:
        for w in [*subs, pub]:
            w.close()
        if keydir is not None:
            keydir.cleanup()
    # How busy the machine was with other work meanwhile: all CPU time minus our workers'.
    background = None
    if ticks0 and ticks1 and ticks1[1] > ticks0[1]:
        hz = os.sysconf("SC_CLK_TCK")
        ours = (sent["cpu_s"] + sum(g["cpu_s"] for g in got)) * hz
        background = max(0.0, (ticks1[0] - ticks0[0] - ours) / (ticks1[1] - ticks0[1]))
    rates, mbs = [], []
    for g in got:
        span = (g["t_last"] - g["t_first"]) / 1e9
        rates.append(g["delivered"] / span if span > 0 else 0.0)
        mbs.append(g["bytes"] / span / 1e6 if span > 0 else 0.0)
    delivered = sum(g["delivered"] for g in got)
    expected = sent["sent"] * subscribers
    # The aggregate is what all subscribers got over the span in which any of them was receiving.
    active = [g for g in got if g["delivered"]]
    span_all = ((max(g["t_last"] for g in active) - min(g["t_first"] for g in active)) / 1e9
                if active else 0.0)
    return {
        "impl": impl, "hwm": hwm, "sent": sent["sent"], "sent_bytes": sent["bytes"],
        "pub_msgs_per_s": sent["sent"] / ((sent["t1"] - sent["t0"]) / 1e9),
        "zmq_messages": sent["messages"],
        "entries_per_message": sent["entries"] / max(1, sent["messages"]),
        "msgs_per_s": statistics.fmean(rates), "min_msgs_per_s": min(rates),
        "mb_per_s": statistics.fmean(mbs),
        "aggregate_msgs_per_s": delivered / span_all if span_all > 0 else 0.0,
        "aggregate_mb_per_s": sum(g["bytes"] for g in got) / span_all / 1e6 if span_all > 0 else 0.0,
        "delivered": delivered, "expected": expected, "lost": expected - delivered,
        "delivered_ratio": delivered / expected if expected else 0.0,
        "p50_ms": max(g["lat_ns"][0] for g in got) / 1e6,
        "p99_ms": max(g["lat_ns"][1] for g in got) / 1e6,
        "gaps": sum(g["gaps"] for g in got), "recovered": sum(g["recovered"] for g in got),
        "snapshots": snaps.get("snapshots", 0),
        "pub_cpu_us_per_msg": sent["cpu_s"] / max(1, sent["sent"]) * 1e6,
        "sub_cpu_us_per_msg": statistics.fmean(g["cpu_s"] / max(1, g["delivered"]) for g in got) * 1e6,
        "pub_py_us_per_msg": sent["py_cpu_s"] / max(1, sent["sent"]) * 1e6,
        "sub_py_us_per_msg": statistics.fmean(g["py_cpu_s"] / max(1, g["delivered"]) for g in got) * 1e6,
        "background_cpu": background,
        "subscribers": got,
    }


def hwm_for(impl: str, size: int, burst: int, budget_bytes: int = 128 << 20) -> int:
    """A high-water mark (in ZeroMQ messages) worth about ``budget_bytes`` per pipe, so queues
    absorb bursts without either side hoarding gigabytes. A mesh message carries a batch."""
    from mesh.broker.publisher import MAX_BATCH_BYTES, MAX_BATCH_ENTRIES

    per_msg = size
    if impl in ("mesh", "curve"):
        per_msg = size * max(1, min(burst, MAX_BATCH_ENTRIES, MAX_BATCH_BYTES // max(size, 1)))
    return int(min(1_000_000, max(100, budget_bytes // max(per_msg, 1))))


def median_of(trials: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(t[key] for t in trials))


if __name__ == "__main__":
    _worker_main(sys.argv[1:])
