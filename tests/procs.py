"""Real node processes for integration tests (thin wrappers over :mod:`mesh.cluster`)."""
from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Callable

from mesh.cluster import NodeProcess, node_env
from mesh.cluster import start_node as _start_node

__all__ = ["NodeProcess", "node_env", "start_node", "wait_until"]


def start_node(role: str, tmp_path: Path, *, mongo: str | None = None, db_name: str = "mesh",
               node_id: str | None = None, wait: bool = True, extra_args: list[str] | None = None,
               env: dict[str, str] | None = None) -> NodeProcess:
    return _start_node(role, tmp_path, node_id=node_id or f"{role}-{uuid.uuid4().hex[:6]}",
                       mongo=mongo, db_name=db_name, wait=wait, extra_args=extra_args, env=env)


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
