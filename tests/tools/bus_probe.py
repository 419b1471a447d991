"""A bus subscriber in its own process, for tests that stall it with SIGSTOP.

Usage: python -m tests.tools.bus_probe BUS_ENDPOINT SNAPSHOT_ENDPOINT STREAM RCVHWM
Prints one JSON line per delivery ({"gap": lost} or {"seq", "seg", "start", "kind"}),
"ready" once the snapshot is applied, and after an end of stream the tracker's counters
({"stats": ...}) before it exits.
"""
from __future__ import annotations

import asyncio
import json
import sys

import zmq.asyncio

from mesh.broker.subscriber import BusSubscriber
from mesh.broker.tracker import Gap
from mesh.broker.wire import EOS


async def main() -> None:
    endpoint, snapshot, stream, hwm = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    ctx = zmq.asyncio.Context()
    sub = BusSubscriber(ctx, rcvhwm=hwm)
    done = asyncio.Event()

    def sink(deliveries: list) -> None:
        lines = []
        for d in deliveries:
            if isinstance(d, Gap):
                lines.append(json.dumps({"gap": d.lost, "reason": d.reason}))
            else:
                lines.append(json.dumps({"seq": d.seq, "seg": d.seg, "start": d.seg_start,
                                         "kind": d.kind, "bytes": len(d.payload)}))
                if d.kind == EOS:
                    done.set()
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()

    s = sub.subscribe(endpoint, snapshot, stream, "src", sink)
    await s.snapshot_ready.wait()
    print("ready", flush=True)
    await done.wait()
    t = s.tracker
    print(json.dumps({"stats": {"lost": t.lost, "recovered": t.recovered, "gaps": t.gaps,
                                "discarded": t.discarded}}), flush=True)
    await sub.stop()
    ctx.term()


if __name__ == "__main__":
    asyncio.run(main())
