"""`mesh lb nginx|haproxy --watch`: the balancer follows the cluster (real nginx and HAProxy, real
nodes on the embedded database), and a config failing the balancer's check never stays in place."""
from __future__ import annotations

import json
import re
import shlex
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from mesh.embedded_db import free_port
from mesh.lb import Backend, Backends, render_nginx_includes
from mesh.lb_watch import apply_files

from .media import ffmpeg_decode_errors
from .procs import node_env, wait_until

ROOT = Path(__file__).resolve().parent.parent
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
TEMP_DIRS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


def readme_block(first_word: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```(?:sh|nginx)\n(.*?)```", text, re.S)
    block = next(b for b in blocks if b.startswith(first_word))
    return [line for line in block.splitlines() if line.strip()]


def readme_lb_args(kind: str, path: str, replacement: Path) -> list[str]:
    """The README's `mesh lb KIND ... --watch` line as argv after `mesh`, its path moved under the test's."""
    line = next(x for x in readme_block("mesh lb") if x.startswith(f"mesh lb {kind} "))
    argv = shlex.split(line.replace(path, str(replacement)))
    assert argv[:3] == ["mesh", "lb", kind] and "--watch" in argv
    return argv[1:]


def stock_nginx_conf(prefix: Path, include_dir: Path) -> str:
    """A main nginx.conf as an operator has it, plus the two include lines the README gives."""
    temps = "".join(f"    {k}_temp_path {prefix}/tmp/{k};\n" for k in TEMP_DIRS)
    stream_line, http_line = (x.replace("/etc/nginx/mesh", str(include_dir)) for x in readme_block("stream {"))
    return f"""load_module /usr/lib/nginx/modules/ngx_stream_module.so;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
user root root;
worker_processes 1;
events {{ worker_connections 1024; }}
{stream_line}
http {{
    access_log off;
{temps}    {http_line}
}}
"""


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""
    except OSError:
        return 0, b""


def node_behind(url: str) -> str | None:
    status, body = get(url + "/healthz")
    return json.loads(body)["node"] if status == 200 else None


def hls_requests(node) -> float:
    _, body = get(node.http + "/metrics")
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.decode().splitlines()
               if line.startswith("mesh_hls_requests_total{"))


class Watcher:
    def __init__(self, args: list[str], mongo: str, db_name: str, log: Path):
        self.log = log
        self.proc = subprocess.Popen([sys.executable, "-m", "mesh", *args, "--interval", "0.5"],
                                     env=node_env(MESH_MONGO=mongo, MESH_DB_NAME=db_name),
                                     stdout=subprocess.DEVNULL, stderr=open(log, "w"))

    def output(self) -> str:
        return self.log.read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(20)


def follow_join_and_death(base: str, node_factory, edge1, files: list[Path], play: str) -> None:
    """Edge 2 joins: viewers reach it; edge 1 is SIGKILLed: they stop reaching it, playback goes on."""
    edge2 = node_factory("edge")
    wait_until(lambda: any(edge2.node_id in f.read_text() for f in files), timeout_s=20, interval_s=0.2,
               message="edge 2 in the rendered config")
    wait_until(lambda: node_behind(base) == edge2.node_id, timeout_s=20, interval_s=0.1,
               message="a viewer request reaching edge 2 through the balancer")
    before = hls_requests(edge2)
    wait_until(lambda: get(play)[0] == 200 and hls_requests(edge2) > before, timeout_s=20, interval_s=0.3,
               message="HLS requests through the balancer reaching edge 2")
    edge1.kill()
    wait_until(lambda: not any(edge1.node_id in f.read_text() for f in files), timeout_s=30, interval_s=0.2,
               message="edge 1 gone from the rendered config")
    answers = [node_behind(base) for _ in range(20)]
    assert answers == [edge2.node_id] * 20, answers
    assert ffmpeg_decode_errors(play, seconds=3) == ""


@pytest.mark.integration
def test_nginx_include_watch_follows_join_and_death(tmp_path: Path, mongo: str, db_name: str,
                                                    node_factory) -> None:
    node_factory("origin")
    edge1 = node_factory("edge")
    prefix, include = tmp_path / "nginx", tmp_path / "nginx" / "mesh"
    for k in TEMP_DIRS:
        (prefix / "tmp" / k).mkdir(parents=True)
    conf = prefix / "nginx.conf"
    conf.write_text(stock_nginx_conf(prefix, include))
    http_port, rtmp_port = free_port(), free_port()
    cache = tmp_path / "cache" / "nginx" / "mesh"  # parents missing: --include creates them
    watcher = Watcher(readme_lb_args("nginx", "/etc/nginx/mesh", include) + [
                       "--cache-dir", str(cache), "--listen", "127.0.0.1",
                       "--http-port", str(http_port), "--rtmp-port", str(rtmp_port),
                       "--check-cmd", f"{NGINX} -t -q -p {prefix} -c {conf}",
                       "--reload-cmd", f"{NGINX} -p {prefix} -c {conf} -s reload"], mongo, db_name,
                      tmp_path / "watch.log")
    files = [include / "mesh-stream.conf", include / "mesh-http.conf"]
    nginx = publisher = None
    try:
        wait_until(lambda: all(f.exists() for f in files), timeout_s=30, message=watcher.output)
        assert cache.is_dir()
        check = subprocess.run([NGINX, "-t", "-p", str(prefix), "-c", str(conf)], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        nginx = subprocess.Popen([NGINX, "-p", str(prefix), "-c", str(conf)], stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_until(lambda: (prefix / "nginx.pid").exists(), message="nginx pid file")
        base = f"http://127.0.0.1:{http_port}"
        wait_until(lambda: node_behind(base) == edge1.node_id, message="nginx serving edge 1")
        publisher = subprocess.Popen([sys.executable, "-m", "mesh", "publish", "--quiet", "--url",
                                      f"rtmp://127.0.0.1:{rtmp_port}/LiveApp/cam1"],
                                     stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=node_env())
        play = f"{base}/LiveApp/streams/cam1.m3u8"
        wait_until(lambda: get(play)[1].count(b".ts") >= 2, timeout_s=60, interval_s=0.5,
                   message="segments through nginx (published through nginx's stream part)")
        follow_join_and_death(base, node_factory, edge1, files, play)
        assert "balancer now has" in watcher.output()
    finally:
        if publisher is not None:
            publisher.terminate()
            publisher.wait(10)
        watcher.stop()
        if nginx is not None:
            nginx.send_signal(signal.SIGQUIT)
            nginx.wait(10)


@pytest.mark.integration
def test_haproxy_watch_follows_join_and_death(tmp_path: Path, mongo: str, db_name: str, node_factory) -> None:
    assert shutil.which("haproxy"), "haproxy is installed by scripts/setup"
    node_factory("origin")
    edge1 = node_factory("edge")
    cfg, pidfile = tmp_path / "haproxy.cfg", tmp_path / "haproxy.pid"
    http_port, rtmp_port = free_port(), free_port()
    watcher = Watcher(readme_lb_args("haproxy", "/etc/haproxy/haproxy.cfg", cfg) + [
                       "--listen", "127.0.0.1", "--http-port", str(http_port),
                       "--rtmp-port", str(rtmp_port), "--reload-cmd", f"kill -USR2 $(cat {pidfile})"],
                      mongo, db_name, tmp_path / "watch.log")
    haproxy = publisher = None
    try:
        wait_until(lambda: cfg.exists(), timeout_s=30, message=watcher.output)
        # -n: this machine's descriptor limit (20000) is below what the config's maxconn needs
        haproxy = subprocess.Popen(["haproxy", "-W", "-db", "-n", "4000", "-f", str(cfg)],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=open(tmp_path / "haproxy.log", "w"))
        pidfile.write_text(str(haproxy.pid))
        base = f"http://127.0.0.1:{http_port}"
        wait_until(lambda: node_behind(base) == edge1.node_id, message="haproxy serving edge 1")
        publisher = subprocess.Popen([sys.executable, "-m", "mesh", "publish", "--quiet", "--url",
                                      f"rtmp://127.0.0.1:{rtmp_port}/LiveApp/cam1"],
                                     stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=node_env())
        play = f"{base}/LiveApp/streams/cam1.m3u8"
        wait_until(lambda: get(play)[1].count(b".ts") >= 2, timeout_s=60, interval_s=0.5,
                   message="segments through haproxy")
        follow_join_and_death(base, node_factory, edge1, [cfg], play)
    finally:
        if publisher is not None:
            publisher.terminate()
            publisher.wait(10)
        watcher.stop()
        if haproxy is not None:
            haproxy.terminate()
            haproxy.wait(10)


def test_a_config_failing_the_check_is_never_left_in_place(tmp_path: Path) -> None:
    """Real nginx -t on a main config including the parts: a bad part is put back, no reload."""
    prefix, include = tmp_path / "nginx", tmp_path / "nginx" / "mesh"
    for k in TEMP_DIRS:
        (prefix / "tmp" / k).mkdir(parents=True)
    conf = prefix / "nginx.conf"
    conf.write_text(stock_nginx_conf(prefix, include))
    (tmp_path / "cache").mkdir()
    good = render_nginx_includes(Backends([Backend("o1", "127.0.0.1", 1)], [Backend("e1", "127.0.0.1", 2)], []),
                                 http_port=free_port(), rtmp_port=free_port(), cache_dir=str(tmp_path / "cache"))
    files = {include / name: text for name, text in good.items()}
    check, reloads = f"{NGINX} -t -q -p {prefix} -c {conf}", tmp_path / "reloads"
    reload_cmd = f"echo reload >> {reloads}"
    first = apply_files(files, check, reload_cmd)
    assert first.ok and first.changed, first.message
    assert apply_files(files, check, reload_cmd).changed is False, "the same text: no reload"
    bad = dict(files)
    bad[include / "mesh-http.conf"] = good["mesh-http.conf"].replace("upstream mesh_edges {", "upstream mesh_edges {{")
    result = apply_files(bad, check, reload_cmd)
    assert not result.ok and "kept" not in result.message and "put the old one back" in result.message
    assert "nginx" in result.message
    assert all(path.read_text() == text for path, text in files.items())
    assert reloads.read_text().splitlines() == ["reload"]
    # a single file checked through {conf} is checked before it replaces anything
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text("old\n")
    result = apply_files({cfg: "global\n    bogus-keyword 1\n"}, "haproxy -c -q -f {conf}", reload_cmd)
    assert not result.ok and "kept the old one" in result.message
    assert cfg.read_text() == "old\n" and not list(tmp_path.glob(".haproxy.cfg.*"))
