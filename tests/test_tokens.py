"""Stream and REST tokens (mesh/tokens.py): round trips, exact errors, rotation, tampering."""
from __future__ import annotations

import base64
import json

import pytest

from mesh import tokens
from mesh.tokens import (EXPIRED, PLAY, PUBLISH, TokenError, bearer_token, decode, encode,
                         issue_rest_token, issue_stream_token, verify_rest_token, verify_stream_token)

SECRET = "current-secret-0123456789abcdef"
OLD = "previous-secret-0123456789abcdef"
NOW = 1_800_000_000


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict | bytes, claims: dict | bytes, secret: str | None = SECRET,
          sig: str | None = None) -> str:
    """A token built by hand (any header/claims bytes), signed with ``secret`` unless ``sig`` is given."""
    import hashlib
    import hmac

    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    c = claims if isinstance(claims, bytes) else json.dumps(claims).encode()
    signing_input = f"{b64(h)}.{b64(c)}"
    if sig is None:
        mac = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256) if secret else None
        sig = b64(mac.digest()) if mac else ""
    return f"{signing_input}.{sig}"


def reason(token: str | bytes, stream: str = "cam1", action: str = PLAY, now: float = NOW,
           secrets: list[str] | None = None) -> str:
    with pytest.raises(TokenError) as err:
        verify_stream_token(token, secrets or [SECRET], stream, action, now=now)
    return err.value.reason


def test_round_trip_play_and_publish() -> None:
    for action in (PLAY, PUBLISH):
        token = issue_stream_token(SECRET, "cam1", action, ttl_s=3600, now=NOW)
        claims = verify_stream_token(token, [SECRET], "cam1", action, now=NOW + 10)
        assert (claims.sub, claims.act, claims.exp, claims.iat) == ("cam1", action, NOW + 3600, NOW)
        assert len(token) < 250 and token.count(".") == 2


def test_expiry_uses_the_time_passed_in() -> None:
    token = issue_stream_token(SECRET, "cam1", PLAY, ttl_s=60, now=NOW)
    verify_stream_token(token, [SECRET], "cam1", PLAY, now=NOW + 59.9)
    with pytest.raises(TokenError, match="expired 0 s ago") as err:
        verify_stream_token(token, [SECRET], "cam1", PLAY, now=NOW + 60)
    assert err.value.reason == EXPIRED
    assert reason(token, now=NOW + 4000) == "expired"
    verify_stream_token(token, [SECRET], "cam1", PLAY, now=NOW + 65, leeway_s=10)  # clock skew allowance


def test_not_before_in_the_future_is_refused() -> None:
    token = encode({"sub": "cam1", "act": "play", "exp": NOW + 100, "nbf": NOW + 50}, SECRET)
    assert reason(token) == "not_yet_valid"
    verify_stream_token(token, [SECRET], "cam1", PLAY, now=NOW + 50)


def test_rotation_accepts_both_secrets_until_the_old_one_is_dropped() -> None:
    old_token = issue_stream_token(OLD, "cam1", PLAY, ttl_s=600, now=NOW)
    new_token = issue_stream_token(SECRET, "cam1", PLAY, ttl_s=600, now=NOW)
    both = tokens.secrets_of(SECRET, OLD)
    assert both == [SECRET, OLD]
    for token in (old_token, new_token):
        assert verify_stream_token(token, both, "cam1", PLAY, now=NOW).sub == "cam1"
    assert reason(old_token, secrets=[SECRET]) == "bad_signature"  # rotation finished
    assert tokens.secrets_of(SECRET, "") == [SECRET]


def test_wrong_stream_and_wrong_action_say_so() -> None:
    token = issue_stream_token(SECRET, "cam1", PLAY, ttl_s=600, now=NOW)
    with pytest.raises(TokenError, match="another stream"):
        verify_stream_token(token, [SECRET], "cam10", PLAY, now=NOW)
    assert reason(token, stream="cam") == "wrong_stream"
    with pytest.raises(TokenError, match="this is a play token, not a publish token"):
        verify_stream_token(token, [SECRET], "cam1", PUBLISH, now=NOW)
    rest = issue_rest_token(SECRET, ttl_s=60, now=NOW)
    assert reason(rest) == "wrong_action"  # a REST token is not a play token


@pytest.mark.parametrize("header, why", [
    ({"alg": "none", "typ": "JWT"}, "bad_alg"),
    ({"alg": "None"}, "bad_alg"),
    ({"alg": "HS512"}, "bad_alg"),
    ({"alg": "RS256"}, "bad_alg"),
    ({"alg": "hs256"}, "bad_alg"),
    ({"typ": "JWT"}, "bad_alg"),
    ({"alg": ["HS256"]}, "bad_alg"),
    ({"alg": "HS256", "crit": ["exp"]}, "bad_alg"),
    ({"alg": "HS256", "typ": "JWS+other"}, "bad_alg"),
])
def test_only_hs256_is_accepted(header: dict, why: str) -> None:
    claims = {"sub": "cam1", "act": "play", "exp": NOW + 60}
    assert reason(forge(header, claims)) == why
    assert reason(forge(header, claims, secret=None)) == why  # alg none with an empty signature


def test_alg_none_with_an_empty_signature_is_refused() -> None:
    token = forge({"alg": "none"}, {"sub": "cam1", "act": "play", "exp": NOW + 60}, sig="")
    with pytest.raises(TokenError, match="algorithm 'none' is not accepted"):
        verify_stream_token(token, [SECRET], "cam1", PLAY, now=NOW)


def test_tampering_breaks_the_signature() -> None:
    token = issue_stream_token(SECRET, "cam1", PLAY, ttl_s=600, now=NOW)
    head, body, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=="))
    for change in ({"sub": "cam2"}, {"act": "publish"}, {"exp": NOW + 10**6}):
        forged = f"{head}.{b64(json.dumps({**claims, **change}).encode())}.{sig}"
        assert reason(forged, stream=claims["sub"] if "sub" not in change else change["sub"],
                      action=change.get("act", PLAY)) == "bad_signature"
    assert reason(forge({"alg": "HS256"}, claims, secret="another-secret-0123456789")) == "bad_signature"
    flipped = sig[:5] + ("A" if sig[5] != "A" else "B") + sig[6:]
    assert reason(f"{head}.{body}.{flipped}") == "bad_signature"
    assert reason(f"{head}.{body}.{sig[:40]}") == "bad_signature"  # truncated: canonical, wrong length


@pytest.mark.parametrize("token", [
    "", "abc", "a.b", "a.b.c.d", "a..b", "....", "é.b.c", "a b.c.d", "a.b.c\n", "a=.b.c", "a+b.c.d",
    "eyJ.eyJ.x", "x" * 3000, "e30.e30.", b"\xff\xfe.a.b",
])
def test_malformed_is_one_clear_error(token: str | bytes) -> None:
    assert reason(token) in ("malformed", "bad_alg")


@pytest.mark.parametrize("claims", [
    {"act": "play", "exp": NOW + 60},  # no sub
    {"sub": "", "act": "play", "exp": NOW + 60},
    {"sub": 1, "act": "play", "exp": NOW + 60},
    {"sub": "cam1", "exp": NOW + 60},  # no act
    {"sub": "cam1", "act": "delete", "exp": NOW + 60},
    {"sub": "cam1", "act": "play"},  # no exp
    {"sub": "cam1", "act": "play", "exp": float(NOW + 60)},
    {"sub": "cam1", "act": "play", "exp": str(NOW + 60)},
    {"sub": "cam1", "act": "play", "exp": True},
    {"sub": "cam1", "act": "play", "exp": -1},
    {"sub": "cam1", "act": "play", "exp": 10**30},
    {"sub": "cam1", "act": "play", "exp": None},
    {"sub": "cam1", "act": "play", "exp": NOW + 60, "nbf": "soon"},
    {"sub": "cam1", "act": "play", "exp": NOW + 60, "scope": 7},
    [1, 2, 3],
])
def test_claims_are_typed(claims: dict) -> None:
    assert reason(forge({"alg": "HS256", "typ": "JWT"}, claims)) == "malformed"


def test_duplicate_keys_and_non_json_are_malformed() -> None:
    dup = b'{"sub":"cam2","sub":"cam1","act":"play","exp":%d}' % (NOW + 60)
    with pytest.raises(TokenError, match="field 'sub' twice"):
        verify_stream_token(forge({"alg": "HS256"}, dup), [SECRET], "cam1", PLAY, now=NOW)
    assert reason(forge({"alg": "HS256"}, b"not json")) == "malformed"
    assert reason(forge(b'{"alg":"HS256","alg":"none"}', {"sub": "cam1"})) == "malformed"
    assert reason(forge(b"[" * 100, {"sub": "cam1"})) == "malformed"


def test_non_canonical_base64_is_refused() -> None:
    token = issue_stream_token(SECRET, "cam1", PLAY, ttl_s=600, now=NOW)
    head, body, sig = token.split(".")
    last = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    twin = sig[:-1] + last[last.index(sig[-1]) ^ 1]  # same bytes, other unused trailing bits
    assert base64.urlsafe_b64decode(twin + "=") == base64.urlsafe_b64decode(sig + "=")
    assert reason(f"{head}.{body}.{twin}") == "malformed"


def test_rfc7515_example_signature_verifies() -> None:
    """RFC 7515 appendix A.1 (HS256): our signature check agrees with the spec's example."""
    key = base64.urlsafe_b64decode("AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4h"
                                   "cgUuTwjAzZr1Z9CAow==")
    token = ("eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAs"
             "DQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk")
    with pytest.raises(TokenError, match="claim 'sub'"):  # signature fine; it is just not a mesh token
        decode(token, [key], now=0)
    with pytest.raises(TokenError) as err:
        decode(token, [key[:-1] + b"x"], now=0)
    assert err.value.reason == "bad_signature"


def test_rest_tokens_and_scopes() -> None:
    token = issue_rest_token(SECRET, ttl_s=300, now=NOW, scope=["broadcasts", "cluster"])
    claims = verify_rest_token(token, [SECRET], now=NOW, scope="broadcasts")
    assert claims.act == "rest" and claims.scope == ("broadcasts", "cluster")
    with pytest.raises(TokenError) as err:
        verify_rest_token(token, [SECRET], now=NOW, scope="admin")
    assert err.value.reason == "missing_scope"
    play = issue_stream_token(SECRET, "cam1", PLAY, ttl_s=300, now=NOW)
    with pytest.raises(TokenError, match="not a REST token"):
        verify_rest_token(play, [SECRET], now=NOW)
    assert bearer_token("Bearer " + token) == token and bearer_token("bearer  " + token) == token
    for header in (None, "", "Basic dXNlcjpwdw==", "Bearer", "Bearer ", "x" * 5000):
        with pytest.raises(TokenError):
            bearer_token(header)


def test_misuse_is_a_bug_not_a_rejection() -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        issue_stream_token("short", "cam1", PLAY, ttl_s=60, now=NOW)
    with pytest.raises(ValueError, match="no secret"):
        decode("a.b.c", [], now=NOW)
    with pytest.raises(ValueError, match="ttl"):
        issue_stream_token(SECRET, "cam1", PLAY, ttl_s=0, now=NOW)
    with pytest.raises(ValueError, match="action"):
        issue_stream_token(SECRET, "cam1", "rest", ttl_s=60, now=NOW)
    assert not isinstance(ValueError("x"), TokenError)
