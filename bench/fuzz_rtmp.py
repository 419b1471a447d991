"""Fuzz target: everything an RTMP stranger reaches on an origin, through the real sans-IO code.

    from mesh_bench.fuzz_rtmp import fuzz
    fuzz(100_000)   # -> {"target": "rtmp", "inputs": ..., "crashes": 0, ...}

Each input is one of (deterministic in ``seed``):

* a valid publisher byte stream (handshake, connect, releaseStream/FCPublish/createStream,
  publish, metadata, AVC/AAC headers and frames, an extended timestamp, ping, window ack, an
  aggregate message, FCUnpublish/deleteStream; chunk size 128 or 4096) mutated by bit flips,
  overwrites, inserts, deletions, duplications and truncations, mostly past the handshake;
* the same with one message length field overwritten by a huge value (up to 0xFFFFFF);
* random bytes, and random but well-formed chunk headers (any fmt, csid, length, type,
  extended timestamps) after a valid handshake;
* mutated AMF0 values (``amf0.decode``) and FLV audio/video tag bodies (``flv.parse_*``).

Session inputs go through :class:`~mesh.protocols.rtmp.ServerSession` (the origin's limits:
8 MiB messages, 64 KiB before a publish) in random pieces, accepting or refusing publishes,
and every media payload it delivers goes through the FLV parser. The documented rejections are
``RemoteProtocolError`` and ``FlvError``; anything else is a crash, and so is a session that
holds more bytes than its cap allows after it asked for more data.
"""
from __future__ import annotations

import random
import struct
import time
from pathlib import Path
from typing import Any

from mesh_codecs import flv

from mesh.protocols.rtmp import (NEED_DATA, PAUSED, AudioMessage, RemoteProtocolError, ServerSession, State,
                                 VideoMessage, amf0)
from mesh.protocols.rtmp.chunk import ChunkWriter, basic_header
from mesh.protocols.rtmp.handshake import C0C1_SIZE, HANDSHAKE_SIZE, client_c0c1

MAX_MESSAGE = 8 << 20  # the origin's defaults (rtmp_max_message_bytes, rtmp_max_setup_bytes)
MAX_SETUP = 64 << 10
HANDSHAKE_LEN = C0C1_SIZE + HANDSHAKE_SIZE
_SETUP_STATES = (State.AWAIT_CONNECT, State.CONNECTED, State.PUBLISH_PENDING)


def publisher_bytes(chunk_size: int, name: str = "cam1") -> bytes:
    """What ffmpeg sends for a short publish (same csids and command order)."""
    w = ChunkWriter(128)
    out = bytearray(client_c0c1(lambda n: bytes(n)) + bytes(HANDSHAKE_SIZE))

    def cmd(*values: Any, csid: int = 3, sid: int = 0) -> None:
        out.extend(w.write(csid, 20, sid, 0, amf0.encode(*values)))

    cmd("connect", 1.0, {"app": "LiveApp", "type": "nonprivate", "flashVer": "FMLE/3.0 (compatible; Lavf)",
                         "tcUrl": "rtmp://127.0.0.1:1935/LiveApp"})
    out += w.write(2, 1, 0, 0, struct.pack(">I", chunk_size))
    w.chunk_size = chunk_size
    cmd("releaseStream", 2.0, None, name)
    cmd("FCPublish", 3.0, None, name)
    cmd("createStream", 4.0, None)
    cmd("publish", 5.0, None, f"{name}?token=abc", "live", csid=8, sid=1)
    out += w.write(4, 18, 1, 0, amf0.encode("@setDataFrame", "onMetaData",
                                            amf0.EcmaArray(width=640.0, height=360.0, videocodecid=7.0,
                                                           encoder="Lavf", stereo=True)))
    frame = flv.video_tag(True, flv.AVC_NALU, 67, b"\x00\x00\x01\x00" + bytes(range(256)))
    out += w.write(6, 9, 1, 0, flv.video_tag(True, flv.AVC_SEQUENCE_HEADER, 0,
                                             b"\x01\x64\x00\x1f\xff\xe1\x00\x04gd\x00\x1f\x01\x00\x02h\xee"))
    out += w.write(4, 8, 1, 0, flv.audio_tag(flv.AAC_SEQUENCE_HEADER, b"\x12\x08"))
    out += w.write(6, 9, 1, 0, frame)
    out += w.write(4, 8, 1, 23, flv.audio_tag(flv.AAC_RAW, bytes(200)))
    out += w.write(6, 9, 1, 33, flv.video_tag(False, flv.AVC_NALU, 0, b"\x00\x00\x00\x02\x41\x9a"))
    out += w.write(2, 4, 0, 0, b"\x00\x06\x00\x00\x00\x01")  # ping request
    out += w.write(2, 5, 0, 0, struct.pack(">I", 500))  # window acknowledgement size
    agg = b"".join(_flv_tag(t, ts, body) for t, ts, body in
                   ((9, 5000, b"\x27\x01\x00\x00\x00v"), (8, 5010, b"\xaf\x01a")))
    out += w.write(6, 22, 1, 66, agg)
    out += w.write(6, 9, 1, 0x1000000, frame)  # an extended timestamp
    cmd("FCUnpublish", 6.0, None, name)
    cmd("deleteStream", 7.0, None, 1.0)
    return bytes(out)


def _flv_tag(type_id: int, ts: int, body: bytes) -> bytes:
    head = bytes([type_id]) + len(body).to_bytes(3, "big") + (ts & 0xFFFFFF).to_bytes(3, "big")
    head += bytes([(ts >> 24) & 0xFF]) + bytes(3)
    return head + body + (11 + len(body)).to_bytes(4, "big")


SEEDS = [publisher_bytes(128), publisher_bytes(4096)]
#: handshake + connect, as the seeds start (random chunks then land in a connected session)
CONNECTED = SEEDS[0][:HANDSHAKE_LEN + len(ChunkWriter(128).write(3, 20, 0, 0, amf0.encode(
    "connect", 1.0, {"app": "LiveApp", "type": "nonprivate", "flashVer": "FMLE/3.0 (compatible; Lavf)",
                     "tcUrl": "rtmp://127.0.0.1:1935/LiveApp"})))]
AMF_SEEDS = [
    amf0.encode("connect", 1.0, {"app": "LiveApp", "tcUrl": "rtmp://h/LiveApp", "fpad": False}),
    amf0.encode("@setDataFrame", "onMetaData", amf0.EcmaArray(width=640.0, encoder="Lavf", stereo=True)),
    amf0.encode([1.0, [None, amf0.UNDEFINED, {"a": amf0.AmfDate(0.0)}]], "x" * 300),
]
FLV_SEEDS = [
    flv.video_tag(True, 0, 0, b"\x01\x64\x00\x1f\xff\xe1\x00\x04gd\x00\x1f"),
    flv.video_tag(False, 1, -33, b"\x00\x00\x00\x02\x41\x9a"),
    flv.audio_tag(0, b"\x12\x08"), flv.audio_tag(1, b"\x21" * 20),
]
_INTERESTING = (0, 1, 3, 0x7F, 0x80, 0xC0, 0xFF)


def mutate(rnd: random.Random, data: bytes, floor: int = 0, max_ops: int = 6) -> bytes:
    buf = bytearray(data)
    for _ in range(rnd.randint(1, max_ops)):
        if len(buf) <= floor:
            break
        i = rnd.randrange(floor, len(buf))
        kind = rnd.randrange(6)
        span = rnd.randint(1, 64)
        if kind == 0:
            buf[i] ^= 1 << rnd.randrange(8)
        elif kind == 1:
            buf[i] = rnd.choice(_INTERESTING) if rnd.random() < 0.7 else rnd.randrange(256)
        elif kind == 2:
            buf[i:i] = rnd.randbytes(rnd.randint(1, 16))
        elif kind == 3:
            del buf[i:i + span]
        elif kind == 4:
            buf[i:i] = buf[i:i + span]
        elif rnd.random() < 0.3:
            del buf[i:]
    return bytes(buf)


def huge_length(rnd: random.Random, data: bytes) -> bytes:
    """Overwrite the length field of some fmt 0/1 header past the handshake with a big value."""
    buf = bytearray(data)
    for _ in range(200):
        i = rnd.randrange(HANDSHAKE_LEN, len(buf) - 8)
        if buf[i] >> 6 in (0, 1) and 2 <= buf[i] & 0x3F:
            buf[i + 4:i + 7] = rnd.choice((0xFFFFFF, MAX_MESSAGE, MAX_MESSAGE + 1, MAX_SETUP + 1,
                                           rnd.randrange(1 << 24))).to_bytes(3, "big")
            if rnd.random() < 0.5:  # and cut the stream short after it
                del buf[rnd.randrange(i, len(buf)):]
            break
    return bytes(buf)


def random_chunks(rnd: random.Random) -> bytes:
    out = bytearray()
    for _ in range(rnd.randint(1, 12)):
        fmt = rnd.randrange(4)
        csid = rnd.choice((2, 3, 4, 6, 8, 64, 320, 65599))
        ts = rnd.choice((0, 1, 33, 0xFFFFFF))
        out += basic_header(fmt, csid)
        if fmt < 3:
            out += ts.to_bytes(3, "big")
        if fmt < 2:
            out += rnd.choice((0, 4, 100, 300, 0xFFFFFF, rnd.randrange(1 << 24))).to_bytes(3, "big")
            out += bytes([rnd.choice((1, 2, 3, 4, 5, 6, 8, 9, 15, 17, 18, 20, 22, 0, 255))])
        if fmt == 0:
            out += rnd.randrange(3).to_bytes(4, "little")
        if ts == 0xFFFFFF and fmt < 3:
            out += b"\x00\x00\x00\x10"
        out += rnd.randbytes(rnd.randint(0, 200))
    return bytes(out)


def run_session(data: bytes, rnd: random.Random) -> bool:
    """Feed ``data`` in random pieces; True if it was accepted to the end, False if it was
    rejected (RemoteProtocolError, or FlvError on a media payload). Anything else propagates."""
    s = ServerSession(max_message_size=MAX_MESSAGE, max_setup_bytes=MAX_SETUP)
    pos = 0
    rejected = False
    try:
        while pos < len(data):
            n = rnd.choice((1, 7, 200, 1500, 4096, 65536))
            s.receive_data(data[pos:pos + n])
            pos += n
            while True:
                ev = s.next_event()
                if ev is NEED_DATA:
                    break
                if ev is PAUSED:
                    if rnd.random() < 0.9:
                        s.accept_publish()
                        continue
                    s.reject_publish("NetStream.Publish.Denied", "fuzz")
                    break
                if isinstance(ev, (VideoMessage, AudioMessage)):
                    try:
                        (flv.parse_video if isinstance(ev, VideoMessage) else flv.parse_audio)(ev.payload)
                    except flv.FlvError:
                        rejected = True
            _check_held(s)
            s.data_to_send()
            if s.must_close:
                return not rejected
        s.receive_data(b"")
        while (ev := s.next_event()) is not NEED_DATA and ev is not PAUSED:
            pass
    except RemoteProtocolError as exc:
        if not (exc.reason and str(exc) and s.must_close):
            raise AssertionError(f"a rejection without a reason or an errored session: {exc!r}") from None
        return False
    return not rejected


def _check_held(s: ServerSession) -> None:
    """After the session asked for more data, it holds no more than its cap allows."""
    if s.state in _SETUP_STATES:
        cap = MAX_SETUP
    elif s.state is State.PUBLISHING:
        cap = MAX_MESSAGE + MAX_SETUP
    else:
        return  # handshake bytes (one piece at most) or a closing session that parses nothing
    if s.held_bytes > cap:
        raise AssertionError(f"session holds {s.held_bytes} bytes in {s.state.name}, over its {cap}-byte cap")


def one_input(rnd: random.Random) -> bool:
    kind = rnd.random()
    if kind < 0.55:
        floor = 0 if rnd.random() < 0.15 else HANDSHAKE_LEN
        return run_session(mutate(rnd, rnd.choice(SEEDS), floor), rnd)
    if kind < 0.65:
        return run_session(huge_length(rnd, rnd.choice(SEEDS)), rnd)
    if kind < 0.72:
        return run_session(SEEDS[0][:HANDSHAKE_LEN] + rnd.randbytes(rnd.randint(0, 2000)), rnd)
    if kind < 0.82:
        prefix = CONNECTED if rnd.random() < 0.5 else SEEDS[0][:HANDSHAKE_LEN]
        return run_session(prefix + random_chunks(rnd), rnd)
    if kind < 0.92:
        try:
            amf0.decode(mutate(rnd, rnd.choice(AMF_SEEDS), max_ops=4))
        except RemoteProtocolError as exc:
            if exc.reason != "amf":
                raise
            return False
        return True
    data = mutate(rnd, rnd.choice(FLV_SEEDS), max_ops=3)
    try:
        (flv.parse_video if rnd.random() < 0.5 else flv.parse_audio)(data)
    except flv.FlvError:
        return False
    return True


def _rss() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def fuzz(count: int, seed: int = 0) -> dict:
    """Run ``count`` generated inputs (deterministic for ``seed``); see the module docstring."""
    rnd = random.Random(seed)
    accepted = rejected = crashes = 0
    rss0 = peak = _rss()
    start = time.perf_counter()
    for i in range(count):
        sub = random.Random(rnd.getrandbits(64))  # one input = one seed, replayable on its own
        try:
            if one_input(sub):
                accepted += 1
            else:
                rejected += 1
        except Exception:  # noqa: BLE001 -- anything but a documented rejection is a crash
            crashes += 1
        if i % 256 == 0:
            peak = max(peak, _rss())
    peak = max(peak, _rss())
    return {"target": "rtmp", "inputs": count, "accepted": accepted, "rejected": rejected, "crashes": crashes,
            "seconds": round(time.perf_counter() - start, 3), "max_rss_growth_bytes": max(0, peak - rss0)}
