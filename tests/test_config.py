"""Config: one typed object from TOML, MESH_* environment and flags; errors name the field."""
from __future__ import annotations

from pathlib import Path

import pytest

from mesh.config import ConfigError, load_config


def test_precedence_file_env_flags(tmp_path: Path) -> None:
    path = tmp_path / "mesh.toml"
    path.write_text('[node]\nrole = "edge"\nhttp_port = 6000\napp = "FromFile"\n'
                    'mongo = "mongodb://db:27017/"\n')
    cfg = load_config(path, env={"MESH_HTTP_PORT": "7000", "MESH_APP": "FromEnv"}, app="FromFlag")
    assert (cfg.role, cfg.http_port, cfg.app) == ("edge", 7000, "FromFlag")


@pytest.mark.parametrize("overrides, field", [
    ({"role": "relay"}, "role"),
    ({"http_port": 70000}, "http_port"),
    ({"app": "bad app"}, "app"),
    ({"segment_target_s": 0}, "segment_target_s"),
    ({"mongo": "http://x"}, "mongo"),
    ({"role": "origin"}, "mongo"),  # origins need a database
    ({"playlist_window": 1}, "playlist_window"),
    ({"node_dead_after_s": 1.0}, "node_dead_after_s"),
])
def test_errors_name_the_field(overrides: dict, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, env={}, **overrides)
    assert f"'{field}'" in str(err.value)


def test_bad_env_type_and_unknown_file_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'http_port'.*not a valid int"):
        load_config(None, env={"MESH_HTTP_PORT": "eighty"})
    path = tmp_path / "m.toml"
    path.write_text("[node]\nhttp_prot = 1\n")
    with pytest.raises(ConfigError, match="unknown field 'http_prot'"):
        load_config(path, env={})
    path.write_text("[node\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path, env={})


def test_origin_without_db_says_how_to_give_one() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, env={}, role="origin")
    assert "--mongo" in str(err.value) and "mesh db" in str(err.value)
