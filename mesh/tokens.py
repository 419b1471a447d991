"""Signed, expiring tokens for play, publish and REST: compact JWS (JWT) with HS256 only. Pure.

    token = issue_stream_token(secret, "cam1", PLAY, ttl_s=3600, now=time.time())
    claims = verify_stream_token(token, [secret, previous], "cam1", PLAY, now=time.time())

A token is ``base64url(header) . base64url(claims) . base64url(HMAC-SHA256)`` (RFC 7519/7515,
no padding). Claims: ``sub`` the stream id, ``act`` one of ``publish``/``play``/``rest``, ``exp``
the expiry (integer Unix seconds), optionally ``iat``, ``nbf`` and (REST) ``scope``, a
space-separated list of scopes.

Verification is strict, because every byte of a token comes from a stranger:

- at most :data:`MAX_TOKEN_BYTES` characters, three base64url segments, nothing else;
- the header must be exactly ``{"alg": "HS256"}`` plus optionally ``typ: "JWT"`` and ``kid``:
  no ``none``, no other algorithm, no ``crit``; the header is small and checked before anything;
- the signature is checked (``hmac.compare_digest``, against every secret in the list, so two
  secrets are valid while a cluster rotates) **before** the claims are parsed;
- claims are a JSON object without duplicate keys whose known claims have their exact types
  (``exp`` an integer, not a float, a bool or a string);
- then ``exp``/``nbf`` against ``now`` (passed in, never read here), then ``sub`` and ``act``.

Every rejection raises :class:`TokenError` whose ``reason`` is a fixed word
(:data:`REASONS`, usable as a metrics label) and whose message says what is wrong and what to do;
nothing else escapes (the fuzz target ``bench/fuzz_jwt.py`` holds us to it).
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

PLAY = "play"
PUBLISH = "publish"
REST = "rest"
ACTIONS = (PLAY, PUBLISH, REST)

MAX_TOKEN_BYTES = 2048  # fits a query string; a real token is ~200 characters
MAX_HEADER_CHARS = 200  # base64url characters of the header segment
MIN_SECRET_BYTES = 16
MAX_TTL_S = 366 * 24 * 3600

#: Fixed reason words of :class:`TokenError` (metrics labels, never peer text).
MALFORMED, BAD_ALG, BAD_SIGNATURE, EXPIRED, NOT_YET_VALID, WRONG_STREAM, WRONG_ACTION, \
    MISSING_SCOPE = ("malformed", "bad_alg", "bad_signature", "expired", "not_yet_valid",
                     "wrong_stream", "wrong_action", "missing_scope")
REASONS = (MALFORMED, BAD_ALG, BAD_SIGNATURE, EXPIRED, NOT_YET_VALID, WRONG_STREAM, WRONG_ACTION,
           MISSING_SCOPE)

_SEGMENT = re.compile(r"[A-Za-z0-9_-]*")
_HEADER = b'{"alg":"HS256","typ":"JWT"}'
_HEADER_KEYS = frozenset({"alg", "typ", "kid"})
_SUB_MAX = 256
_SCOPE_MAX = 512


class TokenError(ValueError):
    """A token was refused; ``reason`` is one of :data:`REASONS`, the message says what to do."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Claims:
    sub: str
    act: str
    exp: int
    iat: int | None = None
    nbf: int | None = None
    scope: tuple[str, ...] = ()


# -- helpers ------------------------------------------------------------------------------------
def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(segment: str, what: str) -> bytes:
    if len(segment) % 4 == 1:
        raise TokenError(MALFORMED, f"token {what} is not valid base64url; copy the whole token")
    try:
        data = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise TokenError(MALFORMED, f"token {what} is not valid base64url; copy the whole token") from None
    if _b64encode(data) != segment:  # one token, one spelling (no stray trailing bits)
        raise TokenError(MALFORMED, f"token {what} is not canonical base64url; copy the whole token")
    return data


def _key(secret: str | bytes) -> bytes:
    key = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    if len(key) < MIN_SECRET_BYTES:  # a configuration bug, not a peer's fault
        raise ValueError(f"a token secret needs at least {MIN_SECRET_BYTES} bytes")
    return key


def _sign(key: bytes, signing_input: bytes) -> bytes:
    return hmac.new(key, signing_input, hashlib.sha256).digest()


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise TokenError(MALFORMED, f"token has the field {key[:32]!r} twice; issue a new token")
        out[key] = value
    return out


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except TokenError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise TokenError(MALFORMED, f"token {what} is not a JSON object; issue a new token") from None
    if not isinstance(value, dict):
        raise TokenError(MALFORMED, f"token {what} is not a JSON object; issue a new token")
    return value


def _int_claim(claims: dict[str, Any], name: str, required: bool) -> int | None:
    value = claims.get(name)
    if value is None and not required and name not in claims:
        return None
    if type(value) is not int or not 0 <= value < 2**53:
        raise TokenError(MALFORMED, f"token claim '{name}' must be whole Unix seconds; issue a new token")
    return value


def _str_claim(claims: dict[str, Any], name: str, limit: int) -> str:
    value = claims.get(name)
    if not isinstance(value, str) or not value or len(value) > limit:
        raise TokenError(MALFORMED, f"token claim '{name}' must be a non-empty string; issue a new token")
    return value


# -- issuing ------------------------------------------------------------------------------------
def encode(claims: dict[str, Any], secret: str | bytes) -> str:
    """Sign ``claims`` (a JSON-able dict) with HS256 and return the compact token."""
    head = _b64encode(_HEADER)
    body = _b64encode(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode("utf-8"))
    signing_input = f"{head}.{body}".encode("ascii")
    return f"{head}.{body}.{_b64encode(_sign(_key(secret), signing_input))}"


def _check_ttl(ttl_s: float) -> int:
    if not 0 < ttl_s <= MAX_TTL_S:
        raise ValueError(f"ttl must be 1 s to {MAX_TTL_S} s (a year), not {ttl_s}")
    return int(ttl_s)


def issue_stream_token(secret: str | bytes, stream_id: str, action: str, *, ttl_s: float,
                       now: float) -> str:
    """A token that lets its bearer ``action`` (play or publish) ``stream_id`` until now + ttl."""
    if action not in (PLAY, PUBLISH):
        raise ValueError(f"action must be {PLAY!r} or {PUBLISH!r}, not {action!r}")
    if not stream_id or len(stream_id) > _SUB_MAX:
        raise ValueError("stream id must be 1 to 256 characters")
    issued = int(now)
    return encode({"sub": stream_id, "act": action, "iat": issued,
                   "exp": issued + _check_ttl(ttl_s)}, secret)


def issue_rest_token(secret: str | bytes, *, ttl_s: float, now: float, subject: str = "admin",
                     scope: Iterable[str] = ()) -> str:
    """A bearer token for the REST API (``act`` = rest; optional space-separated ``scope``)."""
    issued = int(now)
    claims: dict[str, Any] = {"sub": subject, "act": REST, "iat": issued,
                              "exp": issued + _check_ttl(ttl_s)}
    scopes = [s for s in scope]
    if scopes:
        if any(not s or " " in s for s in scopes):
            raise ValueError("scopes are non-empty words without spaces")
        claims["scope"] = " ".join(scopes)
    return encode(claims, secret)


# -- verifying ----------------------------------------------------------------------------------
def decode(token: str | bytes, secrets: Sequence[str | bytes], *, now: float,
           leeway_s: float = 0.0) -> Claims:
    """Check structure, algorithm, signature (any of ``secrets``) and time; return the claims.

    ``sub`` and ``act`` are checked for shape only; :func:`verify_stream_token` and
    :func:`verify_rest_token` check them against the request.
    """
    keys = [_key(s) for s in secrets]
    if not keys:
        raise ValueError("no secret to verify tokens with: set cluster_secret")
    if isinstance(token, (bytes, bytearray, memoryview)):
        try:
            token = bytes(token).decode("ascii")
        except UnicodeDecodeError:
            raise TokenError(MALFORMED, "token is not ASCII; copy the whole token") from None
    if not isinstance(token, str):
        raise TokenError(MALFORMED, "token must be a string")
    if not token:
        raise TokenError(MALFORMED, "token is empty; pass ?token= or Authorization: Bearer")
    if len(token) > MAX_TOKEN_BYTES:
        raise TokenError(MALFORMED, f"token is longer than {MAX_TOKEN_BYTES} characters; "
                                    f"issue a new token with `mesh token`")
    parts = token.split(".")
    if len(parts) != 3 or not all(_SEGMENT.fullmatch(p) for p in parts):
        raise TokenError(MALFORMED, "token is not three base64url parts joined by '.' "
                                    "(header.claims.signature); copy the whole token")
    head_b64, body_b64, sig_b64 = parts
    if not head_b64 or len(head_b64) > MAX_HEADER_CHARS:
        raise TokenError(MALFORMED, "token header is missing or too long; issue a new token")
    header = _json_object(_b64decode(head_b64, "header"), "header")
    alg = header.get("alg")
    if alg != "HS256":
        shown = alg[:16] if isinstance(alg, str) else type(alg).__name__
        raise TokenError(BAD_ALG, f"token algorithm {shown!r} is not accepted; only HS256 tokens "
                                  f"signed with the cluster secret are")
    unknown = set(header) - _HEADER_KEYS
    if unknown:
        raise TokenError(BAD_ALG, "token header has fields this server does not understand "
                                  f"({', '.join(sorted(k[:16] for k in unknown)[:3])}); issue a new token")
    if "typ" in header and header["typ"] != "JWT":
        raise TokenError(BAD_ALG, "token header 'typ' must be JWT; issue a new token")
    signature = _b64decode(sig_b64, "signature")
    signing_input = f"{head_b64}.{body_b64}".encode("ascii")
    good = False
    for key in keys:  # every key is tried, so the time taken does not tell which one matched
        good |= hmac.compare_digest(_sign(key, signing_input), signature)
    if not good:
        raise TokenError(BAD_SIGNATURE, "token signature does not match the cluster secret "
                                        "(tampered, or signed with another secret); issue a new token")
    claims = _json_object(_b64decode(body_b64, "claims"), "claims")
    sub = _str_claim(claims, "sub", _SUB_MAX)
    act = _str_claim(claims, "act", 16)
    exp = _int_claim(claims, "exp", required=True)
    iat = _int_claim(claims, "iat", required=False)
    nbf = _int_claim(claims, "nbf", required=False)
    scope: tuple[str, ...] = ()
    if "scope" in claims:
        scope = tuple(_str_claim(claims, "scope", _SCOPE_MAX).split())
    if act not in ACTIONS:
        raise TokenError(MALFORMED, f"token claim 'act' must be one of {', '.join(ACTIONS)}")
    assert exp is not None
    if now >= exp + leeway_s:
        raise TokenError(EXPIRED, f"token expired {int(now - exp)} s ago; get a new one")
    if nbf is not None and now + leeway_s < nbf:
        raise TokenError(NOT_YET_VALID, "token is not valid yet (nbf in the future); check the clocks")
    return Claims(sub=sub, act=act, exp=exp, iat=iat, nbf=nbf, scope=scope)


def verify_stream_token(token: str | bytes, secrets: Sequence[str | bytes], stream_id: str,
                        action: str, *, now: float, leeway_s: float = 0.0) -> Claims:
    """Accept ``token`` only for ``action`` (play|publish) on ``stream_id``, else :class:`TokenError`."""
    if action not in (PLAY, PUBLISH):
        raise ValueError(f"action must be {PLAY!r} or {PUBLISH!r}, not {action!r}")
    claims = decode(token, secrets, now=now, leeway_s=leeway_s)
    if claims.act != action:
        raise TokenError(WRONG_ACTION, f"this is a {claims.act} token, not a {action} token; "
                                       f"get one with `mesh token --stream ID --{action}`")
    if not hmac.compare_digest(claims.sub.encode("utf-8"), stream_id.encode("utf-8")):
        raise TokenError(WRONG_STREAM, "token is for another stream; get one for this stream id")
    return claims


def verify_rest_token(token: str | bytes, secrets: Sequence[str | bytes], *, now: float,
                      scope: str | None = None, leeway_s: float = 0.0) -> Claims:
    """Accept a REST bearer token (``act`` = rest; with ``scope``, that scope must be granted)."""
    claims = decode(token, secrets, now=now, leeway_s=leeway_s)
    if claims.act != REST:
        raise TokenError(WRONG_ACTION, f"this is a {claims.act} token, not a REST token; "
                                       f"get one with `mesh token --rest`")
    if scope is not None and scope not in claims.scope:
        raise TokenError(MISSING_SCOPE, f"token does not grant the scope {scope!r}")
    return claims


def bearer_token(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header value, else :class:`TokenError`."""
    if not authorization:
        raise TokenError(MALFORMED, "missing Authorization header; send 'Authorization: Bearer <token>'")
    if len(authorization) > MAX_TOKEN_BYTES + 16:
        raise TokenError(MALFORMED, "Authorization header is too long")
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise TokenError(MALFORMED, "Authorization must be 'Bearer <token>'")
    return value.strip()


def secrets_of(current: str, previous: str = "") -> list[str]:
    """The secrets to verify with, newest first (``cluster_secret``, ``cluster_secret_previous``)."""
    return [s for s in (current, previous) if s]
