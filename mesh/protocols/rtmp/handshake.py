"""The RTMP handshake (plain RTMP version 3), server side, plus client helpers for tests.

Client sends C0 (one version byte) and C1 (1536 bytes: time, 4 "zero" bytes, 1528
random bytes). We answer S0 S1 S2 in one write: S1 is our own time/zero/random block and
S2 echoes C1. The client then sends C2 (an echo of S1), which we accept unchecked.

Why the simple handshake is enough: ffmpeg and librtmp clients put a Flash-player
version in C1's "zero" field and an HMAC digest inside C1 (the "complex" handshake),
but they only *verify* a server digest when S1 itself carries a non-zero version field.
Our S1 has zeros there, so clients fall back to the plain exchange. We also do not
verify the client's digest: it proves nothing about the publisher (the key is public).

ffmpeg reads S0+S1+S2 before it sends C2, so S2 must not wait for C2.
"""
from __future__ import annotations

import os
from collections.abc import Callable

from .errors import RemoteProtocolError

RTMP_VERSION = 3
HANDSHAKE_SIZE = 1536
C0C1_SIZE = 1 + HANDSHAKE_SIZE
C2_SIZE = HANDSHAKE_SIZE


def _describe_bad_version(version: int) -> str:
    if version == 0x47 or version == 0x50:  # 'G', 'P': an HTTP request
        return "the peer sent what looks like an HTTP request to the RTMP port"
    if version == 0x16:
        return "the peer sent what looks like a TLS ClientHello (rtmps://) to a plain RTMP port"
    if version in (6, 8):
        return (f"the peer asked for encrypted RTMPE (version byte {version}); "
                "only plain RTMP (3) is supported")
    return f"unsupported RTMP handshake version {version}; only plain RTMP version 3 is supported"


def check_c0(version: int) -> None:
    """Raise :class:`RemoteProtocolError` unless C0 announces plain RTMP 3."""
    if version != RTMP_VERSION:
        raise RemoteProtocolError(_describe_bad_version(version), reason="handshake")


def server_response(
    c1: bytes | bytearray | memoryview, random_bytes: Callable[[int], bytes] = os.urandom, time_ms: int = 0
) -> bytes:
    """Build S0 + S1 + S2 for the given C1 (which must be exactly 1536 bytes)."""
    if len(c1) != HANDSHAKE_SIZE:
        raise ValueError(f"C1 must be {HANDSHAKE_SIZE} bytes, got {len(c1)}")
    s1 = (time_ms & 0xFFFFFFFF).to_bytes(4, "big") + b"\x00\x00\x00\x00" + random_bytes(HANDSHAKE_SIZE - 8)
    return bytes((RTMP_VERSION,)) + s1 + bytes(c1)


# ------------------------------------------------------------------ client side (tests, bench)


def client_c0c1(random_bytes: Callable[[int], bytes] = os.urandom) -> bytes:
    """A plain-handshake C0+C1, as a test publisher would send it."""
    return bytes((RTMP_VERSION,)) + b"\x00" * 8 + random_bytes(HANDSHAKE_SIZE - 8)


def client_c2(s0s1s2: bytes) -> bytes:
    """C2 for a server reply (echo of S1)."""
    if len(s0s1s2) < 1 + 2 * HANDSHAKE_SIZE:
        raise ValueError("need the whole S0+S1+S2 to build C2")
    return bytes(s0s1s2[1:1 + HANDSHAKE_SIZE])
