"""A bus publisher in its own process, so a test can measure its memory (RSS) alone.

Usage: python -m tests.tools.bus_origin SEGMENT_BYTES
Publishes stream ``cam1`` (plaintext bus), one segment of 30 packets every 0.2 s, keeping the
default window (6 complete segments + the open one), and prints
``ready BUS_ENDPOINT SNAPSHOT_ENDPOINT`` once the window is full. Each line it reads on stdin
makes it print the publisher's counters as JSON; it exits at end of input.
"""
from __future__ import annotations

import asyncio
import json
import sys

import zmq.asyncio

from mesh.broker.publisher import BusPublisher
from mesh.broker.wire import FLAG_KEY, FLAG_SEG_START


async def main() -> None:
    segment_bytes = int(sys.argv[1])
    ctx = zmq.asyncio.Context()
    pub = BusPublisher(ctx)
    await pub.start()
    ch = pub.open_channel("cam1", "src", epoch=1)
    ch.config({"video": {"width": 640}})
    packet = bytes(range(256)) * (segment_bytes // 30 // 256 + 1)
    packet = packet[:segment_bytes // 30]
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def publish() -> None:
        seg = 0
        while True:
            for i in range(30):
                n = seg * 30 + i
                ch.media(0, n * 3000, n * 3000, FLAG_KEY | FLAG_SEG_START if i == 0 else 0, seg, packet)
            pub.flush()
            seg += 1
            if seg == 7:
                print("ready", pub.endpoint, pub.snapshot_endpoint, flush=True)
            await asyncio.sleep(0.2)

    task = asyncio.create_task(publish())
    while await reader.readline():
        print(json.dumps({"served": pub.snapshots_served, "dropped": pub.snapshots_dropped,
                          "inflight_bytes": pub.snapshot_inflight_bytes}), flush=True)
    task.cancel()
    await pub.stop()


if __name__ == "__main__":
    asyncio.run(main())
