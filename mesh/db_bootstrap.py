"""Create or update the embedded database's users offline: no listening socket, so no open window.

SecantusDB has no localhost exception once ``--auth`` is on, so the first user must exist
before the server starts with auth. Starting it without auth to run ``createUser`` leaves a
window in which anyone who can reach the port can create their own root user. Instead,
:func:`bootstrap_users` runs this module as a short child process that opens the data
directory directly (the server is not running: WiredTiger's lock would refuse us otherwise)
and runs the server's own ``createUser``/``updateUser`` commands through its command
dispatcher, with no network at all. Then the server starts with ``--auth`` from its first byte.

The passwords travel on the child's stdin (JSON), never in argv or the environment; the child
prints one JSON line: which users it created, which it updated, and which other users exist
(an operator should know about a user they did not make).

    python -m mesh.db_bootstrap DATA_DIR  < {"users": {"name": "password"}}
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from .credentials import env_without_secrets

ROOT_ROLE = [{"role": "root", "db": "admin"}]


class BootstrapError(RuntimeError):
    """The users could not be written; the message says why."""


def _apply(data_dir: str, users: dict[str, str]) -> dict[str, Any]:
    from secantus.commands import CommandContext, dispatch
    from secantus.cursors import CursorRegistry
    from secantus.storage import Storage

    storage = Storage(data_dir, ttl_sweep_seconds=0)  # durability as the server will open it
    try:
        ctx = CommandContext(connection_id=0, storage=storage, cursors=CursorRegistry(), db_name="admin")
        existing = {u["user"] for u in dispatch({"usersInfo": 1, "$db": "admin"}, ctx).get("users", [])}
        created, updated = [], []
        for name, password in users.items():
            verb = "updateUser" if name in existing else "createUser"
            reply = dispatch({verb: name, "pwd": password, "roles": ROOT_ROLE, "$db": "admin"}, ctx)
            (updated if name in existing else created).append(name)
            if reply.get("ok") != 1.0:
                raise BootstrapError(f"user {name!r}: {reply.get('errmsg', 'refused')}")
        storage.checkpoint()
        return {"created": created, "updated": updated, "others": sorted(existing - set(users))}
    finally:
        storage.close()


def bootstrap_users(data_dir: str | Path, users: dict[str, str], timeout_s: float = 60.0) -> dict[str, Any]:
    """Write ``users`` (name → password, role root) into the stopped database at ``data_dir``."""
    try:
        proc = subprocess.run([sys.executable, "-m", "mesh.db_bootstrap", str(data_dir)],
                              input=json.dumps({"users": users}), capture_output=True, text=True,
                              timeout=timeout_s, env=env_without_secrets())
    except subprocess.TimeoutExpired:
        raise BootstrapError(f"writing the database users into {data_dir} took over "
                             f"{timeout_s:.0f} s") from None
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = " | ".join(proc.stderr.strip().splitlines()[-2:])
        raise BootstrapError(f"could not create the database users in {data_dir}: {tail or 'no output'}")
    try:
        return dict(json.loads(lines[-1]))
    except ValueError:
        raise BootstrapError(f"the user bootstrap for {data_dir} printed {lines[-1][:80]!r}") from None


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: python -m mesh.db_bootstrap DATA_DIR < {\"users\": {NAME: PASSWORD}}", file=sys.stderr)
        return 2
    try:
        request = json.loads(sys.stdin.read())
        users = request["users"]
        if not isinstance(users, dict) or not all(isinstance(k, str) and isinstance(v, str) and k and v
                                                  for k, v in users.items()):
            raise ValueError
    except (ValueError, KeyError, TypeError):
        print("stdin must be {\"users\": {NAME: PASSWORD, ...}} with non-empty strings", file=sys.stderr)
        return 2
    try:
        result = _apply(sys.argv[1], users)
    except BootstrapError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
