"""Micro-benchmark: how fast the sans-IO RTMP session parses a publisher's byte stream.

The input is a pre-recorded publish built with our own chunk writer, shaped like what
ffmpeg sends (audio on csid 4, video on csid 6, commands on 3/8): 30 fps H.264-sized video
at about 2.5 Mbit/s (a 60 KB keyframe every 2 s, ~10 KB otherwise) and 43 AAC frames/s of
~370 bytes, at outgoing chunk size 128 (the RTMP default, clients that never raise it)
and 4096 (what ffmpeg and OBS switch to). It is fed to a fresh ``ServerSession`` in
64 KiB reads, the way a socket delivers it, and every event is pulled.

Rates are per CPU second of this process (``time.process_time``), so a busy host skews
them less. The yardstick (the "baseline" of this benchmark) is the origin's load target from the
design: 100 streams x (30 video + 43 audio) messages/s = 7,300 messages/s. The result
reports the ratio to it: how many times over one core could carry that load in parsing.

    python -m mesh_bench.rtmp_parse [--seconds 6]
"""
from __future__ import annotations

import argparse
import json
import random
import struct
import time
from typing import Any

from mesh.protocols.rtmp import NEED_DATA, PAUSED, ServerSession, amf0
from mesh.protocols.rtmp.chunk import ChunkWriter
from mesh.protocols.rtmp.handshake import client_c0c1

TARGET_MSGS_PER_S = 100 * (30 + 43)
READ_SIZE = 64 * 1024


def recording(chunk_size: int, seconds: int = 10, seed: int = 1) -> tuple[bytes, int]:
    """A publisher's whole byte stream (handshake included) and its number of media messages."""
    rnd = random.Random(seed)
    w = ChunkWriter(128)
    out = [client_c0c1(lambda n: bytes(n)), bytes(1536)]

    def cmd(*values: Any, csid: int = 3, sid: int = 0) -> None:
        out.append(w.write(csid, 20, sid, 0, amf0.encode(*values)))

    cmd("connect", 1, {"app": "LiveApp", "type": "nonprivate", "flashVer": "FMLE/3.0 (compatible; bench)",
                       "tcUrl": "rtmp://127.0.0.1/LiveApp"})
    if chunk_size != 128:
        out.append(w.write(2, 1, 0, 0, struct.pack(">I", chunk_size)))
        w.chunk_size = chunk_size
    cmd("releaseStream", 2, None, "cam1")
    cmd("FCPublish", 3, None, "cam1")
    cmd("createStream", 4, None)
    cmd("publish", 5, None, "cam1", "live", csid=8, sid=1)
    media = 0
    audio_ms = 1024 / 44.1
    next_audio = 0.0
    for frame in range(seconds * 30):
        ts = frame * 1000 // 30
        while next_audio <= ts:
            out.append(w.write(4, 8, 1, int(next_audio), b"\xaf\x01" + rnd.randbytes(rnd.randint(300, 440))))
            next_audio += audio_ms
            media += 1
        size = 60_000 if frame % 60 == 0 else rnd.randint(6_000, 13_000)
        head = (b"\x17" if frame % 60 == 0 else b"\x27") + b"\x01\x00\x00\x43"
        out.append(w.write(6, 9, 1, ts, head + rnd.randbytes(size)))
        media += 1
    return b"".join(out), media


def _parse_once(data: bytes) -> int:
    s = ServerSession()
    n = 0
    next_event = s.next_event
    for off in range(0, len(data), READ_SIZE):
        s.receive_data(data[off:off + READ_SIZE])
        while True:
            ev = next_event()
            if ev is NEED_DATA:
                break
            if ev is PAUSED:
                s.accept_publish()
                continue
            n += 1
        s.data_to_send()
    return n


def run(seconds: float = 6.0) -> dict[str, Any]:
    """Parse each recording repeatedly for ``seconds`` in total; messages/s and MB/s per chunk size."""
    results: dict[str, Any] = {"target_messages_per_s": TARGET_MSGS_PER_S}
    variants = (128, 4096)
    for chunk_size in variants:
        data, media = recording(chunk_size)
        _parse_once(data)  # warm-up
        runs = 0
        events = 0
        # CPU time, not wall time: the figure should not depend on what else the host runs.
        start = time.process_time()
        deadline = time.perf_counter() + seconds / len(variants)
        while True:
            events += _parse_once(data)
            runs += 1
            if time.perf_counter() >= deadline:
                break
        elapsed = time.process_time() - start
        msgs_per_s = runs * media / elapsed
        results[f"chunk_{chunk_size}"] = {
            "messages_per_s": round(msgs_per_s),
            "mb_per_s": round(runs * len(data) / elapsed / 1e6, 1),
            "x_target": round(msgs_per_s / TARGET_MSGS_PER_S, 1),
            "stream_bytes": len(data),
            "media_messages": media,
            "events_per_run": events // runs,
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0)
    print(json.dumps(run(parser.parse_args().seconds), indent=2))


if __name__ == "__main__":
    main()
