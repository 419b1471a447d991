"""Shared fixtures: the embedded database (real MongoDB wire), node processes, ports."""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from mesh.embedded_db import EmbeddedDb

from .procs import NodeProcess, start_node

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def mongo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A SecantusDB server for the whole session (each test uses its own database name)."""
    server = EmbeddedDb(tmp_path_factory.mktemp("db"), port=0)
    server.start()
    yield f"mongodb://127.0.0.1:{server.port}/"
    server.stop()


@pytest.fixture(scope="session")
def auth_mongo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, str, int]]:
    """A server with authentication on: (user, password, host, port)."""
    server = EmbeddedDb(tmp_path_factory.mktemp("authdb"), port=0, users={"meshop": "s3cret-pw"})
    server.start()
    yield "meshop", "s3cret-pw", "127.0.0.1", server.port
    server.stop()


@pytest.fixture
def db_name() -> str:
    return "t" + uuid.uuid4().hex[:12]


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[list[NodeProcess]]:
    """Collects node processes started by a test and stops them all afterwards."""
    started: list[NodeProcess] = []
    yield started
    for proc in started:
        proc.stop()


@pytest.fixture
def node_factory(nodes: list[NodeProcess], mongo: str, db_name: str, tmp_path: Path):
    def make(role: str, **kw: object) -> NodeProcess:
        kw.setdefault("mongo", mongo)
        kw.setdefault("db_name", db_name)
        proc = start_node(role, tmp_path, **kw)
        nodes.append(proc)
        return proc

    return make


def pytest_report_header(config: pytest.Config) -> str:
    return f"mesh tests: cores={os.cpu_count()}"
