"""Real node processes for integration tests: start, wait for the ready report, stop with bounds."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Callable

READY_RE = re.compile(r"^mesh node (\S+) \((\w+)\) ready$")
ROW_RE = re.compile(r"^  (\w+)\s+(\S+)")


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
                raise AssertionError(f"node {self.args} did not become ready:\n" + self.output())
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
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESH_")}
    env["PYTHONUNBUFFERED"] = "1"
    env["MESH_CONFIG"] = "/nonexistent/mesh.toml"  # never pick up an operator's config
    env.update(extra)
    return env


def start_node(role: str, tmp_path: Path, *, mongo: str | None = None, db_name: str = "mesh",
               node_id: str | None = None, wait: bool = True, extra_args: list[str] | None = None,
               env: dict[str, str] | None = None) -> NodeProcess:
    node_id = node_id or f"{role}-{uuid.uuid4().hex[:6]}"
    args = [sys.executable, "-m", "mesh", "node", "--role", role, "--node-id", node_id,
            "--http-port", "0", "--rtmp-port", "0", "--bus-port", "0",
            "--data-dir", str(tmp_path / f"data-{node_id}"), "--log-level", "info"]
    if mongo:
        args += ["--mongo", mongo]
    args += extra_args or []
    proc = NodeProcess(args, node_env(MESH_DB_NAME=db_name, **(env or {})),
                       tmp_path / f"{node_id}.log")
    return proc.wait_ready() if wait else proc


def wait_until(predicate: Callable[[], object], timeout_s: float = 20.0, interval_s: float = 0.05,
               message: str = "condition") -> object:
    """Poll ``predicate`` until it returns something truthy (a signal, not a fixed sleep)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {message}")
        time.sleep(interval_s)
