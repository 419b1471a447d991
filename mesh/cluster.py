"""A whole local cluster as child processes: embedded database, origins, edges, nginx in front.

Used by `mesh cluster up` (demos), the benchmarks and the tests. Every node is a real
`mesh node` process on OS-assigned ports; readiness is read from the report each node prints;
nginx runs from a config rendered from the registry, exactly as `mesh lb nginx` renders it.
"""
from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .embedded_db import EmbeddedDb, port_is_free
from .lb import Backends, render_nginx, write_private_nginx

READY_RE = re.compile(r"^mesh node (\S+) \((\w+)\) ready$")
ROW_RE = re.compile(r"^  (\w+)\s+(\S+)")


class ClusterError(RuntimeError):
    """A part of the local cluster did not start; the message says which and why."""


class NodeProcess:
    """A `mesh node` child. ``urls`` holds what it printed it listens on (http, rtmp, bus, db)."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path):
        self.args = args
        self.log_path = log_path
        self.lines: list[str] = []
        self.urls: dict[str, str] = {}
        self.node_id = ""
        self._ready = threading.Event()
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, text=True, bufsize=1)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        in_report = False
        with open(self.log_path, "a") as log:
            for line in self.proc.stdout:
                log.write(line)
                log.flush()
                line = line.rstrip("\n")
                with self._cond:
                    self.lines.append(line)
                    if len(self.lines) > 5000:
                        del self.lines[:1000]
                    m = READY_RE.match(line)
                    if m:
                        self.node_id = m.group(1)
                        in_report = True
                    elif in_report and (r := ROW_RE.match(line)):
                        self.urls[r.group(1)] = r.group(2)
                        if r.group(1) == "db":
                            self._ready.set()
                    self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_ready(self, timeout_s: float = 60.0) -> "NodeProcess":
        deadline = time.monotonic() + timeout_s
        while not self._ready.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise ClusterError(f"node {' '.join(self.args[3:7])} did not become ready:\n"
                                   + self.output())
        return self

    def wait_for_line(self, pattern: str, timeout_s: float = 30.0) -> re.Match[str]:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout_s
        seen = 0
        with self._cond:
            while True:
                for line in self.lines[seen:]:
                    if m := rx.search(line):
                        return m
                seen = len(self.lines)
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.proc.poll() is not None and seen == len(self.lines)):
                    raise AssertionError(f"no line matching {pattern!r}:\n" + self.output())
                self._cond.wait(min(remaining, 0.2))

    def output(self) -> str:
        with self._cond:
            return "\n".join(self.lines[-80:])

    @property
    def http(self) -> str:
        return self.urls["http"].rstrip("/")

    @property
    def rtmp(self) -> str:
        return self.urls["rtmp"]

    def rtmp_url(self, stream_id: str) -> str:
        return self.rtmp.replace("{stream_id}", stream_id)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout_s: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(5)
        return self.proc.returncode


def node_env(**extra: str) -> dict[str, str]:
    """The environment for a child node: ours minus MESH_* settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESH_")}
    env["PYTHONUNBUFFERED"] = "1"
    env["MESH_CONFIG"] = "/nonexistent/mesh.toml"  # never pick up an operator's config
    env.update(extra)
    return env


def start_node(role: str, workdir: Path, *, node_id: str, mongo: str | None = None,
               db_name: str = "mesh", wait: bool = True, extra_args: list[str] | None = None,
               env: dict[str, str] | None = None, http_port: int = 0, rtmp_port: int = 0,
               bus_port: int = 0) -> NodeProcess:
    args = [sys.executable, "-m", "mesh", "node", "--role", role, "--node-id", node_id,
            "--http-port", str(http_port), "--rtmp-port", str(rtmp_port), "--bus-port", str(bus_port),
            "--data-dir", str(workdir / f"data-{node_id}"), "--log-level", "info"]
    extra_env = {"MESH_DB_NAME": db_name}
    if mongo:  # in the environment, not argv: the URI may hold a password
        extra_env["MESH_MONGO"] = mongo
    extra_env.update(env or {})
    args += extra_args or []
    proc = NodeProcess(args, node_env(**extra_env), workdir / f"{node_id}.log")
    return proc.wait_ready() if wait else proc


def wait_for_port(host: str, port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise ClusterError(f"nothing listens on {host}:{port} after {timeout_s:.0f} s") from None
            time.sleep(0.05)


class Nginx:
    """A private nginx instance (foreground child) under ``prefix``."""

    def __init__(self, prefix: Path, conf: str):
        self.prefix = prefix
        self.conf_path = write_private_nginx(prefix, conf)
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        if not os.path.exists(binary):
            raise ClusterError("nginx is not installed; run scripts/setup (Debian: apt-get install "
                               "nginx libnginx-mod-stream) or pass --no-lb")
        check = subprocess.run([binary, "-t", "-p", str(prefix), "-c", str(self.conf_path)],
                               capture_output=True, text=True)
        if check.returncode != 0:
            raise ClusterError(f"nginx rejected its config {self.conf_path}: {check.stderr.strip()}")
        self.proc = subprocess.Popen([binary, "-p", str(prefix), "-c", str(self.conf_path)],
                                     stdout=subprocess.DEVNULL, stderr=open(prefix / "stderr.log", "ab"),
                                     stdin=subprocess.DEVNULL, start_new_session=True)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


@dataclass
class LocalCluster:
    workdir: Path
    origins: int = 1
    edges: int = 2
    mongo: str | None = None  # None: start the embedded database
    lb: bool = True
    http_port: int = 5080
    rtmp_port: int = 1935
    app: str = "LiveApp"
    db_name: str = "mesh"
    node_env: dict[str, str] = field(default_factory=dict)
    say: Callable[[str], None] = lambda _msg: None
    db: EmbeddedDb | None = None
    nodes: list[NodeProcess] = field(default_factory=list)
    nginx: Nginx | None = None

    def start(self) -> "LocalCluster":
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.lb:
            for port in (self.http_port, self.rtmp_port):
                if not port_is_free("127.0.0.1", port):
                    raise ClusterError(f"port 127.0.0.1:{port} is in use; stop what listens there or "
                                       f"pick others with --http-port/--rtmp-port")
        try:
            if self.mongo is None:
                self.say("starting the embedded database")
                self.db = EmbeddedDb(self.workdir / "db", port=0)
                self.mongo = self.db.start()
            names = [f"origin-{i + 1}" for i in range(self.origins)] + \
                [f"edge-{i + 1}" for i in range(self.edges)]
            self.say(f"starting {self.origins} origin(s) and {self.edges} edge(s)")
            procs = [start_node(name.split("-")[0], self.workdir, node_id=name, mongo=self.mongo,
                                db_name=self.db_name, wait=False, env=self.node_env)
                     for name in names]
            self.nodes = procs
            for proc in procs:
                proc.wait_ready()
            if self.lb:
                self.say("starting nginx in front")
                self.nginx = Nginx(self.workdir / "nginx", self.render_nginx())
                wait_for_port("127.0.0.1", self.http_port)
                wait_for_port("127.0.0.1", self.rtmp_port)
        except BaseException:
            self.stop()
            raise
        return self

    def node_docs(self) -> list[dict]:
        from .registry import Registry

        async def go() -> list[dict]:
            reg = Registry(self.mongo or "", self.db_name)
            await reg.connect()
            try:
                return [v.doc for v in await reg.list_nodes() if v.alive]
            finally:
                await reg.close()
        return asyncio.run(go())

    def render_nginx(self) -> str:
        return render_nginx(Backends.from_nodes(self.node_docs()), http_port=self.http_port,
                            rtmp_port=self.rtmp_port, prefix=str(self.workdir / "nginx"), app=self.app)

    # -- addresses -------------------------------------------------------------------------
    @property
    def origin_nodes(self) -> list[NodeProcess]:
        return [n for n in self.nodes if n.node_id.startswith("origin")]

    @property
    def edge_nodes(self) -> list[NodeProcess]:
        return [n for n in self.nodes if n.node_id.startswith("edge")]

    def publish_url(self, stream_id: str) -> str:
        if self.lb:
            return f"rtmp://127.0.0.1:{self.rtmp_port}/{self.app}/{stream_id}"
        return self.origin_nodes[0].rtmp_url(stream_id)

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}" if self.lb else self.edge_nodes[0].http

    def play_url(self, stream_id: str) -> str:
        return f"{self.http}/{self.app}/streams/{stream_id}.m3u8"

    def stop(self) -> None:
        if self.nginx is not None:
            self.nginx.stop()
            self.nginx = None
        for proc in reversed(self.nodes):  # edges first, then origins
            proc.stop()
        self.nodes = []
        if self.db is not None:
            self.db.stop()
            self.db = None
