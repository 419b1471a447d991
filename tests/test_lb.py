"""Load balancer configs, `mesh cluster up` (the README's main job) and `mesh mode`."""
from __future__ import annotations

import importlib.util
import re
import shutil
import signal
import subprocess
import sys
import tomllib
import urllib.request
from pathlib import Path

import pytest

from mesh.config import load_config
from mesh.embedded_db import free_port, port_is_free
from mesh.lb import Backend, Backends, render_nginx, write_private_nginx

from .browser import page_eval
from .media import ffmpeg_decode_errors, ffprobe_streams
from .procs import node_env, wait_until

ROOT = Path(__file__).resolve().parent.parent


def load_examples():
    spec = importlib.util.spec_from_file_location("render_examples", ROOT / "deploy/render_examples.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_examples_match_the_renderer() -> None:
    for path, text in load_examples().examples().items():
        assert path.read_text() == text, f"{path} is stale: run deploy/render_examples.py"


def test_nginx_accepts_the_rendered_config(tmp_path: Path) -> None:
    backends = Backends([Backend("o1", "127.0.0.1", 1)], [Backend("e1", "127.0.0.1", 2)], [])
    conf = render_nginx(backends, http_port=free_port(), rtmp_port=free_port(), prefix=str(tmp_path))
    path = write_private_nginx(tmp_path, conf)
    out = subprocess.run(["nginx", "-t", "-p", str(tmp_path), "-c", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_haproxy_accepts_the_rendered_config() -> None:
    assert shutil.which("haproxy"), "haproxy is installed by scripts/setup"
    path = ROOT / "deploy/haproxy/haproxy.cfg"
    out = subprocess.run(["haproxy", "-c", "-f", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr + out.stdout


def test_render_refuses_a_cluster_without_edges() -> None:
    with pytest.raises(ValueError, match="no alive edge"):
        render_nginx(Backends([Backend("o1", "h", 1)], [], []))


def test_sample_config_is_valid() -> None:
    cfg = load_config(ROOT / "deploy/mesh.toml", env={})
    assert cfg.role == "standalone" and cfg.http_port == 5080


def test_mode_switches_between_cluster_and_standalone(tmp_path: Path, mongo: str) -> None:
    path = tmp_path / "mesh.toml"
    host = mongo.split("//")[1].rstrip("/")
    run = lambda *a: subprocess.run([sys.executable, "-m", "mesh", "mode", *a, "--config", str(path)],  # noqa
                                    capture_output=True, text=True, timeout=60, env=node_env())
    out = run("cluster", host, "--role", "edge")
    assert out.returncode == 0, out.stderr
    doc = tomllib.loads(path.read_text())["node"]
    assert doc == {"role": "edge", "mongo": f"mongodb://{host}/"}
    assert path.stat().st_mode & 0o037 == 0, "the file may hold a password: owner and group read only"
    (tmp_path / "pw").write_text("pw\n")
    out = run("cluster", f"127.0.0.1:{free_port()}", "op", "--password-file", str(tmp_path / "pw"))
    assert out.returncode == 2 and "cannot reach MongoDB" in out.stderr
    assert tomllib.loads(path.read_text())["node"]["role"] == "edge", "a failed switch changes nothing"
    out = run("standalone")
    assert out.returncode == 0 and tomllib.loads(path.read_text())["node"] == {"role": "standalone", "mongo": ""}


def test_mode_cluster_with_user_and_password(tmp_path: Path, auth_mongo) -> None:
    user, password, host, port = auth_mongo
    path = tmp_path / "mesh.toml"
    (tmp_path / "pw").write_text(password + "\n")
    cmd = [sys.executable, "-m", "mesh", "mode", "cluster", f"{host}:{port}", user,
           "--password-file", str(tmp_path / "pw"), "--config", str(path)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=node_env())
    assert out.returncode == 0, out.stderr
    assert tomllib.loads(path.read_text())["node"]["mongo"] == f"mongodb://{user}:{password}@{host}:{port}/"
    assert password not in out.stdout + out.stderr
    # The same from the environment; a wrong password changes nothing.
    env_cmd = cmd[:7] + ["--config", str(tmp_path / "env.toml")]
    out = subprocess.run(env_cmd, capture_output=True, text=True, timeout=60,
                         env=node_env(MESH_DB_PASSWORD=password))
    assert out.returncode == 0 and (tmp_path / "env.toml").exists(), out.stderr
    bad = subprocess.run(cmd[:7] + ["--config", str(tmp_path / "other.toml")],
                         capture_output=True, text=True, timeout=60, env=node_env(MESH_DB_PASSWORD="nope"))
    assert bad.returncode == 2 and "authentication failed" in bad.stderr
    assert not (tmp_path / "other.toml").exists()
    # A password as an argument would be in the process list: refused, nothing written.
    argv = subprocess.run(cmd[:7] + [password, "--config", str(tmp_path / "argv.toml")],
                          capture_output=True, text=True, timeout=60, env=node_env())
    assert argv.returncode == 2 and "--password-file" in argv.stderr and "MESH_DB_PASSWORD" in argv.stderr
    assert not (tmp_path / "argv.toml").exists()


@pytest.mark.integration
def test_cluster_up_with_publisher_plays_through_nginx(tmp_path: Path) -> None:
    http_port, rtmp_port = free_port(), free_port()
    # the README's main job: `mesh cluster up --publish --abr 360p500k,240p300k`, on free ports
    proc = subprocess.Popen([sys.executable, "-m", "mesh", "cluster", "up", "--publish", "--abr", "360p500k,240p300k",
                             "--http-port", str(http_port), "--rtmp-port", str(rtmp_port), "--workdir", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=node_env())
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "Ctrl-C stops the cluster" in line:
                break
        text = "".join(lines)
        assert f"rtmp://127.0.0.1:{rtmp_port}/LiveApp/{{stream_id}}" in text, text
        play = re.search(r"test publisher on cam1: play (\S+)", text).group(1)
        assert play == f"http://127.0.0.1:{http_port}/LiveApp/streams/cam1.m3u8"

        def listed() -> bool:
            try:
                with urllib.request.urlopen(play, timeout=5) as resp:
                    return len(re.findall(r"cam1\d{9}\.ts", resp.read().decode())) >= 2
            except OSError:
                return False
        wait_until(listed, timeout_s=60, interval_s=0.5, message="segments through nginx")
        assert {s["codec_name"] for s in ffprobe_streams(play)} == {"h264", "aac"}
        assert ffmpeg_decode_errors(play, seconds=3) == ""
        adaptive = re.search(r"adaptive \(every rung\): (\S+)", text).group(1)
        assert adaptive == f"http://127.0.0.1:{http_port}/LiveApp/streams/cam1_adaptive.m3u8"

        def rungs_listed() -> str | None:
            try:
                with urllib.request.urlopen(adaptive, timeout=5) as resp:
                    master = resp.read().decode()
            except OSError:
                return None
            return master if master.count("#EXT-X-STREAM-INF") == 3 else None
        master = wait_until(rungs_listed, timeout_s=60, interval_s=0.5, message="the ladder through nginx")
        assert "cam1_360p500kbps.m3u8" in master and "cam1_240p300kbps.m3u8" in master
        base_url = f"http://127.0.0.1:{http_port}/LiveApp/streams/"
        assert {s["height"] for s in ffprobe_streams(base_url + "cam1_240p300kbps.m3u8") if "height" in s} == {240}
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/rest/v2/cluster/node-count") as r:
            assert r.read() == b'{"number": 3}'
        base = f"http://127.0.0.1:{http_port}"
        summary = page_eval(f"{base}/#/cluster", "return document.body.innerText",
                            lambda text: "3 nodes, 3 alive" in text)
        assert "3 nodes, 3 alive" in summary and "origin-1" in summary and "edge-2" in summary
        streams = page_eval(f"{base}/#/streams", "return document.body.innerText",
                            lambda text: "broadcasting" in text)
        assert "cam1" in streams and "broadcasting" in streams and "640x360" in streams
        assert "360p500kbps" in page_eval(f"{base}/#/streams", "return document.body.innerText",
                                          lambda text: "360p500kbps" in text), "the streams page shows rungs"
        played = page_eval(f"{base}/LiveApp/play.html?id=cam1",
                           "const v = document.getElementById('video'); return [v.currentTime, v.videoWidth]",
                           lambda v: v[0] >= 2.0, timeout_s=40)
        assert played[0] >= 2.0 and played[1] in (640, 426), "the node's own player page plays through nginx"
        options = page_eval(f"{base}/LiveApp/play.html?id=cam1",
                            "const q = document.getElementById('quality'); "
                            "return [q.options.length, document.getElementById('quality-box').hidden]",
                            lambda v: v[0] == 4, timeout_s=30)
        assert options == [4, False], "the player page offers auto and the three levels"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert port_is_free("127.0.0.1", http_port) and port_is_free("127.0.0.1", rtmp_port)
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True).stdout
    assert leftovers.strip() == "", "every child process is gone"


def test_include_parts_pass_nginx_t_in_debians_stock_nginx_conf(tmp_path: Path) -> None:
    """`mesh lb nginx --include`'s two files with the README's two include lines in the stock
    /etc/nginx/nginx.conf (copied: the machine's own is not touched)."""
    from mesh.lb import render_nginx_includes

    stock = Path("/etc/nginx/nginx.conf")
    assert stock.exists(), "nginx is installed by scripts/setup"
    include = tmp_path / "mesh"
    include.mkdir()
    cache = tmp_path / "var" / "cache" / "nginx" / "mesh"
    backends = Backends([Backend("o1", "127.0.0.1", 1)], [Backend("e1", "127.0.0.1", 2)], [])
    for name, text in render_nginx_includes(backends, http_port=free_port(), rtmp_port=free_port(),
                                            cache_dir=str(cache)).items():
        (include / name).write_text(text)
    readme = (ROOT / "README.md").read_text()
    stream_line, http_line = (line.replace("/etc/nginx/mesh", str(include)) for line in
                              re.search(r"```nginx\n(stream \{.*?\n)(include .*?)\n```", readme, re.S).groups())
    conf = stock.read_text().replace("http {", "http {\n\t" + http_line.strip(), 1) + "\n" + stream_line
    (tmp_path / "nginx.conf").write_text(conf)
    cmd = ["nginx", "-t", "-c", str(tmp_path / "nginx.conf")]
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode != 0 and "mesh" in out.stderr, "the cache directory's parents are missing"
    cache.mkdir(parents=True)  # what `mesh lb nginx --include` does
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
