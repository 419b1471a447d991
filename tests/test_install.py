"""`mesh install systemd` and `mesh mode`, the README's lines as written, then the unit's ExecStart
run as the unit's user (there is no running systemd here), against the config `mesh mode` wrote.

Paths go under a temporary prefix (`--root`); the service user is a real, throwaway system account
(`--user`), deleted afterwards.
"""
from __future__ import annotations

import os
import pwd
import re
import secrets
import shlex
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
import tomllib
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from mesh.cluster import NodeProcess, node_env
from mesh.embedded_db import EmbeddedDb
from mesh.install import parse_unit

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.integration, pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv") or not shutil.which("useradd"),
    reason="needs root, setpriv and useradd (it creates a system user)")]


def readme_service_lines() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = next(b for b in re.findall(r"```sh\n(.*?)```", text, re.S) if "mesh install systemd" in b)
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


def reachable_by_others(path: Path) -> bool:
    """Can a user that is neither owner nor in the group execute ``path``?"""
    path = path.resolve()
    return all(p.stat().st_mode & stat.S_IXOTH for p in [path, *path.parents])


def interpreter_for_service(base: Path) -> str:
    """This interpreter, or (when it lives where a service user cannot go, e.g. under /root) a venv
    of the system's same-version Python that sees our site-packages."""
    if reachable_by_others(Path(sys.executable)):
        return sys.executable
    system = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")
    if not system.exists():
        pytest.skip(f"{sys.executable} is not reachable by other users and there is no {system}")
    venv = base / "venv"
    subprocess.run([str(system), "-m", "venv", "--without-pip", str(venv)], check=True)
    site = sysconfig.get_paths()["purelib"]  # ours, with mesh (editable) and its dependencies
    (next(venv.glob("lib/python*/site-packages")) / "mesh-under-test.pth").write_text(
        f"import site; site.addsitedir({str(site)!r})\n")
    return str(venv / "bin" / "python")


@pytest.fixture
def base() -> Iterator[Path]:
    """A prefix the service user can traverse (pytest's tmp_path is 0700 root)."""
    path = Path(tempfile.mkdtemp(prefix="mesh-install-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def service_user() -> Iterator[str]:
    name = "mt" + secrets.token_hex(4)
    yield name
    subprocess.run(["userdel", name], capture_output=True)
    subprocess.run(["groupdel", name], capture_output=True)


def run_unit(unit: Path, log: Path, extra_env: dict[str, str]) -> NodeProcess:
    """Start the unit's ExecStart as its User=, with its Environment=, like systemd (simple units)."""
    argv, env, user = parse_unit(unit.read_text())
    account = pwd.getpwnam(user)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": account.pw_dir, "LANG": "C.UTF-8",
           "PYTHONUNBUFFERED": "1", **env, **extra_env}
    cmd = ["setpriv", f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}", "--init-groups", "--", *argv]
    return NodeProcess(cmd, env, log)


def test_install_mode_and_the_unit_as_its_user(base: Path, service_user: str) -> None:
    root = base / "root"
    py = interpreter_for_service(base)
    install, cluster_mode, standalone_mode, restart = readme_service_lines()
    assert install.startswith("mesh install systemd --role origin") and restart == "systemctl restart mesh"

    def mesh(line: str, **env: str) -> subprocess.CompletedProcess:
        argv = shlex.split(line.replace("/etc/mesh/", f"{root}/etc/mesh/"))
        assert argv[0] == "mesh"
        return subprocess.run([py, "-m", "mesh", *argv[1:]], capture_output=True, text=True, timeout=120,
                              env=node_env(MESH_CONFIG=str(root / "etc/mesh/mesh.toml"), **env))

    out = mesh(f"{install} --root {root} --user {service_user}")
    assert out.returncode == 0, out.stderr
    assert f"created system user {service_user}" in out.stdout
    assert "on the target machine run: systemctl daemon-reload && systemctl enable mesh.service" in out.stdout
    account = pwd.getpwnam(service_user)
    for path, uid, mode in (("etc/mesh", 0, 0o750), ("var/lib/mesh", account.pw_uid, 0o750),
                            ("var/cache/mesh", account.pw_uid, 0o750), ("etc/mesh/mesh.toml", 0, 0o640)):
        st = (root / path).stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (uid, account.pw_gid, mode), path
    config = root / "etc/mesh/mesh.toml"
    assert tomllib.loads(config.read_text())["node"]["role"] == "origin"
    unit = root / "etc/systemd/system/mesh.service"
    argv, _, user = parse_unit(unit.read_text())
    assert user == service_user and "--role" not in argv and argv[-2:] == ["--config", str(config)]
    again = mesh(f"{install} --root {root} --user {service_user}")
    assert again.returncode == 0 and f"user {service_user} exists" in again.stdout, again.stderr

    # The database the README's cluster line names (10.0.0.5 here is 127.0.0.1:PORT), user mesh.
    password = secrets.token_hex(12)
    (root / "etc/mesh/db.pw").write_text(password + "\n")
    (root / "etc/mesh/db.pw").chmod(0o600)
    db = EmbeddedDb(base / "db", port=0, users={"mesh": password})
    db.start()
    nodes: list[NodeProcess] = []
    ports = {"MESH_HTTP_PORT": "0", "MESH_RTMP_PORT": "0", "MESH_BUS_PORT": "0"}  # the file's, freed
    try:
        out = mesh(cluster_mode.replace("10.0.0.5", f"127.0.0.1:{db.port}"))
        assert out.returncode == 0, out.stderr
        assert out.stdout.rstrip().endswith("apply it: systemctl restart mesh"), out.stdout
        assert password not in out.stdout + out.stderr
        st = config.stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, account.pw_gid, 0o640)
        assert tomllib.loads(config.read_text())["node"]["mongo"].endswith(f"@127.0.0.1:{db.port}/")

        # `systemctl restart mesh`: the unit's ExecStart as its user, reading what `mesh mode` wrote
        node = run_unit(unit, base / "origin.log", ports)
        nodes.append(node)
        node.wait_for_line(r"^mesh node \S+ \(origin\) ready$", timeout_s=240)
        node.wait_ready(60)
        status = Path(f"/proc/{node.pid}/status").read_text()
        assert re.search(rf"^Uid:\s+{account.pw_uid}\s", status, re.M), "runs as the unit's user"
        with urllib.request.urlopen(node.http + "/healthz", timeout=10) as resp:
            assert resp.status == 200
        assert node.stop(90) == 0  # systemd waits TimeoutStopSec (90 s by default)

        out = mesh(standalone_mode)
        assert out.returncode == 0 and "apply it: systemctl restart mesh" in out.stdout, out.stderr
        assert tomllib.loads(config.read_text())["node"]["role"] == "standalone"
        assert stat.S_IMODE(config.stat().st_mode) == 0o640 and config.stat().st_gid == account.pw_gid
        node = run_unit(unit, base / "standalone.log", ports)
        nodes.append(node)
        node.wait_for_line(r"^mesh node \S+ \(standalone\) ready$", timeout_s=240)
        assert node.stop(90) == 0  # systemd waits TimeoutStopSec (90 s by default)
        assert any((root / "var/lib/mesh/data").iterdir()), "the embedded database lives in the state dir"
    finally:
        for node in nodes:
            node.stop()
        db.stop()


def test_install_refuses_an_unknown_role(base: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "mesh", "install", "systemd", "--role", "relay",
                          "--root", str(base)], capture_output=True, text=True, timeout=60, env=node_env())
    assert out.returncode == 2 and "relay" in out.stderr
    assert not (base / "etc").exists()
