"""`mesh install systemd`: the service user, its directories, the config file and the unit.

One unit runs a node, ``mesh.service``; it passes no ``--role``, so the role is whatever the
config file says (``mesh install --role`` writes it first, `mesh mode` changes it later), and
`systemctl restart mesh` is the one command that applies a change. ``mesh-db.service`` runs the
embedded database. The units in ``deploy/systemd/`` are rendered by :func:`render_unit` with the
default paths (``deploy/render_examples.py``); an install renders them again with the real path
of the ``mesh`` that runs the install, and the user named by ``--user``.

``root`` is a prefix for every path written (``/`` on a real machine; tests pass a temporary
directory). The user is always a real system account: ``useradd --system``.
"""
from __future__ import annotations

import grp
import os
import pwd
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

NODE_UNIT = "mesh.service"
DB_UNIT = "mesh-db.service"
ROLES = ("origin", "edge", "standalone", "db")
DEFAULT_MESH_CMD = "/opt/mesh/.venv/bin/mesh"
RESTART_COMMAND = "systemctl restart mesh"


class InstallError(RuntimeError):
    """The install cannot go on; the message says what to do."""


@dataclass(frozen=True)
class Layout:
    """Where things go, under ``root``."""

    root: Path = Path("/")

    def at(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    @property
    def etc(self) -> Path:
        return self.at("/etc/mesh")

    @property
    def config(self) -> Path:
        return self.etc / "mesh.toml"

    @property
    def state(self) -> Path:
        return self.at("/var/lib/mesh")

    @property
    def cache(self) -> Path:
        return self.at("/var/cache/mesh")

    @property
    def units(self) -> Path:
        return self.at("/etc/systemd/system")


def unit_name(role: str) -> str:
    return DB_UNIT if role == "db" else NODE_UNIT


def render_unit(role: str, *, mesh_cmd: str = DEFAULT_MESH_CMD, user: str = "mesh",
                layout: Layout = Layout()) -> str:
    """The systemd unit for ``role`` (origin, edge and standalone share the node unit)."""
    if role not in ROLES:
        raise ValueError(f"role {role!r}: use one of {', '.join(ROLES)}")
    head = f"""[Service]
Type=simple
User={user}
Group={user}
"""
    if role == "db":
        return f"""[Unit]
Description=mesh embedded database (SecantusDB, MongoDB wire protocol) for small clusters
After=network-online.target

{head}StateDirectory=mesh
ExecStart={mesh_cmd} db --host 127.0.0.1 --port 27017 --data-dir {layout.state / 'db'}
Restart=on-failure

[Install]
WantedBy=multi-user.target
"""
    return f"""[Unit]
Description=mesh node (origin, edge or standalone: the role is in {layout.config})
Documentation=https://example.invalid/mesh/README.md
After=network-online.target
Wants=network-online.target

{head}# The role, the database address (with user and password) and the ports come from
# {layout.config}: `mesh install systemd --role ROLE` writes it, `mesh mode` changes it,
# `{RESTART_COMMAND}` applies it. SIGTERM stops ingest, flushes the bus and deregisters the node.
Environment=MESH_CONFIG={layout.config}
# Numba keeps its compiled kernels here, so a restart does not recompile them.
Environment=NUMBA_CACHE_DIR={layout.cache / 'numba'}
ExecStart={mesh_cmd} node --config {layout.config}
KillSignal=SIGTERM
TimeoutStopSec=30
Restart=on-failure
RestartSec=2
CacheDirectory=mesh
StateDirectory=mesh
LimitNOFILE=65536

[Install]
WantedBy=multi-user.target
"""


def parse_unit(text: str) -> tuple[list[str], dict[str, str], str]:
    """(ExecStart argv, Environment, User) of a unit, as systemd would start it (simple cases)."""
    argv: list[str] = []
    env: dict[str, str] = {}
    user = "root"
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key == "ExecStart":
            argv = shlex.split(value)
        elif key == "Environment":
            for item in shlex.split(value):
                name, _, val = item.partition("=")
                env[name] = val
        elif key == "User":
            user = value.strip()
    return argv, env, user


def this_mesh_command() -> str:
    """The command that runs this very mesh: the console script beside the interpreter, else -m."""
    script = Path(sys.executable).parent / "mesh"
    if script.is_file() and os.access(script, os.X_OK):
        return str(script)
    return f"{sys.executable} -m mesh"


def share_with_dir_group(path: Path) -> None:
    """As root, give ``path`` (0640) to its directory's group when that directory is closed to
    others and not root's group: /etc/mesh is 0750 root:SERVICE-USER after an install, so the
    service can read what `mesh mode` writes. Anything else is left as written (0640/0600)."""
    if os.geteuid() != 0:
        return
    try:
        st = path.parent.stat()
        gid = st.st_gid
        if gid != 0 and not st.st_mode & 0o007 and path.stat().st_gid != gid:
            os.chown(path, -1, gid)
            os.chmod(path, 0o640)
    except PermissionError:
        pass


def restart_hint(config: Path) -> str:
    """The one command that applies a changed config."""
    unit = config.parent.parent / "systemd" / "system" / NODE_UNIT
    if unit.exists() or str(config) == "/etc/mesh/mesh.toml":
        return f"apply it: {RESTART_COMMAND}"
    return f"apply it: restart `mesh node` (it reads {config})"


def install_systemd(role: str, *, layout: Layout, user: str = "mesh", mesh_cmd: str | None = None,
                    run: Callable[..., subprocess.CompletedProcess] = subprocess.run,
                    say: Callable[[str], None] = print) -> Path:
    """Create the user, directories and config, write the unit, enable it. Returns the unit path."""
    from .config import set_config_values

    if os.geteuid() != 0:
        raise InstallError("run it as root (it creates a system user and writes under /etc): "
                           "sudo mesh install systemd")
    if role not in ROLES:
        raise InstallError(f"--role {role}: use one of {', '.join(ROLES)}")
    mesh_cmd = mesh_cmd or this_mesh_command()
    try:
        pwd.getpwnam(user)
        say(f"user {user} exists")
    except KeyError:
        nologin = shutil.which("nologin") or "/usr/sbin/nologin"
        cmd = ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir",
               str(layout.state), "--shell", nologin, user]
        out = run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            raise InstallError(f"{' '.join(cmd)} failed: {out.stderr.strip()}")
        say(f"created system user {user}")
    uid, gid = pwd.getpwnam(user).pw_uid, grp.getgrnam(user).gr_gid
    # config: root-owned, readable by the service group; state and cache: the service's own
    for path, owner, mode in ((layout.etc, (0, gid), 0o750), (layout.state, (uid, gid), 0o750),
                              (layout.cache, (uid, gid), 0o750), (layout.cache / "numba", (uid, gid), 0o750)):
        path.mkdir(parents=True, exist_ok=True)
        os.chown(path, *owner)
        os.chmod(path, mode)
        say(f"{path}  {oct(mode)[2:]} {pwd.getpwuid(owner[0]).pw_name}:{user}")
    if role != "db":
        values: dict[str, object] = {"role": role}
        if not layout.config.exists():
            values["data_dir"] = str(layout.state / "data")
        set_config_values(layout.config, values)
        os.chown(layout.config, 0, gid)
        os.chmod(layout.config, 0o640)
        say(f"{layout.config}  640 root:{user}  role = {role}")
    layout.units.mkdir(parents=True, exist_ok=True)
    name = unit_name(role)
    unit = layout.units / name
    unit.write_text(render_unit(role, mesh_cmd=mesh_cmd, user=user, layout=layout))
    os.chmod(unit, 0o644)
    say(f"{unit}  ExecStart={mesh_cmd} {'db' if role == 'db' else 'node'} ...")
    steps = [["systemctl", "daemon-reload"], ["systemctl", "enable", name]]
    systemd_runs = Path("/run/systemd/system").is_dir() and shutil.which("systemctl")
    if layout.root == Path("/") and systemd_runs:
        for step in steps:
            out = run(step, capture_output=True, text=True)
            if out.returncode != 0:
                raise InstallError(f"{' '.join(step)} failed: {out.stderr.strip()}")
            say(f"ran: {' '.join(step)}")
    else:
        why = "systemd is not running here" if layout.root == Path("/") else f"the unit is under {layout.root}"
        say(f"{why}; on the target machine run: {' && '.join(' '.join(s) for s in steps)}")
    if role == "db":
        say("start it: systemctl start mesh-db")
    else:
        say(f"next: `mesh mode cluster MONGO_HOST [USER]` or `mesh mode standalone`, then {RESTART_COMMAND}")
    return unit
