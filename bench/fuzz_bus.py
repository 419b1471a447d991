"""Fuzz the bus parsers a stranger reaches: bus messages (topic/header/payload multipart, decoded by
every subscriber: :func:`mesh.broker.wire.decode`) and snapshot requests (decoded by every origin:
:meth:`mesh.broker.publisher.BusPublisher._parse_request`).

Inputs are deterministic for a seed: valid messages built by the real encoder (one entry, batches
small and large enough for the Numba header kernel, entries with ``extra``), the exact-error table
cases of tests/test_wire.py, and valid snapshot requests, each mutated (bit flips, overwrites,
inserts, deletes, truncations, duplicated runs, huge declared lengths, frames dropped or added),
plus plain random bytes. The documented rejection is :class:`mesh.broker.wire.WireError`; any
other exception is a crash.
"""
from __future__ import annotations

import random
import resource
import time
from typing import Any, Callable

import msgpack

from mesh.broker import wire
from mesh.broker.publisher import BusPublisher
from mesh.broker.wire import CONFIG, EOS, FLAG_KEY, FLAG_SEG_START, MEDIA, Entry

TARGET = "bus"
_HUGE = [2**31 - 1, 2**32, 2**62, 2**63 - 1, 2**64 - 1, -(2**63), wire.MAX_ENTRY_BYTES + 1,
         wire.MAX_ENTRIES + 1]


def _valid_messages() -> list[list[bytes]]:
    out = []
    one = [Entry(7, MEDIA, 0, 9000, 9000, FLAG_KEY | FLAG_SEG_START, 3, b"\x00\x00\x00\x01e" + bytes(40), None, 2)]
    out.append([bytes(f) for f in wire.encode(b"s/cam1/src/", 2, one)])
    batch = [Entry(i, MEDIA, i % 2, i * 3000, i * 3000 - 1500, FLAG_KEY if i % 10 == 0 else 0, i // 10,
                   bytes([i % 251]) * (i % 37 + 1), None, 5) for i in range(40)]
    out.append([bytes(f) for f in wire.encode(b"s/cam1/720p2500kbps/", 5, batch)])
    mixed = [Entry(0, CONFIG, 0, 0, 0, 0, 0, b"", {"video": {"width": 640, "codec": "avc1.64001f"}}, 1),
             Entry(1, MEDIA, 0, 0, 0, FLAG_KEY | FLAG_SEG_START, 0, b"abc", None, 1),
             Entry(2, EOS, 0, 0, 0, 0, 0, b"", {"reason": "finished"}, 1)]
    out.append([bytes(f) for f in wire.encode(b"s/a_b-c/src/", 1, mixed)])
    table = [
        [b"s/cam1/src/", msgpack.packb({"v": 1, "e": 1, "h": [[0, 0, 0, 0, 0, 0, 0, 5]]}), b"abc"],
        [b"s/cam1/src/", msgpack.packb({"v": 1, "e": 1, "h": [[0, 1, 0, 0, 0, 0, 0, 0, [1]]]}), b""],
        [b"s/cam1/src/", msgpack.packb({"v": 2, "e": 1, "h": [[0] * 8]}), b""],
        [b"s/cam1/src/", msgpack.packb({"v": 1, "e": 1, "h": [[0, 0, 0, "1", 0, 0, 0, 0]]}), b""],
    ]
    return out + table


def _valid_requests() -> list[list[bytes]]:
    return [[b"\x00k\x8bEg", b"", msgpack.packb({"v": wire.VERSION, "t": b"s/cam1/src/"})],
            [b"peer", b"", msgpack.packb({"v": 1, "t": b"s/x/720p2500kbps/", "extra": [1, 2]})]]


def _mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(7)
        pos = rng.randrange(len(b) + 1)
        if op == 0 and b:  # bit flip
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1 and b:  # overwrite
            b[rng.randrange(len(b))] = rng.randrange(256)
        elif op == 2:  # insert
            b[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == 3 and b:  # delete
            del b[pos:pos + rng.randint(1, 8)]
        elif op == 4:  # truncate
            del b[pos:]
        elif op == 5 and b:  # duplicate a run
            end = min(len(b), pos + rng.randint(1, 32))
            b[pos:pos] = b[pos:end]
        else:  # a msgpack integer with a huge value dropped in (declared lengths, fields)
            b[pos:pos] = msgpack.packb(rng.choice(_HUGE))
    return bytes(b)


def _huge_lengths(rng: random.Random, frames: list[bytes]) -> list[bytes]:
    """Rewrite a header's declared entry fields/lengths with huge or negative values."""
    try:
        doc = msgpack.unpackb(frames[1], raw=False, strict_map_key=False)
        rows = doc["h"]
        row = list(rng.choice(rows))
        row[rng.randrange(len(row))] = rng.choice(_HUGE)
        rows[rng.randrange(len(rows))] = row
        return [frames[0], msgpack.packb(doc), frames[2]]
    except Exception:
        return frames


def _mutate_frames(rng: random.Random, frames: list[bytes]) -> list[bytes]:
    frames = list(frames)
    op = rng.randrange(10)
    if op < 6:
        i = rng.randrange(len(frames))
        frames[i] = _mutate_bytes(rng, frames[i])
    elif op == 6 and len(frames) > 1:
        frames[1] = bytes(_huge_lengths(rng, frames)[1]) if len(frames) == 3 else frames[1]
    elif op == 7:
        del frames[rng.randrange(len(frames))]
    elif op == 8:
        frames.insert(rng.randrange(len(frames) + 1), bytes(rng.randrange(256) for _ in range(rng.randrange(16))))
    else:
        frames = [bytes(rng.randrange(256) for _ in range(rng.randrange(64))) for _ in range(rng.randint(0, 4))]
    return frames


def _decode(frames: list[bytes]) -> Any:
    return wire.decode(frames)


def _request(frames: list[bytes]) -> Any:
    return BusPublisher._parse_request(frames)


def fuzz(count: int, seed: int = 0) -> dict:
    """Feed ``count`` generated inputs to the bus parsers; count acceptances, rejections, crashes."""
    rng = random.Random(seed)
    wire.load_kernels()  # the Numba header kernel is part of what a stranger reaches
    messages, requests = _valid_messages(), _valid_requests()
    targets: list[tuple[Callable[[list[bytes]], Any], list[list[bytes]]]] = [
        (_decode, messages), (_decode, messages), (_request, requests)]
    accepted = rejected = crashes = 0
    first_crash = ""
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    for _ in range(count):
        parse, seeds = rng.choice(targets)
        frames = _mutate_frames(rng, rng.choice(seeds))
        try:
            parse(frames)
            accepted += 1
        except wire.WireError:
            rejected += 1
        except Exception as exc:  # anything else is a bug in the parser
            crashes += 1
            if not first_crash:
                first_crash = f"{parse.__name__}: {type(exc).__name__}: {exc} on {frames!r}"[:500]
    seconds = time.perf_counter() - started
    growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) * 1024
    result = {"target": TARGET, "inputs": count, "accepted": accepted, "rejected": rejected,
              "crashes": crashes, "seconds": round(seconds, 3), "max_rss_growth_bytes": growth}
    if first_crash:
        result["first_crash"] = first_crash
    return result


if __name__ == "__main__":
    import sys

    print(fuzz(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000))
