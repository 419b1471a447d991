"""`mesh lb haproxy` on a host whose file-descriptor limit is 20,000: the rendered maxconn fits,
`haproxy -c` accepts it and a real HAProxy starts under that limit and proxies to an edge."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from mesh.embedded_db import free_port
from mesh.lb import Backend, Backends, render_haproxy

from .faults_kit import fetch
from .procs import wait_until

FD_LIMIT = 20_000


@pytest.fixture
def haproxy() -> str:
    path = shutil.which("haproxy")
    assert path, "haproxy is installed by scripts/setup"
    if not shutil.which("prlimit"):
        pytest.skip("prlimit (util-linux) is not installed")
    return path


def test_haproxy_starts_with_a_20000_fd_limit(tmp_path: Path, haproxy: str, node_factory) -> None:
    edge = node_factory("edge")
    host, port = edge.http.removeprefix("http://").split(":")
    backends = Backends([Backend("o1", "127.0.0.1", free_port())], [Backend("e1", host, int(port))], [])
    http_port = free_port()
    conf = render_haproxy(backends, http_port=http_port, rtmp_port=free_port(), fd_limit=FD_LIMIT)
    path = tmp_path / "haproxy.cfg"
    path.write_text(conf)
    limit = ["prlimit", f"--nofile={FD_LIMIT}:{FD_LIMIT}", "--"]
    check = subprocess.run(limit + [haproxy, "-c", "-f", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr + check.stdout
    proc = subprocess.Popen(limit + [haproxy, "-db", "-f", str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        def answered() -> bool:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                return fetch(f"http://127.0.0.1:{http_port}/healthz", timeout_s=2)[0] == 200
            except OSError:
                return False
        wait_until(answered, timeout_s=20, interval_s=0.2, message="haproxy proxying /healthz")
    finally:
        proc.terminate()
        out = proc.communicate(10)[0]
    assert "Cannot raise FD limit" not in out, out


def test_the_host_limit_is_the_default(tmp_path: Path, haproxy: str) -> None:
    """Rendered without fd_limit, the config fits the limit of the host that renders it."""
    backends = Backends([Backend("o1", "127.0.0.1", 1)], [Backend("e1", "127.0.0.1", 2)], [])
    path = tmp_path / "haproxy.cfg"
    path.write_text(render_haproxy(backends, http_port=free_port(), rtmp_port=free_port()))
    check = subprocess.run([haproxy, "-c", "-f", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr + check.stdout


def test_haproxy_sends_a_killed_edges_requests_to_the_other_one(tmp_path: Path, haproxy: str,
                                                                 node_factory) -> None:
    """Between an edge's death and the health check taking it out (2 s), HAProxy retries each
    request on the other edge (`retries`, `option redispatch`, `retry-on`): no viewer sees an error."""
    edges = [node_factory("edge"), node_factory("edge")]
    servers = [Backend(f"e{i}", *e.http.removeprefix("http://").split(":")) for i, e in enumerate(edges)]
    servers = [Backend(s.node_id, s.host, int(s.port)) for s in servers]
    http_port = free_port()
    path = tmp_path / "haproxy.cfg"
    path.write_text(render_haproxy(Backends([Backend("o1", "127.0.0.1", free_port())], servers, []),
                                   http_port=http_port, rtmp_port=free_port()))
    proc = subprocess.Popen([haproxy, "-db", "-f", str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{http_port}/healthz"
    try:
        def both_answer() -> bool:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                nodes = {fetch(url, timeout_s=2)[1] for _ in range(4)}
            except OSError:
                return False
            return len(nodes) == 2  # round robin reached both edges
        wait_until(both_answer, timeout_s=20, interval_s=0.2, message="haproxy proxying to both edges")
        edges[1].kill()
        codes = [fetch(url, timeout_s=5)[0] for _ in range(20)]
    finally:
        proc.terminate()
        proc.communicate(10)
    assert codes == [200] * 20, codes
