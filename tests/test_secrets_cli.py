"""Secrets through the CLI: `mesh token`, secrets refused in argv, and a node whose database URI has a
password showing it nowhere (argv, output, /healthz, node JSON, `mesh cluster nodes`)."""
from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from mesh import tokens

from .procs import node_env, start_node
from .test_db_cli import pids_of_tree, proc_text

SECRET = "cli-test-cluster-secret-0123456789"


def mesh(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mesh", *args], capture_output=True, text=True,
                          timeout=60, env=node_env(**env))


def test_token_prints_a_verifiable_token_and_never_the_secret(tmp_path: Path) -> None:
    secret_file = tmp_path / "cluster.secret"
    secret_file.write_text(SECRET + "\n")
    before = time.time()
    out = mesh("token", "--stream", "cam1", "--play", "--ttl", "3600", "--cluster-secret-file",
               str(secret_file))
    assert out.returncode == 0, out.stderr
    token = out.stdout.strip()
    assert SECRET not in out.stdout + out.stderr and len(out.stdout.splitlines()) == 1
    claims = tokens.verify_stream_token(token, [SECRET], "cam1", tokens.PLAY, now=time.time())
    assert before + 3600 - 2 <= claims.exp <= time.time() + 3600
    out = mesh("token", "--stream", "cam1", "--publish", MESH_CLUSTER_SECRET=SECRET)
    assert tokens.verify_stream_token(out.stdout.strip(), [SECRET], "cam1", tokens.PUBLISH, now=time.time())
    toml = tmp_path / "mesh.toml"
    toml.write_text(f'[node]\ncluster_secret = "{SECRET}"\n')
    out = mesh("token", "--rest", "--scope", "broadcasts", "--ttl", "60", "--config", str(toml))
    claims = tokens.verify_rest_token(out.stdout.strip(), [SECRET], now=time.time(), scope="broadcasts")
    assert claims.exp <= time.time() + 60


@pytest.mark.parametrize("args, words", [
    (["token", "--stream", "cam1"], "--play or --publish"),
    (["token", "--play"], "--play needs --stream"),
    (["token", "--rest", "--stream", "cam1"], "--stream goes with --play or --publish"),
    (["token", "--stream", "cam1", "--play"], "no cluster secret"),
    (["node", "--cluster-secret", SECRET], "--cluster-secret-file"),
])
def test_cli_errors_are_one_line(args: list[str], words: str) -> None:
    out = mesh(*args)
    assert out.returncode == 2 and words in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert SECRET not in out.stdout + out.stderr


@pytest.mark.integration
def test_node_keeps_the_database_password_to_itself(tmp_path: Path, auth_mongo, nodes, db_name: str) -> None:
    user, password, host, port = auth_mongo
    uri_file = tmp_path / "mongo.uri"
    uri_file.write_text(f"mongodb://{user}:{password}@{host}:{port}/\n")
    node = start_node("edge", tmp_path, db_name=db_name, extra_args=["--mongo-file", str(uri_file)])
    nodes.append(node)
    assert node.urls["db"] == f"mongodb://{user}:***@{host}:{port}/"
    for pid in pids_of_tree(node.pid):
        assert password.encode() not in proc_text(pid, "cmdline")
    seen = [node.output(), Path(node.log_path).read_text()]
    for path in ("/healthz", "/rest/v2/cluster/nodes/0/50", "/rest/v2/cluster/node-count"):
        with urllib.request.urlopen(node.http + path, timeout=10) as resp:
            seen.append(resp.read().decode())
    assert node.node_id in seen[-2]
    listing = mesh("cluster", "nodes", "--mongo-file", str(uri_file), MESH_DB_NAME=db_name)
    as_json = mesh("cluster", "nodes", "--json", MESH_DB_NAME=db_name,
                   MESH_MONGO=f"mongodb://{user}:{password}@{host}:{port}/")
    assert listing.returncode == 0 and node.node_id in listing.stdout, listing.stderr
    assert node.node_id in {n["id"] for n in json.loads(as_json.stdout)}
    seen += [listing.stdout, listing.stderr, as_json.stdout, as_json.stderr]
    assert not [text for text in seen if password in text]


def test_password_in_a_mongo_argument_gets_a_warning(tmp_path: Path) -> None:
    out = mesh("node", "--role", "edge", "--mongo", "mongodb://op:pw-in-argv@127.0.0.1:1/", "--http-port",
               "70000")
    assert "--mongo-file" in out.stderr and "pw-in-argv" not in out.stderr


def test_readme_token_commands_run_as_written() -> None:
    """Every `mesh token` line of the README, exactly as written (the secret from the environment)."""
    import shlex

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    lines = [line.split("#")[0].strip() for line in readme.splitlines() if line.startswith("mesh token ")]
    assert len(lines) == 3, lines
    for line in lines:
        out = mesh(*shlex.split(line)[1:], MESH_CLUSTER_SECRET=SECRET)
        assert out.returncode == 0, (line, out.stderr)
        claims = tokens.decode(out.stdout.strip(), [SECRET], now=time.time())
        assert claims.act in line and (claims.act == "rest" or claims.sub == "cam1")
