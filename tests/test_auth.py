"""REST authentication, play tokens and publish tokens, against real nodes, ffmpeg, nginx and hls.js.

Every refusal is checked to change nothing, and protected streams are played with nothing but the
tokenised URL, directly on an edge and through the nginx balancer's cache.
"""
from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from mesh import tokens
from mesh.cluster import Nginx, wait_for_port
from mesh.embedded_db import free_port
from mesh.lb import Backend, Backends, render_nginx

from .browser import play_hls, require_chromium
from .media import ffmpeg_decode_errors, ffmpeg_publish
from .procs import start_node, wait_until

pytestmark = pytest.mark.integration

SECRET = "a-cluster-secret-of-32-characters!"
OLD_SECRET = "the-previous-secret-still-rotating"


def request(url: str, method: str = "GET", body: dict | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read(), dict(err.headers)


def rest_token(secret: str = SECRET, ttl_s: float = 600) -> str:
    return tokens.issue_rest_token(secret, ttl_s=ttl_s, now=time.time())


def play_token(stream: str, secret: str = SECRET, ttl_s: float = 600, now: float | None = None) -> str:
    return tokens.issue_stream_token(secret, stream, tokens.PLAY, ttl_s=ttl_s,
                                     now=time.time() if now is None else now)


# -- REST ------------------------------------------------------------------------------------

def test_rest_changes_need_a_token_or_an_allowed_network_and_refusals_change_nothing(node_factory) -> None:
    # loopback is not an allowed network here: the test client is a stranger
    origin = node_factory("origin", env={"MESH_CLUSTER_SECRET": SECRET,
                                         "MESH_CLUSTER_SECRET_PREVIOUS": OLD_SECRET,
                                         "MESH_REST_ALLOWED_CIDRS": "10.99.0.0/16"})
    create = f"{origin.http}/LiveApp/rest/v2/broadcasts/create"
    body = {"streamId": "ssrf", "streamUrl": "rtsp://cam.invalid/s"}
    status, reply, headers = request(create, "POST", body)
    assert status == 401 and headers.get("WWW-Authenticate", "").startswith("Bearer")
    assert b"Authorization: Bearer" in reply
    for bad in ("Bearer nonsense", f"Bearer {play_token('ssrf')}", f"Bearer {rest_token('x' * 32)}",
                f"Basic {rest_token()}", f"Bearer {tokens.issue_rest_token(SECRET, ttl_s=1, now=time.time() - 60)}"):
        status, reply, _ = request(create, "POST", body, {"Authorization": bad})
        assert status == 401, (bad[:20], reply)
    assert request(f"{origin.http}/LiveApp/rest/v2/broadcasts/ssrf")[0] == 404, "a refusal changes nothing"
    # a valid token (either secret during a rotation) passes authentication; the body is then judged
    for secret in (SECRET, OLD_SECRET):
        status, reply, _ = request(create, "POST", {"streamId": "not a name", "streamUrl": "rtsp://cam.invalid/s"},
                                   {"Authorization": f"Bearer {rest_token(secret)}"})
        assert status == 400 and b"streamId" in reply, reply
    # the node JSON hides internal endpoints from strangers, shows them to the authenticated
    nodes_url = f"{origin.http}/rest/v2/cluster/nodes/0/10"
    row = json.loads(request(nodes_url)[1])[0]
    assert "busEndpoint" not in row and "rtmpUrl" not in row and row["id"] == origin.node_id
    row = json.loads(request(nodes_url, headers={"Authorization": f"Bearer {rest_token()}"})[1])[0]
    assert row["busEndpoint"].startswith("tcp://") and row["rtmpUrl"].startswith("rtmp://")


def test_without_a_cluster_secret_only_allowed_networks_change_state(node_factory) -> None:
    origin = node_factory("origin", env={"MESH_REST_ALLOWED_CIDRS": "10.99.0.0/16"})
    status, reply, _ = request(f"{origin.http}/LiveApp/rest/v2/broadcasts/create", "POST",
                               {"streamId": "x", "streamUrl": "rtsp://cam.invalid/s"})
    assert status == 403 and b"rest_allowed_cidrs" in reply


def test_a_client_behind_the_balancer_is_not_loopback(node_factory) -> None:
    """The balancer connects from loopback (a trusted proxy) and names the client in
    X-Forwarded-For: the client's address is what counts, so it needs a token."""
    origin = node_factory("origin", env={"MESH_CLUSTER_SECRET": SECRET})
    create = f"{origin.http}/LiveApp/rest/v2/broadcasts/create"
    body = {"streamId": "x", "streamUrl": "http://127.0.0.1:1/internal-admin?secret=1"}
    status, _, _ = request(create, "POST", body, {"X-Forwarded-For": "203.0.113.7"})
    assert status == 401
    # from loopback itself the call is allowed, and the SSRF target is still refused
    status, reply, _ = request(create, "POST", body)
    assert status == 400 and b"loopback" in reply
    assert request(f"{origin.http}/LiveApp/rest/v2/broadcasts/x")[0] == 404


# -- play and publish tokens ----------------------------------------------------------------

class Protected:
    def __init__(self, tmp: Path, mongo: str):
        env = {"MESH_CLUSTER_SECRET": SECRET, "MESH_REQUIRE_PLAY_TOKEN": "1",
               "MESH_REQUIRE_PUBLISH_TOKEN": "1"}
        self.origin = start_node("origin", tmp, mongo=mongo, db_name="auth", env=env)
        self.edges = [start_node("edge", tmp, mongo=mongo, db_name="auth", env=env) for _ in range(2)]
        publish = tokens.issue_stream_token(SECRET, "vault", tokens.PUBLISH, ttl_s=600, now=time.time())
        self.publisher = ffmpeg_publish(self.origin.rtmp.replace("{stream_id}", f"vault?token={publish}"), 120)
        self.nginx: Nginx | None = None
        self.port = free_port()

    def start_balancer(self, prefix: Path) -> str:
        backends = Backends([Backend(self.origin.node_id, "127.0.0.1", _port(self.origin.rtmp))],
                            [Backend(e.node_id, "127.0.0.1", _port(e.http)) for e in self.edges],
                            [Backend(self.origin.node_id, "127.0.0.1", _port(self.origin.http))])
        if self.nginx is not None:
            self.nginx.stop()
        self.port = free_port()
        self.nginx = Nginx(prefix, render_nginx(backends, http_port=self.port, rtmp_port=free_port(),
                                                prefix=str(prefix)))
        wait_for_port("127.0.0.1", self.port)
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.publisher.kill()
        self.publisher.wait()
        if self.nginx is not None:
            self.nginx.stop()
        for node in [*self.edges, self.origin]:
            node.stop()


def _port(url: str) -> int:
    return int(re.search(r":(\d+)(?:/|$)", url).group(1))


@pytest.fixture(scope="module")
def protected(tmp_path_factory: pytest.TempPathFactory, mongo: str) -> Iterator[Protected]:
    p = Protected(tmp_path_factory.mktemp("auth"), mongo)
    try:
        url = f"{p.edges[0].http}/LiveApp/streams/vault.m3u8?token={play_token('vault')}"
        wait_until(lambda: request(url)[1].count(b".ts?token=") >= 2, timeout_s=40, interval_s=0.5,
                   message="a protected playlist with two segments")
        yield p
    finally:
        p.stop()


def refusals(base: str) -> dict[str, str]:
    """Every way to ask for the protected stream without a valid play token."""
    return {
        "no token": "",
        "garbage": "?token=abc",
        "expired": f"?token={play_token('vault', ttl_s=5, now=time.time() - 60)}",
        "another stream": f"?token={play_token('other')}",
        "publish token": f"?token={tokens.issue_stream_token(SECRET, 'vault', tokens.PUBLISH, ttl_s=600, now=time.time())}",
        "wrong secret": f"?token={play_token('vault', secret='z' * 32)}",
    }


@pytest.mark.parametrize("via", ["edge", "balancer"])
def test_protected_streams_answer_403_without_a_valid_play_token(protected: Protected, tmp_path: Path,
                                                                  via: str) -> None:
    base = protected.edges[0].http if via == "edge" else protected.start_balancer(tmp_path / "nginx")
    good = f"?token={play_token('vault')}"
    text = wait_until(lambda: request(f"{base}/LiveApp/streams/vault.m3u8{good}")[1].decode() or None,
                      timeout_s=20)
    segment = re.findall(r"^(vault\d{9}\.ts)\?token=", text, re.M)[-1]
    master = request(f"{base}/LiveApp/streams/vault_adaptive.m3u8{good}")
    assert master[0] == 200 and f"vault.m3u8{good}" in master[1].decode()
    # the good URL first, so a balancer's cache holds the protected objects
    assert request(f"{base}/LiveApp/streams/{segment}{good}")[0] == 200
    for why, query in refusals(base).items():
        for path in ("vault.m3u8", segment, "vault_adaptive.m3u8"):
            status, body, _ = request(f"{base}/LiveApp/streams/{path}{query}")
            assert status == 403, (via, why, path, status)
            assert b"token" in body and not body.startswith(b"\x47")


def test_protected_stream_plays_in_ffmpeg_and_is_identical_on_both_edges(protected: Protected) -> None:
    good = f"?token={play_token('vault')}"
    a, b = (f"{e.http}/LiveApp/streams/vault.m3u8{good}" for e in protected.edges)
    for _ in range(10):
        first, other, again = request(a)[1], request(b)[1], request(a)[1]
        if first == other == again:  # each edge lists a closing segment at its own moment
            break
        time.sleep(0.1)
    assert first == other, "the same URL gets the same playlist from every edge"
    name = re.findall(rb"^(vault\d{9}\.ts\?token=\S+)$", first, re.M)[-1].decode()
    assert request(f"{protected.edges[0].http}/LiveApp/streams/{name}")[1] == \
        request(f"{protected.edges[1].http}/LiveApp/streams/{name}")[1]
    assert ffmpeg_decode_errors(a, seconds=3) == ""


def test_hlsjs_plays_a_protected_stream_through_the_balancer(protected: Protected, tmp_path: Path) -> None:
    require_chromium()
    base = protected.start_balancer(tmp_path / "nginx")
    report = play_hls(f"{base}/LiveApp/streams/vault.m3u8?token={play_token('vault')}", min_advance_s=2.0,
                      timeout_s=45)
    assert report.fatal_error is None, report.errors + report.log[-10:]
    assert report.advanced_s >= 2.0


def test_publishing_a_protected_origin_needs_a_publish_token(protected: Protected) -> None:
    origin = protected.origin
    for query in ("", f"?token={play_token('intruder')}",
                  f"?token={tokens.issue_stream_token(SECRET, 'vault2', tokens.PUBLISH, ttl_s=60, now=time.time())}"):
        pub = ffmpeg_publish(origin.rtmp.replace("{stream_id}", f"intruder{query}"), 5)
        try:
            assert pub.wait(30) != 0, f"publish with {query[:20]!r} must be refused"
        finally:
            if pub.poll() is None:
                pub.kill()
    assert request(f"{origin.http}/LiveApp/rest/v2/broadcasts/intruder")[0] == 404, "nothing was claimed"
    assert protected.publisher.poll() is None, "the legitimate publisher kept publishing throughout"
