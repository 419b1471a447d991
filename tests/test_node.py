"""`mesh node` processes: registration, REST, CLI tables, ordered stop."""
from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from .procs import node_env, start_node

pytestmark = pytest.mark.integration


def get(url: str) -> tuple[int, object]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_origin_and_edge_register_serve_rest_and_stop_in_order(node_factory, mongo, db_name) -> None:
    origin = node_factory("origin")
    edge = node_factory("edge")
    assert origin.urls["bus"].startswith("tcp://127.0.0.1:")
    assert edge.urls["http"].startswith("http://127.0.0.1:")

    status, count = get(f"{edge.http}/rest/v2/cluster/node-count")
    assert status == 200 and count == {"number": 2}
    status, listed = get(f"{origin.http}/rest/v2/cluster/nodes/0/10")
    assert status == 200
    by_id = {n["id"]: n for n in listed}
    assert by_id[origin.node_id]["role"] == "origin" and by_id[edge.node_id]["role"] == "edge"
    assert all(n["status"] == "alive" for n in listed)
    assert by_id[origin.node_id]["busEndpoint"] == origin.urls["bus"]
    assert isinstance(by_id[origin.node_id]["lastUpdateTime"], int)
    status, page = get(f"{origin.http}/rest/v2/cluster/nodes/1/1")
    assert status == 200 and len(page) == 1

    status, health = get(f"{edge.http}/healthz")
    assert status == 200 and health["status"] == "ok" and health["node"] == edge.node_id

    for bad in ("/rest/v2/cluster/nodes/-1/5", "/rest/v2/cluster/nodes/a/b", "/nope/../../etc/passwd"):
        status, body = get(origin.http + bad)
        assert 400 <= status < 500 and "error" in body

    assert edge.stop() == 0
    assert "stopping" in edge.output()
    status, listed = get(f"{origin.http}/rest/v2/cluster/nodes/0/10")
    assert {n["id"]: n["status"] for n in listed}[edge.node_id] == "dead"  # marked gone at once


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_a_node_runs_on_either_event_loop(node_factory, loop: str) -> None:
    """uvloop by default; MESH_EVENT_LOOP=asyncio runs the standard library's loop."""
    origin = node_factory("origin", env={"MESH_EVENT_LOOP": loop})
    edge = node_factory("edge", env={} if loop == "uvloop" else {"MESH_EVENT_LOOP": loop})
    for node in (origin, edge):
        status, health = get(f"{node.http}/healthz")
        assert status == 200 and health["node"] == node.node_id
    status, count = get(f"{edge.http}/rest/v2/cluster/node-count")
    assert status == 200 and count == {"number": 2}
    assert edge.stop() == 0 and origin.stop() == 0
    for node in (origin, edge):
        assert f"runs on the {loop} event loop" in node.output()


def test_cluster_nodes_table(node_factory, mongo, tmp_path: Path) -> None:
    origin = start_node("origin", tmp_path, mongo=mongo, db_name="mesh")
    try:
        out = subprocess.run([sys.executable, "-m", "mesh", "cluster", "nodes", "--mongo", mongo],
                             capture_output=True, text=True, timeout=60, env=node_env())
        assert out.returncode == 0, out.stderr
        header, *rows = out.stdout.strip().splitlines()
        assert header.split()[:4] == ["NODE", "ROLE", "ADDRESS", "STATUS"]
        row = next(r for r in rows if r.startswith(origin.node_id))
        assert " origin " in row and " alive " in row and origin.http in row
    finally:
        origin.stop()


def test_origin_without_database_says_how_to_give_one(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "mesh", "node", "--role", "origin"],
                         capture_output=True, text=True, timeout=60, env=node_env())
    assert out.returncode == 2
    assert "--mongo" in out.stderr and "mesh db" in out.stderr and "Traceback" not in out.stderr
