"""Secrets at the edges of the process (mesh/credentials.py) and in registry errors."""
from __future__ import annotations

from pathlib import Path

import pytest

from mesh.credentials import (SecretFileError, env_without_secrets, mask_uri, read_secret_file,
                              uri_has_password)
from mesh.registry import Registry, RegistryError


@pytest.mark.parametrize("uri, masked", [
    ("mongodb://op:pw@10.0.0.5:27017/", "mongodb://op:***@10.0.0.5:27017/"),
    ("mongodb://op:p%40ss@db1,db2/?replicaSet=rs0", "mongodb://op:***@db1,db2/?replicaSet=rs0"),
    ("mongodb://op:p@ss@db/", "mongodb://op:***@db/"),  # unescaped @: still hidden
    ("mongodb+srv://op:pw@cluster.example/", "mongodb+srv://op:***@cluster.example/"),
    ("mongodb://127.0.0.1:27017/", "mongodb://127.0.0.1:27017/"),
    ("mongodb://op@db/", "mongodb://op@db/"),  # no password
    ("mongodb://db/?authMechanism=MONGODB-AWS&authMechanismProperties=AWS_SESSION_TOKEN:abc",
     "mongodb://db/?authMechanism=MONGODB-AWS&authMechanismProperties=***"),
    ("", ""),
])
def test_mask_uri(uri: str, masked: str) -> None:
    assert mask_uri(uri) == masked
    assert uri_has_password(uri) == (uri != masked)


def test_read_secret_file(tmp_path: Path) -> None:
    path = tmp_path / "s"
    path.write_text("line one\r\n")
    assert read_secret_file(path, "password") == "line one"
    for content, words in (("", "empty"), ("a\nb\n", "more than one line"), ("x" * 70000, "larger than")):
        path.write_text(content)
        with pytest.raises(SecretFileError, match=words):
            read_secret_file(path, "password")
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(SecretFileError, match="not UTF-8"):
        read_secret_file(path, "password")
    with pytest.raises(SecretFileError, match="does not exist"):
        read_secret_file(tmp_path / "nope", "password")


def test_children_get_no_secret_environment() -> None:
    env = env_without_secrets({"PATH": "/bin", "MESH_DB_PASSWORD": "x", "MESH_MONGO": "mongodb://a:b@c/",
                               "MESH_CLUSTER_SECRET": "s", "MESH_HTTP_PORT": "1"})
    assert env == {"PATH": "/bin", "MESH_HTTP_PORT": "1"}


@pytest.mark.parametrize("uri", ["mongodb://op:Sekr1tPw@db:notaport/", "mongodb://op:Sekr1t:Pw@db/",
                                 "mongodb://op:Sekr1t%ZZPw@db/", "mongodb://op:Sekr1tPw@/"])
def test_registry_errors_never_show_the_password(uri: str) -> None:
    with pytest.raises(RegistryError) as err:
        Registry(uri)
    assert "Sekr1t" not in str(err.value) and "MongoDB URI is not usable" in str(err.value)
