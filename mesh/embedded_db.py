"""The embedded default database: SecantusDB (MongoDB wire protocol on WiredTiger) as a child process.

mesh talks to it only through pymongo, the same code path as a real MongoDB. This module owns the
child's lifecycle: check the port and the data directory before starting (so the operator gets one
clear line instead of a WiredTiger traceback), wait until it answers ``ping``, and stop it with
SIGTERM (then SIGKILL after a bound).

With users, the server never runs without authentication: the users are written offline into
the stopped data directory first (:mod:`mesh.db_bootstrap`, no socket at all), then the server
starts with ``--auth``. Passwords never appear in the child's argv, in logs or in printed URIs
(:attr:`EmbeddedDb.display_uri` shows ``***``).
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote_plus

import pymongo
import pymongo.errors

from .credentials import env_without_secrets, mask_uri
from .db_bootstrap import BootstrapError, bootstrap_users

log = logging.getLogger("mesh.db")


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the parent dies, so a killed node leaves no orphan server."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class EmbeddedDbError(RuntimeError):
    """The embedded database could not start; the message says why and what to do."""


def port_is_free(host: str, port: int) -> bool:
    """Could a server bind ``host:port`` now? (SO_REUSEADDR, as servers set it, so connections
    lingering in TIME_WAIT from a previous server do not count.)"""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def data_dir_locked(path: Path) -> bool:
    """True if another process holds WiredTiger's lock on ``path`` (the server's own test, done early)."""
    lock = path / "WiredTiger.lock"
    if not lock.exists():
        return False
    with open(lock, "r+b") as fh:
        try:
            fcntl.lockf(fh, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EAGAIN):
                return True
            raise
        fcntl.lockf(fh, fcntl.LOCK_UN, 1, 0)
    return False


class EmbeddedDb:
    """One SecantusDB child process on loopback.

    Call :meth:`start` from the thread that will outlive the child (the main thread): the child is
    bound to its parent thread's life with ``PR_SET_PDEATHSIG``.

    ``users`` (name → password, role root) are written into the data directory before the
    server starts (offline, see :mod:`mesh.db_bootstrap`), and the server then runs with
    ``--auth`` (SecantusDB has no localhost exception once auth is on). An existing user's
    password is set to the one given. Other users found in the data directory are listed in
    :attr:`other_users` and logged, so an operator learns about a user they did not create.
    """

    def __init__(self, data_dir: str | Path, host: str = "127.0.0.1", port: int = 27017,
                 users: dict[str, str] | None = None, log_path: str | Path | None = None):
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = port
        self.users = dict(users or {})
        self.log_path = Path(log_path) if log_path else self.data_dir / "secantusd.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self.other_users: list[str] = []

    @property
    def uri(self) -> str:
        """The URI to connect with, password included: hand it to code, never print it."""
        if self.users:
            name, password = next(iter(self.users.items()))
            return f"mongodb://{quote_plus(name)}:{quote_plus(password)}@{self.host}:{self.port}/"
        return f"mongodb://{self.host}:{self.port}/"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self, timeout_s: float = 30.0) -> str:
        if self.port == 0:
            self.port = free_port(self.host)
        if not port_is_free(self.host, self.port):
            raise EmbeddedDbError(
                f"port {self.host}:{self.port} is already in use; stop whatever listens there "
                f"(another `mesh db`?) or pass --port with a free port")
        try:
            self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # it holds credential hashes
        except OSError as exc:
            raise EmbeddedDbError(f"cannot create data dir {self.data_dir}: {exc.strerror}; "
                                  f"pass --data-dir with a writable directory") from None
        if data_dir_locked(self.data_dir):
            raise EmbeddedDbError(
                f"data dir {self.data_dir} is in use by another database server; stop it or "
                f"pass --data-dir with another directory")
        if self.users:
            try:
                report = bootstrap_users(self.data_dir, self.users, timeout_s)
            except BootstrapError as exc:
                raise EmbeddedDbError(f"{exc}; check that {self.data_dir} is a SecantusDB data "
                                      f"directory that no server is using") from None
            self.other_users = list(report.get("others", []))
            if self.other_users:
                log.warning("the database in %s also has the users %s; drop any you did not create "
                            "(dropUser)", self.data_dir, ", ".join(self.other_users))
        self._spawn(auth=bool(self.users))
        self._wait_ready(timeout_s, auth=bool(self.users))
        log.info("embedded database ready at %s (data %s, pid %s)", self.display_uri,
                 self.data_dir, self._proc.pid if self._proc else "?")
        return self.uri

    @property
    def display_uri(self) -> str:
        """:attr:`uri` with the password replaced by ``***``: safe to print and log."""
        return mask_uri(self.uri)

    def _spawn(self, auth: bool) -> None:
        args = [sys.executable, "-m", "secantus", "--host", self.host, "--port", str(self.port),
                "--storage-path", str(self.data_dir), "--log-level", "WARNING"]
        if auth:
            args.append("--auth")
        logfile = open(self.log_path, "ab")
        try:
            self._proc = subprocess.Popen(args, stdout=logfile, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, start_new_session=True,
                                          env=env_without_secrets(),
                                          preexec_fn=_die_with_parent)
        finally:
            logfile.close()

    def _client(self, auth: bool) -> pymongo.MongoClient:
        uri = self.uri if auth else f"mongodb://{self.host}:{self.port}/"
        return pymongo.MongoClient(uri, serverSelectionTimeoutMS=250, connectTimeoutMS=250)

    def _wait_ready(self, timeout_s: float, auth: bool) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + timeout_s
        client = self._client(auth)
        try:
            while True:
                if self._proc.poll() is not None:
                    raise EmbeddedDbError(f"the embedded database exited with code "
                                          f"{self._proc.returncode} during start; see "
                                          f"{self.log_path}: {self._log_tail()}")
                try:
                    client.admin.command("ping")
                    return
                except pymongo.errors.PyMongoError:
                    if time.monotonic() > deadline:
                        self._terminate()
                        raise EmbeddedDbError(f"the embedded database did not answer ping within "
                                              f"{timeout_s:.0f} s; see {self.log_path}") from None
                    time.sleep(0.05)
        finally:
            client.close()

    def _log_tail(self, lines: int = 3) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])

    def _terminate(self, timeout_s: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("embedded database did not stop in %.0f s; killing it", timeout_s)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def stop(self) -> None:
        self._terminate()

    def wait(self) -> int:
        """Block until the child exits (used by `mesh db`); returns its exit code."""
        assert self._proc is not None
        return self._proc.wait()

    def __enter__(self) -> "EmbeddedDb":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
