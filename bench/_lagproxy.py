"""A user-space TCP proxy that adds delay and loss, for the lab (the kernel here has no ``netem``).

    python -m mesh_bench._lagproxy --bind 10.199.7.9 --map 5560:10.199.7.2:5560 --delay-ms 25 --loss 0.01

Every chunk read from one side is written to the other ``--delay-ms`` later (each direction, so
the round trip grows by twice that). ``--loss`` is the chance that a chunk is "lost": TCP would
retransmit it after a retransmission timeout, holding everything behind it, so the proxy holds
that chunk and the rest of the direction for ``--rto-ms`` (200 ms, Linux's minimum RTO) more.
Order is kept. Prints ``ready`` on stdout when it listens.
"""
from __future__ import annotations

import argparse
import asyncio
import random
import sys


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay_s: float, loss: float,
                rto_s: float, rnd: random.Random) -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(maxsize=1024)

    async def deliver() -> None:
        while True:
            item = await queue.get()
            if item is None:
                break
            due, data = item
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
        writer.close()

    task = asyncio.create_task(deliver())
    held_until = 0.0
    try:
        while data := await reader.read(65536):
            due = max(loop.time() + delay_s, held_until)
            if loss and rnd.random() < loss:
                due += rto_s
            held_until = due  # nothing overtakes a held chunk
            await queue.put((due, data))
    except (ConnectionError, OSError):
        pass
    await queue.put(None)
    try:
        await task
    except (ConnectionError, OSError):
        pass


async def _serve(bind: str, port: int, target: str, target_port: int, delay_s: float, loss: float,
                 rto_s: float, seed: int) -> asyncio.AbstractServer:
    rnd = random.Random(seed + port)

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(target, target_port)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(_pipe(client_r, server_w, delay_s, loss, rto_s, rnd),
                             _pipe(server_r, client_w, delay_s, loss, rto_s, rnd))

    return await asyncio.start_server(handle, bind, port, reuse_address=True)


async def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bind", required=True)
    p.add_argument("--map", action="append", required=True, help="PORT:TARGET_HOST:TARGET_PORT")
    p.add_argument("--delay-ms", type=float, default=0.0, help="added one-way delay")
    p.add_argument("--loss", type=float, default=0.0, help="chance that a chunk waits one RTO")
    p.add_argument("--rto-ms", type=float, default=200.0)
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args(argv)
    servers = []
    for m in a.map:
        port, host, tport = m.split(":")
        servers.append(await _serve(a.bind, int(port), host, int(tport), a.delay_ms / 1000, a.loss,
                                    a.rto_ms / 1000, a.seed))
    print("ready", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


if __name__ == "__main__":
    try:
        asyncio.run(main(sys.argv[1:]))
    except KeyboardInterrupt:
        pass
