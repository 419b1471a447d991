"""Fuzz target: the JWT parser/verifier a stranger reaches (``?token=`` and ``Authorization: Bearer``).

``fuzz(count, seed)`` feeds ``count`` generated tokens to :func:`mesh.tokens.decode` and then to
:func:`~mesh.tokens.verify_stream_token` / :func:`~mesh.tokens.verify_rest_token`, and counts
what was accepted, what was rejected with the documented :class:`~mesh.tokens.TokenError`, and
anything else (a crash). Inputs are deterministic for a seed and come from:

- valid tokens (play, publish, REST; current and previous secret) and the table cases of
  ``tests/test_tokens.py`` (``alg`` none/HS512/lists, untyped claims, duplicate keys), mutated by
  bit flips, byte overwrites, inserts, deletions, duplications, truncations and segment swaps;
- *signed* mutations: a mutated header or claims JSON re-signed with the real secret, so the
  claims parser behind the signature check is exercised too (a stranger cannot do this; a
  holder of an old token or a confused issuer can);
- random ASCII/base64url/bytes, and oversized inputs (deep JSON nesting, huge numbers, tokens
  far past the size limit).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import random
import time
from typing import Any, Callable

from mesh import tokens
from mesh.tokens import TokenError

SECRET = "fuzz-current-secret-0123456789abcdef"
PREVIOUS = "fuzz-previous-secret-0123456789abcde"
SECRETS = [SECRET, PREVIOUS]
NOW = 1_800_000_000
B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _signed(header: bytes, claims: bytes, secret: str = SECRET) -> str:
    signing_input = f"{_b64(header)}.{_b64(claims)}"
    sig = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(sig)}"


def _seeds() -> list[str]:
    out = [tokens.issue_stream_token(SECRET, "cam1", tokens.PLAY, ttl_s=3600, now=NOW),
           tokens.issue_stream_token(PREVIOUS, "cam1", tokens.PUBLISH, ttl_s=60, now=NOW),
           tokens.issue_stream_token(SECRET, "cam10", tokens.PLAY, ttl_s=1, now=NOW - 5),
           tokens.issue_rest_token(SECRET, ttl_s=300, now=NOW, scope=["broadcasts", "cluster"])]
    good = {"sub": "cam1", "act": "play", "exp": NOW + 60}
    for header in ({"alg": "none"}, {"alg": "HS512"}, {"alg": ["HS256"]}, {"alg": "HS256", "crit": ["x"]},
                   {"typ": "JWT"}, {"alg": "HS256", "typ": "other"}):
        out.append(_signed(json.dumps(header).encode(), json.dumps(good).encode()))
    for claims in ({"sub": "cam1", "act": "play"}, {"sub": 1, "act": "play", "exp": 1},
                   {"sub": "cam1", "act": "play", "exp": 1.5}, {"sub": "cam1", "act": "x", "exp": NOW},
                   {"sub": "cam1", "act": "play", "exp": NOW + 9, "nbf": NOW + 5}):
        out.append(_signed(b'{"alg":"HS256"}', json.dumps(claims).encode()))
    out.append(_signed(b'{"alg":"HS256"}', b'{"sub":"a","sub":"cam1","act":"play","exp":1900000000}'))
    out += ["", "a.b.c", "e30.e30.", "....", "a=.b.c"]
    return out


def _mutate(rnd: random.Random, data: bytearray) -> bytearray:
    for _ in range(rnd.randint(1, 4)):
        kind = rnd.randrange(7)
        i = rnd.randrange(len(data) + 1)
        if kind == 0 and data and i < len(data):
            data[i] ^= 1 << rnd.randrange(8)
        elif kind == 1 and data and i < len(data):
            data[i] = rnd.choice(b"." + B64.encode() + bytes([rnd.randrange(256)]))
        elif kind == 2:
            data[i:i] = bytes(rnd.choice(B64.encode() + b".=") for _ in range(rnd.randint(1, 8)))
        elif kind == 3 and data:
            del data[i:i + rnd.randint(1, 8)]
        elif kind == 4 and data:
            j = rnd.randrange(len(data))
            data[i:i] = data[j:j + rnd.randint(1, 64)]
        elif kind == 5:
            del data[i:]
        else:  # swap two segments
            parts = bytes(data).split(b".")
            if len(parts) >= 2:
                a, b = rnd.sample(range(len(parts)), 2)
                parts[a], parts[b] = parts[b], parts[a]
                data = bytearray(b".".join(parts))
    return data


def _json_mutation(rnd: random.Random) -> bytes:
    choices: list[Callable[[], Any]] = [
        lambda: {"sub": rnd.choice(["cam1", "", "x" * rnd.randint(1, 400), 0, None, ["cam1"]]),
                 "act": rnd.choice(["play", "publish", "rest", "PLAY", "", 1, None]),
                 "exp": rnd.choice([NOW + 60, NOW - 1, 2**53, 2**64, -1, 1.0, "1", True, None, 10**400]),
                 **({"nbf": rnd.choice([NOW, NOW + 100, "x", -5])} if rnd.random() < 0.3 else {}),
                 **({"scope": rnd.choice(["a b", "", 1, "x" * 600])} if rnd.random() < 0.3 else {})},
        lambda: [rnd.random()],
        lambda: rnd.choice(["s", 1, None, True]),
    ]
    value = rnd.choice(choices)()
    try:
        raw = json.dumps(value).encode()
    except (OverflowError, ValueError):
        raw = b"{}"
    if rnd.random() < 0.3:
        raw = bytes(_mutate(rnd, bytearray(raw)))
    if rnd.random() < 0.05:
        depth = rnd.randint(100, 5000)
        raw = b"[" * depth + b"]" * depth
    if rnd.random() < 0.05:
        raw = b'{"sub":"cam1","act":"play","exp":' + b"9" * rnd.randint(10, 5000) + b"}"
    return raw


def _input(rnd: random.Random, seeds: list[str]) -> str | bytes:
    roll = rnd.random()
    if roll < 0.50:
        data = _mutate(rnd, bytearray(rnd.choice(seeds).encode()))
        return bytes(data) if rnd.random() < 0.2 else data.decode("latin-1")
    if roll < 0.70:
        header = rnd.choice([b'{"alg":"HS256"}', b'{"alg":"HS256","typ":"JWT"}', _json_mutation(rnd)])
        return _signed(header, _json_mutation(rnd), rnd.choice(SECRETS))
    if roll < 0.78:
        return "".join(rnd.choice(B64 + ".") for _ in range(rnd.randint(0, 300)))
    if roll < 0.85:
        return bytes(rnd.randrange(256) for _ in range(rnd.randint(0, 200)))
    if roll < 0.88:  # far past the size limit
        return rnd.choice(seeds) * rnd.randint(10, 200)
    return rnd.choice(seeds[:4])  # the valid ones, unchanged


def _rss() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def fuzz(count: int, seed: int = 0) -> dict:
    rnd = random.Random(seed)
    seeds = _seeds()
    accepted = rejected = crashes = 0
    first_crash = ""
    rss0 = _rss()
    started = time.perf_counter()
    peak = rss0
    for i in range(count):
        token = _input(rnd, seeds)
        now = NOW + rnd.choice([0, 0, 0, 30, 3600, 10**6])
        try:
            claims = tokens.decode(token, SECRETS, now=now)
            if claims.act == tokens.REST:
                tokens.verify_rest_token(token, SECRETS, now=now, scope=rnd.choice([None, "broadcasts"]))
            else:
                action = claims.act if rnd.random() < 0.8 else rnd.choice([tokens.PLAY, tokens.PUBLISH])
                tokens.verify_stream_token(token, SECRETS, "cam1", action, now=now)
            accepted += 1
        except TokenError as exc:
            if exc.reason in tokens.REASONS:
                rejected += 1
            else:
                crashes += 1
                first_crash = first_crash or f"unknown reason {exc.reason!r} for {token[:200]!r}"
        except Exception as exc:  # noqa: BLE001 - a crash is exactly what we count
            crashes += 1
            first_crash = first_crash or f"{type(exc).__name__}: {exc} for {token[:200]!r}"
        if i % 1000 == 999:
            peak = max(peak, _rss())
    result = {"target": "jwt", "inputs": count, "accepted": accepted, "rejected": rejected,
              "crashes": crashes, "seconds": round(time.perf_counter() - started, 3),
              "max_rss_growth_bytes": max(0, max(peak, _rss()) - rss0)}
    if first_crash:
        result["first_crash"] = first_crash
    return result


if __name__ == "__main__":  # pragma: no cover
    import sys

    print(fuzz(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000))
