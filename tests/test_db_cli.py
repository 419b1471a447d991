"""`mesh db`: the embedded MongoDB-wire server as a child process, started and stopped cleanly."""
from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pymongo
import pytest

from mesh.embedded_db import free_port

from .procs import node_env


def start_db(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "mesh", "db", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=node_env())


def read_uri(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    m = re.match(r"mesh db ready: (mongodb://\S+)", line)
    assert m, f"unexpected first line {line!r}; stderr: {proc.stderr.read() if proc.poll() is not None else ''}"
    return m.group(1)


def db_children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-f", "-P", str(pid), "secantus"], capture_output=True, text=True)
    return [int(x) for x in out.stdout.split()]


@pytest.mark.integration
def test_db_starts_answers_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    proc = start_db("--port", str(port), "--data-dir", str(tmp_path / "d"))
    try:
        uri = read_uri(proc)
        assert uri == f"mongodb://127.0.0.1:{port}/"
        client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=3000)
        assert client.admin.command("ping")["ok"] == 1
        client.mesh.probe.insert_one({"_id": 1})
        client.close()
        children = db_children(proc.pid)
        assert children, "the server runs as a child process"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        with pytest.raises(ConnectionRefusedError):  # nothing listens any more: the child is gone too
            socket.create_connection(("127.0.0.1", port), timeout=2)
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.integration
def test_db_reports_port_taken_and_locked_data_dir(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run([sys.executable, "-m", "mesh", "db", "--port", str(port), "--data-dir",
                              str(tmp_path / "x")], capture_output=True, text=True, env=node_env(),
                             timeout=60)
    assert out.returncode == 2
    assert f"port 127.0.0.1:{port} is already in use" in out.stderr and "Traceback" not in out.stderr

    first = start_db("--port", str(free_port()), "--data-dir", str(tmp_path / "shared"))
    try:
        read_uri(first)
        out = subprocess.run([sys.executable, "-m", "mesh", "db", "--port", str(free_port()),
                              "--data-dir", str(tmp_path / "shared")],
                             capture_output=True, text=True, env=node_env(), timeout=60)
        assert out.returncode == 2
        assert "is in use by another database server" in out.stderr
        assert "Traceback" not in out.stderr
    finally:
        first.send_signal(signal.SIGINT)
        first.wait(15)


@pytest.mark.integration
def test_db_with_user_requires_password(tmp_path: Path) -> None:
    port = free_port()
    proc = start_db("--port", str(port), "--data-dir", str(tmp_path / "a"), "--user", "op",
                    "--password", "pw1")
    try:
        uri = read_uri(proc)
        assert uri == f"mongodb://op:pw1@127.0.0.1:{port}/"
        anon = pymongo.MongoClient(f"mongodb://127.0.0.1:{port}/", serverSelectionTimeoutMS=3000)
        with pytest.raises(pymongo.errors.OperationFailure):
            anon.mesh.nodes.find_one()
        anon.close()
        good = pymongo.MongoClient(uri, serverSelectionTimeoutMS=3000)
        good.mesh.nodes.insert_one({"_id": "x"})
        good.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
