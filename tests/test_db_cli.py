"""`mesh db`: the embedded MongoDB-wire server as a child process, started and stopped cleanly."""
from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pymongo
import pytest

from mesh.embedded_db import free_port

from .procs import node_env


def _background_signals() -> None:
    # What `mesh db &` gets from a shell without job control (a CI script): SIGINT ignored.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def start_db(*args: str) -> subprocess.Popen[str]:
    """`mesh db` as a background job would run it: every test here stops it with SIGINT, which
    must work even though the process inherited SIGINT ignored."""
    return subprocess.Popen([sys.executable, "-m", "mesh", "db", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=node_env(),
                            preexec_fn=_background_signals)


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
        try:
            first.wait(15)
        except subprocess.TimeoutExpired:
            first.terminate()  # fail without leaving a database server behind
            first.wait(15)
            raise


def password_file(tmp_path: Path, password: str) -> Path:
    path = tmp_path / "db.pw"
    path.write_text(password + "\n")
    path.chmod(0o600)
    return path


def pids_of_tree(root: int) -> set[int]:
    """``root`` and every process descended from it (from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry.name)] = int(fields[1])
    tree, grew = {root}, True
    while grew:
        grew = False
        for pid, ppid in parents.items():
            if ppid in tree and pid not in tree:
                tree.add(pid)
                grew = True
    return tree


def proc_text(pid: int, name: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes()
    except OSError:
        return b""


class Intruder(threading.Thread):
    """An anonymous client that tries ``createUser`` on ``port`` the moment anything listens there,
    again and again, until :meth:`finish`."""

    def __init__(self, port: int):
        super().__init__(daemon=True)
        self.port = port
        self.stop = threading.Event()
        self.created: list[str] = []  # createUser calls that succeeded (must stay empty)
        self.refused = 0  # createUser calls the server answered with an error

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            try:  # a cheap probe first, so a listening port is noticed within a millisecond or so
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
            except OSError:
                self.stop.wait(0.001)
                continue
            n += 1
            client = pymongo.MongoClient(f"mongodb://127.0.0.1:{self.port}/", directConnection=True,
                                         serverSelectionTimeoutMS=500, connectTimeoutMS=500)
            try:
                client.admin.command("createUser", f"intruder{n}", pwd="x", roles=["root"])
                self.created.append(f"intruder{n}")
            except pymongo.errors.OperationFailure:
                self.refused += 1
            except pymongo.errors.PyMongoError:
                pass  # gone again (a restart)
            finally:
                client.close()

    def finish(self) -> None:
        self.stop.set()
        self.join(10)


class ArgvWatcher(threading.Thread):
    """Records every process whose argv (``/proc/*/cmdline``) contains ``secret``, until :meth:`finish`."""

    def __init__(self, secret: str):
        super().__init__(daemon=True)
        self.secret = secret.encode()
        self.stop = threading.Event()
        self.leaks: list[str] = []
        self.scans = 0

    def run(self) -> None:
        while not self.stop.is_set():
            for entry in Path("/proc").iterdir():
                if entry.name.isdigit() and self.secret in proc_text(int(entry.name), "cmdline"):
                    self.leaks.append(proc_text(int(entry.name), "cmdline").decode(errors="replace"))
            self.scans += 1

    def finish(self) -> None:
        self.stop.set()
        self.join(10)


@pytest.mark.integration
def test_db_user_bootstrap_leaves_no_window_and_no_password_in_argv(tmp_path: Path) -> None:
    """The issue-11 attack: while `mesh db --user` starts, an anonymous client polling the port
    tries to create its own root user. It must never succeed, and the password must never be in
    any process's argv, the child's environment, or the output."""
    port, secret = free_port(), "pw-" + "Zq9" * 6
    intruder, watcher = Intruder(port), ArgvWatcher(secret)
    intruder.start()  # before the command runs
    watcher.start()
    proc = start_db("--port", str(port), "--data-dir", str(tmp_path / "a"), "--user", "op",
                    "--password-file", str(password_file(tmp_path, secret)))
    try:
        uri = read_uri(proc)
        assert uri == f"mongodb://op:***@127.0.0.1:{port}/", "stdout masks the password"
        tree = pids_of_tree(proc.pid)
        assert len(tree) >= 2, "mesh db and its server child"
        for pid in tree:
            assert secret.encode() not in proc_text(pid, "cmdline")
            assert secret.encode() not in proc_text(pid, "environ")
        intruder.finish()
        watcher.finish()
        assert intruder.created == [], "an anonymous client created a user during start-up"
        assert intruder.refused > 0, "the intruder reached the server (the test can see a window)"
        assert watcher.leaks == [] and watcher.scans > 0
        anon = pymongo.MongoClient(f"mongodb://127.0.0.1:{port}/", serverSelectionTimeoutMS=3000)
        with pytest.raises(pymongo.errors.OperationFailure):
            anon.admin.command("createUser", "late", pwd="x", roles=["root"])
        with pytest.raises(pymongo.errors.OperationFailure):
            anon.mesh.nodes.find_one()
        anon.close()
        good = pymongo.MongoClient(f"mongodb://op:{secret}@127.0.0.1:{port}/", serverSelectionTimeoutMS=3000)
        assert [u["user"] for u in good.admin.command("usersInfo")["users"]] == ["op"]
        good.mesh.nodes.insert_one({"_id": "x"})
        good.close()
    finally:
        intruder.finish()
        watcher.finish()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
    assert secret not in out + err


@pytest.mark.integration
def test_db_password_from_environment_and_uri_file(tmp_path: Path) -> None:
    port, secret = free_port(), "env-pw-0123456789"
    uri_file = tmp_path / "etc" / "mongo.uri"
    proc = subprocess.Popen([sys.executable, "-m", "mesh", "db", "--port", str(port), "--data-dir",
                             str(tmp_path / "e"), "--user", "op", "--uri-file", str(uri_file)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=node_env(MESH_DB_PASSWORD=secret))
    try:
        assert read_uri(proc) == f"mongodb://op:***@127.0.0.1:{port}/"
        assert uri_file.read_text().strip() == f"mongodb://op:{secret}@127.0.0.1:{port}/"
        assert uri_file.stat().st_mode & 0o777 in (0o640, 0o600)
        for pid in pids_of_tree(proc.pid) - {proc.pid}:  # the server child does not inherit it
            assert secret.encode() not in proc_text(pid, "environ")
        out = subprocess.run([sys.executable, "-m", "mesh", "cluster", "nodes", "--mongo-file",
                              str(uri_file)], capture_output=True, text=True, env=node_env(), timeout=60)
        assert out.returncode == 0 and out.stdout.strip() == "no nodes registered", out.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
    assert secret not in out + err


def test_db_password_on_the_command_line_is_refused(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "mesh", "db", "--data-dir", str(tmp_path / "n"), "--user",
                          "op", "--password", "pw1"], capture_output=True, text=True, env=node_env(),
                         timeout=60)
    assert out.returncode == 2
    assert "--password-file" in out.stderr and "MESH_DB_PASSWORD" in out.stderr
    assert "process list" in out.stderr
    assert not (tmp_path / "n").exists(), "nothing was started"
    out = subprocess.run([sys.executable, "-m", "mesh", "db", "--data-dir", str(tmp_path / "n"), "--user",
                          "op"], capture_output=True, text=True, env=node_env(), timeout=60)
    assert out.returncode == 2 and "--password-file" in out.stderr


@pytest.mark.integration
def test_db_restart_with_user_keeps_data_and_reports_unknown_users(tmp_path: Path) -> None:
    """A data dir that already has users (here: made by an earlier run) keeps its data; users the
    operator did not name are reported, and the given password replaces the old one."""
    data = tmp_path / "r"
    port = free_port()
    first = start_db("--port", str(port), "--data-dir", str(data), "--user", "old",
                     "--password-file", str(password_file(tmp_path, "first-password")))
    read_uri(first)
    client = pymongo.MongoClient(f"mongodb://old:first-password@127.0.0.1:{port}/",
                                 serverSelectionTimeoutMS=3000)
    client.mesh.kept.insert_one({"_id": 1})
    client.close()
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=15)
    port = free_port()
    second = start_db("--port", str(port), "--data-dir", str(data), "--user", "op",
                      "--password-file", str(password_file(tmp_path, "second-password")))
    try:
        read_uri(second)
        client = pymongo.MongoClient(f"mongodb://op:second-password@127.0.0.1:{port}/",
                                     serverSelectionTimeoutMS=3000)
        assert client.mesh.kept.find_one({"_id": 1}) == {"_id": 1}
        client.close()
    finally:
        second.send_signal(signal.SIGTERM)
        out, err = second.communicate(timeout=15)
    assert "also has the users old" in err
